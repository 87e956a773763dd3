//! The operations files checked against the service and against each other:
//!
//! - every metric name in a Grafana query or in a Prometheus rule is one the service
//!   exports on `GET /metrics` (or one Prometheus adds, such as `up`, or a recorded series);
//! - every alert has a severity, a summary, a description and a runbook that exists in
//!   `docs/operations.md`, and a promtool case where it fires and one where it stays quiet;
//! - the dashboard uses the provisioned datasource, and its panels neither share ids nor
//!   overlap.
//!
//! No YAML crate: the rule files are read line by line (`record:`, `alert:`, `expr:` with
//! plain, quoted and `|`/`>` block values), which is the whole of the YAML they use.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use resilient_qa::app::App;
use resilient_qa::config::Config;
use serde_json::Value;
use tokio::sync::oneshot;

// ------------------------------------------------------------------ files

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `*.yml` files of a directory of the repository, sorted, as (relative path, text).
fn yaml_files(dir: &str) -> Vec<(String, String)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("listing {dir}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no YAML files in {dir}");
    paths
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(repo()).unwrap_or(p).display().to_string();
            (rel, std::fs::read_to_string(p).unwrap())
        })
        .collect()
}

const RULES_DIR: &str = "config/prometheus/rules";
const RULE_TESTS_DIR: &str = "config/prometheus/tests";
const DASHBOARD: &str = "config/grafana/dashboards/resilient-qa.json";
const DATASOURCE: &str = "config/grafana/provisioning/datasources/prometheus.yml";
const OPERATIONS_DOC: &str = "docs/operations.md";

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

// ------------------------------------------------------------------ the service's names

/// Series Prometheus adds to every scrape, and the series of its alerting rules.
const PROMETHEUS_SERIES: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
    "ALERTS",
    "ALERTS_FOR_STATE",
];

/// Starts the service (port 0, Redis unreachable, models not configured) and returns the
/// text of `GET /metrics`.
async fn scrape_service() -> String {
    let mut config = Config::default();
    config.server.listen_addr = "127.0.0.1:0".into();
    config.server.shutdown_grace_secs = 1;
    config.redis.url = "redis://127.0.0.1:1".into();
    config.validate().unwrap();
    let app = App::build(config).await.unwrap();
    let addr = app.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    // An answer first, so every family has seen traffic (the default reply: no model is
    // configured and the canned answers do not know this question).
    let ask = client
        .post(format!("http://{addr}/ask"))
        .json(&serde_json::json!({"question": "ops test: which metrics exist?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ask.status().as_u16(), 200);
    let resp = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.unwrap();
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    text
}

/// Every series name a Prometheus scraping this exposition can query: the families of the
/// `# TYPE` lines with the series of histograms and summaries, every sample's name, and
/// the series Prometheus adds itself.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = PROMETHEUS_SERIES.iter().map(|s| s.to_string()).collect();
    for line in exposition.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_string());
            let suffixes: &[&str] = match kind {
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["_sum", "_count"],
                _ => &[],
            };
            for suffix in suffixes {
                names.insert(format!("{name}{suffix}"));
            }
        } else if !line.is_empty() && !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

// ------------------------------------------------------------------ PromQL names

/// Words of PromQL that are not metric names when no `(` follows them.
const PROMQL_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "atan2",
    "inf",
    "nan",
    "start",
    "end",
];

/// Keywords followed by a list of label names in parentheses.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn skip_string(chars: &[char], mut i: usize) -> usize {
    let quote = chars[i];
    i += 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Index just past the bracket that closes the one at `i`, skipping strings inside.
