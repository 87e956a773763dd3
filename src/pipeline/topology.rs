//! Connections to Redis as it is deployed (`redis.mode`): one server, a primary watched
//! by Redis Sentinel, or a Redis Cluster. Each mode goes through redis-rs's own client for
//! it (`Client`, `SentinelClient`, `ClusterClient`), which finds the current primary (by
//! asking the sentinels) or the owner of each hash slot (following `MOVED`/`ASK` and
//! refreshing its slot map) by itself; no topology is tracked here. Connections are made
//! through a deadpool pool ([`TopologyManager`]), which bounds how many are made at once
//! and how long making one may take.
//!
//! deadpool-redis's own sentinel and cluster managers are not used: they take neither a
//! custom certificate authority (`redis.ca_file`) nor the data nodes' TLS settings.

use std::time::Duration;

use deadpool::managed;
use deadpool_redis::redis;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{IntoConnectionInfo, TlsCertificates};

use crate::config::{RedisConfig, RedisMode};

/// A connection to the Redis of any mode; commands run on it alike. Cheap to clone (both
/// kinds are multiplexed: clones share one connection, or one per node).
#[derive(Clone)]
pub enum Conn {
    /// To one server: standalone, or the primary the sentinels named.
    Node(MultiplexedConnection),
    /// To a cluster: each command goes to its hash slot's owner.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Makes [`Conn`]s for the configured mode (a deadpool [`managed::Manager`]).
pub enum TopologyManager {
    Standalone(redis::Client),
    /// `SentinelClient` asks the sentinels for the primary on every new connection (and
    /// checks its role), so a connection made after a failover reaches the new primary.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    Cluster(ClusterClient),
}

impl managed::Manager for TopologyManager {
    type Type = Conn;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<Conn, redis::RedisError> {
        match self {
            TopologyManager::Standalone(client) => client
                .get_multiplexed_async_connection()
                .await
                .map(Conn::Node),
            TopologyManager::Sentinel(client) => client
                .lock()
                .await
                .get_async_connection()
                .await
                .map(Conn::Node),
            TopologyManager::Cluster(client) => {
                client.get_async_connection().await.map(Conn::Cluster)
            }
        }
    }

    /// Connections are taken from the pool for good ([`managed::Object::take`]), never
    /// returned: nothing to recycle.
    async fn recycle(
        &self,
        _conn: &mut Conn,
        _: &managed::Metrics,
    ) -> managed::RecycleResult<redis::RedisError> {
        Ok(())
    }
}

/// The pool of connection makers for the configured mode.
pub type ConnPool = managed::Pool<TopologyManager>;

/// Where the invalidation subscription connects: pub/sub needs a connection of its own,
/// to one node (in a cluster, a message published on any node reaches every node).
pub enum Subscriber {
    /// The server (standalone).
    Node(redis::Client),
    /// The current primary, as the sentinels name it at each (re)subscription.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// The seed nodes, tried in turn.
    Seeds(Vec<redis::Client>),
}

impl Subscriber {
    /// The client to subscribe through on the `attempt`-th (re)subscription.
    pub async fn client(&self, attempt: usize) -> redis::RedisResult<redis::Client> {
        match self {
            Subscriber::Node(c) => Ok(c.clone()),
            Subscriber::Sentinel(s) => s.lock().await.async_get_client().await,
            Subscriber::Seeds(seeds) => match seeds.get(attempt % seeds.len().max(1)) {
                Some(c) => Ok(c.clone()),
                None => Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "no seed nodes",
                ))),
            },
        }
    }
}

/// `redis.ca_file`'s certificates, read once.
fn certificates(cfg: &RedisConfig) -> Result<Option<TlsCertificates>, String> {
    let Some(path) = &cfg.ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path)
        .map_err(|e| format!("redis.ca_file: cannot read {}: {e}", path.display()))?;
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// A client for one URL, with `redis.ca_file`'s authorities when set. `key` names the
/// config key the URL came from, for errors.
fn node_client(
    url: &str,
    certs: &Option<TlsCertificates>,
    key: &str,
) -> Result<redis::Client, String> {
    match certs {
        None => redis::Client::open(url).map_err(|e| format!("{key}: {e}")),
        Some(c) => redis::Client::build_with_tls(url, c.clone()).map_err(|e| format!("{key}: {e}")),
    }
}

