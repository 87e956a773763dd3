//! The answer cache: a bounded in-process layer (moka) in front of Redis (deadpool-redis).
//!
//! Entries carry the answer, the model that wrote it and when; they are fresh for
//! `cache.ttl_secs` and may serve as `stale` for `cache.stale_ttl_secs` after that, in
//! both layers. A Redis failure is a counted miss bounded by `redis.timeout_ms`, never an
//! error, and Redis sits behind a circuit breaker so an outage costs no time at all once
//! noticed. Writes to Redis go through a queue drained by one background task, off the
//! response path; a write that fails waits in a bounded backlog and is retried until Redis
//! is back (or counted as dropped when the backlog overflows or shutdown ends it). The
//! queue is flushed at shutdown. An answer deleted by an operator is announced on a Redis
//! channel, so every instance sharing the Redis drops it from its memory too.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_redis::redis;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::topology::{self, Conn, ConnPool, Subscriber};
use crate::config::{BreakerConfig, CacheConfig, RedisConfig};
use crate::resilience::breaker::Breaker;
use crate::telemetry::Metrics;

/// What the cache keeps for a question.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CachedAnswer {
    pub answer: Arc<str>,
    pub model: Arc<str>,
    /// Unix time of the write, in milliseconds.
    pub written_at_ms: u64,
    /// Fingerprint of the model configuration that wrote the answer
    /// ([`crate::config::Config::answer_fingerprint`]): an answer is fresh only for the
    /// configuration that wrote it; for any other it may still serve as stale. Entries
    /// written before fingerprints existed have none.
    #[serde(default)]
    pub config: Option<Arc<str>>,
}

/// How far in the future a `written_at_ms` may lie (clocks of instances sharing a Redis
/// differ a little); past it the value is not ours to trust, and is a miss.
const CLOCK_SKEW_MS: u64 = 60_000;

/// Why a Redis command failed.
#[derive(Debug, Clone)]
pub enum RedisFailure {
    /// No connection, a dropped one, or no answer in time: Redis is unhealthy.
    Unreachable(String),
    /// Redis refused our credentials (`WRONGPASS`, `NOAUTH`).
    AuthFailed(String),
    /// Redis answered, with an error for this command (`WRONGTYPE` at one key, `OOM` on a
    /// write...): Redis itself is up.
    Reply(String),
}

impl RedisFailure {
    fn classify(e: &redis::RedisError) -> RedisFailure {
        use redis::ErrorKind as K;
        let text = e.to_string();
        if e.kind() == K::AuthenticationFailed || matches!(e.code(), Some("WRONGPASS" | "NOAUTH")) {
            return RedisFailure::AuthFailed(text);
        }
        use redis::ServerErrorKind as S;
        // A node that cannot serve (a demoted primary, one loading its data, a cluster
        // without quorum) is unhealthy: the connection is dropped, so the next command
        // finds the node that can.
        let not_serving = matches!(
            e.kind(),
            K::Server(S::ReadOnly | S::BusyLoading | S::MasterDown | S::ClusterDown | S::TryAgain)
        );
        let answered = !not_serving
            && matches!(
                e.kind(),
                K::Server(_) | K::Extension | K::UnexpectedReturnType | K::Parse
            );
        if answered && !e.is_io_error() && !e.is_connection_dropped() && !e.is_timeout() {
            RedisFailure::Reply(text)
        } else {
            RedisFailure::Unreachable(text)
        }
    }

    /// Whether this failure says Redis is unhealthy (for its breaker and `/readyz`).
    fn is_health_failure(&self) -> bool {
        !matches!(self, RedisFailure::Reply(_))
    }
}

impl std::fmt::Display for RedisFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisFailure::Unreachable(m) => write!(f, "unreachable: {m}"),
            RedisFailure::AuthFailed(m) => write!(f, "authentication failed: {m}"),
            RedisFailure::Reply(m) => write!(f, "error reply: {m}"),
        }
    }
}

