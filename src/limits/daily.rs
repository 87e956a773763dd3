//! The daily budget of upstream model calls of a client: a counter per client per UTC
//! day, in Redis (`INCRBY` after each walk, by the attempts it made; the key expires an
//! hour after its day ends) and in memory. The memory copy follows Redis while Redis
//! answers, and counts on its own while it does not, from the last count Redis gave.
//! A count Redis gave less than [`FRESH_FOR`] ago, with more than [`margin`] calls left,
//! is used without asking Redis again: a busy client's misses do not each cost a round
//! trip, and only calls other instances made in that second can go past the budget.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::script::Script;
use crate::clients::ClientId;
use crate::pipeline::cache::{AnswerCache, RedisFailure};

/// Seconds in a day.
pub const DAY_SECS: u64 = 86_400;

/// How long a day's counter stays in Redis after its first charge: the day, and an hour
/// for instances whose clocks are late.
const KEEP_SECS: u64 = DAY_SECS + 3600;

/// KEYS[1]: the client's counter of the day. ARGV[1]: the calls to add; ARGV[2]: the
/// counter's lifetime in seconds, set with the first charge. Returns the new count.
const CHARGE: &str = r#"
local used = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return used
"#;

static SCRIPT: Script = Script::new(CHARGE);

/// How long a count read from Redis (or written to it) is used without reading it again.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// How long a count read from Redis is kept in memory after it was read.
pub const KEEP_LOCAL: Duration = Duration::from_secs(600);

/// The calls left below which every check asks Redis: 1% of the budget, at least 10.
pub fn margin(budget: u64) -> u64 {
    (budget / 100).max(10)
}

/// The UTC day of now, as days since 1970-01-01, and the time left until it ends.
pub fn today() -> (u64, Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let left = Duration::from_secs((secs / DAY_SECS + 1) * DAY_SECS).saturating_sub(now);
    (secs / DAY_SECS, left)
}

/// `YYYY-MM-DD` of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub fn date(day: u64) -> String {
    let z = i64::try_from(day).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The calls a client made today, from Redis (`GET`).
pub async fn used_in_redis(cache: &AnswerCache, key: &str) -> Result<u64, RedisFailure> {
    let mut cmd = deadpool_redis::redis::cmd("GET");
    cmd.arg(key);
    Ok(cache.command::<Option<u64>>(cmd).await?.unwrap_or(0))
}

/// Adds `calls` to a client's count in Redis; the new count.
pub async fn charge_in_redis(
    cache: &AnswerCache,
    key: &str,
    calls: u64,
) -> Result<u64, RedisFailure> {
    SCRIPT.run(cache, &[key], &[calls, KEEP_SECS]).await
}

/// One client's count of one day, and when Redis last gave it.
#[derive(Debug, Clone, Copy)]
struct Count {
    day: u64,
    used: u64,
    from_redis: Option<Instant>,
}

/// The counts of today kept in memory, by client, and the walks each client has going
/// on this instance (admitted, not charged yet).
#[derive(Default)]
pub struct Local {
    used: Mutex<HashMap<ClientId, Count>>,
    pending: Mutex<HashMap<ClientId, u64>>,
}

/// One admitted walk of a client, counted in [`Local::pending`] until dropped (charged,
/// or never walked: it shared another walk).
pub struct Pending {
    local: std::sync::Arc<Local>,
    id: ClientId,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Ok(mut p) = self.local.pending.lock()
            && let Some(n) = p.get_mut(&self.id)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                p.remove(&self.id);
            }
        }
    }
}

impl Local {
    /// The walks `id` has going on this instance, admitted and not charged yet: each may
    /// still cost calls, so a check counts each as one call spent.
    pub fn pending(&self, id: ClientId) -> u64 {
        self.pending
            .lock()
            .ok()
            .and_then(|p| p.get(&id).copied())
            .unwrap_or(0)
    }

