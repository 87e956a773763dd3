//! The request rate of a client: GCRA, the generic cell rate algorithm of ATM networks
//! (ATM Forum, *Traffic Management Specification* 4.0, 1996, the "virtual scheduling"
//! form; as applied to HTTP rate limits in Brandur Leach's "Rate limiting, cells, and
//! GCRA", 2015, and in `redis-cell`).
//!
//! A client allowed `rps` requests a second with bursts of `burst` has an emission
//! interval `T = 1/rps` and one number of state, its theoretical arrival time (TAT): when
//! its next request would be due if it kept exactly to the rate. A request at `now` is
//! allowed when `max(TAT, now) + T - burst * T <= now`, and then moves the TAT to
//! `max(TAT, now) + T`; a fresh client may therefore make `burst` requests at once, then
//! one every `T`. What is left (`remaining`) is how many more requests would be allowed
//! at `now`; the reset is `TAT - now`, when a whole burst is available again.
//!
//! Across instances the TAT lives in Redis, one key per client, updated by one atomic Lua
//! script per check that reads the time from Redis's own clock (`TIME`), so that the
//! instances' clocks do not matter; the key expires when the TAT has passed, so an idle
//! client leaves nothing behind. A check takes a [`batch`] of cells at once (20 ms of the
//! client's rate, 1 for a client allowed a few requests a second), which the instance
//! spends before asking again, and a refusal stands on the instance until its
//! `Retry-After`: a client at thousands of requests a second costs Redis a few scripts a
//! second, not one per request. While Redis cannot say, each instance keeps the same
//! algorithm in memory with the `governor` crate, one keyed limiter per distinct
//! (rps, burst).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use super::script::Script;
use crate::clients::{ClientId, ClientLimits};
use crate::pipeline::cache::{AnswerCache, RedisFailure};

/// What the rate limit said of one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateDecision {
    pub allowed: bool,
    /// Requests the client may still make at once, after this one.
    pub remaining: u64,
    /// Until a whole burst is available again (allowed), or until the next request is
    /// (limited).
    pub reset: Duration,
    /// Limited: until the next request is allowed; zero when allowed.
    pub retry_after: Duration,
}

/// The cells of one client in Redis, taken `n` at a time. KEYS[1]: the client's key.
/// ARGV[1]: the emission interval, in microseconds; ARGV[2]: the burst; ARGV[3]: the
/// cells wanted (at least 1). Grants as many of them as the client may have now (none
/// when it may have none). Returns `{granted, remaining after them, reset in µs, retry
/// after in µs (0 when granted)}`. The TAT is stored in microseconds of the Redis
/// server's clock, written with `%.0f` (Lua's default number format keeps 14 digits, a
/// TAT has 16), and expires when it has passed.
const GCRA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local available = math.floor((now + interval * burst - tat) / interval)
if available < 1 then
  local allow_at = tat + interval - interval * burst
  return {0, 0, allow_at - now, allow_at - now}
end
local granted = math.min(wanted, available)
local new_tat = tat + interval * granted
local ttl_ms = math.max(1, math.ceil((new_tat - now) / 1000))
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return {granted, available - granted, new_tat - now, 0}
"#;

static SCRIPT: Script = Script::new(GCRA);

/// The emission interval of `rps`, in whole microseconds (at least 1).
pub fn interval_us(rps: f64) -> u64 {
    // `rps` is validated to [1/86400, 10^6]: the interval fits in u64 many times over.
    ((1_000_000.0 / rps).round() as u64).max(1)
}

/// How much of a client's rate one instance takes from Redis at once: the cells of
/// [`BATCH_WINDOW`] at its rate, at least 1 and at most a quarter of its burst. A client
/// held to a few requests a second is checked in Redis request by request; one allowed
/// thousands pays one round trip per batch. Cells taken are counted against the client
/// at once (the limit is never exceeded across instances); cells an instance does not
/// use within [`RESERVATION_LIFETIME`] are lost to it, at most one batch per instance.
pub fn batch(limits: &ClientLimits) -> u64 {
    let of_window = (limits.rps * BATCH_WINDOW.as_secs_f64()).floor() as u64;
    of_window.clamp(1, (u64::from(limits.burst) / 4).max(1))
}

/// The span of a client's rate one batch covers.
pub const BATCH_WINDOW: Duration = Duration::from_millis(20);

/// How long cells taken from Redis may be used by the instance that took them.
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(1);

