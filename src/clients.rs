//! Who is asking. A client is its API key when the request carries one that
//! `clients.file` lists (`Authorization: Bearer <key>`), or else its address: the TCP
//! peer, or, when the peer is one of `server.trusted_proxies`, the right-most address of
//! `X-Forwarded-For` that is not itself a trusted proxy (the addresses left of it are
//! whatever the client wrote, and prove nothing). An IPv6 address stands for its /64,
//! the block one subscriber is given, so that a client cannot dodge its limits by
//! changing the last bits of its address.
//!
//! The file holds each key's SHA-256, never the key (`printf %s "$KEY" | sha256sum`); a
//! request's key is hashed and compared with every listed digest in constant time. With
//! `clients.require_key`, a request without a known key is refused (`401`); otherwise an
//! unknown key counts as no key (OpenAI's SDKs always send one).
//!
//! The file is re-read by `POST /admin/clients/reload` and by itself when its
//! modification time changes (a Kubernetes Secret is updated in place); a file that does
//! not parse leaves the clients as they were.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, header};
use ipnet::IpNet;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::config::{Config, ConfigError, LimitsConfig};
use crate::routes::admin::bearer_token;

/// The limits of one client: the defaults of `limits.per_client_*`, or its own from the
/// clients file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientLimits {
    /// Requests a second, on average; 0: no rate limit.
    pub rps: f64,
    /// Requests at once before the rate paces them (at least 1).
    pub burst: u32,
    /// Upstream model calls per UTC day; 0: no budget.
    pub model_calls_per_day: u64,
}

impl ClientLimits {
    /// The defaults, `limits.per_client_*`.
    pub fn defaults(limits: &LimitsConfig) -> ClientLimits {
        ClientLimits {
            rps: limits.per_client_rps,
            burst: limits.per_client_burst,
            model_calls_per_day: limits.per_client_model_calls_per_day,
        }
    }

    /// Whether any limit applies.
    pub fn any(&self) -> bool {
        self.rps > 0.0 || self.model_calls_per_day > 0
    }
}

/// An opaque, stable identity of a client: 16 bytes of the SHA-256 of what identifies it
/// (its key's digest, or its address). The limiters' keys are made of it; it names no
/// one and cannot be turned back into a key or an address by reading Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(pub [u8; 16]);

impl ClientId {
    fn of(kind: &[u8], what: &[u8]) -> ClientId {
        let mut h = Sha256::new();
        h.update(kind);
        h.update([0]);
        h.update(what);
        let digest = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        ClientId(id)
    }

    /// 32 lowercase hex digits.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The client of a request, put in its extensions by the guards.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: ClientId,
    /// The name of a client known by its key (for logs at DEBUG only); `None` for a
    /// client known by its address.
    pub name: Option<Arc<str>>,
    pub limits: ClientLimits,
}

/// A request that `clients.require_key` refuses: it carries no known key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRequired;

/// One client of the file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    key_sha256: String,
    rps: Option<f64>,
    burst: Option<u32>,
    model_calls_per_day: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    #[serde(default)]
    clients: Vec<Entry>,
}

/// A client of the file, ready to match.
#[derive(Debug)]
struct Known {
    name: Arc<str>,
    digest: [u8; 32],
    id: ClientId,
    limits: ClientLimits,
}

/// What tells that the file changed: its modification time and length.
type Stamp = (Option<SystemTime>, u64);

/// The clients: the keys of the file (reloadable) and how addresses are read.
pub struct Clients {
    file: Option<PathBuf>,
    require_key: bool,
    defaults: ClientLimits,
    trusted: Vec<IpNet>,
    known: RwLock<Arc<[Known]>>,
    /// Whether requests need identifying at all: a key is required, a limit applies to
    /// addresses, or the file lists a client.
    active: AtomicBool,
    /// The stamp of the file last read (whether it parsed or not).
    seen: Mutex<Option<Stamp>>,
}

impl Clients {
    /// The clients of `config`, the file read once. `Err` names the file and the key at
    /// fault: a configuration error (the process exits 2).
    pub fn new(config: &Config) -> Result<Clients, String> {
        let trusted = config
            .server
            .trusted_proxies
            .iter()
            .map(|p| crate::config::ip_or_cidr(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("server.trusted_proxies: {e}"))?;
        let clients = Clients {
            file: config.clients.file.clone(),
            require_key: config.clients.require_key,
            defaults: ClientLimits::defaults(&config.limits),
            trusted,
            known: RwLock::new(Arc::from(Vec::new())),
            active: AtomicBool::new(false),
            seen: Mutex::new(None),
        };
        if clients.file.is_some() {
            clients.reload()?;
        } else {
            clients.set(Vec::new());
        }
        Ok(clients)
    }

    /// Re-reads the file: the number of clients it lists, or why it was refused (the
    /// clients stay as they were).
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.file else {
            return Err("no clients file is configured (clients.file)".into());
        };
        self.remember(stamp(path));
        let known = load(path, &self.defaults)?;
        let n = known.len();
        self.set(known);
        Ok(n)
    }

