//! Streamed answers on the wire: every rule of the contract's "Streaming answers", with
//! faults before the first piece, in the middle of a stream, and clients that leave.

use std::time::Duration;

use futures_util::StreamExt;
use resilient_qa::config::Config;
use resilient_qa::sim::{Behavior, SimServer};
use serde_json::Value;

use crate::helpers::*;

/// One server-sent event: its name and its data as JSON.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    data: Value,
}

/// The events of a whole stream body.
fn parse(body: &str) -> Vec<Sse> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = Some(e.trim().to_string());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            Some(Sse {
                event: event?,
                data: serde_json::from_str(&data).unwrap(),
            })
        })
        .collect()
}

/// The text after the last reset, as the contract says a client must assemble it.
fn assembled(events: &[Sse]) -> String {
    let start = events
        .iter()
        .rposition(|e| e.event == "reset")
        .map_or(0, |i| i + 1);
    events[start..]
        .iter()
        .filter(|e| e.event == "delta")
        .map(|e| e.data["text"].as_str().unwrap().to_string())
        .collect()
}

fn done(events: &[Sse]) -> &Value {
    let last = events.last().expect("no events");
    assert_eq!(
        last.event, "done",
        "done must be the last event: {events:#?}"
    );
    &last.data
}

/// Checks the stream's invariants and returns its `done` data.
fn check(events: &[Sse]) -> Value {
    let done = done(events).clone();
    assert_eq!(
        events.iter().filter(|e| e.event == "done").count(),
        1,
        "{events:#?}"
    );
    assert_eq!(
        assembled(events),
        done["answer"].as_str().unwrap(),
        "deltas after the last reset must equal done.answer: {events:#?}"
    );
    done
}