/// Redis as last seen: `/readyz`'s `redis` check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisState {
    Down = 0,
    Up = 1,
    AuthFailed = 2,
}

impl RedisState {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisState::Down => "down",
            RedisState::Up => "up",
            RedisState::AuthFailed => "auth_failed",
        }
    }

    fn from_u8(v: u8) -> RedisState {
        match v {
            1 => RedisState::Up,
            2 => RedisState::AuthFailed,
            _ => RedisState::Down,
        }
    }
}

/// What a lookup found.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    pub fresh: Option<CachedAnswer>,
    /// An expired answer still inside its stale period: the last tier but one.
    pub stale: Option<CachedAnswer>,
    /// Time spent waiting on Redis (zero for a memory hit).
    pub redis_time: Duration,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(PartialEq, Eq)]
enum Freshness {
    Fresh,
    Stale,
    Gone,
}

struct WriteJob {
    key: String,
    value: String,
}

/// How many answers may wait to be written to Redis before new ones are dropped.
const WRITE_QUEUE: usize = 10_000;
/// How many failed writes wait for Redis to come back; past it the oldest are dropped.
const WRITE_BACKLOG: usize = 10_000;
/// How often the backlog is retried while Redis is away.
const BACKLOG_RETRY: Duration = Duration::from_millis(500);

/// Multiplexed Redis connections shared by every request (commands pipeline over them),
/// used in turn, made through the pool of the configured topology (with its connect
/// timeout) and replaced after an error. A pool checkout of its own per command (as
/// deadpool's is, with a PING) would be a second round trip per lookup, which halves the
/// throughput of Redis cache hits.
struct SharedConnections {
    pool: ConnPool,
    slots: Vec<RwLock<Option<Conn>>>,
    next: AtomicUsize,
}

impl SharedConnections {
    fn new(pool: ConnPool, slots: usize) -> Self {
        SharedConnections {
            pool,
            slots: (0..slots.max(1)).map(|_| RwLock::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Runs `f` on a connection; a connection that fails (not a command that Redis
    /// answered with an error) is dropped, so the next use of its slot connects afresh
    /// (to the primary the sentinels name now, or with a cluster's slot map read anew).
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, RedisFailure>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let current = slot.read().ok().and_then(|c| c.clone());
        let conn = match current {
            Some(c) => c,
            None => {
                let fresh = self.pool.get().await.map_err(|e| match e {
                    deadpool::managed::PoolError::Backend(e) => RedisFailure::classify(&e),
                    other => RedisFailure::Unreachable(other.to_string()),
                })?;
                let conn = deadpool::managed::Object::take(fresh);
                if let Ok(mut s) = slot.write() {
                    *s = Some(conn.clone());
                }
                conn
            }
        };
        // A command dropped before its answer (its caller's timeout fired: a node that
        // vanished without closing the connection answers nothing) drops the connection
        // too, so that the next command connects afresh (to the new primary, after a
        // failover) instead of waiting on a dead peer until TCP gives up.
        let mut unanswered = DropSlotUnlessAnswered {
            slot,
            answered: false,
        };
        let result = f(conn).await.map_err(|e| RedisFailure::classify(&e));
        unanswered.answered = true;
        if let Err(e) = &result
            && e.is_health_failure()
            && let Ok(mut s) = slot.write()
        {
            *s = None;
        }
        result
    }
}

/// Empties a connection slot when dropped before its command was answered.
struct DropSlotUnlessAnswered<'a> {
    slot: &'a RwLock<Option<Conn>>,
    answered: bool,
}

impl Drop for DropSlotUnlessAnswered<'_> {
    fn drop(&mut self) {
        if !self.answered
            && let Ok(mut s) = self.slot.write()
        {
            *s = None;
        }
    }
}

/// Takes a lease that is free or holds the mark a finished leader leaves that frees it:
/// `KEYS[1]` the lease, `ARGV[1]` the holder, `ARGV[2]` the time to live in ms, `ARGV[3]`
/// the mark. Returns 1 if taken.
const TAKE_LEASE: &str = r#"local v = redis.call("GET", KEYS[1]) if v == false or v == ARGV[3] then redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2]) return 1 else return 0 end"#;

/// Extends a lease if its holder still holds it: `KEYS[1]` the lease, `ARGV[1]` the
/// holder, `ARGV[2]` the new time to live in milliseconds. Returns 1 if extended.
const RENEW_LEASE: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end"#;

/// Deletes a lease if its holder still holds it: `KEYS[1]` the lease, `ARGV[1]` the
/// holder. Returns 1 if deleted.
const RELEASE_LEASE: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;

/// Replaces a lease's value if its holder still holds it: `KEYS[1]` the lease,
/// `ARGV[1]` the holder, `ARGV[2]` the new value, `ARGV[3]` its time to live in ms.
const HAND_OVER_LEASE: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3]) return 1 else return 0 end"#;

