//! Per-client limits: a request rate with bursts (`rate.rs`, GCRA) and a daily budget of
//! upstream model calls (`daily.rs`), common to every instance that shares the Redis,
//! and kept by each instance on its own while Redis cannot say (`AnswerCache::command`
//! returns an error: down, breaker open, timed out). Their answers go out as the IETF
//! RateLimit fields (`headers.rs`).
//!
//! Redis keys, under `cache.key_prefix`, named by the client's opaque id (never its key,
//! name or address): `limits:rate:<id>` (the client's theoretical arrival time, expiring
//! when it has passed) and `limits:daily:<YYYY-MM-DD>:<id>` (the day's count, expiring
//! an hour after the day).
//!
//! Every check is counted in `qa_rate_limit_checks_total{limit, store, result}`, whose
//! labels name no client.

pub mod daily;
pub mod headers;
pub mod rate;
mod script;

use std::sync::Arc;
use std::time::Duration;

use crate::clients::{Client, ClientLimits};
use crate::pipeline::cache::AnswerCache;
use crate::telemetry::Metrics;

pub use rate::RateDecision;

/// The daily budget of a client as checked before a walk, put in the response's
/// extensions for the RateLimit fields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DailyState {
    /// Model calls left today, before this request's own.
    pub remaining: u64,
    /// Until midnight UTC, when the budget is whole again.
    pub reset: Duration,
}

/// The `limit` label of `qa_rate_limit_checks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Rate,
    Daily,
}

/// The `store` label: where the check was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Redis,
    Local,
}

impl Limit {
    pub const ALL: [Limit; 2] = [Limit::Rate, Limit::Daily];

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Rate => "rate",
            Limit::Daily => "daily",
        }
    }
}

impl Store {
    pub const ALL: [Store; 2] = [Store::Redis, Store::Local];

    pub fn as_str(self) -> &'static str {
        match self {
            Store::Redis => "redis",
            Store::Local => "local",
        }
    }
}

/// The per-client limits of one instance.
pub struct Limiter {
    /// The `RateLimit-Policy` values, made once per set of limits.
    pub policies: headers::Policies,
    /// `qa_rate_limit_checks_total`, by limit, store and result (resolved once: a check
    /// runs on every request of a limited client).
    checks: [[[prometheus::IntCounter; 2]; 2]; 2],
    cache: Arc<AnswerCache>,
    prefix: String,
    local_rate: rate::Local,
    reservations: Arc<rate::Reservations>,
    local_daily: Arc<daily::Local>,
}

impl Limiter {
    /// Limits kept in the Redis behind `cache`, under `prefix` (`cache.key_prefix`).
    pub fn new(cache: Arc<AnswerCache>, prefix: &str, metrics: Metrics) -> Limiter {
        let checks = Limit::ALL.map(|limit| {
            Store::ALL.map(|store| {
                ["allowed", "limited"].map(|result| {
                    metrics.rate_limit_checks.with_label_values(&[
                        limit.as_str(),
                        store.as_str(),
                        result,
                    ])
                })
            })
        });
        Limiter {
            policies: headers::Policies::default(),
            checks,
            cache,
            prefix: prefix.to_owned(),
            local_rate: rate::Local::default(),
            reservations: Arc::default(),
            local_daily: Arc::default(),
        }
    }

    /// Checks one request of `client` against its rate; `None` when it has none.
    pub async fn check_rate(&self, client: &Client) -> Option<RateDecision> {
        let limits: &ClientLimits = &client.limits;
        if limits.rps <= 0.0 {
            return None;
        }
        let wanted = rate::batch(limits);
        let key = || format!("{}limits:rate:{}", self.prefix, client.id.hex());
        let (decision, store) = match self.reservations.decide(client.id, wanted) {
            // What this instance holds of Redis's answers: a cell taken with others, or
            // a refusal that still stands.
            Some(held) => {
                if held.fetch_more {
                    self.fetch_more(client.id, key(), *limits, wanted);
                }
                (held.decision, Store::Redis)
            }
            None => {
                let fetch = wanted > 1 && self.reservations.claim_fetch(client.id);
                // Ends the claim if this request goes away before Redis answers.
                let claim = fetch.then(|| rate::FetchClaim::new(&self.reservations, client.id));
                let asked = if fetch { wanted } else { 1 };
                match rate::take_in_redis(&self.cache, &key(), limits, asked).await {
                    Ok((d, granted)) => {
                        let spent = u64::from(d.allowed);
                        self.reservations.keep(client.id, &d, granted, spent, fetch);
                        if let Some(claim) = claim {
                            claim.settled();
                        }
                        (d, Store::Redis)
                    }
                    Err(_) => (self.local_rate.check(client.id, limits), Store::Local),
                }
            }
        };
        self.count(Limit::Rate, store, decision.allowed);
        if !decision.allowed {
            tracing::debug!(
                client = client.name.as_deref(),
                store = store.as_str(),
                retry_after_ms = decision.retry_after.as_millis() as u64,
                "request rate limited"
            );
        }
        Some(decision)
    }