async fn stream(app: &TestApp, question: &str) -> (reqwest::header::HeaderMap, Vec<Sse>) {
    let resp = app
        .client
        .post(app.url("/ask"))
        .header("accept", "text/event-stream")
        .json(&serde_json::json!({ "question": question }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    (headers, parse(&resp.text().await.unwrap()))
}

#[tokio::test]
async fn a_stream_has_the_event_stream_headers_pieces_and_done_last() {
    let (_r, _s, app) = app_with(Behavior::default(), Behavior::default()).await;

    let (headers, events) = stream(&app, "stream me").await;

    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert!(headers.contains_key("x-request-id"));
    let done = check(&events);
    assert!(events.iter().filter(|e| e.event == "delta").count() > 3);
    assert_eq!(done["source"], "primary");
    assert_eq!(done["degraded"], false);
    assert!(done.get("continued").is_none(), "{done}");
    assert_eq!(
        done["request_id"],
        headers["x-request-id"].to_str().unwrap()
    );
}

#[tokio::test]
async fn stream_true_in_the_body_streams_too() {
    let (_r, _s, app) = app_with(Behavior::default(), Behavior::default()).await;

    let resp = app
        .client
        .post(app.url("/ask"))
        .json(&serde_json::json!({ "question": "body flag", "stream": true }))
        .send()
        .await
        .unwrap();

    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    check(&parse(&resp.text().await.unwrap()));
}

#[tokio::test]
async fn a_request_that_fails_its_checks_gets_the_json_error_before_any_event() {
    let (_r, _s, app) = app_with(Behavior::default(), Behavior::default()).await;

    let resp = app
        .client
        .post(app.url("/ask"))
        .header("accept", "text/event-stream")
        .json(&serde_json::json!({ "question": "   " }))
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status(), 422);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_question");
}

#[tokio::test]
async fn a_cached_answer_streams_as_one_piece_and_done() {
    let (_r, _s, app) = app_with(Behavior::default(), Behavior::default()).await;
    let (_, first) = stream(&app, "ask me twice").await;
    let first = check(&first);

    let (_, events) = stream(&app, "ask me twice").await;

    let done = check(&events);
    assert_eq!(done["source"], "cache");
    assert_eq!(done["answer"], first["answer"]);
    assert_eq!(events.len(), 2);
}

#[tokio::test]
async fn faults_before_the_first_piece_are_invisible() {
    for fault in ["503", "429", "reset", "stall_first"] {
        let behavior = Behavior {
            // 429 and 503 ask for a wait, which the retry honours.
            retry_after: Some("1".into()),
            ..script(&[fault])
        };
        let (_r, sim, app) = app_with(behavior, Behavior::default()).await;

        let (_, events) = stream(&app, &format!("before the first piece: {fault}")).await;

        let done = check(&events);
        assert!(
            !events.iter().any(|e| e.event == "reset"),
            "{fault}: {events:#?}"
        );
        assert_eq!(done["source"], "primary", "{fault}: {done}");
        assert!(done.get("continued").is_none(), "{fault}: {done}");
        assert_eq!(sim.calls("gpt-4o"), 2, "{fault}");
    }
}

#[tokio::test]
async fn a_stream_broken_mid_way_is_continued_by_a_retry_without_a_reset() {
    for fault in ["cut", "stall", "stream_error"] {
        let (redis, sim, app) = app_with(script(&[fault]), Behavior::default()).await;
        // In Chinese: the prompt then gets no language instruction.
        let question = format!("回答中断一次: {fault}");

        let (_, events) = stream(&app, &question).await;

        let done = check(&events);
        assert!(
            !events.iter().any(|e| e.event == "reset"),
            "{fault}: {events:#?}"
        );
        assert_eq!(done["source"], "primary", "{fault}: {done}");
        assert_eq!(done["continued"], true, "{fault}: {done}");
        let snapshot = sim.snapshot();
        let request = &snapshot.models["gpt-4o"]
            .last_request
            .as_ref()
            .unwrap()
            .body;
        let messages = request["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3, "{fault}: {request}");
        assert_eq!(messages[1]["role"], "assistant");
        assert!(
            done["answer"]
                .as_str()
                .unwrap()
                .starts_with(messages[1]["content"].as_str().unwrap()),
            "the continuation follows the text sent: {fault}"
        );
        let whole = format!(
            "[gpt-4o] simulated answer to: {}",
            Config::default()
                .primary
                .prompt
                .replace("{question}", &question)
        );
        assert_eq!(
            done["answer"], whole,
            "nothing lost, nothing repeated: {fault}"
        );
        assert_eq!(
            app.metric(r#"qa_stream_interruptions_total{action="continued",tier="primary"}"#)
                .await,
            1.0,
            "{fault}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            redis.keys().await.is_empty(),
            "a stitched answer is never cached: {fault}"
        );
    }
}

#[tokio::test]
async fn a_primary_that_keeps_breaking_is_continued_by_the_secondary() {
    let (_r, _sim, app) = app_with(always("cut"), Behavior::default()).await;

    let (_, events) = stream(&app, "primary keeps breaking").await;

    let done = check(&events);
    assert!(!events.iter().any(|e| e.event == "reset"), "{events:#?}");
    assert_eq!(done["source"], "secondary", "{done}");
    assert_eq!(done["model"], "gpt-3.5-turbo");
    assert_eq!(done["continued"], true);
}

#[tokio::test]
async fn with_both_models_breaking_the_text_is_reset_and_a_later_tier_answers() {
    let (_r, _sim, app) = app_with(always("cut"), always("stream_error")).await;

    let (_, events) = stream(&app, "如何退货?").await;

    let done = check(&events);
    assert_eq!(
        events.iter().filter(|e| e.event == "reset").count(),
        1,
        "{events:#?}"
    );
    assert_eq!(done["source"], "canned", "{done}");
    assert!(done.get("continued").is_none());
    assert_eq!(
        app.metric(r#"qa_stream_interruptions_total{action="reset",tier="secondary"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn time_to_first_token_is_measured_per_source() {
    let (_r, _s, app) = app_with(Behavior::default(), Behavior::default()).await;

    stream(&app, "how fast?").await;

    assert_eq!(
        app.metric(r#"qa_time_to_first_token_seconds_count{source="primary"}"#)
            .await,
        1.0
    );
    assert_eq!(app.metric("qa_streams_in_flight").await, 0.0);
}

/// A service whose primary streams two characters every `interval_ms`.
async fn slow_primary(interval_ms: u64) -> (Redis, SimServer, TestApp) {
    let primary = Behavior {
        stream_piece_chars: Some(2),
        stream_interval_ms: Some(interval_ms),
        ..Behavior::default()
    };
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", primary);
    let app = TestApp::spawn(stream_config(&redis, &sim)).await;
    (redis, sim, app)
}

#[tokio::test]
async fn fifty_streams_of_one_new_question_make_one_upstream_call_and_a_late_joiner_gets_every_piece()
 {
    let (_redis, sim, app) = slow_primary(20).await;

    let early = futures_util::future::join_all((0..49).map(|_| stream(&app, "one for all")));
    let late = async {
        // The answer has some 60 pieces at 20 ms: half-way.
        tokio::time::sleep(Duration::from_millis(600)).await;
        stream(&app, "one for all").await
    };
    let (early, (_, late)) = tokio::join!(early, late);

    assert_eq!(sim.calls("gpt-4o"), 1);
    let answer = check(&late)["answer"].clone();
    assert_eq!(late.first().unwrap().event, "delta");
    for (_, events) in &early {
        assert_eq!(check(events)["answer"], answer);
    }
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_does_not_stop_the_answer_reaching_redis() {
    let (redis, _sim, app) = slow_primary(30).await;
    let resp = app
        .client
        .post(app.url("/ask"))
        .header("accept", "text/event-stream")
        .json(&serde_json::json!({ "question": "leaving early" }))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("delta"));

    drop(body);

    assert!(
        eventually(Duration::from_secs(10), || async {
            redis.keys().await.len() == 1
        })
        .await,
        "the walk went on and cached its answer"
    );
}

#[tokio::test]
async fn a_quiet_stream_gets_a_ping_comment_every_15_seconds() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", always("stall_first"));
    let mut c = stream_config(&redis, &sim);
    c.primary.first_token_timeout_ms = 17_000;
    c.primary.max_attempts = 1;
    c.server.request_timeout_ms = 25_000;
    let app = TestApp::spawn(c).await;
    let resp = app
        .client
        .post(app.url("/ask"))
        .header("accept", "text/event-stream")
        .json(&serde_json::json!({ "question": "anyone?" }))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();

    let mut seen = String::new();
    let pinged = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(chunk)) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains(": ping") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);

    assert!(pinged, "{seen}");
}

#[tokio::test]
async fn a_break_is_counted_once_even_when_the_next_attempt_fails_before_writing() {
    let (_r, sim, app) = app_with(script(&["cut", "503"]), Behavior::default()).await;

    let (_, events) = stream(&app, "broken, refused, continued").await;

    let done = check(&events);
    assert_eq!(done["source"], "primary", "{done}");
    assert_eq!(done["continued"], true);
    assert_eq!(sim.calls("gpt-4o"), 3);
    assert_eq!(
        app.metric(r#"qa_stream_interruptions_total{action="continued",tier="primary"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_continuation_with_no_text_is_not_taken_for_the_rest_of_the_answer() {
    let (redis, _sim, app) = app_with(script(&["cut", "empty"]), Behavior::default()).await;
    let question = "中断之后没有文字";

    let (_, events) = stream(&app, question).await;

    let done = check(&events);
    let whole = format!(
        "[gpt-4o] simulated answer to: {}",
        Config::default()
            .primary
            .prompt
            .replace("{question}", question)
    );
    assert_eq!(done["answer"], whole, "{done}");
    assert_eq!(done["continued"], true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(redis.keys().await.is_empty());
}

#[tokio::test]
async fn a_streamed_answer_past_the_size_cap_is_not_continued_but_reset() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior(
        "gpt-4o",
        Behavior {
            huge_body_bytes: Some(1 << 20),
            ..always("huge")
        },
    );
    let mut c = stream_config(&redis, &sim);
    c.primary.max_response_bytes = 200 * 1024;
    let app = TestApp::spawn(c).await;

    let (_, events) = stream(&app, "如何退货?").await;

    let done = check(&events);
    assert_eq!(events.iter().filter(|e| e.event == "reset").count(), 1);
    assert_eq!(done["source"], "canned", "{done}");
    assert_eq!(sim.calls("gpt-4o"), 1, "a runaway answer is not retried");
    assert_eq!(
        sim.calls("gpt-3.5-turbo"),
        0,
        "nor continued by the next tier"
    );
}
