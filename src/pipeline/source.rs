//! The pipeline's vocabulary: which tier gave an answer ([`Source`]), the model tiers
//! ([`Tier`]), how a model call failed ([`ErrorKind`]) and why a model tier gave none
//! ([`GiveUp`]). The metrics, the monitor and
//! the retry helper import these from here, not from the pipeline itself.

/// Which tier gave an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache = 0,
    Primary = 1,
    Secondary = 2,
    Canned = 3,
    Stale = 4,
    Default = 5,
}

impl Source {
    pub const COUNT: usize = 6;
    pub const ALL: [Source; Source::COUNT] = [
        Source::Cache,
        Source::Primary,
        Source::Secondary,
        Source::Canned,
        Source::Stale,
        Source::Default,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Primary => "primary",
            Source::Secondary => "secondary",
            Source::Canned => "canned",
            Source::Stale => "stale",
            Source::Default => "default",
        }
    }

    /// Whether the answer is less than the best the service can give.
    pub fn degraded(self) -> bool {
        !matches!(self, Source::Cache | Source::Primary)
    }
}

/// A model tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Primary,
    Secondary,
}

impl Tier {
    /// The model tiers in the order the walk tries them: the one list that the walk,
    /// the metrics' labels, `/readyz` and the breakers' names are built from.
    pub const ALL: [Tier; 2] = [Tier::Primary, Tier::Secondary];

    /// This tier's section of the configuration.
    pub fn config(self, config: &crate::config::Config) -> &crate::config::TierConfig {
        match self {
            Tier::Primary => &config.primary,
            Tier::Secondary => &config.secondary,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Primary => "primary",
            Tier::Secondary => "secondary",
        }
    }

    pub fn source(self) -> Source {
        match self {
            Tier::Primary => Source::Primary,
            Tier::Secondary => Source::Secondary,
        }
    }
}

/// Why a model tier gave no answer: the `reason` label of `qa_fallbacks_total`. The retry
/// helper gives the first five; the walk adds `NotConfigured`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// Every attempt failed transiently.
    Exhausted,
    /// A failure that retrying cannot fix.
    NonRetryable,
    /// The deadline came, or the next wait would pass it.
    Deadline,
    /// The tier has no endpoint (no API key for the official one): never called.
    NotConfigured,
    /// The tier's circuit breaker is open.
    CircuitOpen,
    /// The tier's retry budget is spent.
    Budget,
}

impl GiveUp {
    pub const ALL: [GiveUp; 6] = [
        GiveUp::Exhausted,
        GiveUp::NonRetryable,
        GiveUp::Deadline,
        GiveUp::NotConfigured,
        GiveUp::CircuitOpen,
        GiveUp::Budget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GiveUp::Exhausted => "exhausted",
            GiveUp::NonRetryable => "non_retryable",
            GiveUp::Deadline => "deadline",
            GiveUp::NotConfigured => "not_configured",
            GiveUp::CircuitOpen => "circuit_open",
            GiveUp::Budget => "budget",
        }
    }
}

/// The outcome of a failed model call: the `outcome` label of
/// `qa_upstream_attempts_total` and the `kind` of an error event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    RateLimited,
    Timeout,
    ConnectError,
    ServerError,
    ClientError,
    InvalidResponse,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::RateLimited,
        ErrorKind::Timeout,
        ErrorKind::ConnectError,
        ErrorKind::ServerError,
        ErrorKind::ClientError,
        ErrorKind::InvalidResponse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ConnectError => "connect_error",
            ErrorKind::ServerError => "server_error",
            ErrorKind::ClientError => "client_error",
            ErrorKind::InvalidResponse => "invalid_response",
        }
    }
}
