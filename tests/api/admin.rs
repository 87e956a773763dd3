//! Admin endpoints: absent without ADMIN_TOKEN, 401 on a missing or wrong token, and
//! what they do with the right one.

use std::time::Duration;

use crate::helpers::*;

const TOKEN: &str = "admin-secret";

async fn admin_app(
    token: Option<&str>,
    canned: Option<std::path::PathBuf>,
) -> (Redis, resilient_qa::sim::SimServer, TestApp) {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let mut config = test_config(&redis.url(), Some(&sim));
    config.admin_token = token.map(|t| t.to_string().into());
    if let Some(file) = canned {
        config.canned.file = file;
    }
    let app = TestApp::spawn(config).await;
    (redis, sim, app)
}

async fn delete_cache(
    app: &TestApp,
    token: Option<&str>,
    question: &str,
) -> (u16, serde_json::Value) {
    let mut req = app
        .client
        .delete(app.url("/admin/cache"))
        .json(&serde_json::json!({ "question": question }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn admin_endpoints_do_not_exist_without_a_token() {
    let (_r, _s, app) = admin_app(None, None).await;

    let (status, body) = delete_cache(&app, Some("anything"), "q").await;
    let reload = app
        .client
        .post(app.url("/admin/canned/reload"))
        .send()
        .await
        .unwrap();

    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(reload.status(), 404);
}

#[tokio::test]
async fn missing_or_wrong_token_is_401() {
    let (_r, _s, app) = admin_app(Some(TOKEN), None).await;

    let (missing, body) = delete_cache(&app, None, "q").await;
    let (wrong, _) = delete_cache(&app, Some("admin-secreT"), "q").await;

    assert_eq!(missing, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(wrong, 401);
}

#[tokio::test]
async fn deleting_a_cached_answer_makes_the_next_ask_call_the_model() {
    let (redis, sim, app) = admin_app(Some(TOKEN), None).await;
    app.ask("Where is my invoice?").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            !redis.keys().await.is_empty()
        })
        .await
    );

    let (status, body) = delete_cache(&app, Some(TOKEN), "  where is my INVOICE?").await;
    let (_, again) = delete_cache(&app, Some(TOKEN), "Where is my invoice?").await;

    assert_eq!((status, body), (200, serde_json::json!({"deleted": true})));
    assert_eq!(again, serde_json::json!({"deleted": false}));
    assert!(redis.keys().await.is_empty());
    assert_eq!(app.source_of("Where is my invoice?").await, "primary");
    assert_eq!(sim.calls("gpt-4o"), 2);
}

#[tokio::test]
async fn reload_picks_up_new_answers_and_a_broken_file_keeps_the_old_ones() {
    let dir =
        std::env::temp_dir().join(format!("qa-canned-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("canned.toml");
    std::fs::write(&file, "[[answers]]\nquestion = \"q1?\"\nanswer = \"a1\"\n").unwrap();
    let (_r, sim, app) = admin_app(Some(TOKEN), Some(file.clone())).await;
    sim.set_behavior("gpt-4o", always("500"));
    sim.set_behavior("gpt-3.5-turbo", always("500"));
    let reload = || {
        app.client
            .post(app.url("/admin/canned/reload"))
            .bearer_auth(TOKEN)
            .send()
    };

    std::fs::write(
        &file,
        "[[answers]]\nquestion = \"q1?\"\nanswer = \"a1\"\n[[answers]]\nquestion = \"q2?\"\nanswer = \"a2\"\naliases = [\"second\"]\n",
    )
    .unwrap();
    let ok = reload().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"answers": 2})
    );
    std::fs::write(&file, "[[answers]]\nquestion = ").unwrap();
    let broken = reload().await.unwrap();

    assert_eq!(broken.status(), 422);
    let body: serde_json::Value = broken.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("canned"),
        "{body}"
    );
    let (_, answer) = app.ask("SECOND").await;
    assert_eq!(answer["source"], "canned");
    assert_eq!(answer["answer"], "a2");
}

#[tokio::test]
async fn a_deleted_answer_leaves_the_memory_of_every_instance() {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    let mut config = test_config(&redis.url(), Some(&sim));
    config.admin_token = Some(TOKEN.to_string().into());
    let a = TestApp::spawn(config.clone()).await;
    let b = TestApp::spawn(config).await;
    assert_eq!(a.source_of("Shared answer?").await, "primary");
    assert!(
        eventually(Duration::from_secs(5), || async {
            !redis.keys().await.is_empty()
        })
        .await
    );
    assert_eq!(b.source_of("Shared answer?").await, "cache"); // now in b's memory too
    // Let both instances' invalidation subscriptions come up.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, body) = delete_cache(&a, Some(TOKEN), "shared answer?").await;

    assert_eq!((status, body), (200, serde_json::json!({"deleted": true})));
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.source_of("Shared answer?").await == "primary"
        })
        .await,
        "instance b still serves the deleted answer"
    );
    assert_eq!(sim.calls("gpt-4o"), 2);
}
