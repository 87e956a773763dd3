//! The cache: keys from normalized questions, shared through Redis between instances,
//! and only model answers ever written.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn question_variants_share_one_cache_entry() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    assert_eq!(
        app.source_of("How do I  reset my PASSWORD？").await,
        "primary"
    );
    for variant in [
        "how do i reset my password?",
        "  HOW   do I reset my password？ ",
        "How do I\treset my ｐａｓｓｗｏｒｄ?",
    ] {
        assert_eq!(app.source_of(variant).await, "cache", "{variant:?}");
    }

    assert_eq!(sim.calls("gpt-4o"), 1);
}

#[tokio::test]
async fn answers_are_written_to_redis_with_model_and_time() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    app.ask("What are your opening hours?").await;

    assert!(
        eventually(Duration::from_secs(5), || async {
            !redis.keys().await.is_empty()
        })
        .await
    );
    let keys = redis.keys().await;
    assert_eq!(keys.len(), 1);
    assert!(keys[0].starts_with("qa:v1:"));
    let mut conn = redis.conn().await;
    let raw: String = deadpool_redis::redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    let entry: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(entry["model"], "gpt-4o");
    assert!(entry["answer"].as_str().unwrap().contains("opening hours"));
    assert!(entry["written_at_ms"].as_u64().unwrap() > 0);
    let ttl: i64 = deadpool_redis::redis::cmd("TTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 86_400,
        "kept for the fresh and the stale period: {ttl}"
    );
}

#[tokio::test]
async fn two_instances_share_answers_through_one_redis() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let a = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;
    let b = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    assert_eq!(a.source_of("Do you deliver on Sundays?").await, "primary");
    assert!(
        eventually(Duration::from_secs(5), || async {
            !redis.keys().await.is_empty()
        })
        .await
    );
    let (_, body) = b.ask("do you deliver on sundays?").await;

    assert_eq!(body["source"], "cache");
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(sim.calls("gpt-4o"), 1);
    assert_eq!(
        b.metric(r#"qa_cache_lookups_total{layer="redis",result="hit"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn stale_answers_are_shared_through_redis_too() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let mut config = test_config(&redis.url(), Some(&sim));
    config.cache.ttl_secs = 1;
    let a = TestApp::spawn(config.clone()).await;
    a.ask("Can I pick up in store?").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            !redis.keys().await.is_empty()
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sim.set_default_behavior(always("503"));
    sim.set_behavior("gpt-4o", always("503"));
    sim.set_behavior("gpt-3.5-turbo", always("503"));

    let b = TestApp::spawn(config).await;
    let (_, body) = b.ask("Can I pick up in store?").await;

    assert_eq!(body["source"], "stale");
    assert_eq!(body["model"], "gpt-4o");
}

#[tokio::test]
async fn canned_answers_and_the_default_reply_are_never_cached() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    sim.set_behavior("gpt-4o", always("500"));
    sim.set_behavior("gpt-3.5-turbo", always("500"));
    let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;

    assert_eq!(app.source_of("如何退货?").await, "canned");
    assert_eq!(
        app.source_of("A question nobody wrote down").await,
        "default"
    );
    sim.set_behavior("gpt-4o", resilient_qa::sim::Behavior::default());

    assert_eq!(app.source_of("如何退货?").await, "primary");
    assert_eq!(
        app.source_of("A question nobody wrote down").await,
        "primary"
    );
    assert_eq!(
        app.metric(r#"qa_cache_lookups_total{layer="memory",result="hit"}"#)
            .await,
        0.0
    );
}

#[tokio::test]
async fn memory_layer_can_be_turned_off_and_redis_still_serves_hits() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let mut config = test_config(&redis.url(), Some(&sim));
    config.cache.memory_max_entries = 0;
    let app = TestApp::spawn(config).await;

    app.ask("Redis only?").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            !redis.keys().await.is_empty()
        })
        .await
    );
    let (_, body) = app.ask("Redis only?").await;

    assert_eq!(body["source"], "cache");
    assert_eq!(
        app.metric(r#"qa_cache_lookups_total{layer="redis",result="hit"}"#)
            .await,
        1.0
    );
    assert_eq!(
        app.metric(r#"qa_cache_lookups_total{layer="memory",result="hit"}"#)
            .await,
        0.0
    );
}
