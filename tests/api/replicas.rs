//! Several instances sharing one Redis: a question asked on all of them at once goes
//! upstream once (a lease per question in Redis), a leader that vanishes is taken over,
//! and a leader whose models gave no answer spares its followers the same calls.

use std::time::{Duration, Instant};

use deadpool_redis::redis;
use resilient_qa::config::Config;
use resilient_qa::pipeline::normalize::{cache_key, normalize};
use resilient_qa::sim::{Behavior, SimServer};

use crate::helpers::*;

fn config(redis: &Redis, sim: &SimServer) -> Config {
    test_config(&redis.url(), Some(sim))
}

/// The lease key of `question` under the default key prefix.
fn lease_key(config: &Config, question: &str) -> String {
    format!(
        "{{{}}}:lease",
        cache_key(&config.cache.key_prefix, &normalize(question))
    )
}

async fn instances(n: usize, redis: &Redis, sim: &SimServer) -> Vec<TestApp> {
    let mut apps = Vec::new();
    for _ in 0..n {
        apps.push(TestApp::spawn(config(redis, sim)).await);
    }
    apps
}

#[tokio::test]
async fn twenty_new_questions_asked_at_once_on_three_instances_go_upstream_once_each() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior(
        "gpt-4o",
        Behavior {
            latency_ms: 300,
            ..Behavior::default()
        },
    );
    let apps = instances(3, &redis, &sim).await;

    let asks = (0..200).map(|i| {
        let app = &apps[i % 3];
        async move { app.ask(&format!("new question number {}", i % 20)).await }
    });
    let answers = futures_util::future::join_all(asks).await;

    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        let source = body["source"].as_str().unwrap();
        assert!(["primary", "cache"].contains(&source), "{body}");
    }
    let calls = sim.calls("gpt-4o");
    println!("200 requests, 20 questions, 3 instances: {calls} upstream calls");
    assert!(calls <= 21, "{calls} upstream calls for 20 questions");
    let followed: f64 = {
        let mut n = 0.0;
        for app in &apps {
            n += app
                .metric(r#"qa_question_leases_total{result="followed"}"#)
                .await;
        }
        n
    };
    assert!(followed >= 1.0, "other instances followed the leaders");
}

#[tokio::test]
async fn with_coalescing_across_instances_off_each_instance_asks_on_its_own() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior(
        "gpt-4o",
        Behavior {
            latency_ms: 300,
            ..Behavior::default()
        },
    );
    let mut apps = Vec::new();
    for _ in 0..3 {
        let mut c = config(&redis, &sim);
        c.cache.coalesce_across_instances = false;
        apps.push(TestApp::spawn(c).await);
    }

    let asks = (0..30).map(|i| {
        let app = &apps[i % 3];
        async move { app.ask(&format!("lone question number {}", i % 10)).await }
    });
    for (status, body) in futures_util::future::join_all(asks).await {
        assert_eq!(status, 200, "{body}");
    }
    // Each instance coalesces its own three requests of a question: one call per
    // question per instance, and no lease taken.
    assert_eq!(sim.calls("gpt-4o"), 30);
    for app in &apps {
        assert_eq!(
            app.metric(r#"qa_question_leases_total{result="led"}"#)
                .await,
            0.0
        );
    }
}

#[tokio::test]
async fn a_leader_that_vanished_is_taken_over_when_its_lease_lapses() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(config(&redis, &sim)).await;
    let question = "is anyone answering this?";
    // A lease left by an instance that died mid-walk: nobody renews it.
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("SET")
        .arg(lease_key(&test_config(&redis.url(), None), question))
        .arg("a-dead-instance")
        .arg("PX")
        .arg(700)
        .query_async(&mut conn)
        .await
        .unwrap();

    let started = Instant::now();
    let (status, body) = app.ask(question).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["source"], "primary", "{body}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "waited on the lease first: {waited:?}"
    );
    assert_eq!(sim.calls("gpt-4o"), 1);
    assert_eq!(
        app.metric(r#"qa_question_leases_total{result="took_over"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn followers_of_a_leader_whose_models_gave_up_answer_without_calling_them() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    for model in ["gpt-4o", "gpt-3.5-turbo"] {
        sim.set_behavior(
            model,
            Behavior {
                latency_ms: 200,
                ..always("503")
            },
        );
    }
    let apps = instances(3, &redis, &sim).await;

    let asks = apps.iter().map(|app| app.ask("如何退货?"));
    let answers = futures_util::future::join_all(asks).await;

    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["source"], "canned", "{body}");
    }
    // One leader's walk: three primary attempts, two secondary ones.
    assert_eq!(sim.calls("gpt-4o"), 3);
    assert_eq!(sim.calls("gpt-3.5-turbo"), 2);
}

#[tokio::test]
async fn with_redis_away_each_instance_answers_on_its_own() {
    let mut redis = Redis::start();
    let sim = healthy_sim().await;
    let apps = instances(2, &redis, &sim).await;
    redis.kill();

    let (a, b) = tokio::join!(apps[0].ask("redis is gone"), apps[1].ask("redis is gone"));

    assert_eq!((a.0, b.0), (200, 200));
    assert_eq!(a.1["source"], "primary");
    assert_eq!(b.1["source"], "primary");
    assert_eq!(sim.calls("gpt-4o"), 2);
}