pub struct AnswerCache {
    memory: Option<moka::future::Cache<String, CachedAnswer>>,
    redis: SharedConnections,
    /// Where the invalidation subscription connects.
    subscriber: Subscriber,
    redis_timeout: Duration,
    ttl_ms: u64,
    stale_ms: u64,
    prefix: String,
    /// `cache.coalesce_across_instances`.
    across_instances: bool,
    /// The fingerprint of the configuration answers are fresh for.
    fingerprint: Arc<str>,
    /// Longest answer accepted from Redis, in bytes.
    max_answer_bytes: usize,
    metrics: Metrics,
    redis_state: AtomicU8,
    /// Set while writes to Redis fail (in a run of failures, since the last success).
    writes_failing: AtomicBool,
    writes: mpsc::Sender<WriteJob>,
    pub breaker: Breaker,
}

/// How the cache is built: the settings of [`AnswerCache::new`] beyond the config
/// sections.
pub struct CacheOptions {
    /// Fingerprint of the model configuration ([`crate::config::Config::answer_fingerprint`]).
    pub fingerprint: String,
    /// Longest answer accepted from Redis, in bytes (the largest tier response cap).
    pub max_answer_bytes: usize,
}

/// The background writer: drained and stopped by [`CacheWriter::flush`].
pub struct CacheWriter {
    task: JoinHandle<()>,
    stop: Arc<tokio::sync::Notify>,
}

impl AnswerCache {
    pub fn new(
        cfg: &CacheConfig,
        redis_cfg: &RedisConfig,
        breaker_cfg: &BreakerConfig,
        options: CacheOptions,
        metrics: Metrics,
    ) -> Result<(Arc<AnswerCache>, CacheWriter), String> {
        let timeout = Duration::from_millis(redis_cfg.timeout_ms);
        let (redis, subscriber) = topology::connect(redis_cfg, timeout)?;
        let ttl_ms = cfg.ttl_secs.saturating_mul(1000);
        let stale_ms = cfg.stale_ttl_secs.saturating_mul(1000);
        let memory = (cfg.memory_max_entries > 0).then(|| {
            moka::future::Cache::builder()
                .max_capacity(cfg.memory_max_entries)
                .time_to_live(Duration::from_millis(ttl_ms.saturating_add(stale_ms)))
                .build()
        });
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let stop = Arc::new(tokio::sync::Notify::new());
        let breaker = Breaker::new(
            "redis",
            breaker_cfg,
            metrics.circuit_state.with_label_values(&["redis"]),
        );
        let cache = Arc::new(AnswerCache {
            breaker,
            memory,
            redis: SharedConnections::new(redis, redis_cfg.pool_size),
            subscriber,
            redis_timeout: timeout,
            ttl_ms,
            stale_ms,
            prefix: cfg.key_prefix.clone(),
            across_instances: cfg.coalesce_across_instances,
            fingerprint: Arc::from(options.fingerprint),
            max_answer_bytes: options.max_answer_bytes,
            metrics,
            redis_state: AtomicU8::new(RedisState::Down as u8),
            writes_failing: AtomicBool::new(false),
            writes: tx,
        });
        let task = tokio::spawn(write_loop(cache.clone(), rx, stop.clone()));
        Ok((cache, CacheWriter { task, stop }))
    }