/// Takes up to `wanted` cells of `client` in Redis under `key`: the decision for the
/// request at hand and how many cells were granted (0 when limited). `Err` when Redis
/// cannot say.
pub async fn take_in_redis(
    cache: &AnswerCache,
    key: &str,
    limits: &ClientLimits,
    wanted: u64,
) -> Result<(RateDecision, u64), RedisFailure> {
    let reply: Vec<i64> = SCRIPT
        .run(
            cache,
            &[key],
            &[
                interval_us(limits.rps),
                u64::from(limits.burst),
                wanted.max(1),
            ],
        )
        .await?;
    let &[granted, remaining, reset_us, retry_us] = reply.as_slice() else {
        return Err(RedisFailure::Reply(format!(
            "rate limit script answered {reply:?}"
        )));
    };
    let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    let granted = u64::try_from(granted).unwrap_or(0);
    Ok((
        RateDecision {
            allowed: granted > 0,
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset: us(reset_us),
            retry_after: us(retry_us),
        },
        granted,
    ))
}

/// What an instance holds of one client's rate between two trips to Redis.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// Cells granted by Redis and not used yet, usable until `until`.
    cells: u64,
    until: std::time::Instant,
    /// Redis's `remaining` when they were granted.
    remaining: u64,
    /// When a whole burst is available again, as Redis said.
    reset_at: std::time::Instant,
    /// Redis refused the client until then: no cell frees before, on any instance.
    denied_until: Option<std::time::Instant>,
    /// A trip for more cells is on its way.
    fetching: bool,
}

impl Held {
    /// Nothing held yet, at `now`.
    fn nothing(now: std::time::Instant) -> Held {
        Held {
            cells: 0,
            until: now,
            remaining: 0,
            reset_at: now,
            denied_until: None,
            fetching: false,
        }
    }
}

/// The claim of a batch trip ([`Reservations::claim_fetch`]) by a request: dropped
/// unsettled (Redis could not say, or the request went away mid-trip), it ends the fetch,
/// so that the next request may claim it again.
pub struct FetchClaim<'a> {
    reservations: &'a Reservations,
    id: ClientId,
    settled: bool,
}

impl<'a> FetchClaim<'a> {
    pub fn new(reservations: &'a Reservations, id: ClientId) -> Self {
        FetchClaim {
            reservations,
            id,
            settled: false,
        }
    }

    /// The trip's answer was kept (which ended the fetch).
    pub fn settled(mut self) {
        self.settled = true;
    }
}

impl Drop for FetchClaim<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.reservations.fetch_failed(self.id);
        }
    }
}

/// A request decided from what the instance holds ([`Reservations::decide`]).
pub struct Held1 {
    pub decision: RateDecision,
    /// Few cells are left: the caller fetches the next batch now, before they run out
    /// (the fetch is marked, so that one request does it).
    pub fetch_more: bool,
}

/// The cells each client holds on this instance ([`batch`]), and the refusals Redis gave
/// that still stand: the checks that need no trip to Redis. The next batch is fetched
/// while half of one is left, so that a steady client never waits on Redis.
#[derive(Default)]
pub struct Reservations {
    held: Mutex<HashMap<ClientId, Held>>,
}

impl Reservations {
    /// Decides one request of `id` from what this instance holds, if it can: a held cell
    /// (allowed) or a refusal that still stands (limited). `batch` is the client's
    /// [`batch`].
    pub fn decide(&self, id: ClientId, batch: u64) -> Option<Held1> {
        let now = std::time::Instant::now();
        let mut held = self.held.lock().ok()?;
        let h = held.get_mut(&id)?;
        if h.cells > 0 && h.until > now {
            h.cells -= 1;
            let fetch_more = !h.fetching && batch > 1 && h.cells.saturating_mul(2) < batch;
            h.fetching |= fetch_more;
            return Some(Held1 {
                decision: RateDecision {
                    allowed: true,
                    remaining: h.remaining.saturating_add(h.cells),
                    reset: h.reset_at.saturating_duration_since(now),
                    retry_after: Duration::ZERO,
                },
                fetch_more,
            });
        }
        let until = h.denied_until.filter(|d| *d > now)?;
        let wait = until - now;
        Some(Held1 {
            decision: RateDecision {
                allowed: false,
                remaining: 0,
                reset: wait,
                retry_after: wait,
            },
            fetch_more: false,
        })
    }

    /// Claims the one trip for a whole batch of `id`'s cells: true when no other is on
    /// its way (the caller asks for a batch), false when one is (the caller asks for the
    /// one cell it needs, so that requests arriving together do not each take a batch).
    pub fn claim_fetch(&self, id: ClientId) -> bool {
        let now = std::time::Instant::now();
        let Ok(mut held) = self.held.lock() else {
            return false;
        };
        let h = held.entry(id).or_insert(Held::nothing(now));
        !std::mem::replace(&mut h.fetching, true)
    }

