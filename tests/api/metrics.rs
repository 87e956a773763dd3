//! `/metrics` and `/stats`: every family of the contract with its labels, correct counts
//! after a known sequence of requests, and an exposition that `promtool` accepts.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::helpers::*;

const FAMILIES: &[(&str, &str)] = &[
    ("qa_requests_total", "counter"),
    ("qa_request_duration_seconds", "histogram"),
    ("qa_rejected_total", "counter"),
    ("qa_cache_lookups_total", "counter"),
    ("qa_upstream_attempts_total", "counter"),
    ("qa_upstream_duration_seconds", "histogram"),
    ("qa_fallbacks_total", "counter"),
    ("qa_success_ratio", "gauge"),
    ("qa_cache_hit_ratio", "gauge"),
    ("qa_fallback_ratio", "gauge"),
    ("qa_error_ratio", "gauge"),
];

#[tokio::test]
async fn every_contract_family_is_exported_with_its_type_and_labels() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    let text = app.metrics().await;

    for (name, kind) in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} {kind}"
        );
        assert!(text.contains(&format!("# HELP {name} ")), "{name} help");
    }
    for sample in [
        r#"qa_requests_total{source="stale"} 0"#,
        r#"qa_request_duration_seconds_count{source="default"} 0"#,
        r#"qa_rejected_total{code="overloaded"} 0"#,
        r#"qa_cache_lookups_total{layer="redis",result="error"} 0"#,
        r#"qa_upstream_attempts_total{model="gpt-3.5-turbo",outcome="rate_limited",tier="secondary"} 0"#,
        r#"qa_upstream_duration_seconds_count{tier="primary"} 0"#,
        r#"qa_fallbacks_total{from="secondary",reason="not_configured"} 0"#,
        "qa_success_ratio 1",
        "qa_error_ratio 0",
        "process_resident_memory_bytes",
        r#"qa_build_info{version="#,
    ] {
        assert!(text.contains(sample), "missing {sample}");
    }
}