    pub fn key(&self, normalized: &str) -> String {
        super::normalize::cache_key(&self.prefix, normalized)
    }

    /// Whether walks are shared across the instances sharing the Redis, through a lease
    /// per question (`cache.coalesce_across_instances`).
    pub fn coalesces_across_instances(&self) -> bool {
        self.across_instances
    }

    /// The fingerprint answers written now carry.
    pub fn fingerprint(&self) -> Arc<str> {
        self.fingerprint.clone()
    }

    fn freshness(&self, entry: &CachedAnswer, now: u64) -> Freshness {
        let age = now.saturating_sub(entry.written_at_ms);
        let ours = entry.config.as_deref() == Some(&*self.fingerprint);
        if age < self.ttl_ms && ours {
            Freshness::Fresh
        } else if age < self.ttl_ms.saturating_add(self.stale_ms) {
            Freshness::Stale
        } else {
            Freshness::Gone
        }
    }

    fn count(&self, layer: &str, result: &str) {
        self.metrics
            .cache_lookups
            .with_label_values(&[layer, result])
            .inc();
    }

    /// Memory first, then Redis. A fresh Redis entry is copied into memory.
    pub async fn lookup(&self, key: &str) -> Lookup {
        let now = now_ms();
        let mut found = Lookup::default();
        if let Some(memory) = &self.memory {
            match memory.get(key).await {
                Some(e) => match self.freshness(&e, now) {
                    Freshness::Fresh => {
                        self.count("memory", "hit");
                        found.fresh = Some(e);
                        return found;
                    }
                    Freshness::Stale => {
                        self.count("memory", "stale");
                        found.stale = Some(e);
                    }
                    Freshness::Gone => self.count("memory", "miss"),
                },
                None => self.count("memory", "miss"),
            }
        }
        let asked = std::time::Instant::now();
        let got = self.redis_get(key).await;
        found.redis_time = asked.elapsed();
        match got {
            Ok(Some(e)) => match self.freshness(&e, now) {
                Freshness::Fresh => {
                    self.count("redis", "hit");
                    if let Some(memory) = &self.memory {
                        memory.insert(key.to_string(), e.clone()).await;
                    }
                    found.fresh = Some(e);
                }
                Freshness::Stale => {
                    self.count("redis", "stale");
                    let newer = found
                        .stale
                        .as_ref()
                        .is_none_or(|m| m.written_at_ms < e.written_at_ms);
                    if newer {
                        found.stale = Some(e);
                    }
                }
                Freshness::Gone => self.count("redis", "miss"),
            },
            Ok(None) => self.count("redis", "miss"),
            Err(e) => {
                self.count("redis", "error");
                tracing::debug!(error = %e, "redis lookup failed; treated as a miss");
            }
        }
        found
    }

    /// Whether a value read from Redis can be served: what a model would have to send
    /// for its answer to be kept (non-empty text, within the size cap), written by a
    /// model, and not written in the future.
    fn valid(&self, entry: &CachedAnswer, now: u64) -> bool {
        !entry.answer.trim().is_empty()
            && entry.answer.len() <= self.max_answer_bytes
            && !entry.model.trim().is_empty()
            && entry.written_at_ms <= now.saturating_add(CLOCK_SKEW_MS)
    }