    /// Keeps what Redis answered for `id`: `granted` cells, of which `spent` (0 or 1)
    /// went to the request at hand, added to those still held; a refusal stands until
    /// its retry-after. `fetch` says the answer is the batch trip's, which ends it.
    pub fn keep(
        &self,
        id: ClientId,
        decision: &RateDecision,
        granted: u64,
        spent: u64,
        fetch: bool,
    ) {
        let now = std::time::Instant::now();
        if let Ok(mut held) = self.held.lock() {
            let h = held.entry(id).or_insert(Held::nothing(now));
            let left = if h.until > now { h.cells } else { 0 };
            h.cells = left.saturating_add(granted.saturating_sub(spent));
            if granted > spent {
                h.until = now + RESERVATION_LIFETIME;
            }
            h.remaining = decision.remaining;
            h.reset_at = now + decision.reset;
            h.denied_until = (!decision.allowed).then(|| now + decision.retry_after);
            if fetch {
                h.fetching = false;
            }
        }
    }

    /// Ends a fetch that got no answer (Redis could not say).
    pub fn fetch_failed(&self, id: ClientId) {
        if let Ok(mut held) = self.held.lock()
            && let Some(h) = held.get_mut(&id)
        {
            h.fetching = false;
        }
    }

    /// Forgets what no longer decides anything.
    pub fn tidy(&self) {
        let now = std::time::Instant::now();
        if let Ok(mut held) = self.held.lock() {
            held.retain(|_, h| {
                h.fetching || h.until > now || h.denied_until.is_some_and(|d| d > now)
            });
            held.shrink_to_fit();
        }
    }
}

type Keyed =
    RateLimiter<ClientId, HashMapStateStore<ClientId>, DefaultClock, StateInformationMiddleware>;

/// The in-memory limiters used while Redis cannot say: one keyed `governor` limiter per
/// distinct (rps, burst), since a limiter has one quota for all its keys.
#[derive(Default)]
pub struct Local {
    limiters: Mutex<HashMap<(u64, u32), Arc<Keyed>>>,
}