#[tokio::test]
async fn counts_follow_a_known_sequence_of_requests() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    app.ask("first question").await; // primary
    app.ask("first question").await; // cache (memory)
    sim.set_behavior("gpt-4o", always("503"));
    app.ask("second question").await; // 3 primary failures, then secondary
    sim.set_behavior("gpt-3.5-turbo", always("400"));
    app.ask("如何退货?").await; // primary exhausted, secondary non-retryable, canned
    app.ask("").await; // rejected: invalid_question
    let text = app.metrics().await;
    let v = |s: &str| metric_value(&text, s);

    assert_eq!(v(r#"qa_requests_total{source="primary"}"#), 1.0);
    assert_eq!(v(r#"qa_requests_total{source="cache"}"#), 1.0);
    assert_eq!(v(r#"qa_requests_total{source="secondary"}"#), 1.0);
    assert_eq!(v(r#"qa_requests_total{source="canned"}"#), 1.0);
    assert_eq!(v(r#"qa_requests_total{source="default"}"#), 0.0);
    assert_eq!(
        v(r#"qa_request_duration_seconds_count{source="cache"}"#),
        1.0
    );
    assert_eq!(v(r#"qa_rejected_total{code="invalid_question"}"#), 1.0);
    assert_eq!(
        v(r#"qa_cache_lookups_total{layer="memory",result="hit"}"#),
        1.0
    );
    assert_eq!(
        v(r#"qa_cache_lookups_total{layer="memory",result="miss"}"#),
        3.0
    );
    assert_eq!(
        v(r#"qa_cache_lookups_total{layer="redis",result="miss"}"#),
        3.0
    );
    assert_eq!(
        v(r#"qa_upstream_attempts_total{model="gpt-4o",outcome="server_error",tier="primary"}"#),
        6.0
    );
    assert_eq!(
        v(r#"qa_upstream_attempts_total{model="gpt-4o",outcome="success",tier="primary"}"#),
        1.0
    );
    assert_eq!(
        v(
            r#"qa_upstream_attempts_total{model="gpt-3.5-turbo",outcome="client_error",tier="secondary"}"#
        ),
        1.0
    );
    assert_eq!(
        v(r#"qa_upstream_duration_seconds_count{tier="primary"}"#),
        7.0
    );
    assert_eq!(
        v(r#"qa_fallbacks_total{from="primary",reason="exhausted"}"#),
        2.0
    );
    assert_eq!(
        v(r#"qa_fallbacks_total{from="secondary",reason="non_retryable"}"#),
        1.0
    );
    assert_eq!(v("qa_cache_hit_ratio"), 0.25);
    assert_eq!(v("qa_fallback_ratio"), 0.5);
    assert_eq!(v("qa_success_ratio"), 1.0);
    assert_eq!(v("qa_error_ratio"), 0.0);
}

#[tokio::test]
async fn ratio_gauges_move_with_the_mix_of_sources() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_default_behavior(always("500"));
    sim.set_behavior("gpt-4o", always("500"));
    sim.set_behavior("gpt-3.5-turbo", always("500"));
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    app.ask("unknown one").await; // default
    let all_errors = app.metric("qa_error_ratio").await;
    sim.set_behavior("gpt-4o", resilient_qa::sim::Behavior::default());
    for i in 0..3 {
        app.ask(&format!("known {i}")).await; // primary
    }
    let text = app.metrics().await;

    assert_eq!(all_errors, 1.0);
    assert_eq!(metric_value(&text, "qa_error_ratio"), 0.25);
    assert_eq!(metric_value(&text, "qa_success_ratio"), 0.75);
    assert_eq!(metric_value(&text, "qa_fallback_ratio"), 0.25);
}

#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", script(&["503"]));
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;
    app.ask("one").await;
    app.ask("one").await;
    app.ask("").await;
    let text = app.metrics().await;

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: run scripts/install-deps.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();

    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn stats_reports_sources_ratios_and_recent_errors() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", script(&["503"]));
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;
    app.ask("stats one").await; // 503 then primary
    app.ask("stats one").await; // cache

    let (status, stats) = app.get_json("/stats").await;

    assert_eq!(status, 200);
    assert_eq!(stats["total"], 2);
    assert_eq!(stats["by_source"]["primary"], 1);
    assert_eq!(stats["by_source"]["cache"], 1);
    assert_eq!(stats["by_source"]["stale"], 0);
    assert_eq!(stats["window_secs"], 300);
    assert_eq!(stats["cache_hit_ratio"], 0.5);
    assert_eq!(stats["errors"]["total"], 1);
    assert_eq!(stats["errors"]["by_kind"]["server_error"], 1);
    let recent = &stats["errors"]["recent"][0];
    assert_eq!(recent["tier"], "primary");
    assert_eq!(recent["model"], "gpt-4o");
    assert_eq!(recent["kind"], "server_error");
    assert_eq!(recent["message"], "HTTP 503");
    assert_eq!(recent["attempt"], 1);
    assert!(recent["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        stats["alert"],
        serde_json::json!({"threshold": 0.01, "firing": false})
    );
}

#[tokio::test]
async fn error_alert_fires_when_default_replies_pass_the_threshold() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", always("500"));
    sim.set_behavior("gpt-3.5-turbo", always("500"));
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    app.ask("nobody knows this").await;
    let (_, stats) = app.get_json("/stats").await;

    assert_eq!(stats["alert"]["firing"], true);
    assert_eq!(stats["error_ratio"], 1.0);
}

#[tokio::test]
async fn error_ratio_decays_once_errors_leave_the_window() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", always("500"));
    sim.set_behavior("gpt-3.5-turbo", always("500"));
    let mut config = test_config(&redis.url(), Some(&sim));
    config.metrics.window_secs = 2;
    let app = TestApp::spawn(config).await;
    app.ask("nobody knows").await; // default
    let during = app.metric("qa_error_ratio").await;
    sim.set_behavior("gpt-4o", resilient_qa::sim::Behavior::default());

    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let idle = app.metrics().await;
    app.ask("a good one").await; // primary
    let after = app.metrics().await;

    assert_eq!(during, 1.0);
    assert_eq!(metric_value(&idle, "qa_error_ratio"), 0.0);
    assert_eq!(metric_value(&idle, "qa_success_ratio"), 1.0);
    assert_eq!(metric_value(&after, "qa_error_ratio"), 0.0);
    assert_eq!(metric_value(&after, "qa_fallback_ratio"), 0.0);
    let (_, stats) = app.get_json("/stats").await;
    assert_eq!(stats["alert"]["firing"], false);
}