fn skip_bracketed(chars: &[char], mut i: usize, open: char, close: char) -> usize {
    let mut depth = 0usize;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names a PromQL expression selects: identifiers not followed by `(`
/// (functions, aggregations), outside label matchers `{…}`, ranges and subqueries `[…]`,
/// strings, grouping lists (`by (…)`, `on (…)`, …), numbers, durations, keywords and
/// Grafana variables (`$job`, `${x}`, `$__rate_interval`).
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_bracketed(&chars, i, '{', '}');
        } else if c == '[' {
            i = skip_bracketed(&chars, i, '[', ']');
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_bracketed(&chars, i, '{', '}');
            } else {
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // 0.99, 1e-9, 0x1f, 5m, 1h30m
            let start = i;
            i += 1;
            while i < chars.len() {
                let d = chars[i];
                let hex = chars[start..i].contains(&'x');
                let exponent_sign =
                    (d == '-' || d == '+') && matches!(chars[i - 1], 'e' | 'E') && !hex;
                if d.is_ascii_alphanumeric() || d == '.' || exponent_sign {
                    i += 1;
                } else {
                    break;
                }
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let lower = word.to_ascii_lowercase();
            let next_word: String = chars[j..]
                .iter()
                .take_while(|c| is_ident_char(**c))
                .collect::<String>()
                .to_ascii_lowercase();
            if next_word == "by" || next_word == "without" {
                // An aggregation with its grouping first: `sum by (le) (…)`.
                i = j;
            } else if chars.get(j) == Some(&'(') {
                if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                    i = skip_bracketed(&chars, j, '(', ')');
                }
                // else a function or an aggregation: its arguments are read next.
            } else if !PROMQL_KEYWORDS.contains(&lower.as_str()) {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The metric selector of a Grafana `label_values(selector, label)` variable query; other
/// variable queries are PromQL.
fn variable_query_expr(query: &str) -> String {
    let q = query.trim();
    if let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        // label_values(label) has no selector; label_values(selector, label) has one.
        return match inner.rfind(',') {
            Some(comma) => inner[..comma].to_string(),
            None => String::new(),
        };
    }
    for prefix in ["label_names(", "metrics("] {
        if q.starts_with(prefix) {
            return String::new();
        }
    }
    q.strip_prefix("query_result(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or(q)
        .to_string()
}

/// `(where, name)` for every name of the expressions that is neither known nor recorded.
fn unknown_names(exprs: &[(String, String)], known: &BTreeSet<String>) -> Vec<String> {
    let mut unknown = Vec::new();
    for (place, expr) in exprs {
        for name in metric_names(expr) {
            if !known.contains(&name) {
                unknown.push(format!("{name}  (in {place}: {expr})"));
            }
        }
    }
    unknown
}

// ------------------------------------------------------------------ the dashboard

/// `(panel title / variable name, expr)` of every query of the dashboard: panel targets
/// (rows and nested panels included) and templating variables.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                let title = map
                    .get("title")
                    .and_then(Value::as_str)
                    .unwrap_or(title)
                    .to_string();
                if let Some(Value::String(expr)) = map.get("expr") {
                    out.push((format!("panel {title:?}"), expr.clone()));
                }
                for (key, child) in map {
                    if key != "templating" {
                        walk(child, &title, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "dashboard", &mut out);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for var in variables {
        if var["type"] != "query" {
            continue;
        }
        let query = match &var["query"] {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("query")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            _ => String::new(),
        };
        out.push((
            format!("variable {}", var["name"]),
            variable_query_expr(&query),
        ));
    }
    out
}

// ------------------------------------------------------------------ the rule files

/// Indentation of a line, in spaces.
fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The value of `key:` on this line (`key: v` or `- key: v`), with its column.
fn key_value<'a>(line: &'a str, key: &str) -> Option<(usize, &'a str)> {
    let trimmed = line.trim_start();
    let col = indent(line);
    let (col, rest) = match trimmed.strip_prefix("- ") {
        Some(r) => (col + 2 + (r.len() - r.trim_start().len()), r.trim_start()),
        None => (col, trimmed),
    };
    let value = rest.strip_prefix(key)?.strip_prefix(':')?;
    if !(value.is_empty() || value.starts_with(' ')) {
        return None;
    }
    Some((col, value.trim()))
}

/// A scalar YAML value from the line of its key on: plain (with continuation lines and a
/// trailing ` #` comment), "double" or 'single' quoted, or a `|` / `>` block.
fn scalar_value(lines: &[&str], at: usize, key_col: usize, value: &str) -> String {
    let more_indented = || {
        lines[at + 1..]
            .iter()
            .take_while(move |l| l.trim().is_empty() || indent(l) > key_col)
            .map(|l| l.trim())
    };
    if value.starts_with('|') || value.starts_with('>') {
        return more_indented()
            .collect::<Vec<_>>()
            .join("\n")
            .trim()
            .to_string();
    }
    if let Some(rest) = value.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => {}
                },
                '"' => break,
                c => out.push(c),
            }
        }
        return out;
    }
    if let Some(rest) = value.strip_prefix('\'') {
        let body = rest.rsplit_once('\'').map_or(rest, |(b, _)| b);
        return body.replace("''", "'");
    }
    let first = value.split(" #").next().unwrap_or("").trim().to_string();
    std::iter::once(first)
        .chain(more_indented().map(str::to_string))
        .collect::<Vec<_>>()
        .join(" ")
        .trim()
        .to_string()
}

