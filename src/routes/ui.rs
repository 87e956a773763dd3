//! The customer chat: `GET /` (the page), `GET /assets/chat.js` (the `<qa-chat>`
//! element), `GET /widget.js` (the same chat as a floating button and panel, for any
//! site, with one `<script>` tag). The assets are in `assets/`, embedded at build time:
//! nothing is fetched from elsewhere at run time and no Node build step is needed.
//!
//! The page's settings (`ui.title`, `ui.greeting`, `ui.suggestions`, or the built-in
//! ones in Chinese and English, the suggestions defaulting to the first canned
//! questions) are written into the page and the widget as JSON when they are served, so
//! that they change with the config, without a rebuild.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::ApiError;
use crate::state::AppState;

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const CHAT_JS: &str = include_str!("../../assets/chat.js");
const WIDGET_JS: &str = include_str!("../../assets/widget.js");

/// The languages of the chat's own text.
const LANGUAGES: [&str; 2] = ["zh", "en"];

/// Suggested questions offered when `ui.suggestions` is empty: this many first canned
/// questions per language.
const DEFAULT_SUGGESTIONS: usize = 3;

fn builtin_title(lang: &str) -> &'static str {
    match lang {
        "zh" => "在线客服",
        _ => "Customer service",
    }
}

fn builtin_greeting(lang: &str) -> &'static str {
    match lang {
        "zh" => "您好!我是在线客服,请问有什么可以帮您?",
        _ => "Hello! How can we help you today?",
    }
}

/// The chat's settings, as `chat.js` reads them: `{"title": {"zh", "en"}, "greeting":
/// {"zh", "en"}, "suggestions": {"zh": [...], "en": [...]}, "endpoint": ""}`.
#[derive(Serialize)]
struct ChatConfig {
    title: BTreeMap<&'static str, String>,
    greeting: BTreeMap<&'static str, String>,
    suggestions: BTreeMap<&'static str, Vec<String>>,
    /// The service's base URL; `""`: the page's own origin.
    endpoint: &'static str,
}

fn chat_config(state: &AppState) -> ChatConfig {
    let ui = &state.config.ui;
    let per_language = |set: &str, builtin: fn(&str) -> &'static str| {
        LANGUAGES
            .iter()
            .map(|&lang| {
                let text = if set.trim().is_empty() {
                    builtin(lang).to_owned()
                } else {
                    set.to_owned()
                };
                (lang, text)
            })
            .collect()
    };
    let faq = state.pipeline.canned.faq();
    let suggestions = LANGUAGES
        .iter()
        .map(|&lang| {
            let questions = if ui.suggestions.is_empty() {
                faq.entries()
                    .iter()
                    .filter_map(|entry| entry.variants.get(lang))
                    .take(DEFAULT_SUGGESTIONS)
                    .map(|variant| variant.question.to_string())
                    .collect()
            } else {
                ui.suggestions.clone()
            };
            (lang, questions)
        })
        .collect();
    ChatConfig {
        title: per_language(&ui.title, builtin_title),
        greeting: per_language(&ui.greeting, builtin_greeting),
        suggestions,
        endpoint: "",
    }
}

/// JSON that is safe inside an HTML `<script>` element and in JavaScript source: `<`,
/// `>` and `&` escaped, so that no text of the config can close the element, and the
/// line separators that JavaScript (before ES2019) took for line ends.
fn script_safe_json(value: &impl Serialize) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|_| "{}".to_owned())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page's Content-Security-Policy: its own script and the service only; styles
/// inline (the chat's shadow root carries its own), images as data URLs.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'self'";

const JAVASCRIPT: HeaderValue = HeaderValue::from_static("text/javascript; charset=utf-8");

/// Scripts may change with a new release: revalidated after five minutes.
const SCRIPT_CACHE: HeaderValue = HeaderValue::from_static("public, max-age=300");

/// `GET /`: the chat page.
pub async fn page(State(state): State<AppState>) -> Response {
    if !state.config.ui.enabled {
        return disabled(&state);
    }
    let config = chat_config(&state);
    let title = config.title.get("zh").cloned().unwrap_or_default();
    let html = INDEX_HTML
        .replace("{{TITLE}}", &html_escape(&title))
        .replace("{{CONFIG_JSON}}", &script_safe_json(&config));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(PAGE_CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        html,
    )
        .into_response()
}

/// `GET /assets/chat.js`: the `<qa-chat>` element the page uses.
pub async fn chat_js(State(state): State<AppState>) -> Response {
    if !state.config.ui.enabled {
        return disabled(&state);
    }
    script(CHAT_JS.to_owned())
}

/// `GET /widget.js`: the settings, the `<qa-chat>` element and the widget's boot code in
/// one script, for `<script src="https://HOST/widget.js" data-endpoint="https://HOST"
/// async></script>` on any site whose origin is in `server.cors_allowed_origins`.
pub async fn widget_js(State(state): State<AppState>) -> Response {
    if !state.config.ui.enabled {
        return disabled(&state);
    }
    let config = script_safe_json(&chat_config(&state));
    let mut js = String::with_capacity(config.len() + CHAT_JS.len() + WIDGET_JS.len() + 64);
    js.push_str("window.QA_CHAT_CONFIG = window.QA_CHAT_CONFIG || ");
    js.push_str(&config);
    js.push_str(";\n");
    js.push_str(CHAT_JS);
    js.push('\n');
    js.push_str(WIDGET_JS);
    script(js)
}

fn script(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, JAVASCRIPT),
            (header::CACHE_CONTROL, SCRIPT_CACHE),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            // Loaded by pages of other origins: allowed explicitly.
            (
                HeaderName::from_static("cross-origin-resource-policy"),
                HeaderValue::from_static("cross-origin"),
            ),
        ],
        body,
    )
        .into_response()
}

/// With `ui.enabled = false` the chat's routes do not exist.
fn disabled(state: &AppState) -> Response {
    state.reject("not_found");
    ApiError::not_found().into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_json_cannot_close_its_script_element() {
        let json = script_safe_json(&serde_json::json!({"t": "</script><b>&\u{2028}"}));
        assert!(!json.contains('<') && !json.contains('>') && !json.contains('&'));
        assert!(!json.contains('\u{2028}'));
        let back: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back["t"], "</script><b>&\u{2028}");
    }

    #[test]
    fn titles_are_escaped_for_html() {
        assert_eq!(
            html_escape(r#"<a href="x">Q&A</a>'"#),
            "&lt;a href=&quot;x&quot;&gt;Q&amp;A&lt;/a&gt;&#39;"
        );
    }
}
