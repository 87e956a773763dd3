//! Configuration: typed settings, their layering and their validation.
//!
//! Layers, later wins: built-in defaults, the TOML file (`config/default.toml`, or the one
//! named by `--config` / `QA_CONFIG`), then the environment (the caller merges `.env` under
//! the real environment). Every key can be set as `QA__SECTION__KEY`; a few plain
//! variables (`LISTEN_ADDR`, `OPENAI_BASE_URL`, `REDIS_URL`, ...) map onto keys too. The
//! layers are merged as TOML values and deserialized once, with unknown keys refused, so a
//! typo stops start-up with the key's name. `validate()` then refuses impossible values.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;

use crate::faq::lang::iso_639_1;
use serde::{Deserialize, Serialize};

/// Where the configuration file is looked for when none is named.
pub const DEFAULT_CONFIG_FILE: &str = "config/default.toml";
/// The official endpoint: with no API key, a tier pointing here is not configured.
pub const OPENAI_OFFICIAL_BASE_URL: &str = "https://api.openai.com/v1";
/// Default of `primary.max_response_bytes` and `secondary.max_response_bytes`: 1 MiB,
/// some fifty times the longest completion a chat model writes for one answer.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Default of `primary.continue_prompt` and `secondary.continue_prompt`, in the language
/// of the default prompts: "go on from where the answer above stopped; do not repeat
/// what is already written".
pub const DEFAULT_CONTINUE_PROMPT: &str =
    "请从上面回答中断的地方接着写下去,不要重复已经写过的内容。";

/// Upper bounds of the configured numbers: far past any sensible setting, low enough that
/// no sum or product of them made by the service can overflow (an instant plus a timeout,
/// a TTL in milliseconds, a semaphore's permits).
mod bound {
    /// One hour, for timeouts and waits in milliseconds.
    pub const MS: u64 = 3_600_000;
    /// One day, for windows in seconds.
    pub const DAY_SECS: u64 = 86_400;
    /// Ten years, for cache lifetimes in seconds.
    pub const TTL_SECS: u64 = 315_360_000;
    /// For counts (attempts, entries, permits, characters).
    pub const COUNT: u64 = 1_000_000;
    /// 64 MiB, for sizes in bytes.
    pub const BYTES: u64 = 64 << 20;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub openai: OpenAiConfig,
    pub primary: TierConfig,
    pub secondary: TierConfig,
    pub cache: CacheConfig,
    pub redis: RedisConfig,
    pub canned: CannedConfig,
    pub limits: LimitsConfig,
    pub clients: ClientsConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub breaker: BreakerConfig,
    pub retry_budget: RetryBudgetConfig,
    pub openai_api: OpenAiApiConfig,
    pub ui: UiConfig,
    /// The reply when no tier has an answer, by ISO 639-1 language code; the question's
    /// language is used when present, else `canned.default_language`.
    pub default_reply: BTreeMap<String, String>,
    /// Bearer token for both model tiers, from `OPENAI_API_KEY` only (never from a file).
    #[serde(skip)]
    pub api_key: Option<SecretString>,
    /// Token for the admin endpoints, from `ADMIN_TOKEN` only.
    #[serde(skip)]
    pub admin_token: Option<SecretString>,
    /// The configuration file that was read, if any (none when the default file is
    /// absent: built-in defaults and the environment only).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen_addr: String,
    pub request_timeout_ms: u64,
    pub shutdown_grace_secs: u64,
    /// A client must send its request headers within this long.
    pub header_read_timeout_ms: u64,
    /// ...and its request body within this long.
    pub body_read_timeout_ms: u64,
    /// Origins allowed by CORS; empty means no CORS headers at all.
    pub cors_allowed_origins: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed: IP addresses (`10.0.0.7`) or CIDR
    /// blocks (`10.0.0.0/8`, `fd00::/8`). Empty: the client is the TCP peer, whatever
    /// the headers say.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    pub base_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    pub model: String,
    /// Overrides `openai.base_url` for this tier.
    pub base_url: Option<String>,
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub attempt_timeout_ms: u64,
    /// Prompt sent as the user message; `{question}` is replaced by the question.
    pub prompt: String,
    /// Appended to the prompt when the question is not in `canned.default_language`;
    /// `{language}` is replaced by the language's English name. Empty: nothing appended.
    pub language_instruction: String,
    pub temperature: f64,
    /// `max_tokens` sent upstream; unset sends none (the provider's default).
    pub max_tokens: Option<u32>,
    /// Largest response body read from the tier, in bytes; a larger one is an
    /// `invalid_response` and its connection is dropped.
    pub max_response_bytes: usize,
    /// Streams: the longest wait for the first text of an answer, in milliseconds.
    pub first_token_timeout_ms: u64,
    /// Streams: the longest wait between two pieces, in milliseconds.
    pub stream_idle_timeout_ms: u64,
    /// The user message that asks a call to go on from text already sent (which goes
    /// before it as the assistant's message).
    pub continue_prompt: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub ttl_secs: u64,
    pub stale_ttl_secs: u64,
    /// Entries kept in process memory; 0 turns the memory layer off.
    pub memory_max_entries: u64,
    pub key_prefix: String,
    /// One upstream call per question across the instances sharing the Redis (a lease
    /// per question key, `src/pipeline/lease.rs`); off, each instance coalesces only its
    /// own requests (two Redis round trips fewer per miss, for a lone instance).
    pub coalesce_across_instances: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    /// Multiplexed connections to Redis, used in turn.
    pub pool_size: usize,
    /// Longest wait for one Redis command (lookup or write), connecting included.
    pub timeout_ms: u64,
    /// PEM file of the certificate authorities that `rediss://` servers are verified
    /// against, instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// How the Redis is deployed: one server, a Sentinel-watched primary, or a cluster.
    pub mode: RedisMode,
    /// Sentinel mode: the sentinels' URLs; cluster mode: seed nodes (empty: `url`).
    pub urls: Vec<String>,
    /// Sentinel mode: the name the sentinels know the primary by.
    pub sentinel_master: String,
}

