//! The canned answers as customers meet them ("Matching and languages"): paraphrases
//! match, English questions get English answers and the English default reply, a sure
//! match may answer before the models, and operators reload the file (language tables
//! included) and ask why a question matched.

use std::path::PathBuf;

use resilient_qa::config::Config;
use resilient_qa::sim::SimServer;
use serde_json::{Value, json};

use crate::helpers::*;

const TOKEN: &str = "admin-secret";

/// A file of the test's own, in a fresh directory.
fn canned_file(text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qa-faq-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("canned.toml");
    std::fs::write(&file, text).unwrap();
    file
}

const OLD_FORMAT: &str = r#"
[[answers]]
question = "如何退货?"
answer = "退货答案"
aliases = ["退货流程"]

[[answers]]
question = "如何开发票?"
answer = "发票答案"
"#;

const WITH_ENGLISH: &str = r#"
[[answers]]
question = "如何退货?"
answer = "退货答案"
aliases = ["退货流程"]

[answers.en]
question = "How do I return an item?"
answer = "English return answer"
aliases = ["return an item"]

[[answers]]
question = "如何开发票?"
answer = "发票答案"
"#;

struct Setup {
    _redis: Redis,
    sim: SimServer,
    app: TestApp,
}

/// The service with both models failing (or not, `models_up`), a canned file and the
/// admin token.
async fn setup(models_up: bool, edit: impl FnOnce(&mut Config)) -> Setup {
    let redis = Redis::start();
    let sim = healthy_sim().await;
    if !models_up {
        sim.set_default_behavior(always("500"));
    }
    let mut config = test_config(&redis.url(), Some(&sim));
    config.admin_token = Some(TOKEN.to_string().into());
    edit(&mut config);
    let app = TestApp::spawn(config).await;
    Setup {
        _redis: redis,
        sim,
        app,
    }
}

async fn post_admin(app: &TestApp, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = app.client.post(app.url(path)).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn a_paraphrase_gets_the_canned_answer_with_its_match() {
    let s = setup(false, |_| {}).await;

    let (status, body) = s.app.ask("你好,我想把上周买的那件外套退掉,要怎么弄?").await;

    assert_eq!(status, 200);
    assert_eq!(body["source"], "canned");
    assert_eq!(
        body["answer"],
        "请在订单页面点击退货按钮,填写退货原因即可。"
    );
    assert_eq!(body["degraded"], true);
    assert_eq!(body["match"]["question"], "如何退货?");
    let score = body["match"]["score"].as_f64().unwrap();
    let min_score = Config::default().canned.min_score;
    assert!((min_score..1.0).contains(&score), "{body}");
}

#[tokio::test]
async fn the_question_itself_scores_one_without_its_punctuation() {
    let s = setup(false, |_| {}).await;

    let (_, body) = s.app.ask("如何退货").await;

    assert_eq!(body["source"], "canned");
    assert_eq!(body["match"]["score"], 1.0);
}

#[tokio::test]
async fn a_question_asking_something_else_gets_the_default_reply_without_match() {
    let s = setup(false, |_| {}).await;

    let (_, body) = s.app.ask("退货的运费谁出?").await;

    assert_eq!(body["source"], "default");
    assert!(body.get("match").is_none(), "{body}");
}

#[tokio::test]
async fn an_english_question_gets_the_english_answer() {
    let s = setup(false, |_| {}).await;

    let (_, body) = s
        .app
        .ask("I'd like to cancel the order I placed this morning")
        .await;

    assert_eq!(body["source"], "canned");
    assert_eq!(body["match"]["question"], "How do I cancel an order?");
    assert!(
        body["answer"]
            .as_str()
            .unwrap()
            .starts_with("An order that has not shipped"),
        "{body}"
    );
}

#[tokio::test]
async fn an_english_question_gets_the_english_default_reply() {
    let s = setup(false, |_| {}).await;
    let english = Config::default().default_reply["en"].clone();

    let (_, body) = s.app.ask("What's the weather like on Mars?").await;

    assert_eq!(body["source"], "default");
    assert_eq!(body["answer"], english.as_str());
}

#[tokio::test]
async fn an_entry_without_the_language_answers_in_the_default_language() {
    let file = canned_file(WITH_ENGLISH);
    let s = setup(false, |c| c.canned.file = file).await;

    let (_, body) = s.app.ask("How do I get an invoice?").await;

    assert_eq!(body["source"], "canned");
    assert_eq!(body["answer"], "发票答案");
    assert_eq!(body["match"]["question"], "如何开发票?");
}

#[tokio::test]
async fn the_models_are_told_to_answer_in_the_questions_language() {
    let s = setup(true, |_| {}).await;

    s.app.ask("Where is my parcel?").await;
    let english = s.sim.snapshot().models["gpt-4o"]
        .last_request
        .clone()
        .unwrap();
    s.app.ask("我的包裹在哪里?").await;
    let chinese = s.sim.snapshot().models["gpt-4o"]
        .last_request
        .clone()
        .unwrap();

    let english = english.body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let chinese = chinese.body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        english.ends_with("Answer in English, the language of the question."),
        "{english}"
    );
    assert_eq!(
        chinese,
        "你是一个专业的客服助手。请回答用户的问题。\n\n问题:我的包裹在哪里?\n\n回答:"
    );
}