/// The seed or sentinel URLs of `cfg` (`redis.urls`, or `redis.url` alone), each with
/// the key it came from.
fn seed_urls(cfg: &RedisConfig) -> Vec<(String, &str)> {
    if cfg.urls.is_empty() {
        vec![("redis.url".to_string(), cfg.url.as_str())]
    } else {
        cfg.urls
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("redis.urls[{i}]"), u.as_str()))
            .collect()
    }
}

/// The sentinel client for `cfg`: the sentinels from `redis.urls` (their own user,
/// password and TLS in each URL), the data nodes' user, password, database and TLS from
/// `redis.url`.
fn sentinel_client(
    cfg: &RedisConfig,
    certs: &Option<TlsCertificates>,
) -> Result<SentinelClient, String> {
    let mut sentinels = Vec::new();
    let mut sentinel_auth = None;
    for (key, url) in seed_urls(cfg) {
        let info = url
            .into_connection_info()
            .map_err(|e| format!("{key}: {e}"))?;
        let settings = info.redis_settings();
        if sentinel_auth.is_none() && settings.password().is_some() {
            sentinel_auth = Some((
                settings.username().map(str::to_string),
                settings.password().map(str::to_string),
            ));
        }
        sentinels.push(info.addr().clone());
    }
    let data = cfg
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("redis.url: {e}"))?;
    let mut builder = SentinelClientBuilder::new(
        sentinels,
        cfg.sentinel_master.clone(),
        SentinelServerType::Master,
    )
    .map_err(|e| format!("redis.urls: {e}"))?;
    let settings = data.redis_settings();
    builder = builder.set_client_to_redis_db(settings.db());
    if let Some(user) = settings.username() {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = settings.password() {
        builder = builder.set_client_to_redis_password(password);
    }
    if let redis::ConnectionAddr::TcpTls { insecure, .. } = data.addr() {
        builder = builder.set_client_to_redis_tls_mode(if *insecure {
            redis::TlsMode::Insecure
        } else {
            redis::TlsMode::Secure
        });
        if let Some(c) = certs {
            builder = builder.set_client_to_redis_certificates(c.clone());
        }
    }
    if let Some((user, password)) = sentinel_auth {
        if let Some(user) = user {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = password {
            builder = builder.set_client_to_sentinel_password(password);
        }
    }
    builder.build().map_err(|e| format!("redis.urls: {e}"))
}

/// The connection pool and the subscriber for `cfg`'s mode. `timeout` bounds making one
/// connection (and, in a cluster, each node's answer). Errors name the key at fault.
pub fn connect(cfg: &RedisConfig, timeout: Duration) -> Result<(ConnPool, Subscriber), String> {
    let certs = certificates(cfg)?;
    let (manager, subscriber) = match cfg.mode {
        RedisMode::Standalone => {
            let client = node_client(&cfg.url, &certs, "redis.url")?;
            (
                TopologyManager::Standalone(client.clone()),
                Subscriber::Node(client),
            )
        }
        RedisMode::Sentinel => (
            TopologyManager::Sentinel(tokio::sync::Mutex::new(sentinel_client(cfg, &certs)?)),
            Subscriber::Sentinel(tokio::sync::Mutex::new(sentinel_client(cfg, &certs)?)),
        ),
        RedisMode::Cluster => {
            let seeds = seed_urls(cfg);
            let mut infos = Vec::new();
            let mut clients = Vec::new();
            for (key, url) in &seeds {
                infos.push(
                    url.into_connection_info()
                        .map_err(|e| format!("{key}: {e}"))?,
                );
                clients.push(node_client(url, &certs, key)?);
            }
            let mut builder = ClusterClientBuilder::new(infos)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                // A command is bounded by redis.timeout_ms anyway; the client's own
                // retries (after MOVED, ASK, TRYAGAIN or a lost node) fit inside it.
                .retries(3)
                .min_retry_wait(5)
                .max_retry_wait(50);
            if let Some(c) = &certs {
                builder = builder.certs(c.clone());
            }
            let client = builder.build().map_err(|e| format!("redis.urls: {e}"))?;
            (TopologyManager::Cluster(client), Subscriber::Seeds(clients))
        }
    };
    let pool = managed::Pool::builder(manager)
        .max_size(cfg.pool_size)
        .timeouts(managed::Timeouts {
            wait: Some(timeout),
            create: Some(timeout),
            recycle: Some(timeout),
        })
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| format!("redis.url: {e}"))?;
    Ok((pool, subscriber))
}