impl Local {
    /// Checks one request of client `id` under `limits` (a rate is set) in memory.
    pub fn check(&self, id: ClientId, limits: &ClientLimits) -> RateDecision {
        let interval = Duration::from_micros(interval_us(limits.rps));
        let burst = NonZeroU32::new(limits.burst).unwrap_or(NonZeroU32::MIN);
        let Some(limiter) = self.limiter(interval, burst) else {
            // No quota can be made of it (never, after validation): let it through.
            return RateDecision {
                allowed: true,
                remaining: u64::from(burst.get()),
                reset: Duration::ZERO,
                retry_after: Duration::ZERO,
            };
        };
        match limiter.check_key(&id) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                RateDecision {
                    allowed: true,
                    remaining: u64::from(remaining),
                    reset: interval.saturating_mul(burst.get().saturating_sub(remaining)),
                    retry_after: Duration::ZERO,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                RateDecision {
                    allowed: false,
                    remaining: 0,
                    reset: wait,
                    retry_after: wait,
                }
            }
        }
    }

    fn limiter(&self, interval: Duration, burst: NonZeroU32) -> Option<Arc<Keyed>> {
        let key = (
            u64::try_from(interval.as_micros()).unwrap_or(u64::MAX),
            burst.get(),
        );
        let mut limiters = self.limiters.lock().ok()?;
        if let Some(l) = limiters.get(&key) {
            return Some(l.clone());
        }
        let quota = Quota::with_period(interval)?.allow_burst(burst);
        let limiter =
            Arc::new(RateLimiter::hashmap(quota).with_middleware::<StateInformationMiddleware>());
        limiters.insert(key, limiter.clone());
        Some(limiter)
    }

    /// Forgets the clients whose cell is back to fresh, so that a stream of new
    /// addresses does not grow memory for ever.
    pub fn tidy(&self) {
        let limiters: Vec<Arc<Keyed>> = match self.limiters.lock() {
            Ok(l) => l.values().cloned().collect(),
            Err(_) => return,
        };
        for limiter in limiters {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits(rps: f64, burst: u32) -> ClientLimits {
        ClientLimits {
            rps,
            burst,
            model_calls_per_day: 0,
        }
    }

    #[test]
    fn locally_a_fresh_client_gets_its_burst_then_waits_one_interval() {
        let local = Local::default();
        let id = ClientId([1; 16]);
        let l = limits(2.0, 3);
        let remaining: Vec<u64> = (0..3).map(|_| local.check(id, &l).remaining).collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = local.check(id, &l);
        assert!(!refused.allowed);
        assert!(refused.retry_after <= Duration::from_millis(500));
        assert!(refused.retry_after > Duration::from_millis(400));
        assert!(local.check(ClientId([2; 16]), &l).allowed, "another client");
    }

    /// Redis's answer granting cells, with `remaining` more after them.
    fn granted(remaining: u64) -> RateDecision {
        RateDecision {
            allowed: true,
            remaining,
            reset: Duration::from_secs(1),
            retry_after: Duration::ZERO,
        }
    }

    #[test]
    fn a_batch_is_twenty_milliseconds_of_the_rate_within_a_quarter_of_the_burst() {
        assert_eq!(batch(&limits(5.0, 10)), 1);
        assert_eq!(batch(&limits(1000.0, 2000)), 20);
        assert_eq!(batch(&limits(1000.0, 40)), 10);
        assert_eq!(batch(&limits(1_000_000.0, 1_000_000)), 20_000);
    }

    #[test]
    fn held_cells_are_spent_one_by_one_then_redis_is_asked_again() {
        let r = Reservations::default();
        let id = ClientId([3; 16]);
        assert!(r.decide(id, 4).is_none(), "nothing held yet");
        let granted = granted(5);
        r.keep(id, &granted, 4, 1, false);
        let d = r.decide(id, 4).unwrap();
        assert_eq!((d.decision.allowed, d.decision.remaining), (true, 7));
        assert!(!d.fetch_more, "half a batch is left");
        let d = r.decide(id, 4).unwrap();
        assert_eq!((d.decision.allowed, d.decision.remaining), (true, 6));
        assert!(
            d.fetch_more,
            "less than half a batch is left: fetch the next"
        );
        let d = r.decide(id, 4).unwrap();
        assert!(d.decision.allowed && !d.fetch_more, "a fetch is on its way");
        assert!(r.decide(id, 4).is_none(), "the batch is spent");
    }

    #[test]
    fn a_fetched_batch_adds_to_the_cells_held_and_one_request_fetches_it() {
        let r = Reservations::default();
        let id = ClientId([6; 16]);
        let granted = granted(100);
        r.keep(id, &granted, 10, 1, false);
        let fetches = (0..8)
            .filter(|_| r.decide(id, 10).unwrap().fetch_more)
            .count();
        assert_eq!(fetches, 1, "one fetch in flight at a time");
        r.keep(id, &granted, 10, 0, true);
        let allowed = (0..11)
            .filter(|_| r.decide(id, 10).is_some_and(|d| d.decision.allowed))
            .count();
        assert_eq!(
            allowed, 11,
            "1 left of the first batch and 10 of the second"
        );
    }

    #[test]
    fn one_trip_at_a_time_takes_a_batch() {
        let r = Reservations::default();
        let id = ClientId([7; 16]);
        assert!(r.claim_fetch(id));
        assert!(!r.claim_fetch(id), "the batch trip is on its way");
        let granted = granted(10);
        r.keep(id, &granted, 1, 1, false);
        assert!(!r.claim_fetch(id), "a single cell's trip does not end it");
        r.keep(id, &granted, 4, 1, true);
        assert!(r.claim_fetch(id));
    }

    #[test]
    fn a_claim_dropped_unsettled_ends_the_fetch() {
        let r = Reservations::default();
        let id = ClientId([8; 16]);
        assert!(r.claim_fetch(id));
        drop(FetchClaim::new(&r, id));
        assert!(
            r.claim_fetch(id),
            "the request went away: another may fetch"
        );
    }

    #[test]
    fn a_refusal_stands_until_its_retry_after() {
        let r = Reservations::default();
        let id = ClientId([4; 16]);
        let refused = RateDecision {
            allowed: false,
            remaining: 0,
            reset: Duration::from_millis(300),
            retry_after: Duration::from_millis(300),
        };
        r.keep(id, &refused, 0, 0, false);
        let d = r.decide(id, 1).unwrap().decision;
        assert!(!d.allowed);
        assert!(d.retry_after <= Duration::from_millis(300));
        assert!(r.decide(ClientId([5; 16]), 1).is_none(), "another client");
    }

    #[test]
    fn intervals_are_whole_microseconds() {
        assert_eq!(interval_us(1.0), 1_000_000);
        assert_eq!(interval_us(3.0), 333_333);
        assert_eq!(interval_us(1_000_000.0), 1);
        assert_eq!(interval_us(1.0 / 86_400.0), 86_400_000_000);
    }
}
