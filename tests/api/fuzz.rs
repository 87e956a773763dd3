//! Property tests: no input makes the service panic or answer 5xx, and the normalizer
//! keeps its promises for any string.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use resilient_qa::pipeline::normalize::normalize;

use crate::helpers::*;

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn normalized_questions_have_single_spaces_and_no_edges() {
    runner(2000)
        .run(&any::<String>(), |s| {
            let n = normalize(&s);
            prop_assert!(!n.starts_with(char::is_whitespace));
            prop_assert!(!n.ends_with(char::is_whitespace));
            prop_assert!(!n.contains("  "));
            Ok(())
        })
        .unwrap();
}

#[test]
fn white_space_and_case_variants_normalize_alike() {
    let words = proptest::collection::vec("[a-zA-Z0-9?]{1,8}", 1..6);
    runner(500)
        .run(&(words, 1usize..4), |(words, gap)| {
            let plain = words.join(" ");
            let spaced = format!("  {}\t", words.join(&" ".repeat(gap)));
            prop_assert_eq!(normalize(&plain), normalize(&spaced.to_uppercase()));
            Ok(())
        })
        .unwrap();
}

fn post_status(
    rt: &tokio::runtime::Runtime,
    app: &TestApp,
    content_type: &str,
    body: Vec<u8>,
) -> u16 {
    rt.block_on(async {
        app.client
            .post(app.url("/ask"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

/// A service with healthy models, driven from a plain (non-async) proptest runner.
fn serving(rt: &tokio::runtime::Runtime, redis: &Redis) -> (resilient_qa::sim::SimServer, TestApp) {
    rt.block_on(async {
        let sim = healthy_sim().await;
        let app = TestApp::spawn(test_config(&redis.url(), Some(&sim))).await;
        (sim, app)
    })
}

#[test]
fn arbitrary_bodies_never_get_a_5xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = Redis::start();
    let (_sim, app) = serving(&rt, &redis);

    runner(300)
        .run(&proptest::collection::vec(any::<u8>(), 0..600), |body| {
            let status = post_status(&rt, &app, "application/json", body);
            prop_assert!(matches!(status, 200 | 400 | 422), "status {}", status);
            Ok(())
        })
        .unwrap();
    let (status, _) = rt.block_on(app.ask("still answering?"));
    assert_eq!(status, 200);
}

#[test]
fn arbitrary_questions_get_an_answer_or_a_422() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = Redis::start();
    let (_sim, app) = serving(&rt, &redis);

    runner(300)
        .run(&any::<String>(), |question| {
            let body = serde_json::to_vec(&serde_json::json!({ "question": question })).unwrap();
            let status = post_status(&rt, &app, "application/json; charset=utf-8", body);
            let expected = if question.trim().is_empty() { 422 } else { 200 };
            prop_assert_eq!(status, expected);
            Ok(())
        })
        .unwrap();
}
