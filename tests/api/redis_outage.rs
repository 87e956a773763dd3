//! Redis down at start, killed mid-run, restarted: the service answers throughout and
//! uses Redis again once it is back.

use std::time::Duration;

use resilient_qa::pipeline::normalize::{cache_key, normalize};

use crate::helpers::*;

#[tokio::test]
async fn service_starts_and_answers_with_redis_unreachable() {
    let sim = healthy_sim().await;
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let app = TestApp::spawn(test_config(&dead, Some(&sim))).await;

    let (_, ready) = app.get_json("/readyz").await;
    let first = app.source_of("Is Redis needed?").await;
    let second = app.source_of("Is Redis needed?").await;

    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["checks"]["redis"], "down");
    assert_eq!(first, "primary");
    assert_eq!(
        second, "cache",
        "the memory layer serves while Redis is away"
    );
    assert!(
        app.metric(r#"qa_cache_lookups_total{layer="redis",result="error"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn redis_killed_mid_run_then_restarted_is_used_again() {
    let mut redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;
    assert_eq!(app.source_of("before the outage").await, "primary");

    redis.kill();
    let during_new = app.source_of("during the outage").await;
    let during_old = app.source_of("before the outage").await;
    let up_again = |app: &TestApp| {
        let client = app.client.clone();
        let url = app.url("/readyz");
        async move {
            let body: serde_json::Value =
                client.get(&url).send().await.unwrap().json().await.unwrap();
            body["checks"]["redis"] == "up"
        }
    };
    assert!(
        eventually(Duration::from_secs(5), || async { !up_again(&app).await }).await,
        "readyz never saw Redis go down"
    );

    redis.restart();
    assert!(
        eventually(Duration::from_secs(10), || up_again(&app)).await,
        "readyz never saw Redis again"
    );
    assert_eq!(app.source_of("after the outage").await, "primary");

    assert_eq!(during_new, "primary");
    assert_eq!(during_old, "cache");
    let key = cache_key("qa:v1:", &normalize("after the outage"));
    assert!(
        eventually(Duration::from_secs(5), || async {
            redis.keys().await.contains(&key)
        })
        .await,
        "the answer given after the restart reaches Redis"
    );
    let other = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;
    assert_eq!(other.source_of("after the outage").await, "cache");
}

#[tokio::test]
async fn every_request_during_an_outage_is_answered() {
    let mut redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    redis.kill();
    let mut statuses = Vec::new();
    for i in 0..20 {
        let (status, _) = app.ask(&format!("outage question {i}")).await;
        statuses.push(status);
    }

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}