    async fn redis_get(&self, key: &str) -> Result<Option<CachedAnswer>, String> {
        let Some(permit) = self.breaker.try_acquire() else {
            return Err("circuit breaker open".into());
        };
        let fut = self.redis.run(|mut conn| async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut conn)
                .await
        });
        let raw = match tokio::time::timeout(self.redis_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(RedisFailure::Unreachable(format!(
                "timed out after {} ms",
                self.redis_timeout.as_millis()
            ))),
        };
        let raw = match raw {
            // Redis answered, with an error for this key only (a value of another type,
            // say): a miss for this key, and Redis is as healthy as it was.
            Err(RedisFailure::Reply(e)) => {
                permit.success();
                tracing::debug!(key, error = %e, "redis refused the lookup of one key; treated as a miss");
                return Ok(None);
            }
            other => other,
        };
        match &raw {
            Ok(_) => {
                permit.success();
                self.set_state(RedisState::Up);
            }
            Err(e) => {
                permit.failure();
                self.note_failure(e);
            }
        }
        let Some(text) = raw.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        // A value we cannot read, or would not have written, is a miss: a later write
        // replaces it.
        match serde_json::from_str::<CachedAnswer>(&text) {
            Ok(entry) if self.valid(&entry, now_ms()) => Ok(Some(entry)),
            _ => {
                tracing::debug!(key, "invalid value in redis; treated as a miss");
                Ok(None)
            }
        }
    }

    fn set_state(&self, state: RedisState) {
        self.redis_state.store(state as u8, Ordering::Relaxed);
    }

    /// Records what a failed command says of Redis's health.
    fn note_failure(&self, e: &RedisFailure) {
        match e {
            RedisFailure::AuthFailed(_) => self.set_state(RedisState::AuthFailed),
            RedisFailure::Unreachable(_) => self.set_state(RedisState::Down),
            RedisFailure::Reply(_) => {}
        }
    }

    /// Keeps a model's answer: in memory now, in Redis through the write queue.
    pub async fn store(&self, key: String, entry: CachedAnswer) {
        if let Some(memory) = &self.memory {
            memory.insert(key.clone(), entry.clone()).await;
        }
        let value = match serde_json::to_string(&entry) {
            Ok(v) => v,
            Err(_) => return,
        };
        if self.writes.try_send(WriteJob { key, value }).is_err() {
            self.metrics
                .cache_writes
                .with_label_values(&["dropped"])
                .inc();
            tracing::warn!("cache write queue full or closed; answer not written to redis");
        }
    }

    /// One write behind the breaker. An error reply (`OOM` with `noeviction`, say) says
    /// nothing against Redis's health: reads may well go on working.
    async fn redis_set(&self, job: &WriteJob) -> Result<(), RedisFailure> {
        let Some(permit) = self.breaker.try_acquire() else {
            return Err(RedisFailure::Unreachable("circuit breaker open".into()));
        };
        let result = self.redis_set_unguarded(job).await;
        match &result {
            Ok(()) => permit.success(),
            Err(e) if !e.is_health_failure() => permit.success(),
            Err(e) => {
                permit.failure();
                self.note_failure(e);
            }
        }
        result
    }

    /// One write, not behind the breaker: the shutdown flush, which must not give up on
    /// a Redis that is back only because the breaker has not probed it yet.
    async fn redis_set_unguarded(&self, job: &WriteJob) -> Result<(), RedisFailure> {
        let ttl_secs = (self.ttl_ms.saturating_add(self.stale_ms) / 1000).max(1);
        let fut = self.redis.run(|mut conn| async move {
            redis::cmd("SET")
                .arg(&job.key)
                .arg(&job.value)
                .arg("EX")
                .arg(ttl_secs)
                .query_async::<()>(&mut conn)
                .await
        });
        match tokio::time::timeout(self.redis_timeout * 5, fut).await {
            Ok(r) => r,
            Err(_) => Err(RedisFailure::Unreachable("timed out".into())),
        }
    }

    /// Whether writes to Redis are failing now (since the last one that succeeded).
    pub fn writes_failing(&self) -> bool {
        self.writes_failing.load(Ordering::Relaxed)
    }

    /// Notes a write's result: the first failure of a run is logged at WARN, the first
    /// success after one at INFO.
    fn note_write(&self, result: &Result<(), RedisFailure>) {
        let failing = result.is_err();
        if self.writes_failing.swap(failing, Ordering::Relaxed) != failing {
            match result {
                Err(e) => {
                    tracing::warn!(error = %e, "redis cache writes are failing; answers wait in the backlog")
                }
                Ok(()) => tracing::info!("redis cache writes succeed again"),
            }
        }
    }

    /// The channel on which deletions are announced to every instance.
    fn invalidation_channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }

    /// Removes a question's answer from Redis and from the memory of every instance that
    /// shares the Redis (this one at once, the others through the invalidation channel).
    pub async fn delete(&self, key: &str) -> Result<bool, String> {
        let in_memory = match &self.memory {
            Some(m) => m.remove(key).await.is_some(),
            None => false,
        };
        let channel = self.invalidation_channel();
        // A lease left on the question (a leader's, or its "answered" mark) goes too, so
        // that the next ask calls the model at once instead of waiting on it.
        let lease = Self::lease_key(key);
        // The answer and its lease share a hash slot (one pipeline, even in a cluster);
        // the channel is not a key of that slot, so the announcement goes on its own.
        let fut = self.redis.run(|mut conn| async move {
            let (removed, _lease): (u64, u64) = redis::pipe()
                .cmd("DEL")
                .arg(key)
                .cmd("DEL")
                .arg(&lease)
                .query_async(&mut conn)
                .await?;
            let _receivers: u64 = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(key)
                .query_async(&mut conn)
                .await?;
            Ok(removed)
        });
        let removed = match tokio::time::timeout(self.redis_timeout * 5, fut).await {
            Ok(r) => r.map_err(|e| e.to_string())?,
            Err(_) => return Err("redis timed out".into()),
        };
        Ok(removed > 0 || in_memory)
    }

    /// The lease key of a question key: who, among the instances sharing the Redis, is
    /// asking the models for it now. The question key is its hash tag, so that in
    /// cluster mode both live in one hash slot (one node, one pipeline).
    fn lease_key(key: &str) -> String {
        format!("{{{key}}}:lease")
    }

    /// One command (a lease's, a rate limit's) behind the Redis breaker and
    /// `redis.timeout_ms`. `Err` when Redis cannot say (down, breaker open, timed out):
    /// the caller then decides on its own. An error reply is returned as
    /// [`RedisFailure::Reply`] and says nothing against Redis's health.
    pub(crate) async fn command<T: redis::FromRedisValue + Send + 'static>(
        &self,
        cmd: redis::Cmd,
    ) -> Result<T, RedisFailure> {
        let Some(permit) = self.breaker.try_acquire() else {
            return Err(RedisFailure::Unreachable("circuit breaker open".into()));
        };
        let fut = self
            .redis
            .run(|mut conn| async move { cmd.query_async::<T>(&mut conn).await });
        let result = match tokio::time::timeout(self.redis_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(RedisFailure::Unreachable("timed out".into())),
        };
        match &result {
            Err(e) if e.is_health_failure() => {
                permit.failure();
                self.note_failure(e);
            }
            _ => permit.success(),
        }
        result
    }

    /// Takes the lease of `key` for `holder` for `ttl`, if nobody holds it or it only
    /// holds the `takeable` mark a finished leader leaves: `Ok(true)` when taken,
    /// `Ok(false)` when a leader (or another mark) holds it.
    pub async fn take_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
        takeable: &str,
    ) -> Result<bool, String> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(TAKE_LEASE)
            .arg(1)
            .arg(Self::lease_key(key))
            .arg(holder)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(takeable);
        self.command::<i64>(cmd)
            .await
            .map(|taken| taken == 1)
            .map_err(|e| e.to_string())
    }

    /// Extends `holder`'s lease of `key` to `ttl` from now, if it still holds it.
    pub async fn renew_lease(&self, key: &str, holder: &str, ttl: Duration) -> bool {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RENEW_LEASE)
            .arg(1)
            .arg(Self::lease_key(key))
            .arg(holder)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        matches!(self.command::<i64>(cmd).await, Ok(1))
    }

    /// Gives up `holder`'s lease of `key`, if it still holds it (another holder's lease
    /// is left alone).
    pub async fn release_lease(&self, key: &str, holder: &str) {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RELEASE_LEASE)
            .arg(1)
            .arg(Self::lease_key(key))
            .arg(holder);
        let _ = self.command::<i64>(cmd).await;
    }

    /// Who holds the lease of `key` (`None`: nobody); `Err` when Redis cannot say.
    pub async fn lease_holder(&self, key: &str) -> Result<Option<String>, String> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(Self::lease_key(key));
        self.command::<Option<String>>(cmd)
            .await
            .map_err(|e| e.to_string())
    }

    /// Replaces `holder`'s lease of `key`, if it still holds it, by `value` for `ttl`:
    /// how a leader whose models gave no answer tells the instances waiting on it.
    pub async fn hand_over_lease(&self, key: &str, holder: &str, value: &str, ttl: Duration) {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(HAND_OVER_LEASE)
            .arg(1)
            .arg(Self::lease_key(key))
            .arg(holder)
            .arg(value)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let _ = self.command::<i64>(cmd).await;
    }

    /// The fresh answer to `key` in Redis, if another instance has written it: read
    /// while waiting on its lease, so not counted as a lookup. A fresh answer is copied
    /// into memory.
    pub async fn fresh_in_redis(&self, key: &str) -> Option<CachedAnswer> {
        let entry = self.redis_get(key).await.ok()??;
        if self.freshness(&entry, now_ms()) != Freshness::Fresh {
            return None;
        }
        if let Some(memory) = &self.memory {
            memory.insert(key.to_string(), entry.clone()).await;
        }
        Some(entry)
    }

    /// Checks Redis with a PING; the result feeds `/readyz` and `qa_redis_up`.
    pub async fn ping(&self) -> RedisState {
        let fut = self.redis.run(|mut conn| async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        });
        let state = match tokio::time::timeout(self.redis_timeout * 5, fut).await {
            Ok(Ok(_)) => RedisState::Up,
            Ok(Err(RedisFailure::AuthFailed(_))) => RedisState::AuthFailed,
            // Redis answered (`LOADING`, say): reachable, but not serving.
            Ok(Err(_)) | Err(_) => RedisState::Down,
        };
        self.set_state(state);
        self.metrics
            .redis_up
            .set(if state == RedisState::Up { 1.0 } else { 0.0 });
        state
    }

    /// Redis as last seen, by a lookup or a PING.
    pub fn redis_state(&self) -> RedisState {
        RedisState::from_u8(self.redis_state.load(Ordering::Relaxed))
    }

    pub fn redis_is_up(&self) -> bool {
        self.redis_state() == RedisState::Up
    }

    /// Listens for deletions announced by any instance and drops them from memory; runs
    /// until aborted, reconnecting when Redis goes away. Deletions missed while
    /// disconnected cannot be replayed, so a new subscription starts with an empty memory
    /// layer.
    pub async fn follow_invalidations(self: Arc<Self>) {
        use futures_util::StreamExt;
        let Some(memory) = self.memory.clone() else {
            return;
        };
        let channel = self.invalidation_channel();
        let mut first = true;
        let mut attempt = 0usize;
        loop {
            let subscribed = async {
                let client = self.subscriber.client(attempt).await?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(self.redis_timeout * 10, subscribed).await {
                Ok(Ok(pubsub)) => {
                    if !first {
                        memory.invalidate_all();
                    }
                    first = false;
                    let mut messages = pubsub.into_on_message();
                    while let Some(msg) = messages.next().await {
                        if let Ok(key) = msg.get_payload::<String>() {
                            memory.remove(&key).await;
                        }
                    }
                    tracing::debug!("cache invalidation subscription ended; reconnecting");
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot subscribe to cache invalidations")
                }
                Err(_) => tracing::debug!("subscribing to cache invalidations timed out"),
            }
            attempt = attempt.wrapping_add(1);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn write_loop(
    cache: Arc<AnswerCache>,
    mut rx: mpsc::Receiver<WriteJob>,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut backlog: VecDeque<WriteJob> = VecDeque::new();
    let mut retry_tick = tokio::time::interval(BACKLOG_RETRY);
    retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            job = rx.recv() => match job {
                // While older writes wait, newer ones queue behind them, so that the
                // last answer for a key is the one Redis keeps.
                Some(job) if !backlog.is_empty() => {
                    count_write(&cache, "error");
                    push_backlog(&cache, &mut backlog, job);
                }
                Some(job) => {
                    let result = cache.redis_set(&job).await;
                    cache.note_write(&result);
                    match result {
                        Ok(()) => count_write(&cache, "ok"),
                        Err(e) => {
                            // Counted once per answer (here, or when it queues behind
                            // older failed writes); its retries are not.
                            count_write(&cache, "error");
                            tracing::debug!(error = %e, "redis cache write failed; kept for a retry");
                            push_backlog(&cache, &mut backlog, job);
                        }
                    }
                }
                None => return,
            },
            _ = retry_tick.tick(), if !backlog.is_empty() => {
                drain_backlog(&cache, &mut backlog, false).await;
            }
            _ = stop.notified() => break,
        }
    }
    // Shutdown: no new writes; everything queued gets one more try, past the breaker
    // (the same path as the health check), and the rest is dropped.
    rx.close();
    while let Some(job) = rx.recv().await {
        backlog.push_back(job);
    }
    cache
        .metrics
        .cache_write_backlog
        .set(i64::try_from(backlog.len()).unwrap_or(i64::MAX));
    let last_error = drain_backlog(&cache, &mut backlog, true).await;
    if !backlog.is_empty() {
        tracing::warn!(
            dropped = backlog.len(),
            error = last_error.map(|e| e.to_string()),
            "cache writes to redis failed at shutdown; answers not written"
        );
        cache
            .metrics
            .cache_writes
            .with_label_values(&["dropped"])
            .inc_by(backlog.len() as u64);
        backlog.clear();
        cache.metrics.cache_write_backlog.set(0);
    }
}

fn count_write(cache: &AnswerCache, result: &str) {
    cache
        .metrics
        .cache_writes
        .with_label_values(&[result])
        .inc();
}

fn push_backlog(cache: &AnswerCache, backlog: &mut VecDeque<WriteJob>, job: WriteJob) {
    if backlog.len() >= WRITE_BACKLOG {
        backlog.pop_front();
        count_write(cache, "dropped");
    }
    backlog.push_back(job);
    cache
        .metrics
        .cache_write_backlog
        .set(i64::try_from(backlog.len()).unwrap_or(i64::MAX));
}

/// Writes the backlog in order until one write fails (Redis still away); returns that
/// failure. `unguarded` skips the breaker (at shutdown).
async fn drain_backlog(
    cache: &AnswerCache,
    backlog: &mut VecDeque<WriteJob>,
    unguarded: bool,
) -> Option<RedisFailure> {
    let mut failure = None;
    while let Some(job) = backlog.pop_front() {
        let result = if unguarded {
            cache.redis_set_unguarded(&job).await
        } else {
            cache.redis_set(&job).await
        };
        cache.note_write(&result);
        match result {
            Ok(()) => count_write(cache, "retried"),
            Err(e) => {
                backlog.push_front(job);
                failure = Some(e);
                break;
            }
        }
    }
    cache
        .metrics
        .cache_write_backlog
        .set(i64::try_from(backlog.len()).unwrap_or(i64::MAX));
    failure
}

impl CacheWriter {
    /// Writes everything queued, then stops; bounded by `grace`.
    pub async fn flush(self, grace: Duration) {
        self.stop.notify_one();
        if tokio::time::timeout(grace, self.task).await.is_err() {
            tracing::warn!("cache writes still pending at the end of the shutdown grace");
        }
    }
}