#[tokio::test]
async fn answer_first_answers_a_sure_match_before_the_models() {
    let s = setup(true, |c| c.canned.answer_first_score = Some(0.9)).await;

    let (_, body) = s.app.ask("如何退货?").await;

    assert_eq!(body["source"], "canned");
    assert_eq!(body["degraded"], false);
    assert_eq!(body["match"]["score"], 1.0);
    assert_eq!(s.sim.calls("gpt-4o"), 0);
}

#[tokio::test]
async fn answer_first_leaves_a_less_sure_match_to_the_models() {
    let s = setup(true, |c| c.canned.answer_first_score = Some(0.995)).await;

    let (_, body) = s.app.ask("退货要怎么操作啊").await;

    assert_eq!(body["source"], "primary");
    assert_eq!(s.sim.calls("gpt-4o"), 1);
}

#[tokio::test]
async fn without_answer_first_the_models_answer_a_canned_question() {
    let s = setup(true, |_| {}).await;

    let (_, body) = s.app.ask("如何退货?").await;

    assert_eq!(body["source"], "primary");
    assert!(body.get("match").is_none(), "{body}");
}

#[tokio::test]
async fn a_file_in_the_old_format_loads_and_matches_as_before() {
    let file = canned_file(OLD_FORMAT);
    let s = setup(false, |c| c.canned.file = file).await;

    let (_, question) = s.app.ask("如何退货？").await;
    let (_, alias) = s.app.ask("退货流程").await;

    assert_eq!(question["answer"], "退货答案");
    assert_eq!(alias["answer"], "退货答案");
    assert_eq!(
        alias["match"],
        json!({"question": "如何退货?", "score": 1.0})
    );
}

#[tokio::test]
async fn reload_accepts_language_tables() {
    let file = canned_file(OLD_FORMAT);
    let s = setup(false, |c| c.canned.file = file.clone()).await;
    let (_, before) = s.app.ask("how do i return an item").await;
    std::fs::write(&file, WITH_ENGLISH).unwrap();

    let (status, body) = post_admin(&s.app, "/admin/canned/reload", Some(TOKEN), json!({})).await;
    let (_, after) = s.app.ask("how do i return an item").await;

    assert_eq!((status, body), (200, json!({"answers": 2})));
    assert_eq!(before["answer"], "退货答案");
    assert_eq!(after["answer"], "English return answer");
    assert_eq!(after["match"]["question"], "How do I return an item?");
}