/// `redis.mode`: the Redis topology the service talks to, each through redis-rs's own
/// support for it (the client finds the current primary, or the slot owners, by itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server (or a managed endpoint that hides its failover behind one address):
    /// `redis.url`.
    Standalone,
    /// A primary and replicas watched by Redis Sentinel: `redis.urls` lists the
    /// sentinels, `redis.sentinel_master` names the primary; user, password, database
    /// and TLS of the data nodes come from `redis.url`.
    Sentinel,
    /// Redis Cluster: `redis.urls` lists seed nodes (or `redis.url` alone); credentials
    /// and TLS come from each seed URL.
    Cluster,
}

impl RedisMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Sentinel => "sentinel",
            RedisMode::Cluster => "cluster",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CannedConfig {
    pub file: PathBuf,
    /// The lowest score, in [0, 1], at which the best entry matches.
    pub min_score: f64,
    /// A match at or above this score is answered before the models; unset: never.
    pub answer_first_score: Option<f64>,
    /// ISO 639-1 code of the entries' top level and of answers to questions in a
    /// language the file does not have.
    pub default_language: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_question_chars: usize,
    pub max_body_bytes: usize,
    pub max_concurrent_requests: usize,
    /// Requests a second each client may make to the answering routes, on average
    /// (GCRA); 0 (the default): no limit. A client of `clients.file` may have its own.
    pub per_client_rps: f64,
    /// Requests each client may make at once before `per_client_rps` paces it.
    pub per_client_burst: u32,
    /// Upstream model calls each client's questions may cause per UTC day; 0 (the
    /// default): no limit.
    pub per_client_model_calls_per_day: u64,
}

/// Who the clients are: API keys from a file, or addresses (see `clients.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientsConfig {
    /// TOML file of the clients (`[[clients]]` with `name`, `key_sha256` and optional
    /// limits); unset: no keys, every client is its address.
    pub file: Option<PathBuf>,
    /// Refuse `/ask`, `/v1/chat/completions` and `/v1/models` without a known key
    /// (`401 unauthorized`).
    pub require_key: bool,
    /// How often the file's modification time is looked at, in milliseconds; a change
    /// reloads it.
    pub reload_check_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub window_secs: u64,
    /// Error ratio over the window above which the error alert fires.
    pub error_alert_threshold: f64,
}

/// Circuit breakers, one per model tier and one for Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open a breaker.
    pub consecutive_failures: u32,
    /// Share of failed calls over the window that opens a breaker...
    pub failure_ratio: f64,
    /// ...once the window holds at least this many calls.
    pub min_calls: u32,
    pub window_secs: u64,
    /// How long an open breaker skips its dependency before letting one probe through.
    pub open_ms: u64,
}

/// Retries may add at most `ratio` of first attempts (plus a floor) per tier.
/// The customer chat page (`GET /`) and the embeddable widget (`GET /widget.js`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiConfig {
    /// Serve the page and the widget; `false`: both answer 404.
    pub enabled: bool,
    /// The page's title, in every language; empty: the built-in one per language.
    pub title: String,
    /// The first message of the chat, in every language; empty: the built-in one per
    /// language.
    pub greeting: String,
    /// Questions offered before the first one is asked; empty: the first entries of the
    /// canned answers, in each language.
    pub suggestions: Vec<String>,
}

/// The OpenAI-compatible endpoint, `POST /v1/chat/completions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiApiConfig {
    /// Whether a client's `system` (and `developer`) messages reach the models; `false`
    /// (the default) drops them, so that a client cannot replace the tiers' prompts.
    pub allow_client_system: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    pub ratio: f64,
    /// Retries per second always allowed, whatever the ratio.
    pub min_per_sec: u32,
    pub window_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub filter: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig {
                listen_addr: "0.0.0.0:8080".into(),
                request_timeout_ms: 20_000,
                shutdown_grace_secs: 30,
                header_read_timeout_ms: 5000,
                body_read_timeout_ms: 10_000,
                cors_allowed_origins: Vec::new(),
                trusted_proxies: Vec::new(),
            },
            openai: OpenAiConfig {
                base_url: OPENAI_OFFICIAL_BASE_URL.into(),
            },
            primary: TierConfig {
                model: "gpt-4o".into(),
                base_url: None,
                max_attempts: 3,
                initial_backoff_ms: 250,
                max_backoff_ms: 2000,
                attempt_timeout_ms: 15_000,
                prompt: "你是一个专业的客服助手。请回答用户的问题。\n\n问题:{question}\n\n回答:"
                    .into(),
                language_instruction: "\n\nAnswer in {language}, the language of the question.".into(),
                temperature: 0.0,
                max_tokens: None,
                max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
                first_token_timeout_ms: 5000,
                stream_idle_timeout_ms: 10_000,
                continue_prompt: DEFAULT_CONTINUE_PROMPT.into(),
            },
            secondary: TierConfig {
                model: "gpt-3.5-turbo".into(),
                base_url: None,
                max_attempts: 2,
                initial_backoff_ms: 250,
                max_backoff_ms: 2000,
                attempt_timeout_ms: 10_000,
                prompt: "简洁回答:{question}".into(),
                language_instruction: "\n\nAnswer in {language}, the language of the question.".into(),
                temperature: 0.0,
                max_tokens: None,
                max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
                first_token_timeout_ms: 5000,
                stream_idle_timeout_ms: 10_000,
                continue_prompt: DEFAULT_CONTINUE_PROMPT.into(),
            },
            cache: CacheConfig {
                ttl_secs: 3600,
                stale_ttl_secs: 86_400,
                memory_max_entries: 10_000,
                key_prefix: "qa:v1:".into(),
                coalesce_across_instances: true,
            },
            redis: RedisConfig {
                url: "redis://127.0.0.1:6379".into(),
                pool_size: 1,
                timeout_ms: 100,
                ca_file: None,
                mode: RedisMode::Standalone,
                urls: Vec::new(),
                sentinel_master: "mymaster".into(),
            },
            canned: CannedConfig {
                file: PathBuf::from("config/canned_answers.toml"),
                min_score: 0.65,
                answer_first_score: None,
                default_language: "zh".into(),
            },
            limits: LimitsConfig {
                max_question_chars: 2000,
                max_body_bytes: 16_384,
                max_concurrent_requests: 1024,
                per_client_rps: 0.0,
                per_client_burst: 10,
                per_client_model_calls_per_day: 0,
            },
            clients: ClientsConfig {
                file: None,
                require_key: false,
                reload_check_ms: 5000,
            },
            metrics: MetricsConfig {
                window_secs: 300,
                error_alert_threshold: 0.01,
            },
            log: LogConfig {
                filter: "info".into(),
                format: LogFormat::Json,
            },
            breaker: BreakerConfig {
                consecutive_failures: 20,
                failure_ratio: 0.8,
                min_calls: 20,
                window_secs: 10,
                open_ms: 5000,
            },
            retry_budget: RetryBudgetConfig {
                ratio: 1.0,
                min_per_sec: 5,
                window_secs: 10,
            },
            openai_api: OpenAiApiConfig {
                allow_client_system: false,
            },
            ui: UiConfig {
                enabled: true,
                title: String::new(),
                greeting: String::new(),
                suggestions: Vec::new(),
            },
            default_reply: BTreeMap::from([
                (
                    "zh".to_string(),
                    crate::pipeline::DEFAULT_REPLY.to_string(),
                ),
                (
                    "en".to_string(),
                    "Sorry, we cannot handle your request right now. Please try again later or contact a customer service agent.".to_string(),
                ),
            ]),
            api_key: None,
            admin_token: None,
            source: None,
        }
    }
}