    /// Counts one more walk of `id` until the returned guard is dropped.
    pub fn admit(self: &std::sync::Arc<Self>, id: ClientId) -> Pending {
        if let Ok(mut p) = self.pending.lock() {
            *p.entry(id).or_insert(0) += 1;
        }
        Pending {
            local: self.clone(),
            id,
        }
    }

    /// The calls `id` made on `day`, as last known.
    pub fn used(&self, id: ClientId, day: u64) -> u64 {
        self.get(id, day).map_or(0, |c| c.used)
    }

    fn get(&self, id: ClientId, day: u64) -> Option<Count> {
        self.used
            .lock()
            .ok()
            .and_then(|m| m.get(&id).copied())
            .filter(|c| c.day == day)
    }

    /// The calls `id` made on `day` if Redis said so less than [`FRESH_FOR`] ago and more
    /// than [`margin`] of `budget` is left: the check may then skip Redis.
    pub fn fresh(&self, id: ClientId, day: u64, budget: u64) -> Option<u64> {
        let c = self.get(id, day)?;
        let recent = c.from_redis?.elapsed() < FRESH_FOR;
        let spoken_for = c.used.saturating_add(self.pending(id));
        (recent && budget.saturating_sub(spoken_for) > margin(budget)).then_some(c.used)
    }

    /// Sets the count of `id` on `day` to what Redis said.
    pub fn set(&self, id: ClientId, day: u64, used: u64) {
        if let Ok(mut m) = self.used.lock() {
            m.insert(
                id,
                Count {
                    day,
                    used,
                    from_redis: Some(Instant::now()),
                },
            );
        }
    }

    /// Adds `calls` to the count of `id` on `day` (Redis could not be told).
    pub fn add(&self, id: ClientId, day: u64, calls: u64) {
        if let Ok(mut m) = self.used.lock() {
            let entry = m.entry(id).or_insert(Count {
                day,
                used: 0,
                from_redis: None,
            });
            if entry.day != day {
                *entry = Count {
                    day,
                    used: 0,
                    from_redis: None,
                };
            }
            entry.used = entry.used.saturating_add(calls);
        }
    }

    /// Forgets the counts of days before `day`, and counts Redis gave more than
    /// [`KEEP_LOCAL`] ago (kept only to go on from while Redis is away), so that clients
    /// that come and go (addresses) do not grow memory all day.
    pub fn tidy(&self, day: u64) {
        if let Ok(mut m) = self.used.lock() {
            m.retain(|_, c| c.day >= day && c.from_redis.is_none_or(|t| t.elapsed() < KEEP_LOCAL));
            m.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_of_days_since_the_epoch() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(11_016), "2000-02-29");
        assert_eq!(date(20_454), "2026-01-01");
    }

    #[test]
    fn today_ends_within_a_day() {
        let (day, left) = today();
        assert!(day > 20_000);
        assert!(left > Duration::ZERO && left <= Duration::from_secs(DAY_SECS));
    }

    #[test]
    fn a_recent_count_from_redis_with_calls_to_spare_needs_no_new_read() {
        let local = Local::default();
        let id = ClientId([8; 16]);
        assert_eq!(local.fresh(id, 10, 1000), None, "never read");
        local.set(id, 10, 500);
        assert_eq!(local.fresh(id, 10, 1000), Some(500));
        assert_eq!(local.fresh(id, 11, 1000), None, "another day");
        local.set(id, 10, 995);
        assert_eq!(local.fresh(id, 10, 1000), None, "within the margin");
        local.add(ClientId([9; 16]), 10, 1);
        assert_eq!(
            local.fresh(ClientId([9; 16]), 10, 1000),
            None,
            "counted locally"
        );
    }

    #[test]
    fn local_counts_start_again_each_day() {
        let local = Local::default();
        let id = ClientId([7; 16]);
        local.add(id, 10, 3);
        local.add(id, 10, 2);
        assert_eq!(local.used(id, 10), 5);
        assert_eq!(local.used(id, 11), 0);
        local.add(id, 11, 1);
        assert_eq!(local.used(id, 11), 1);
        local.tidy(12);
        assert_eq!(local.used(id, 11), 0);
    }
}