/// Reloads `text` over a valid file; returns the status and the error message, and
/// checks the old answers stayed.
async fn reload_refused(text: &str) -> (u16, String) {
    let file = canned_file(OLD_FORMAT);
    let s = setup(false, |c| c.canned.file = file.clone()).await;
    std::fs::write(&file, text).unwrap();
    let (status, body) = post_admin(&s.app, "/admin/canned/reload", Some(TOKEN), json!({})).await;
    let (_, still) = s.app.ask("退货流程").await;
    assert_eq!(
        still["answer"], "退货答案",
        "old answers must stay in place"
    );
    (
        status,
        body["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test]
async fn reload_refuses_an_alias_in_two_entries_naming_both() {
    let (status, message) = reload_refused(
        "[[answers]]\nquestion = \"如何退货?\"\nanswer = \"a\"\naliases = [\"退货\"]\n\
         [[answers]]\nquestion = \"如何换货?\"\nanswer = \"b\"\naliases = [\"退货!\"]\n",
    )
    .await;

    assert_eq!(status, 422);
    assert!(message.contains("entry 2 (\"如何换货?\")"), "{message}");
    assert!(message.contains("entry 1 (\"如何退货?\")"), "{message}");
}

#[tokio::test]
async fn reload_refuses_an_empty_answer_naming_the_entry() {
    let (status, message) = reload_refused(
        "[[answers]]\nquestion = \"q1?\"\nanswer = \"a\"\n[[answers]]\nquestion = \"q2?\"\nanswer = \"  \"\n",
    )
    .await;

    assert_eq!(status, 422);
    assert!(message.contains("entry 2 (\"q2?\")"), "{message}");
    assert!(message.contains("answer"), "{message}");
}

#[tokio::test]
async fn reload_refuses_an_unknown_language_code() {
    let (status, message) = reload_refused(
        "[[answers]]\nquestion = \"q1?\"\nanswer = \"a\"\n[answers.english]\nquestion = \"q\"\nanswer = \"a\"\n",
    )
    .await;

    assert_eq!(status, 422);
    assert!(message.contains("entry 1"), "{message}");
    assert!(message.contains("`english`"), "{message}");
}

#[tokio::test]
async fn reload_refuses_a_file_with_no_entries() {
    let (status, message) = reload_refused("# nothing here\n").await;

    assert_eq!(status, 422);
    assert!(message.contains("allow_empty"), "{message}");
}

#[tokio::test]
async fn reload_accepts_no_entries_when_the_file_says_so() {
    let file = canned_file(OLD_FORMAT);
    let s = setup(false, |c| c.canned.file = file.clone()).await;
    std::fs::write(&file, "allow_empty = true\n").unwrap();

    let (status, body) = post_admin(&s.app, "/admin/canned/reload", Some(TOKEN), json!({})).await;
    let (_, answer) = s.app.ask("退货流程").await;

    assert_eq!((status, body), (200, json!({"answers": 0})));
    assert_eq!(answer["source"], "default");
}

#[tokio::test]
async fn explain_shows_the_top_entries_with_their_scores() {
    let s = setup(true, |_| {}).await;

    let (status, body) = post_admin(
        &s.app,
        "/admin/canned/explain",
        Some(TOKEN),
        json!({"question": "退款几天能到账啊"}),
    )
    .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["language"], "zh");
    assert_eq!(body["matched"]["question"], "退款多久到账?");
    let top = body["top"].as_array().unwrap();
    assert!(top.len() >= 2, "{body}");
    assert_eq!(top[0]["question"], "退款多久到账?");
    let scores: Vec<f64> = top.iter().map(|t| t["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)), "{scores:?}");
    assert_eq!(s.sim.calls("gpt-4o"), 0);
}

#[tokio::test]
async fn explain_shows_a_question_under_the_threshold_as_unmatched() {
    let s = setup(true, |_| {}).await;

    let (status, body) = post_admin(
        &s.app,
        "/admin/canned/explain",
        Some(TOKEN),
        json!({"question": "Do you ship abroad?"}),
    )
    .await;

    assert_eq!(status, 200);
    assert_eq!(body["language"], "en");
    assert_eq!(body["matched"], Value::Null);
    let below = body["top"][0]["score"].as_f64().unwrap();
    assert!(below < body["min_score"].as_f64().unwrap(), "{body}");
}

#[tokio::test]
async fn explain_is_behind_the_admin_token() {
    let s = setup(true, |_| {}).await;
    let none = setup(true, |c| c.admin_token = None).await;
    let q = json!({"question": "如何退货?"});

    let (missing, body) = post_admin(&s.app, "/admin/canned/explain", None, q.clone()).await;
    let (wrong, _) = post_admin(&s.app, "/admin/canned/explain", Some("nope"), q.clone()).await;
    let (absent, _) = post_admin(&none.app, "/admin/canned/explain", Some(TOKEN), q).await;

    assert_eq!(missing, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(wrong, 401);
    assert_eq!(absent, 404);
}

#[tokio::test]
async fn canned_lookups_are_counted_by_result_with_their_scores() {
    let s = setup(false, |_| {}).await;

    s.app.ask("咋退货啊").await;
    s.app.ask("退货的运费谁出?").await;
    s.app.ask("asdfgh").await;
    let text = s.app.metrics().await;

    assert_eq!(
        metric_value(&text, "qa_canned_matches_total{result=\"matched\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&text, "qa_canned_matches_total{result=\"below_threshold\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&text, "qa_canned_matches_total{result=\"none\"}"),
        1.0
    );
    assert_eq!(metric_value(&text, "qa_canned_match_score_count"), 2.0);
}

/// Runs the `faq-eval` binary on the fixture of labelled questions with `floors`.
fn faq_eval(floors: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_faq-eval"))
        .arg("tests/fixtures/faq-questions-extra.json")
        .args(floors)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn faq_eval_reports_figures_per_language_and_kind_and_passes_floors_it_meets() {
    let (code, out) = faq_eval(&["--min-accuracy", "0.9", "--max-off", "0.01"]);

    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("  zh: ") && out.contains("  en: "), "{out}");
    assert!(out.contains("negative-near   zh"), "{out}");
    assert!(out.contains("misses ("), "{out}");
}

#[test]
fn faq_eval_fails_below_a_floor() {
    let (code, out) = faq_eval(&["--max-near", "0.0"]);

    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL: near-miss false matches"), "{out}");
}