/// A configuration that cannot be used, with the key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

fn key_error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        message: message.into(),
    }
}

/// Checks one Redis URL: `redis://` or `rediss://` (and unix sockets where `unix` allows).
fn redis_url(key: &str, raw: &str, unix: bool) -> Result<(), ConfigError> {
    let url = reqwest::Url::parse(raw).map_err(|e| key_error(key, format!("not a URL: {e}")))?;
    let ok = match url.scheme() {
        "redis" | "rediss" => true,
        "unix" | "redis+unix" => unix,
        _ => false,
    };
    if !ok {
        return Err(key_error(
            key,
            format!(
                "scheme must be redis:// or rediss:// (got {})",
                url.scheme()
            ),
        ));
    }
    Ok(())
}

/// Plain environment variables and the key each one sets.
const PLAIN_VARS: &[(&str, &str)] = &[
    ("LISTEN_ADDR", "server.listen_addr"),
    ("OPENAI_BASE_URL", "openai.base_url"),
    ("REDIS_URL", "redis.url"),
    ("RUST_LOG", "log.filter"),
    ("LOG_FORMAT", "log.format"),
    ("CORS_ALLOWED_ORIGINS", "server.cors_allowed_origins"),
];

impl Config {
    /// Loads the layers from `file` (or the default file, if it exists) and `env`, then
    /// validates. `env` is the environment to read: the process's, with `.env` under it.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let named = file
            .map(Path::to_path_buf)
            .or_else(|| env.get("QA_CONFIG").map(PathBuf::from));
        let (path, must_exist) = match named {
            Some(p) => (p, true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        let file_layer = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut table = text
                    .parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                resolve_paths(&mut table, path.parent().unwrap_or(Path::new("")));
                Some(table)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => None,
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let read = file_layer.is_some();
        let mut config = Self::from_layers(file_layer, env)?;
        config.source = read.then_some(path);
        Ok(config)
    }

    /// A fingerprint of what shapes a model's answer (each tier's model, prompt,
    /// temperature and `max_tokens`), 16 hex digits: cached answers are fresh only for
    /// the fingerprint that wrote them.
    pub fn answer_fingerprint(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for t in [&self.primary, &self.secondary] {
            for part in [
                t.model.as_str(),
                t.prompt.as_str(),
                &t.temperature.to_string(),
                &t.max_tokens.map(|n| n.to_string()).unwrap_or_default(),
            ] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        }
        h.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Merges defaults, an optional file layer and the environment, then validates.
    pub fn from_layers(
        file_layer: Option<toml::Table>,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let defaults = toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Key {
            key: "<defaults>".into(),
            message: e.to_string(),
        })?;
        let mut merged = defaults.clone();
        if let Some(layer) = file_layer {
            merge(&mut merged, layer);
        }
        apply_env(&mut merged, &defaults, env)?;

        let value = toml::Value::Table(merged);
        let mut config: Config =
            serde_path_to_error::deserialize(value).map_err(|e| ConfigError::Key {
                key: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        config.api_key = non_empty(env, "OPENAI_API_KEY").map(SecretString::from);
        config.admin_token = non_empty(env, "ADMIN_TOKEN").map(SecretString::from);
        config.validate()?;
        Ok(config)
    }

    /// Refuses values the service cannot run with, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server
            .listen_addr
            .parse::<SocketAddr>()
            .map_err(|e| key_error("server.listen_addr", format!("not an address: {e}")))?;
        let s = &self.server;
        within(
            "server.request_timeout_ms",
            s.request_timeout_ms,
            1,
            bound::MS,
        )?;
        within(
            "server.header_read_timeout_ms",
            s.header_read_timeout_ms,
            1,
            bound::MS,
        )?;
        within(
            "server.body_read_timeout_ms",
            s.body_read_timeout_ms,
            1,
            bound::MS,
        )?;
        within(
            "server.shutdown_grace_secs",
            s.shutdown_grace_secs,
            0,
            bound::DAY_SECS,
        )?;
        cors_origins(&self.server.cors_allowed_origins)?;
        for (key, text) in [
            ("ui.title", &self.ui.title),
            ("ui.greeting", &self.ui.greeting),
        ] {
            within(key, text.chars().count() as u64, 0, 2000)?;
        }
        within("ui.suggestions", self.ui.suggestions.len() as u64, 0, 20)?;
        http_url("openai.base_url", &self.openai.base_url)?;
        for (name, tier) in [("primary", &self.primary), ("secondary", &self.secondary)] {
            let k = |field: &str| format!("{name}.{field}");
            if tier.model.trim().is_empty() {
                return Err(key_error(&k("model"), "must not be empty"));
            }
            if let Some(url) = &tier.base_url {
                http_url(&k("base_url"), url)?;
            }
            within(
                &k("max_attempts"),
                u64::from(tier.max_attempts),
                1,
                bound::COUNT,
            )?;
            within(
                &k("initial_backoff_ms"),
                tier.initial_backoff_ms,
                0,
                bound::MS,
            )?;
            within(&k("max_backoff_ms"), tier.max_backoff_ms, 0, bound::MS)?;
            if let Some(n) = tier.max_tokens {
                within(&k("max_tokens"), u64::from(n), 1, bound::COUNT)?;
            }
            within(
                &k("max_response_bytes"),
                tier.max_response_bytes as u64,
                1,
                bound::BYTES,
            )?;
            if tier.max_backoff_ms < tier.initial_backoff_ms {
                return Err(key_error(
                    &k("max_backoff_ms"),
                    format!(
                        "must not be below {name}.initial_backoff_ms ({} < {})",
                        tier.max_backoff_ms, tier.initial_backoff_ms
                    ),
                ));
            }
            within(
                &k("attempt_timeout_ms"),
                tier.attempt_timeout_ms,
                1,
                bound::MS,
            )?;
            if !tier.prompt.contains("{question}") {
                return Err(key_error(&k("prompt"), "must contain `{question}`"));
            }
            if !tier.language_instruction.is_empty()
                && !tier.language_instruction.contains("{language}")
            {
                return Err(key_error(
                    &k("language_instruction"),
                    "must contain `{language}` (or be empty)",
                ));
            }
            if !(0.0..=2.0).contains(&tier.temperature) {
                return Err(key_error(&k("temperature"), "must be between 0 and 2"));
            }
        }
        within("cache.ttl_secs", self.cache.ttl_secs, 1, bound::TTL_SECS)?;
        within(
            "cache.stale_ttl_secs",
            self.cache.stale_ttl_secs,
            0,
            bound::TTL_SECS,
        )?;
        within(
            "cache.memory_max_entries",
            self.cache.memory_max_entries,
            0,
            100 * bound::COUNT,
        )?;
        if !(0.0..=1.0).contains(&self.canned.min_score) {
            return Err(key_error("canned.min_score", "must be between 0 and 1"));
        }
        if let Some(first) = self.canned.answer_first_score
            && !(self.canned.min_score..=1.0).contains(&first)
        {
            return Err(key_error(
                "canned.answer_first_score",
                format!(
                    "must be between canned.min_score ({}) and 1 (got {first})",
                    self.canned.min_score
                ),
            ));
        }
        if iso_639_1(&self.canned.default_language).is_none() {
            return Err(key_error(
                "canned.default_language",
                format!(
                    "must be an ISO 639-1 code such as `zh` or `en` (got {:?})",
                    self.canned.default_language
                ),
            ));
        }
        for (code, text) in &self.default_reply {
            if iso_639_1(code).is_none() {
                return Err(key_error(
                    &format!("default_reply.{code}"),
                    "not an ISO 639-1 language code",
                ));
            }
            if text.trim().is_empty() {
                return Err(key_error(
                    &format!("default_reply.{code}"),
                    "must not be empty",
                ));
            }
        }
        if !self
            .default_reply
            .contains_key(&self.canned.default_language)
        {
            return Err(key_error(
                &format!("default_reply.{}", self.canned.default_language),
                "the default language (canned.default_language) needs a default reply",
            ));
        }
        redis_url("redis.url", &self.redis.url, true)?;
        for (i, u) in self.redis.urls.iter().enumerate() {
            redis_url(&format!("redis.urls[{i}]"), u, false)?;
        }
        match self.redis.mode {
            RedisMode::Standalone => {}
            RedisMode::Sentinel if self.redis.urls.is_empty() => {
                return Err(key_error(
                    "redis.urls",
                    "sentinel mode needs the sentinels' URLs (redis://host:26379, ...)",
                ));
            }
            RedisMode::Sentinel if self.redis.sentinel_master.trim().is_empty() => {
                return Err(key_error(
                    "redis.sentinel_master",
                    "sentinel mode needs the primary's name, as the sentinels know it",
                ));
            }
            RedisMode::Sentinel | RedisMode::Cluster => {}
        }
        within("redis.pool_size", self.redis.pool_size as u64, 1, 1024)?;
        within("redis.timeout_ms", self.redis.timeout_ms, 1, 60_000)?;
        let l = &self.limits;
        within(
            "limits.max_question_chars",
            l.max_question_chars as u64,
            1,
            bound::COUNT,
        )?;
        within(
            "limits.max_body_bytes",
            l.max_body_bytes as u64,
            1,
            bound::BYTES,
        )?;
        within(
            "limits.max_concurrent_requests",
            l.max_concurrent_requests as u64,
            1,
            bound::COUNT,
        )?;
        client_limits(
            "limits",
            "per_client_",
            Some(l.per_client_rps),
            Some(l.per_client_burst),
            Some(l.per_client_model_calls_per_day),
        )?;
        for proxy in &self.server.trusted_proxies {
            ip_or_cidr(proxy).map_err(|e| key_error("server.trusted_proxies", e))?;
        }
        within(
            "clients.reload_check_ms",
            self.clients.reload_check_ms,
            100,
            bound::MS,
        )?;
        within(
            "metrics.window_secs",
            self.metrics.window_secs,
            1,
            bound::DAY_SECS,
        )?;
        if !(0.0..=1.0).contains(&self.metrics.error_alert_threshold) {
            return Err(key_error(
                "metrics.error_alert_threshold",
                "must be between 0 and 1",
            ));
        }
        positive(
            "breaker.consecutive_failures",
            u64::from(self.breaker.consecutive_failures),
        )?;
        within(
            "breaker.min_calls",
            u64::from(self.breaker.min_calls),
            0,
            u64::from(u32::MAX),
        )?;
        if !(self.breaker.failure_ratio > 0.0 && self.breaker.failure_ratio <= 1.0) {
            return Err(key_error("breaker.failure_ratio", "must be in (0, 1]"));
        }
        within(
            "breaker.window_secs",
            self.breaker.window_secs,
            1,
            bound::DAY_SECS,
        )?;
        within("breaker.open_ms", self.breaker.open_ms, 1, bound::MS)?;
        if !(0.0..=10.0).contains(&self.retry_budget.ratio) {
            return Err(key_error("retry_budget.ratio", "must be between 0 and 10"));
        }
        within(
            "retry_budget.window_secs",
            self.retry_budget.window_secs,
            1,
            bound::DAY_SECS,
        )?;
        Ok(())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.server.request_timeout_ms)
    }

    /// What the FAQ store needs from `canned.*` and `default_reply` (after `validate`).
    pub fn canned_settings(&self) -> crate::faq::Settings {
        crate::faq::Settings {
            min_score: self.canned.min_score,
            answer_first_score: self.canned.answer_first_score,
            default_language: iso_639_1(&self.canned.default_language)
                .unwrap_or(crate::faq::lang::ZH),
            default_reply: self
                .default_reply
                .iter()
                .map(|(k, v)| (k.clone(), std::sync::Arc::from(v.trim())))
                .collect(),
        }
    }
}

impl TierConfig {
    /// The base URL this tier calls: its own, or the shared one.
    pub fn effective_base_url<'a>(&'a self, openai: &'a OpenAiConfig) -> &'a str {
        self.base_url.as_deref().unwrap_or(&openai.base_url)
    }
}

fn non_empty(env: &HashMap<String, String>, var: &str) -> Option<String> {
    env.get(var).filter(|v| !v.is_empty()).cloned()
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(key_error(key, "must be greater than 0"))
    } else {
        Ok(())
    }
}