/// One rule of a rule file.
#[derive(Debug, Default, Clone)]
struct Rule {
    file: String,
    /// `record` or `alert`.
    kind: &'static str,
    name: String,
    expr: String,
    /// Labels and annotations, by key (`severity`, `summary`, `runbook`, ...).
    fields: BTreeMap<String, String>,
}

/// The key, its column and the value of a `key: value` (or `- key: value`) line.
fn any_key_value(line: &str) -> Option<(&str, usize, &str)> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('#') {
        return None;
    }
    let rest = trimmed.strip_prefix("- ").map_or(trimmed, str::trim_start);
    let key_end = rest.find(':')?;
    let key = &rest[..key_end];
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    key_value(line, key).map(|(col, value)| (key, col, value))
}

/// The rules of the rule files, read line by line.
fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for (file, text) in yaml_files(RULES_DIR) {
        let lines: Vec<&str> = text.lines().collect();
        let mut current: Option<Rule> = None;
        // Column of the key of a `|` / `>` block being skipped: its text is no YAML.
        let mut block_of: Option<usize> = None;
        for (at, line) in lines.iter().enumerate() {
            if let Some(col) = block_of {
                if line.trim().is_empty() || indent(line) > col {
                    continue;
                }
                block_of = None;
            }
            let Some((key, col, value)) = any_key_value(line) else {
                continue;
            };
            if value.starts_with('|') || value.starts_with('>') {
                block_of = Some(col);
            }
            let value = scalar_value(&lines, at, col, value);
            match key {
                "record" | "alert" => {
                    out.extend(current.take());
                    current = Some(Rule {
                        file: file.clone(),
                        kind: if key == "record" { "record" } else { "alert" },
                        name: value,
                        ..Rule::default()
                    });
                }
                // A new group ends the rule before it.
                "name" => out.extend(current.take()),
                "expr" => {
                    if let Some(rule) = current.as_mut() {
                        rule.expr = value;
                    }
                }
                "severity" | "summary" | "description" | "runbook" => {
                    if let Some(rule) = current.as_mut() {
                        rule.fields.insert(key.to_string(), value);
                    }
                }
                _ => {}
            }
        }
        out.extend(current.take());
    }
    out
}

fn rule_exprs(rules: &[Rule]) -> Vec<(String, String)> {
    rules
        .iter()
        .map(|r| (format!("{} {} {}", r.file, r.kind, r.name), r.expr.clone()))
        .collect()
}

fn recorded_names(rules: &[Rule]) -> BTreeSet<String> {
    rules
        .iter()
        .filter(|r| r.kind == "record")
        .map(|r| r.name.clone())
        .collect()
}

/// GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to `-`.
fn anchor_of(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn doc_anchors(markdown: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut anchors = BTreeSet::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            anchors.insert(anchor_of(line.trim_start_matches('#')));
        }
    }
    anchors
}

// ------------------------------------------------------------------ tests: names

#[tokio::test]
async fn every_dashboard_query_names_only_exported_metrics() {
    let rules = rules();
    let mut known = exported_names(&scrape_service().await);
    known.extend(recorded_names(&rules));

    let exprs = dashboard_exprs(&dashboard());
    assert!(
        exprs.len() >= 20,
        "expected the dashboard's queries, found {}: {exprs:?}",
        exprs.len()
    );
    let unknown = unknown_names(&exprs, &known);
    assert!(
        unknown.is_empty(),
        "{DASHBOARD} queries series the service does not export and no rule records:\n  {}",
        unknown.join("\n  ")
    );
}

