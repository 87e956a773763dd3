//! Configuration vocabulary of the simulator: what a call may turn into
//! ([`Outcome`]), how a model behaves ([`Behavior`]) and the whole start-up
//! configuration ([`SimConfig`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use axum::http::HeaderValue;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What one chat-completion call turns into.
///
/// On the wire (JSON, TOML, CLI) an outcome is a string: `"ok"`, `"hang"`,
/// `"reset"`, `"malformed"`, `"empty"`, `"null_content"`, `"no_choices"`,
/// `"huge"`, `"redirect"`, `"content_parts"`, `"cut"`, `"stall_first"`,
/// `"stall"`, `"stream_error"`, or an HTTP status code in `400..=599` such
/// as `"429"` or `"503"`.
///
/// Every outcome applies to streamed requests (`"stream": true`) too; the
/// last four are faults of a stream, with a fixed meaning for one-shot
/// requests (see each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// 200 with a well-formed completion.
    Ok,
    /// That HTTP status with an OpenAI-style error body.
    Status(u16),
    /// Never answers; only the client's timeout ends the call.
    Hang,
    /// The TCP connection is reset (RST) without any HTTP response.
    Reset,
    /// 200 `application/json` whose body is not valid JSON.
    Malformed,
    /// A well-formed completion whose content is `""`.
    Empty,
    /// A completion whose content is `null`.
    NullContent,
    /// A completion with `"choices": []`.
    NoChoices,
    /// 200 with a valid completion whose content is
    /// [`Behavior::huge_body_bytes`] bytes long, sent as a chunked body
    /// without a `Content-Length`, generated piece by piece.
    Huge,
    /// `307 Temporary Redirect` whose `Location` is
    /// [`Behavior::redirect_location`], by default the simulator's own
    /// `/redirected/v1/chat/completions`, which answers a valid completion
    /// saying it came from the redirect target.
    Redirect,
    /// 200 with a completion whose content is an array of text parts
    /// (`[{"type":"text","text":"..."}, ...]`, as vLLM and Mistral send);
    /// the parts joined are the `ok` answer. A streamed request gets the
    /// `ok` stream (deltas are strings).
    ContentParts,
    /// A stream that stops after [`Behavior::stream_cut_after`] pieces: the
    /// connection is closed in the middle of the chunked body (no final
    /// chunk, no `[DONE]`, no terminating zero-length chunk). A one-shot
    /// request gets a TCP reset, as [`Outcome::Reset`].
    Cut,
    /// A stream whose headers (200, `text/event-stream`) are sent but whose
    /// first event never comes; only the client's timeout ends it. A
    /// one-shot request hangs, as [`Outcome::Hang`].
    StallFirst,
    /// A stream that stops after [`Behavior::stream_cut_after`] pieces and
    /// keeps the connection open, sending nothing more. A one-shot request
    /// hangs, as [`Outcome::Hang`].
    Stall,
    /// A stream that, after [`Behavior::stream_cut_after`] pieces, sends an
    /// error event as OpenAI does inside a stream (`data:
    /// {"error":{"message":...,"type":"server_error","code":null}}`) and
    /// ends, without `[DONE]`. A one-shot request gets a `500` with the same
    /// error object.
    StreamError,
}

/// Content length of a [`Outcome::Huge`] answer when the behaviour does not
/// set [`Behavior::huge_body_bytes`]: 50 MiB.
pub const DEFAULT_HUGE_BODY_BYTES: u64 = 50 * 1024 * 1024;

/// Characters per streamed piece when the behaviour does not set
/// [`Behavior::stream_piece_chars`].
pub const DEFAULT_STREAM_PIECE_CHARS: usize = 4;

/// Milliseconds between two streamed pieces when the behaviour does not set
/// [`Behavior::stream_interval_ms`].
pub const DEFAULT_STREAM_INTERVAL_MS: u64 = 10;

/// Pieces sent before a `cut`, `stall` or `stream_error` when the behaviour
/// does not set [`Behavior::stream_cut_after`].
pub const DEFAULT_STREAM_CUT_AFTER: usize = 3;

