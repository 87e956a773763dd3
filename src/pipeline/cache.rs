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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_redis::redis;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::{Pool, Runtime, Timeouts};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

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
/// used in turn, made through the deadpool pool (with its connect timeout) and replaced
/// after an error. deadpool's own checkout PINGs on every use: a second round trip per
/// lookup, which halves the throughput of Redis cache hits.
struct SharedConnections {
    pool: Pool,
    slots: Vec<RwLock<Option<MultiplexedConnection>>>,
    next: AtomicUsize,
}

impl SharedConnections {
    fn new(pool: Pool, slots: usize) -> Self {
        SharedConnections {
            pool,
            slots: (0..slots.max(1)).map(|_| RwLock::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Runs `f` on a connection; a connection that fails is dropped, so the next use of
    /// its slot connects afresh.
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let current = slot.read().ok().and_then(|c| c.clone());
        let conn = match current {
            Some(c) => c,
            None => {
                let fresh = self.pool.get().await.map_err(|e| e.to_string())?;
                let conn = deadpool_redis::Connection::take(fresh);
                if let Ok(mut s) = slot.write() {
                    *s = Some(conn.clone());
                }
                conn
            }
        };
        let result = f(conn).await.map_err(|e| e.to_string());
        if result.is_err()
            && let Ok(mut s) = slot.write()
        {
            *s = None;
        }
        result
    }
}

pub struct AnswerCache {
    memory: Option<moka::future::Cache<String, CachedAnswer>>,
    redis: SharedConnections,
    redis_timeout: Duration,
    ttl_ms: u64,
    stale_ms: u64,
    prefix: String,
    metrics: Metrics,
    redis_up: Arc<AtomicBool>,
    writes: mpsc::Sender<WriteJob>,
    pub breaker: Breaker,
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
        metrics: Metrics,
    ) -> Result<(Arc<AnswerCache>, CacheWriter), String> {
        let timeout = Duration::from_millis(redis_cfg.timeout_ms);
        let mut pool_cfg = deadpool_redis::Config::from_url(redis_cfg.url.clone());
        pool_cfg.pool = Some(deadpool_redis::PoolConfig {
            max_size: redis_cfg.pool_size,
            timeouts: Timeouts {
                wait: Some(timeout),
                create: Some(timeout),
                recycle: Some(timeout),
            },
            ..Default::default()
        });
        let redis = pool_cfg
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| format!("redis.url: {e}"))?;
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
            redis_timeout: timeout,
            ttl_ms,
            stale_ms,
            prefix: cfg.key_prefix.clone(),
            metrics,
            redis_up: Arc::new(AtomicBool::new(false)),
            writes: tx,
        });
        let task = tokio::spawn(write_loop(cache.clone(), rx, stop.clone()));
        Ok((cache, CacheWriter { task, stop }))
    }

    pub fn key(&self, normalized: &str) -> String {
        super::normalize::cache_key(&self.prefix, normalized)
    }

    fn freshness(&self, entry: &CachedAnswer, now: u64) -> Freshness {
        let age = now.saturating_sub(entry.written_at_ms);
        if age < self.ttl_ms {
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
            Err(_) => Err(format!(
                "timed out after {} ms",
                self.redis_timeout.as_millis()
            )),
        };
        self.redis_up.store(raw.is_ok(), Ordering::Relaxed);
        match &raw {
            Ok(_) => permit.success(),
            Err(_) => permit.failure(),
        }
        match raw? {
            None => Ok(None),
            // An entry we cannot read is a miss: a later write replaces it.
            Some(s) => Ok(serde_json::from_str(&s).ok()),
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

    async fn redis_set(&self, job: &WriteJob) -> Result<(), String> {
        let Some(permit) = self.breaker.try_acquire() else {
            return Err("circuit breaker open".into());
        };
        let result = self.redis_set_unguarded(job).await;
        match &result {
            Ok(()) => permit.success(),
            Err(_) => permit.failure(),
        }
        result
    }

    async fn redis_set_unguarded(&self, job: &WriteJob) -> Result<(), String> {
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
            Err(_) => Err("timed out".into()),
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
        let fut = self.redis.run(|mut conn| async move {
            let (removed, _receivers): (u64, u64) = redis::pipe()
                .cmd("DEL")
                .arg(key)
                .cmd("PUBLISH")
                .arg(&channel)
                .arg(key)
                .query_async(&mut conn)
                .await?;
            Ok(removed)
        });
        let removed = match tokio::time::timeout(self.redis_timeout * 5, fut).await {
            Ok(r) => r?,
            Err(_) => return Err("redis timed out".into()),
        };
        Ok(removed > 0 || in_memory)
    }

    /// Checks Redis with a PING; the result feeds `/readyz` and `qa_redis_up`.
    pub async fn ping(&self) -> bool {
        let fut = self.redis.run(|mut conn| async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        });
        let up = matches!(
            tokio::time::timeout(self.redis_timeout * 5, fut).await,
            Ok(Ok(_))
        );
        self.redis_up.store(up, Ordering::Relaxed);
        self.metrics.redis_up.set(if up { 1.0 } else { 0.0 });
        up
    }

    pub fn redis_is_up(&self) -> bool {
        self.redis_up.load(Ordering::Relaxed)
    }

    /// Listens for deletions announced by any instance and drops them from memory; runs
    /// until aborted, reconnecting when Redis goes away. Deletions missed while
    /// disconnected cannot be replayed, so a new subscription starts with an empty memory
    /// layer.
    pub async fn follow_invalidations(self: Arc<Self>, url: String) {
        use futures_util::StreamExt;
        let Some(memory) = self.memory.clone() else {
            return;
        };
        let channel = self.invalidation_channel();
        let mut first = true;
        loop {
            let subscribed = async {
                let client = redis::Client::open(url.as_str())?;
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
                Some(job) if !backlog.is_empty() => push_backlog(&cache, &mut backlog, job),
                Some(job) => {
                    if let Err(job) = write_once(&cache, job, "ok").await {
                        push_backlog(&cache, &mut backlog, job);
                    }
                }
                None => return,
            },
            _ = retry_tick.tick(), if !backlog.is_empty() => {
                drain_backlog(&cache, &mut backlog).await;
            }
            _ = stop.notified() => break,
        }
    }
    // Shutdown: no new writes; everything queued gets one more try, the rest is dropped.
    rx.close();
    while let Some(job) = rx.recv().await {
        backlog.push_back(job);
    }
    drain_backlog(&cache, &mut backlog).await;
    if !backlog.is_empty() {
        tracing::warn!(
            dropped = backlog.len(),
            "redis unreachable at shutdown; cached answers not written"
        );
        cache
            .metrics
            .cache_writes
            .with_label_values(&["dropped"])
            .inc_by(backlog.len() as u64);
    }
}

/// One write; gives the job back on failure.
async fn write_once(cache: &AnswerCache, job: WriteJob, result: &str) -> Result<(), WriteJob> {
    match cache.redis_set(&job).await {
        Ok(()) => {
            cache
                .metrics
                .cache_writes
                .with_label_values(&[result])
                .inc();
            Ok(())
        }
        Err(e) => {
            cache
                .metrics
                .cache_writes
                .with_label_values(&["error"])
                .inc();
            tracing::debug!(error = %e, "redis cache write failed; kept for a retry");
            Err(job)
        }
    }
}

fn push_backlog(cache: &AnswerCache, backlog: &mut VecDeque<WriteJob>, job: WriteJob) {
    if backlog.len() >= WRITE_BACKLOG {
        backlog.pop_front();
        cache
            .metrics
            .cache_writes
            .with_label_values(&["dropped"])
            .inc();
    }
    backlog.push_back(job);
}

/// Writes the backlog in order until one write fails (Redis still away).
async fn drain_backlog(cache: &AnswerCache, backlog: &mut VecDeque<WriteJob>) {
    while let Some(job) = backlog.pop_front() {
        if let Err(job) = write_once(cache, job, "retried").await {
            backlog.push_front(job);
            return;
        }
    }
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