    /// Reloads the file if its modification time or length changed since it was last
    /// read; `None` when it did not (or there is no file).
    pub fn reload_if_changed(&self) -> Option<Result<usize, String>> {
        let path = self.file.as_ref()?;
        let now = stamp(path);
        let before = self.seen.lock().ok().and_then(|s| *s);
        if now.is_none() || now == before {
            return None;
        }
        Some(self.reload())
    }

    /// Looks at the file every `every` and reloads it when it changed; logs the outcome.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        if self.file.is_none() {
            return;
        }
        loop {
            tokio::time::sleep(every).await;
            match self.reload_if_changed() {
                None => {}
                Some(Ok(n)) => tracing::info!(clients = n, "clients file changed: reloaded"),
                Some(Err(e)) => tracing::warn!(
                    error = %e,
                    "clients file changed but cannot be used; the clients stay as they were"
                ),
            }
        }
    }

    /// Clients the file lists.
    pub fn len(&self) -> usize {
        self.known.read().map(|k| k.len()).unwrap_or(0)
    }

    /// Whether the file lists no client.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether requests need identifying: with no key required, no file and no default
    /// limit, nobody is told apart and the guards skip the work.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// The client of a request with these `headers` from `peer`.
    pub fn identify(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Client, KeyRequired> {
        let key = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .filter(|k| !k.is_empty());
        if let Some(key) = key
            && let Some(client) = self.by_key(key)
        {
            return Ok(client);
        }
        if self.require_key {
            return Err(KeyRequired);
        }
        let address = peer.map(|p| client_address(p, headers, &self.trusted));
        let id = match address {
            Some(ip) => ClientId::of(b"address", &address_block(ip)),
            None => ClientId::of(b"address", b"unknown"),
        };
        Ok(Client {
            id,
            name: None,
            limits: self.defaults,
        })
    }

    /// The listed client whose key is `key`: its digest compared with every listed one
    /// in constant time, whichever matches.
    fn by_key(&self, key: &str) -> Option<Client> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let known = self.known.read().ok()?.clone();
        let mut found = u32::MAX;
        for (i, k) in known.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            found.conditional_assign(&i, k.digest.ct_eq(&digest));
        }
        let k = known.get(usize::try_from(found).ok()?)?;
        Some(Client {
            id: k.id,
            name: Some(k.name.clone()),
            limits: k.limits,
        })
    }

    fn set(&self, known: Vec<Known>) {
        let active = self.require_key || self.defaults.any() || !known.is_empty();
        match self.known.write() {
            Ok(mut k) => *k = Arc::from(known),
            Err(poisoned) => *poisoned.into_inner() = Arc::from(known),
        }
        self.active.store(active, Ordering::Relaxed);
    }

    fn remember(&self, stamp: Option<Stamp>) {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = stamp;
        }
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    // Follows symbolic links: a Kubernetes Secret's file is a link into a folder that
    // is swapped whole.
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok(), meta.len()))
}

/// Reads and checks the clients file; the error names the file and the entry's key.
fn load(path: &Path, defaults: &ClientLimits) -> Result<Vec<Known>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    // The parser's own message quotes the offending line, which may hold a key written
    // by mistake: only its line number and message go out.
    let file: ClientsFile = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        match line {
            Some(line) => format!(
                "{shown} is not a valid clients file: line {line}: {}",
                e.message()
            ),
            None => format!("{shown} is not a valid clients file: {}", e.message()),
        }
    })?;
    let mut known: Vec<Known> = Vec::with_capacity(file.clients.len());
    for (i, entry) in file.clients.into_iter().enumerate() {
        let at = |field: &str| format!("{shown}: clients[{i}].{field}");
        let name = entry.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(format!("{}: must be 1 to 100 characters", at("name")));
        }
        if known.iter().any(|k| &*k.name == name) {
            return Err(format!("{}: {name:?} is listed twice", at("name")));
        }
        let digest = hex_digest(&entry.key_sha256).ok_or_else(|| {
            format!(
                "{}: must be the 64 hexadecimal digits of the key's SHA-256 (printf %s \"$KEY\" | sha256sum), never the key itself",
                at("key_sha256")
            )
        })?;
        if known.iter().any(|k| k.digest == digest) {
            return Err(format!(
                "{}: the same key as another client's",
                at("key_sha256")
            ));
        }
        crate::config::client_limits(
            &format!("clients[{i}]"),
            "",
            entry.rps,
            entry.burst,
            entry.model_calls_per_day,
        )
        .map_err(|e| match e {
            ConfigError::Key { key, message } => format!("{shown}: {key}: {message}"),
            other => format!("{shown}: {other}"),
        })?;
        known.push(Known {
            name: Arc::from(name),
            digest,
            id: ClientId::of(b"key", &digest),
            limits: ClientLimits {
                rps: entry.rps.unwrap_or(defaults.rps),
                burst: entry.burst.unwrap_or(defaults.burst),
                model_calls_per_day: entry
                    .model_calls_per_day
                    .unwrap_or(defaults.model_calls_per_day),
            },
        });
    }
    Ok(known)
}