#[tokio::test]
async fn every_rule_expression_names_only_exported_metrics_or_recorded_series() {
    let rules = rules();
    assert!(
        rules.iter().filter(|r| r.kind == "alert").count() >= 8
            && rules.iter().filter(|r| r.kind == "record").count() >= 6,
        "rule files not read: {rules:?}"
    );
    for rule in &rules {
        assert!(!rule.name.is_empty() && !rule.expr.is_empty(), "{rule:?}");
    }
    let mut known = exported_names(&scrape_service().await);
    known.extend(recorded_names(&rules));

    let unknown = unknown_names(&rule_exprs(&rules), &known);
    assert!(
        unknown.is_empty(),
        "{RULES_DIR} names series the service does not export and no rule records:\n  {}",
        unknown.join("\n  ")
    );
}

#[tokio::test]
async fn a_query_or_rule_naming_an_unknown_metric_is_reported() {
    let rules = rules();
    let mut known = exported_names(&scrape_service().await);
    known.extend(recorded_names(&rules));

    // A bogus query added to the first panel with targets.
    let mut board = dashboard();
    let panels = board["panels"].as_array_mut().unwrap();
    let panel = panels.iter_mut().find(|p| p["targets"].is_array()).unwrap();
    panel["targets"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "refId": "Z",
            "expr": "sum by (source) (rate(qa_answers_totl{job=\"$job\"}[$__rate_interval]))"
        }));
    let unknown = unknown_names(&dashboard_exprs(&board), &known);
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert!(unknown[0].starts_with("qa_answers_totl "), "{unknown:?}");

    // A rule file with a misspelt recorded series.
    let text = "groups:\n  - name: g\n    rules:\n      - alert: Bogus\n        expr: |\n          qa:eror:ratio_rate5m > 0.01\n          and qa_redis_up == 0\n        for: 1m\n";
    let lines: Vec<&str> = text.lines().collect();
    let expr = scalar_value(&lines, 4, 8, "|");
    assert_eq!(expr, "qa:eror:ratio_rate5m > 0.01\nand qa_redis_up == 0");
    let unknown = unknown_names(&[("bogus rule".into(), expr)], &known);
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert!(
        unknown[0].starts_with("qa:eror:ratio_rate5m "),
        "{unknown:?}"
    );
}

#[test]
fn promql_metric_names_skip_functions_labels_groupings_durations_and_strings() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"histogram_quantile(0.99, sum by (le, source) (rate(qa_request_duration_seconds_bucket{job="$job",source!~"default|x"}[$__rate_interval])))"#,
            &["qa_request_duration_seconds_bucket"],
        ),
        (
            r#"sum(rate(a_total[5m] offset 1h)) by (source) / on(job) group_left(version) sum without (instance) (b) > bool 1e-9"#,
            &["a_total", "b"],
        ),
        (
            "count by(version)(g) + topk without (x) (3, h) + max\nby (le) (k)",
            &["g", "h", "k"],
        ),
        (
            "qa:sli_error:ratio_rate1h > (14.4 * 0.001)\nand\nqa:sli_error:ratio_rate5m > (14.4 * 0.001)",
            &["qa:sli_error:ratio_rate1h", "qa:sli_error:ratio_rate5m"],
        ),
        (
            r#"up{job="resilient-qa"} == 0 or absent(up{job="resilient-qa"}) unless c"#,
            &["up", "up", "c"],
        ),
        (
            r#"label_replace(x, "dst", "$1", "src", "(.*) and y") + max_over_time(z[1h:5m]) * Inf - NaN"#,
            &["x", "z"],
        ),
        (r#"d{a="}{[("} # comment naming e"#, &["d"]),
        ("sum(rate(f[${__range}])) / .5 + 0x1F", &["f"]),
    ];
    for (expr, want) in cases {
        assert_eq!(metric_names(expr), *want, "{expr}");
    }
    assert_eq!(
        variable_query_expr(r#"label_values(qa_build_info{job="$job"}, instance)"#),
        r#"qa_build_info{job="$job"}"#
    );
    assert_eq!(variable_query_expr("label_values(job)"), "");
}