/// `value` must lie in `min..=max`.
fn within(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min {
        Err(key_error(
            key,
            format!("must be at least {min} (got {value})"),
        ))
    } else if value > max {
        Err(key_error(
            key,
            format!("must be at most {max} (got {value})"),
        ))
    } else {
        Ok(())
    }
}

/// The most requests a second a limit may allow.
pub const MAX_RPS: f64 = 1_000_000.0;
/// The fewest requests a second a limit may allow (other than 0, no limit): one a day.
pub const MIN_RPS: f64 = 1.0 / 86_400.0;
/// The most model calls a day a budget may allow.
pub const MAX_CALLS_PER_DAY: u64 = 1_000_000_000;

/// The per-client limits under `section` (`limits` with `prefix` `per_client_`, or a
/// client of the clients file with no prefix): `rps` 0 or in [[`MIN_RPS`],
/// [`MAX_RPS`]], `burst` in [1, 1000000], `model_calls_per_day` in [0,
/// [`MAX_CALLS_PER_DAY`]]. `None`: not given (a client's own limit left to the default).
pub fn client_limits(
    section: &str,
    prefix: &str,
    rps: Option<f64>,
    burst: Option<u32>,
    model_calls_per_day: Option<u64>,
) -> Result<(), ConfigError> {
    let key = |name: &str| format!("{section}.{prefix}{name}");
    if let Some(rps) = rps
        && !(rps == 0.0 || (MIN_RPS..=MAX_RPS).contains(&rps))
    {
        return Err(key_error(
            &key("rps"),
            format!(
                "must be 0 (no limit) or between 1/86400 (one a day) and {MAX_RPS} (got {rps})"
            ),
        ));
    }
    if let Some(burst) = burst {
        within(&key("burst"), u64::from(burst), 1, bound::COUNT)?;
    }
    if let Some(calls) = model_calls_per_day {
        within(&key("model_calls_per_day"), calls, 0, MAX_CALLS_PER_DAY)?;
    }
    Ok(())
}