/// Status codes an [`Outcome::Status`] may carry: only errors make sense,
/// since success is [`Outcome::Ok`].
pub const STATUS_RANGE: std::ops::RangeInclusive<u16> = 400..=599;

impl Outcome {
    fn check(self) -> Result<(), String> {
        match self {
            Outcome::Status(code) if !STATUS_RANGE.contains(&code) => Err(format!(
                "outcome status {code} is outside {}..={}",
                STATUS_RANGE.start(),
                STATUS_RANGE.end()
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Status(code) => write!(f, "{code}"),
            Outcome::Hang => f.write_str("hang"),
            Outcome::Reset => f.write_str("reset"),
            Outcome::Malformed => f.write_str("malformed"),
            Outcome::Empty => f.write_str("empty"),
            Outcome::NullContent => f.write_str("null_content"),
            Outcome::NoChoices => f.write_str("no_choices"),
            Outcome::Huge => f.write_str("huge"),
            Outcome::Redirect => f.write_str("redirect"),
            Outcome::ContentParts => f.write_str("content_parts"),
            Outcome::Cut => f.write_str("cut"),
            Outcome::StallFirst => f.write_str("stall_first"),
            Outcome::Stall => f.write_str("stall"),
            Outcome::StreamError => f.write_str("stream_error"),
        }
    }
}

/// Why a string is not an [`Outcome`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseOutcomeError(String);

impl fmt::Display for ParseOutcomeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown outcome {:?}: expected one of ok, hang, reset, malformed, empty, \
             null_content, no_choices, huge, redirect, content_parts, cut, stall_first, \
             stall, stream_error, or an HTTP status code 400..=599 such as \"503\"",
            self.0
        )
    }
}

impl std::error::Error for ParseOutcomeError {}

impl FromStr for Outcome {
    type Err = ParseOutcomeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let outcome = match s.trim() {
            "ok" => Outcome::Ok,
            "hang" => Outcome::Hang,
            "reset" => Outcome::Reset,
            "malformed" => Outcome::Malformed,
            "empty" => Outcome::Empty,
            "null_content" => Outcome::NullContent,
            "no_choices" => Outcome::NoChoices,
            "huge" => Outcome::Huge,
            "redirect" => Outcome::Redirect,
            "content_parts" => Outcome::ContentParts,
            "cut" => Outcome::Cut,
            "stall_first" => Outcome::StallFirst,
            "stall" => Outcome::Stall,
            "stream_error" => Outcome::StreamError,
            other => match other.parse::<u16>() {
                Ok(code) if STATUS_RANGE.contains(&code) => Outcome::Status(code),
                _ => return Err(ParseOutcomeError(s.to_owned())),
            },
        };
        Ok(outcome)
    }
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Always a string, so outcomes can be map keys in JSON and TOML.
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OutcomeVisitor;

        impl Visitor<'_> for OutcomeVisitor {
            type Value = Outcome;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an outcome: \"ok\", \"hang\", \"reset\", \"malformed\", \"empty\", \
                     \"null_content\", \"no_choices\", \"huge\", \"redirect\", \
                     \"content_parts\", \"cut\", \"stall_first\", \"stall\", \
                     \"stream_error\" or a status code 400..=599",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Outcome, E> {
                v.parse().map_err(E::custom)
            }

            // A bare number (`script = [503, "ok"]` in TOML) is accepted as a
            // status code because that is what an operator means by it.
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Outcome, E> {
                self.visit_str(&v.to_string())
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Outcome, E> {
                self.visit_str(&v.to_string())
            }
        }

        deserializer.deserialize_any(OutcomeVisitor)
    }
}