/// 64 hex digits (either case) as 32 bytes.
fn hex_digest(text: &str) -> Option<[u8; 32]> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16);
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        let hi = nibble(pair[0])?;
        let lo = nibble(pair[1])?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// The client's address: the peer, or, from a trusted proxy, the right-most address of
/// `X-Forwarded-For` that is not a trusted proxy (when every one is, the left-most; an
/// entry that is not an address ends the walk, at the last one that was).
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return peer;
    }
    // Split as bytes: a line with a stray non-ASCII entry (the client's own) keeps the
    // entries the proxies appended after it.
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|e| std::str::from_utf8(e).unwrap_or(""))
        .collect();
    let mut client = peer;
    for entry in forwarded.iter().rev() {
        let Some(ip) = forwarded_address(entry) else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// One entry of `X-Forwarded-For`: an address, possibly with a port (`1.2.3.4:80`,
/// `[::1]:80`) or in brackets.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse().ok())
        })
        .map(|ip: IpAddr| ip.to_canonical())
}

/// What an address stands for, as bytes: itself (IPv4: `4` and its 4 octets), or its
/// /64 (IPv6: `6` and its first 8 octets), zero-padded.
fn address_block(ip: IpAddr) -> [u8; 9] {
    let mut block = [0u8; 9];
    match ip {
        IpAddr::V4(v4) => {
            block[0] = 4;
            block[1..5].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            block[0] = 6;
            block[1..9].copy_from_slice(&v6.octets()[..8]);
        }
    }
    block
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|s| crate::config::ip_or_cidr(s).unwrap())
            .collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = nets(&["10.0.0.0/8"]);
        let got = client_address(ip("203.0.113.9"), &xff(&["1.1.1.1"]), &trusted);
        assert_eq!(got, ip("203.0.113.9"));
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_address_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "192.168.1.1"]);
        let headers = xff(&["6.6.6.6, 198.51.100.7", "192.168.1.1"]);
        assert_eq!(
            client_address(ip("10.1.2.3"), &headers, &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn a_forwarded_entry_that_is_no_address_ends_the_walk() {
        let trusted = nets(&["10.0.0.0/8"]);
        let headers = xff(&["198.51.100.7, garbage, 10.0.0.2"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &headers, &trusted),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn forwarded_entries_with_ports_or_brackets_are_read() {
        assert_eq!(forwarded_address(" 1.2.3.4:80 "), Some(ip("1.2.3.4")));
        assert_eq!(
            forwarded_address("[2001:db8::1]:443"),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(forwarded_address("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(forwarded_address("::ffff:1.2.3.4"), Some(ip("1.2.3.4")));
        assert_eq!(forwarded_address("unknown"), None);
    }

    #[test]
    fn a_non_ascii_entry_of_x_forwarded_for_keeps_the_ones_a_proxy_appended() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"caf\xc3\xa9, 203.0.113.7").unwrap(),
        );
        assert_eq!(
            client_address(ip("10.1.2.3"), &headers, &trusted),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn ipv6_addresses_of_one_slash_64_are_one_client() {
        assert_eq!(
            address_block(ip("2001:db8:1:2:aaaa::1")),
            address_block(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            address_block(ip("2001:db8:1:2::1")),
            address_block(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn a_file_that_does_not_parse_is_refused_without_quoting_its_lines() {
        let dir = std::env::temp_dir().join(format!("qa-clients-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("clients.toml");
        std::fs::write(
            &file,
            "[[clients]]\nname = \"a\"\nkey_sha256 = sk-live-123\n",
        )
        .unwrap();
        let defaults = ClientLimits {
            rps: 0.0,
            burst: 1,
            model_calls_per_day: 0,
        };
        let err = load(&file, &defaults).unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(!err.contains("sk-live-123"), "{err}");
        std::fs::write(
            &file,
            "[[clients]]\nname = \"a\"\nkey_sha256 = \"00\"\nrsp = 1\n",
        )
        .unwrap();
        let err = load(&file, &defaults).unwrap_err();
        assert!(err.contains("rsp"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_example_file_loads_and_its_keys_are_the_hashes_it_says() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/clients.example.toml"
        ));
        let defaults = ClientLimits {
            rps: 1.0,
            burst: 10,
            model_calls_per_day: 0,
        };
        let known = load(path, &defaults).unwrap();
        assert_eq!(known.len(), 2);
        let digest: [u8; 32] = Sha256::digest(b"qa-example-key-do-not-use").into();
        assert_eq!(known[0].digest, digest);
        assert_eq!(known[0].limits.burst, 20);
        assert_eq!(known[1].limits.rps, 0.0);
        assert_eq!(known[1].limits.burst, 10, "the default");
    }

    #[test]
    fn hex_digests_are_64_hex_digits_in_either_case() {
        let lower = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert!(hex_digest(lower).is_some());
        assert_eq!(hex_digest(&lower.to_uppercase()), hex_digest(lower));
        assert!(hex_digest(&lower[1..]).is_none());
        assert!(hex_digest(&format!("{}g", &lower[1..])).is_none());
    }
}