    /// Fetches the next batch of `id`'s cells off the request's path, while the last
    /// ones are being spent.
    fn fetch_more(
        &self,
        id: crate::clients::ClientId,
        key: String,
        limits: ClientLimits,
        wanted: u64,
    ) {
        let cache = self.cache.clone();
        let reservations = self.reservations.clone();
        tokio::spawn(async move {
            match rate::take_in_redis(&cache, &key, &limits, wanted).await {
                Ok((d, granted)) => reservations.keep(id, &d, granted, 0, true),
                Err(_) => reservations.fetch_failed(id),
            }
        });
    }

    /// The model calls `client` has left today; `None` when it has no budget.
    pub async fn daily_left(&self, client: &Client) -> Option<DailyState> {
        let budget = client.limits.model_calls_per_day;
        if budget == 0 {
            return None;
        }
        let (day, reset) = daily::today();
        let fresh = self.local_daily.fresh(client.id, day, budget);
        let (used, store) = match fresh {
            Some(used) => (used, Store::Redis),
            None => match daily::used_in_redis(&self.cache, &self.daily_key(client, day)).await {
                Ok(used) => {
                    self.local_daily.set(client.id, day, used);
                    (used, Store::Redis)
                }
                Err(_) => (self.local_daily.used(client.id, day), Store::Local),
            },
        };
        // Walks this instance admitted and has not charged yet count as a call each: a
        // burst of new questions with one call left gets one walk, not one each.
        let remaining = budget
            .saturating_sub(used)
            .saturating_sub(self.local_daily.pending(client.id));
        self.count(Limit::Daily, store, remaining > 0);
        if remaining == 0 {
            tracing::debug!(
                client = client.name.as_deref(),
                store = store.as_str(),
                budget,
                "daily model-call budget spent"
            );
        }
        Some(DailyState { remaining, reset })
    }

    /// Counts one admitted walk of `client` as pending until the guard is dropped (after
    /// its charge, or when it shared another walk and never walked).
    pub fn admit(&self, client: &Client) -> daily::Pending {
        self.local_daily.admit(client.id)
    }

    /// Adds `calls` upstream model calls to `client`'s count of today, in Redis, or in
    /// memory when Redis cannot be told.
    pub async fn charge(&self, client: &Client, calls: u32) {
        if calls == 0 || client.limits.model_calls_per_day == 0 {
            return;
        }
        let (day, _) = daily::today();
        let key = self.daily_key(client, day);
        match daily::charge_in_redis(&self.cache, &key, u64::from(calls)).await {
            Ok(used) => self.local_daily.set(client.id, day, used),
            Err(_) => self.local_daily.add(client.id, day, u64::from(calls)),
        }
    }

    /// Forgets in-memory state that no longer limits anyone; every minute, for ever.
    pub async fn tidy(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            self.local_rate.tidy();
            self.reservations.tidy();
            self.local_daily.tidy(daily::today().0);
        }
    }

    fn daily_key(&self, client: &Client, day: u64) -> String {
        format!(
            "{}limits:daily:{}:{}",
            self.prefix,
            daily::date(day),
            client.id.hex()
        )
    }

    fn count(&self, limit: Limit, store: Store, allowed: bool) {
        self.checks[limit as usize][store as usize][usize::from(!allowed)].inc();
    }
}