/// How a model answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behavior {
    /// Fixed delay before answering (also before an error, reset or hang).
    pub latency_ms: u64,
    /// Extra delay drawn uniformly from `0..=jitter_ms`.
    pub jitter_ms: u64,
    /// Probability of each failure outcome per call; the remainder is `ok`.
    pub mix: BTreeMap<Outcome, f64>,
    /// When set, 429 and 503 responses carry `Retry-After: N`.
    pub retry_after_secs: Option<u64>,
    /// When set, 429 and 503 responses carry `Retry-After` with exactly this
    /// value, unchecked beyond being a valid header value: any number of
    /// seconds (`18446744073709551615`), a signed one (`+3`), an HTTP date,
    /// garbage. Wins over `retry_after_secs` when both are set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    /// When set, 429 and 503 responses carry `retry-after-ms: N`
    /// (milliseconds, as OpenAI and Azure send it), beside any `Retry-After`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Content length in bytes of a `huge` answer; unset means
    /// [`DEFAULT_HUGE_BODY_BYTES`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub huge_body_bytes: Option<u64>,
    /// `Location` of a `redirect` answer; unset means the simulator's own
    /// `/redirected/v1/chat/completions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_location: Option<String>,
    /// Characters (not bytes: Chinese text splits between characters) per
    /// content piece of a streamed answer; unset means
    /// [`DEFAULT_STREAM_PIECE_CHARS`]. At least 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_piece_chars: Option<usize>,
    /// Delay between two content pieces of a streamed answer, in
    /// milliseconds; unset means [`DEFAULT_STREAM_INTERVAL_MS`].
    /// (`latency_ms` and `jitter_ms` delay the headers and first piece.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_interval_ms: Option<u64>,
    /// Content pieces sent before a `cut`, `stall` or `stream_error` (all
    /// of them, if the answer has fewer); unset means
    /// [`DEFAULT_STREAM_CUT_AFTER`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_cut_after: Option<usize>,
    /// Consumed first, one outcome per call, in order, before the mix applies.
    pub script: Vec<Outcome>,
}

impl Behavior {
    /// A behaviour that always answers with `outcome`, with no delay.
    pub fn always(outcome: Outcome) -> Behavior {
        Behavior {
            mix: BTreeMap::from([(outcome, 1.0)]),
            ..Behavior::default()
        }
    }

    /// A behaviour that plays `script` and then answers `ok`.
    pub fn scripted(script: impl IntoIterator<Item = Outcome>) -> Behavior {
        Behavior {
            script: script.into_iter().collect(),
            ..Behavior::default()
        }
    }

    /// Checks that the mix is a probability distribution (each share in
    /// `0..=1`, total at most 1), that status outcomes are in `400..=599`,
    /// that `retry_after` and `redirect_location` can be sent as header
    /// values, and that `stream_piece_chars` is at least 1.
    pub fn validate(&self) -> Result<(), String> {
        let mut total = 0.0;
        for (outcome, &p) in &self.mix {
            outcome.check().map_err(|e| format!("mix: {e}"))?;
            if !p.is_finite() || !(0.0..=1.0).contains(&p) {
                return Err(format!(
                    "mix: probability of \"{outcome}\" is {p}, expected a number in 0..=1"
                ));
            }
            total += p;
        }
        // A little slack so that e.g. 0.7 + 0.2 + 0.1 is not rejected for rounding.
        if total > 1.0 + 1e-9 {
            return Err(format!(
                "mix: probabilities sum to {total}, expected at most 1 (the remainder is ok)"
            ));
        }
        for (i, outcome) in self.script.iter().enumerate() {
            outcome.check().map_err(|e| format!("script[{i}]: {e}"))?;
        }
        if self.stream_piece_chars == Some(0) {
            return Err("stream_piece_chars: 0, expected at least 1".to_owned());
        }
        for (field, value) in [
            ("retry_after", &self.retry_after),
            ("redirect_location", &self.redirect_location),
        ] {
            if let Some(value) = value
                && HeaderValue::from_str(value).is_err()
            {
                return Err(format!(
                    "{field}: {value:?} cannot be sent as an HTTP header value \
                     (it contains a control character)"
                ));
            }
        }
        Ok(())
    }
}

/// Start-up configuration of a simulator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Behaviour of any model not listed in `models`.
    pub default: Behavior,
    /// Per-model behaviour, keyed by the `model` field of the request. It
    /// replaces the default wholesale (no field is inherited), so a model's
    /// behaviour reads the same in the config as in `GET /control`.
    pub models: BTreeMap<String, Behavior>,
    /// Seed of the per-model random generators (mix and jitter draws).
    pub seed: u64,
    /// How `ok` answers read.
    pub answers: AnswerStyle,
}