/// An IP address (`10.0.0.7`, `::1`) or a CIDR block (`10.0.0.0/8`), as a network.
pub fn ip_or_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| {
            format!("{text:?} is neither an IP address nor a CIDR block (such as 10.0.0.0/8)")
        })
}

fn http_url(key: &str, value: &str) -> Result<(), ConfigError> {
    let url = reqwest::Url::parse(value).map_err(|e| {
        key_error(
            key,
            format!("not a URL ({:?}): {e}", crate::redact::url(value)),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(key_error(
            key,
            format!(
                "must be an http:// or https:// URL with a host (got {:?})",
                crate::redact::url(value)
            ),
        ));
    }
    Ok(())
}

/// `server.cors_allowed_origins`: each an origin (`scheme://host[:port]`, http or https,
/// no path, query, fragment or credentials), or `*` (any origin) on its own.
fn cors_origins(origins: &[String]) -> Result<(), ConfigError> {
    const KEY: &str = "server.cors_allowed_origins";
    if origins.iter().any(|o| o == "*") {
        if origins.len() > 1 {
            return Err(key_error(
                KEY,
                "\"*\" allows every origin: list it alone, or list the origins without it",
            ));
        }
        return Ok(());
    }
    for origin in origins {
        let url = reqwest::Url::parse(origin).map_err(|e| {
            key_error(
                KEY,
                format!("{origin:?} is not an origin (scheme://host[:port]): {e}"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(key_error(
                KEY,
                format!("{origin:?}: an origin is http:// or https:// with a host"),
            ));
        }
        // Only `scheme://host[:port]`, as a browser sends it in `Origin` (a trailing `/`
        // is forgiven): nothing after the authority, no credentials.
        let authority = origin
            .split_once("://")
            .map_or("", |(_, rest)| rest.trim_end_matches('/'));
        let bare = !authority.contains(['/', '?', '#', '@']) && !authority.is_empty();
        if !bare {
            return Err(key_error(
                KEY,
                format!(
                    "{origin:?} is not an origin: only scheme://host[:port], with no path, query or credentials (as a browser sends it in Origin)"
                ),
            ));
        }
    }
    Ok(())
}

/// Keys of the file that name files: a relative path there is relative to the
/// configuration file's folder, wherever the service is started from.
const PATH_KEYS: &[(&str, &str)] = &[
    ("canned", "file"),
    ("redis", "ca_file"),
    ("clients", "file"),
];

fn resolve_paths(table: &mut toml::Table, folder: &Path) {
    for (section, key) in PATH_KEYS {
        if let Some(toml::Value::Table(t)) = table.get_mut(*section)
            && let Some(toml::Value::String(p)) = t.get_mut(*key)
            && Path::new(p.as_str()).is_relative()
        {
            *p = folder.join(p.as_str()).to_string_lossy().into_owned();
        }
    }
}

/// Deep-merges `layer` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, layer: toml::Table) {
    for (key, value) in layer {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(l)) => merge(b, l),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

/// Applies the plain variables, then `QA__SECTION__KEY` ones, typed after the defaults so
/// that `QA__PRIMARY__MODEL=4` stays a string and `QA__PRIMARY__MAX_ATTEMPTS=5` a number.
fn apply_env(
    merged: &mut toml::Table,
    defaults: &toml::Table,
    env: &HashMap<String, String>,
) -> Result<(), ConfigError> {
    let mut sets: Vec<(String, Vec<String>, &String)> = Vec::new();
    for (var, key) in PLAIN_VARS {
        if let Some(v) = env.get(*var).filter(|v| !v.is_empty()) {
            sets.push((
                var.to_string(),
                key.split('.').map(String::from).collect(),
                v,
            ));
        }
    }
    if !env.contains_key("REDIS_URL")
        && let Some(host) = env.get("REDIS_HOST").filter(|h| !h.is_empty())
    {
        let port = env.get("REDIS_PORT").map(String::as_str).unwrap_or("6379");
        let url = format!("redis://{host}:{port}");
        set_path(
            merged,
            &["redis".into(), "url".into()],
            toml::Value::String(url),
        );
    }
    let mut qa: Vec<(&String, &String)> =
        env.iter().filter(|(k, _)| k.starts_with("QA__")).collect();
    qa.sort();
    for (var, value) in qa {
        let path: Vec<String> = var["QA__".len()..]
            .split("__")
            .map(|p| p.to_ascii_lowercase())
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: "expected QA__SECTION__KEY".into(),
            });
        }
        sets.push((var.clone(), path, value));
    }
    for (var, path, raw) in sets {
        let value = typed_value(defaults, &path, raw).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
        set_path(merged, &path, value);
    }
    Ok(())
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let v = table.get(first)?;
    if rest.is_empty() {
        return Some(v);
    }
    match v {
        toml::Value::Table(t) => lookup(t, rest),
        _ => None,
    }
}

fn typed_value(defaults: &toml::Table, path: &[String], raw: &str) -> Result<toml::Value, String> {
    let as_toml = || -> Option<toml::Value> {
        format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
    };
    match lookup(defaults, path) {
        Some(toml::Value::String(_)) => Ok(toml::Value::String(raw.to_string())),
        Some(toml::Value::Array(_)) => Ok(toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        )),
        Some(toml::Value::Table(_)) => Err("names a section, not a key".into()),
        Some(_) => as_toml().ok_or_else(|| format!("cannot parse {raw:?}")),
        // Optional keys (absent from the defaults) and unknown ones: the typed
        // deserialization that follows refuses unknown keys by name.
        None => Ok(as_toml()
            .filter(|v| !matches!(v, toml::Value::Table(_)))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()))),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return;
    }
    let entry = table
        .entry(first.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !entry.is_table() {
        *entry = toml::Value::Table(toml::Table::new());
    }
    if let toml::Value::Table(t) = entry {
        set_path(t, rest, value);
    }
}