#[test]
fn rule_file_values_are_read_in_every_yaml_form_they_use() {
    let text = "\
groups:
  - name: g
    rules:
      - record: 'a:b:c'
        expr: sum(x) # trailing comment
      - record: \"d:e\"
        expr: >-
          sum(y)
          / sum(z)
        labels:
          team: \"it's\"
      - alert: A
        expr: \"w{l=\\\"v\\\"} > 1\"
        labels:
          severity: page
        annotations:
          summary: 'it''s down'
";
    let lines: Vec<&str> = text.lines().collect();
    let find = |key: &str, nth: usize| {
        lines
            .iter()
            .enumerate()
            .filter_map(|(at, l)| key_value(l, key).map(|(col, v)| (at, col, v)))
            .nth(nth)
            .unwrap()
    };
    let value = |key: &str, nth: usize| {
        let (at, col, v) = find(key, nth);
        scalar_value(&lines, at, col, v)
    };
    assert_eq!(value("record", 0), "a:b:c");
    assert_eq!(value("expr", 0), "sum(x)");
    assert_eq!(value("record", 1), "d:e");
    assert_eq!(value("expr", 1), "sum(y)\n/ sum(z)");
    assert_eq!(value("expr", 2), r#"w{l="v"} > 1"#);
    assert_eq!(value("summary", 0), "it's down");
}

#[test]
fn every_recorded_series_named_in_the_operations_doc_is_recorded() {
    let doc = read(OPERATIONS_DOC);
    let recorded = recorded_names(&rules());
    let mut missing = BTreeSet::new();
    for code in doc.split('`').skip(1).step_by(2) {
        for name in metric_names(code) {
            // Recorded series are level:metric:operations; `resilient-qa:8080` is not one.
            let recorded_shape = name.starts_with("qa:") && name.matches(':').count() == 2;
            if recorded_shape && !recorded.contains(&name) {
                missing.insert(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{OPERATIONS_DOC} names recorded series no rule records: {missing:?}"
    );
}

#[tokio::test]
async fn every_metric_named_in_the_operations_doc_is_exported() {
    let known = exported_names(&scrape_service().await);
    let doc = read(OPERATIONS_DOC);
    let mut missing = BTreeSet::new();
    for code in doc.split('`').skip(1).step_by(2) {
        for name in metric_names(code) {
            let family = name.starts_with("qa_") || name.starts_with("process_");
            if family && !known.contains(&name) {
                missing.insert(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{OPERATIONS_DOC} names metrics the service does not export: {missing:?}"
    );
}

// ------------------------------------------------------------------ tests: alerts

#[test]
fn every_alert_has_severity_summary_description_and_a_runbook_section_that_exists() {
    let anchors = doc_anchors(&read(OPERATIONS_DOC));
    let alerts: Vec<Rule> = rules().into_iter().filter(|r| r.kind == "alert").collect();
    assert!(!alerts.is_empty());
    let mut problems = Vec::new();
    for alert in &alerts {
        let field = |k: &str| alert.fields.get(k).map(String::as_str).unwrap_or("");
        if !matches!(field("severity"), "page" | "ticket") {
            problems.push(format!(
                "{}: severity {:?} is not page or ticket",
                alert.name,
                field("severity")
            ));
        }
        for key in ["summary", "description"] {
            if field(key).trim().is_empty() {
                problems.push(format!("{}: no {key} annotation", alert.name));
            }
        }
        match field("runbook").split_once('#') {
            Some((doc, anchor)) if doc == OPERATIONS_DOC && anchors.contains(anchor) => {
                if anchor != alert.name.to_lowercase() {
                    problems.push(format!(
                        "{}: runbook points at #{anchor}, not at the alert's own section",
                        alert.name
                    ));
                }
            }
            _ => problems.push(format!(
                "{}: runbook {:?} is not {OPERATIONS_DOC}#<a heading of it>",
                alert.name,
                field("runbook")
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_promtool_case() {
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for (_, text) in yaml_files(RULE_TESTS_DIR) {
        let mut alertname: Option<String> = None;
        for line in text.lines() {
            if let Some((_, v)) = key_value(line, "alertname") {
                alertname = Some(v.trim_matches(['"', '\'']).to_string());
            } else if let Some((_, v)) = key_value(line, "exp_alerts") {
                if let Some(name) = alertname.take() {
                    if v == "[]" {
                        quiet.insert(name);
                    } else {
                        fires.insert(name);
                    }
                }
            } else if key_value(line, "eval_time").is_some() {
                alertname = None;
            }
        }
    }
    let alerts: BTreeSet<String> = rules()
        .into_iter()
        .filter(|r| r.kind == "alert")
        .map(|r| r.name)
        .collect();
    let never_fires: Vec<_> = alerts.difference(&fires).collect();
    let never_quiet: Vec<_> = alerts.difference(&quiet).collect();
    assert!(
        never_fires.is_empty() && never_quiet.is_empty(),
        "{RULE_TESTS_DIR}: alerts with no case where they fire: {never_fires:?}; \
         with no case where they stay quiet: {never_quiet:?}"
    );
    let unknown: Vec<_> = fires
        .union(&quiet)
        .filter(|a| !alerts.contains(*a))
        .collect();
    assert!(
        unknown.is_empty(),
        "tests of alerts that do not exist: {unknown:?}"
    );
}

// ------------------------------------------------------------------ tests: dashboard

#[test]
fn every_dashboard_datasource_is_the_provisioned_prometheus() {
    let provisioning = read(DATASOURCE);
    let uid = provisioning
        .lines()
        .find_map(|l| key_value(l, "uid").map(|(_, v)| v.trim_matches(['"', '\'']).to_string()))
        .expect("the provisioned datasource has a fixed uid");

    fn walk(v: &Value, uid: &str, seen: &mut usize, bad: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(ds) = map.get("datasource") {
                    let builtin = ds["type"] == "grafana";
                    if !builtin {
                        *seen += 1;
                        if ds["type"] != "prometheus" || ds["uid"] != uid {
                            bad.push(format!("{} in {:?}", ds, map.get("title")));
                        }
                    }
                }
                map.values().for_each(|c| walk(c, uid, seen, bad));
            }
            Value::Array(items) => items.iter().for_each(|c| walk(c, uid, seen, bad)),
            _ => {}
        }
    }
    let board = dashboard();
    let (mut seen, mut bad) = (0, Vec::new());
    walk(&board, &uid, &mut seen, &mut bad);
    assert!(seen > 0, "no datasource references");
    assert!(
        bad.is_empty(),
        "datasources other than {{type: prometheus, uid: {uid}}}:\n{}",
        bad.join("\n")
    );
    assert!(board["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert!(board["uid"].as_str().is_some_and(|u| !u.is_empty()));
}

#[test]
fn dashboard_panels_have_unique_ids_and_do_not_overlap() {
    let board = dashboard();
    let panels = board["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut rects = Vec::new();
    for p in panels {
        let id = p["id"].as_u64().unwrap();
        assert!(ids.insert(id), "panel id {id} used twice");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "panel {:?} is wider than the grid", p["title"]);
        rects.push((p["title"].clone(), x, y, w, h));
    }
    for (i, a) in rects.iter().enumerate() {
        for b in &rects[i + 1..] {
            let overlap = a.1 < b.1 + b.3 && b.1 < a.1 + a.3 && a.2 < b.2 + b.4 && b.2 < a.2 + a.4;
            assert!(!overlap, "panels {} and {} overlap", a.0, b.0);
        }
    }
}

#[test]
fn the_rule_and_dashboard_files_are_where_the_compose_stack_mounts_them() {
    let compose = read("docker-compose.yml");
    for mount in [
        "./config/prometheus:/etc/prometheus",
        "./config/grafana/provisioning:/etc/grafana/provisioning",
        "./config/grafana/dashboards:/var/lib/grafana/dashboards",
    ] {
        assert!(
            compose.contains(mount),
            "docker-compose.yml no longer mounts {mount}"
        );
    }
    let providers = read("config/grafana/provisioning/dashboards/dashboards.yml");
    assert!(providers.contains("path: /var/lib/grafana/dashboards"));
    let prometheus = read("config/prometheus/prometheus.yml");
    assert!(
        prometheus.contains("rules/*.yml"),
        "prometheus.yml must load rules/*.yml"
    );
    assert!(Path::new(&repo().join(DASHBOARD)).is_file());
}