/// How the simulator's `ok` answers read. Either way an answer names the model that
/// wrote it and says it is simulated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerStyle {
    /// `[MODEL] simulated answer to: LAST USER MESSAGE`: what a test checks against.
    #[default]
    Echo,
    /// A sentence or two in the question's language (Chinese when it has Chinese
    /// characters, else English) that reads like a customer-service answer: what the
    /// demo shows a person. The question is the last user message, as sent.
    Demo,
}

impl AnswerStyle {
    /// The whole `ok` answer of `model` to `question`.
    pub fn answer(self, model: &str, question: &str) -> String {
        match self {
            AnswerStyle::Echo => format!("[{model}] simulated answer to: {question}"),
            AnswerStyle::Demo if question.chars().any(is_cjk) => format!(
                "【{model} · 模拟回答】您好!关于“{question}”:这是演示模式下由模拟模型写的回答。\
                 接入真实模型后,这里会是针对您问题的具体解答;如需进一步帮助,请联系人工客服。"
            ),
            AnswerStyle::Demo => format!(
                "[{model} · simulated] Thanks for asking: \"{question}\". This answer comes from \
                 the demo's simulated model; with a real model connected, the answer to your \
                 question would appear here. For anything urgent, please contact a human agent."
            ),
        }
    }
}

/// A CJK ideograph (the Unified Ideographs and their first extension).
fn is_cjk(c: char) -> bool {
    matches!(c, '\u{4E00}'..='\u{9FFF}' | '\u{3400}'..='\u{4DBF}')
}

impl SimConfig {
    /// Parses a TOML configuration, e.g.
    ///
    /// ```toml
    /// seed = 7
    /// [default]
    /// latency_ms = 50
    /// [models."gpt-4o"]
    /// mix = { "503" = 0.5 }
    /// ```
    pub fn from_toml_str(text: &str) -> Result<SimConfig, String> {
        let config: SimConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Validates every behaviour; the error names the one at fault.
    pub fn validate(&self) -> Result<(), String> {
        self.default
            .validate()
            .map_err(|e| format!("default behaviour: {e}"))?;
        for (model, behavior) in &self.models {
            behavior
                .validate()
                .map_err(|e| format!("model {model:?}: {e}"))?;
        }
        Ok(())
    }
}

/// Parses a mix spec such as `503=0.5,hang=0.1` (the CLI's `--mix`).
pub fn parse_mix(spec: &str) -> Result<BTreeMap<Outcome, f64>, String> {
    let mut mix = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, share) = part
            .split_once('=')
            .ok_or_else(|| format!("mix entry {part:?} is not OUTCOME=PROBABILITY"))?;
        let outcome: Outcome = name.parse().map_err(|e: ParseOutcomeError| e.to_string())?;
        let share: f64 = share
            .trim()
            .parse()
            .map_err(|_| format!("mix entry {part:?}: {share:?} is not a number"))?;
        if mix.insert(outcome, share).is_some() {
            return Err(format!("mix names {outcome} twice"));
        }
    }
    let behavior = Behavior {
        mix,
        ..Behavior::default()
    };
    behavior.validate()?;
    Ok(behavior.mix)
}

#[cfg(test)]
mod answer_style_tests {
    use super::AnswerStyle;

    #[test]
    fn echo_answers_quote_the_question_after_the_model() {
        assert_eq!(
            AnswerStyle::Echo.answer("gpt-4o", "Where is my order?"),
            "[gpt-4o] simulated answer to: Where is my order?"
        );
    }

    #[test]
    fn demo_answers_are_in_the_questions_language_and_marked_simulated() {
        let en = AnswerStyle::Demo.answer("gpt-4o", "Where is my order?");
        assert!(en.starts_with("[gpt-4o · simulated]"), "{en}");
        assert!(en.contains("\"Where is my order?\""), "{en}");
        assert!(
            !en.chars().any(|c| ('\u{4E00}'..='\u{9FFF}').contains(&c)),
            "{en}"
        );
        let zh = AnswerStyle::Demo.answer("gpt-3.5-turbo", "我的包裹在哪里?");
        assert!(zh.starts_with("【gpt-3.5-turbo · 模拟回答】"), "{zh}");
        assert!(zh.contains("“我的包裹在哪里?”"), "{zh}");
    }
}