/// The environment the service reads: the process's, over the entries of `.env` in the
/// working directory (which never override a real variable).
pub fn process_env() -> HashMap<String, String> {
    let mut env: HashMap<String, String> = HashMap::new();
    if let Ok(iter) = dotenvy::from_path_iter(".env") {
        for (k, v) in iter.flatten() {
            env.insert(k, v);
        }
    }
    env.extend(std::env::vars());
    env
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cors_origins_are_bare_origins_or_a_star_alone() {
        let with = |origins: &[&str]| {
            let mut c = Config::default();
            c.server.cors_allowed_origins = origins.iter().map(|o| o.to_string()).collect();
            c.validate()
        };
        for good in [
            &["https://shop.example"][..],
            &["http://127.0.0.1:8000/", "https://b.example:8443"],
            &["*"],
        ] {
            assert!(with(good).is_ok(), "{good:?}: {:?}", with(good));
        }
        for (bad, why) in [
            (&["https://shop.example/chat"][..], "no path"),
            (&["https://shop.example?x=1"], "no path, query"),
            (&["https://user:pw@shop.example"], "credentials"),
            (&["ftp://shop.example"], "http:// or https://"),
            (&["shop.example"], "not an origin"),
            (&["*", "https://shop.example"], "alone"),
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("server.cors_allowed_origins"), "{bad:?}: {e}");
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn cors_allowed_origins_is_read_from_the_environment_comma_separated() {
        let c = Config::from_layers(
            None,
            &env(&[(
                "CORS_ALLOWED_ORIGINS",
                "https://a.example, http://b.example:8000",
            )]),
        )
        .unwrap();
        assert_eq!(
            c.server.cors_allowed_origins,
            vec!["https://a.example", "http://b.example:8000"]
        );
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::from_layers(None, &env(&[])).unwrap();
        assert_eq!(c.server.request_timeout_ms, 20_000);
        assert_eq!(c.primary.model, "gpt-4o");
        assert_eq!(c.secondary.model, "gpt-3.5-turbo");
        assert_eq!((c.primary.max_attempts, c.secondary.max_attempts), (3, 2));
        assert_eq!(c.primary.attempt_timeout_ms, 15_000);
        assert_eq!(c.secondary.attempt_timeout_ms, 10_000);
        assert_eq!(c.cache.stale_ttl_secs, 86_400);
        assert_eq!(c.limits.max_body_bytes, 16_384);
        assert_eq!(c.server.listen_addr, "0.0.0.0:8080");
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn double_underscore_variables_override_the_file() {
        let file: toml::Table = "[primary]\nmax_attempts = 4\nmodel = \"x\""
            .parse()
            .unwrap();
        let c = Config::from_layers(
            Some(file),
            &env(&[
                ("QA__PRIMARY__MAX_ATTEMPTS", "5"),
                ("QA__SECONDARY__MODEL", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(c.primary.max_attempts, 5);
        assert_eq!(c.primary.model, "x");
        assert_eq!(c.secondary.model, "7");
        assert_eq!(
            c.secondary.max_attempts, 2,
            "untouched keys keep their default"
        );
    }

    #[test]
    fn plain_variables_set_their_keys() {
        let c = Config::from_layers(
            None,
            &env(&[
                ("LISTEN_ADDR", "127.0.0.1:9000"),
                ("OPENAI_BASE_URL", "http://localhost:1/v1"),
                ("REDIS_HOST", "cache"),
                ("REDIS_PORT", "6380"),
                ("LOG_FORMAT", "pretty"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen_addr, "127.0.0.1:9000");
        assert_eq!(c.openai.base_url, "http://localhost:1/v1");
        assert_eq!(c.redis.url, "redis://cache:6380");
        assert_eq!(c.log.format, LogFormat::Pretty);
    }

    #[test]
    fn redis_url_wins_over_host_and_port() {
        let c = Config::from_layers(
            None,
            &env(&[("REDIS_URL", "redis://a:1"), ("REDIS_HOST", "b")]),
        )
        .unwrap();
        assert_eq!(c.redis.url, "redis://a:1");
    }

    #[test]
    fn sentinel_mode_is_read_from_the_environment_with_its_sentinels() {
        let c = Config::from_layers(
            None,
            &env(&[
                ("QA__REDIS__MODE", "sentinel"),
                ("QA__REDIS__URLS", "redis://s1:26379, redis://s2:26379"),
                ("QA__REDIS__SENTINEL_MASTER", "qa"),
            ]),
        )
        .unwrap();
        assert_eq!(c.redis.mode, RedisMode::Sentinel);
        assert_eq!(c.redis.urls, ["redis://s1:26379", "redis://s2:26379"]);
        assert_eq!(c.redis.sentinel_master, "qa");
    }

    #[test]
    fn sentinel_mode_without_sentinels_or_a_bad_seed_url_is_refused_by_key() {
        let mut c = Config::default();
        c.redis.mode = RedisMode::Sentinel;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("redis.urls"), "{err}");
        c.redis.mode = RedisMode::Cluster;
        c.redis.urls = vec!["redis://a:1".into(), "http://b:2".into()];
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("redis.urls[1]"), "{err}");
        c.redis.mode = RedisMode::Standalone;
        c.redis.urls.clear();
        c.redis.url = "memcached://x".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("redis.url"), "{err}");
    }

    #[test]
    fn unknown_key_in_file_is_refused_by_name() {
        let file: toml::Table = "[primary]\nmax_atempts = 4".parse().unwrap();
        let err = Config::from_layers(Some(file), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_atempts"), "{err}");
    }

    #[test]
    fn unknown_variable_key_is_refused_by_name() {
        let err = Config::from_layers(None, &env(&[("QA__CACHE__TTL", "5")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ttl"), "{err}");
    }

    #[test]
    fn zero_attempts_is_refused() {
        let err = Config::from_layers(None, &env(&[("QA__SECONDARY__MAX_ATTEMPTS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("secondary.max_attempts"), "{err}");
    }

    #[test]
    fn backoff_max_below_initial_is_refused() {
        let err = Config::from_layers(None, &env(&[("QA__PRIMARY__MAX_BACKOFF_MS", "10")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("primary.max_backoff_ms"), "{err}");
    }

    #[test]
    fn malformed_url_is_refused() {
        let err = Config::from_layers(None, &env(&[("QA__PRIMARY__BASE_URL", "not a url")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("primary.base_url"), "{err}");
    }

    #[test]
    fn wrong_type_is_refused_by_name() {
        let err = Config::from_layers(None, &env(&[("QA__CACHE__TTL_SECS", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("QA__CACHE__TTL_SECS"), "{err}");
    }

    #[test]
    fn numbers_too_large_to_use_are_refused_by_name() {
        for (var, key) in [
            ("QA__CACHE__TTL_SECS", "cache.ttl_secs"),
            ("QA__CACHE__STALE_TTL_SECS", "cache.stale_ttl_secs"),
            (
                "QA__LIMITS__MAX_CONCURRENT_REQUESTS",
                "limits.max_concurrent_requests",
            ),
            (
                "QA__SERVER__REQUEST_TIMEOUT_MS",
                "server.request_timeout_ms",
            ),
            (
                "QA__PRIMARY__ATTEMPT_TIMEOUT_MS",
                "primary.attempt_timeout_ms",
            ),
            ("QA__BREAKER__OPEN_MS", "breaker.open_ms"),
        ] {
            for value in ["40000000000", "9223372036854775807"] {
                let err = Config::from_layers(None, &env(&[(var, value)]))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(key), "{var}={value}: {err}");
            }
        }
    }

    #[test]
    fn relative_paths_in_the_file_are_relative_to_its_folder() {
        let dir = std::env::temp_dir().join(format!("qa-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("service.toml");
        std::fs::write(&file, "[canned]\nfile = \"answers.toml\"\n").unwrap();
        let c = Config::load(Some(&file), &env(&[])).unwrap();
        assert_eq!(c.canned.file, dir.join("answers.toml"));
        assert_eq!(c.source.as_deref(), Some(file.as_path()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_fingerprint_follows_model_and_prompt() {
        let a = Config::default();
        let mut b = Config::default();
        assert_eq!(a.answer_fingerprint(), b.answer_fingerprint());
        b.primary.prompt.push('!');
        assert_ne!(a.answer_fingerprint(), b.answer_fingerprint());
        let mut c = Config::default();
        c.secondary.model = "other".into();
        assert_ne!(a.answer_fingerprint(), c.answer_fingerprint());
    }

    proptest::proptest! {
        #[test]
        fn any_number_for_any_numeric_key_is_a_config_or_an_error_never_a_panic(
            key in proptest::sample::select(vec![
                "QA__SERVER__REQUEST_TIMEOUT_MS", "QA__SERVER__SHUTDOWN_GRACE_SECS",
                "QA__SERVER__HEADER_READ_TIMEOUT_MS", "QA__SERVER__BODY_READ_TIMEOUT_MS",
                "QA__PRIMARY__MAX_ATTEMPTS", "QA__PRIMARY__INITIAL_BACKOFF_MS",
                "QA__PRIMARY__MAX_BACKOFF_MS", "QA__PRIMARY__ATTEMPT_TIMEOUT_MS",
                "QA__PRIMARY__MAX_TOKENS", "QA__PRIMARY__MAX_RESPONSE_BYTES",
                "QA__CACHE__TTL_SECS", "QA__CACHE__STALE_TTL_SECS",
                "QA__CACHE__MEMORY_MAX_ENTRIES", "QA__REDIS__POOL_SIZE", "QA__REDIS__TIMEOUT_MS",
                "QA__LIMITS__MAX_QUESTION_CHARS", "QA__LIMITS__MAX_BODY_BYTES",
                "QA__LIMITS__MAX_CONCURRENT_REQUESTS", "QA__METRICS__WINDOW_SECS",
                "QA__LIMITS__PER_CLIENT_RPS", "QA__LIMITS__PER_CLIENT_BURST",
                "QA__LIMITS__PER_CLIENT_MODEL_CALLS_PER_DAY", "QA__CLIENTS__RELOAD_CHECK_MS",
                "QA__BREAKER__CONSECUTIVE_FAILURES", "QA__BREAKER__MIN_CALLS",
                "QA__BREAKER__WINDOW_SECS", "QA__BREAKER__OPEN_MS",
                "QA__RETRY_BUDGET__MIN_PER_SEC", "QA__RETRY_BUDGET__WINDOW_SECS",
            ]),
            value in proptest::prop_oneof![
                proptest::strategy::Strategy::prop_map(proptest::num::i64::ANY, |v| v.to_string()),
                proptest::strategy::Strategy::prop_map(proptest::num::u64::ANY, |v| v.to_string()),
                proptest::strategy::Strategy::prop_map(proptest::num::f64::ANY, |v| v.to_string()),
            ],
        ) {
            let _ = Config::from_layers(None, &env(&[(key, value.as_str())]));
        }
    }

    #[test]
    fn api_key_never_shows_in_debug_output() {
        let c = Config::from_layers(None, &env(&[("OPENAI_API_KEY", "sk-secret-123")])).unwrap();
        assert!(!format!("{c:?}").contains("sk-secret-123"));
    }
    #[test]
    fn canned_scores_are_validated_by_key() {
        let low = Config::from_layers(None, &env(&[("QA__CANNED__MIN_SCORE", "1.5")]))
            .unwrap_err()
            .to_string();
        let first = Config::from_layers(
            None,
            &env(&[
                ("QA__CANNED__MIN_SCORE", "0.7"),
                ("QA__CANNED__ANSWER_FIRST_SCORE", "0.5"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(low.contains("canned.min_score"), "{low}");
        assert!(first.contains("canned.answer_first_score"), "{first}");
    }

    #[test]
    fn answer_first_is_off_by_default_and_set_from_the_environment() {
        let off = Config::from_layers(None, &env(&[])).unwrap();
        let on =
            Config::from_layers(None, &env(&[("QA__CANNED__ANSWER_FIRST_SCORE", "0.9")])).unwrap();
        assert_eq!(off.canned.answer_first_score, None);
        assert_eq!(on.canned.answer_first_score, Some(0.9));
    }

    #[test]
    fn default_language_must_be_an_iso_code_with_a_default_reply() {
        let bad = Config::from_layers(None, &env(&[("QA__CANNED__DEFAULT_LANGUAGE", "chinese")]))
            .unwrap_err()
            .to_string();
        let no_reply = Config::from_layers(None, &env(&[("QA__CANNED__DEFAULT_LANGUAGE", "fr")]))
            .unwrap_err()
            .to_string();
        assert!(bad.contains("canned.default_language"), "{bad}");
        assert!(no_reply.contains("default_reply.fr"), "{no_reply}");
    }

    #[test]
    fn per_client_limits_are_off_by_default_and_bounded_by_key() {
        let c = Config::from_layers(None, &env(&[])).unwrap();
        assert_eq!(c.limits.per_client_rps, 0.0);
        assert_eq!(c.limits.per_client_model_calls_per_day, 0);
        assert!(!c.clients.require_key);
        let set = Config::from_layers(
            None,
            &env(&[
                ("QA__LIMITS__PER_CLIENT_RPS", "5"),
                ("QA__LIMITS__PER_CLIENT_BURST", "20"),
                ("QA__LIMITS__PER_CLIENT_MODEL_CALLS_PER_DAY", "1000"),
            ]),
        )
        .unwrap();
        assert_eq!(set.limits.per_client_rps, 5.0);
        assert_eq!(set.limits.per_client_burst, 20);
        assert_eq!(set.limits.per_client_model_calls_per_day, 1000);
        for (var, value, key) in [
            ("QA__LIMITS__PER_CLIENT_RPS", "-1", "limits.per_client_rps"),
            ("QA__LIMITS__PER_CLIENT_RPS", "nan", "limits.per_client_rps"),
            (
                "QA__LIMITS__PER_CLIENT_RPS",
                "1e12",
                "limits.per_client_rps",
            ),
            (
                "QA__LIMITS__PER_CLIENT_BURST",
                "0",
                "limits.per_client_burst",
            ),
            (
                "QA__LIMITS__PER_CLIENT_MODEL_CALLS_PER_DAY",
                "1000000000000",
                "limits.per_client_model_calls_per_day",
            ),
            (
                "QA__CLIENTS__RELOAD_CHECK_MS",
                "0",
                "clients.reload_check_ms",
            ),
        ] {
            let err = Config::from_layers(None, &env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{var}={value}: {err}");
        }
    }

    #[test]
    fn trusted_proxies_are_addresses_or_cidr_blocks() {
        let c = Config::from_layers(
            None,
            &env(&[(
                "QA__SERVER__TRUSTED_PROXIES",
                "10.0.0.0/8, 127.0.0.1, fd00::/8, ::1",
            )]),
        )
        .unwrap();
        assert_eq!(c.server.trusted_proxies.len(), 4);
        let err = Config::from_layers(
            None,
            &env(&[("QA__SERVER__TRUSTED_PROXIES", "10.0.0.0/33")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("server.trusted_proxies"), "{err}");
        assert!(err.contains("10.0.0.0/33"), "{err}");
    }

    #[test]
    fn default_reply_per_language_ships_zh_and_en_and_is_overridable() {
        let c = Config::from_layers(None, &env(&[("QA__DEFAULT_REPLY__EN", "Sorry!")])).unwrap();
        assert_eq!(c.default_reply["zh"], crate::pipeline::DEFAULT_REPLY);
        assert_eq!(c.default_reply["en"], "Sorry!");
    }
}
