//! Mutable simulator state: per-model behaviour, script position, random
//! generator, counters and last request, plus the reports the control API
//! serves.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fastrand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::{
    AnswerStyle, Behavior, DEFAULT_HUGE_BODY_BYTES, DEFAULT_STREAM_CUT_AFTER,
    DEFAULT_STREAM_INTERVAL_MS, DEFAULT_STREAM_PIECE_CHARS, Outcome, SimConfig,
};

/// Models every simulator lists in `GET /v1/models`, configured or not, so a
/// client probing the endpoint finds the names it most likely asks for.
pub const BUILTIN_MODELS: [&str; 2] = ["gpt-4o", "gpt-3.5-turbo"];

/// Everything `GET /control` reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlSnapshot {
    pub seed: u64,
    pub default: Behavior,
    /// Every model that was configured or called.
    pub models: BTreeMap<String, ModelReport>,
    /// Calls the redirect target (`POST /redirected/v1/chat/completions`)
    /// received, whatever their model; they are not counted in `models`.
    #[serde(default)]
    pub redirected_calls: u64,
}

/// State of one model as the control API reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    /// The behaviour in force for this model (the default one if the model
    /// has none of its own).
    pub behavior: Behavior,
    /// Calls received since start-up or the last reset.
    pub calls: u64,
    /// How many calls got each outcome; outcomes never drawn are absent.
    pub outcomes: BTreeMap<Outcome, u64>,
    pub last_request: Option<LastRequest>,
}

/// The most recent chat-completion request a model received.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastRequest {
    pub body: Value,
    /// The `Authorization` header, if any, with its credentials replaced by
    /// `***`: `Bearer sk-…` reads `Bearer ***`, a value without a scheme
    /// reads `***`. The secret itself is never reported.
    pub authorization: Option<String>,
}

/// What the simulator decided to do with one call, with the parts of the
/// behaviour the answer needs.
#[derive(Clone, Debug)]
pub(crate) struct Decision {
    pub outcome: Outcome,
    pub delay: Duration,
    /// `Retry-After` value for a 429 or 503.
    pub retry_after: Option<String>,
    /// `retry-after-ms` value for a 429 or 503.
    pub retry_after_ms: Option<u64>,
    pub huge_body_bytes: u64,
    pub redirect_location: Option<String>,
    /// Characters per streamed piece, at least 1.
    pub stream_piece_chars: usize,
    /// Delay between two streamed pieces.
    pub stream_interval: Duration,
    /// Pieces sent before a stream fault.
    pub stream_cut_after: usize,
}

struct ModelState {
    /// `None` follows the default behaviour.
    behavior: Option<Behavior>,
    script_pos: usize,
    rng: Rng,
    calls: u64,
    outcomes: BTreeMap<Outcome, u64>,
    last_request: Option<LastRequest>,
    /// The unredacted `Authorization` of the last request, for in-process
    /// checks only; never serialized.
    last_authorization: Option<String>,
}

impl ModelState {
    fn new(seed: u64, model: &str, behavior: Option<Behavior>) -> ModelState {
        ModelState {
            behavior,
            script_pos: 0,
            rng: model_rng(seed, model),
            calls: 0,
            outcomes: BTreeMap::new(),
            last_request: None,
            last_authorization: None,
        }
    }

    /// A new behaviour starts its script and random sequence afresh, so the
    /// outcomes after a change depend only on the seed and the new behaviour.
    fn restart(&mut self, seed: u64, model: &str) {
        self.script_pos = 0;
        self.rng = model_rng(seed, model);
    }

    fn report(&self, default: &Behavior) -> ModelReport {
        ModelReport {
            behavior: self.behavior.as_ref().unwrap_or(default).clone(),
            calls: self.calls,
            outcomes: self.outcomes.clone(),
            last_request: self.last_request.clone(),
        }
    }
}

struct Inner {
    seed: u64,
    default: Behavior,
    models: BTreeMap<String, ModelState>,
    redirected_calls: u64,
}

impl Inner {
    fn from_config(config: &SimConfig) -> Inner {
        let models = config
            .models
            .iter()
            .map(|(name, b)| {
                (
                    name.clone(),
                    ModelState::new(config.seed, name, Some(b.clone())),
                )
            })
            .collect();
        Inner {
            seed: config.seed,
            default: config.default.clone(),
            models,
            redirected_calls: 0,
        }
    }

    fn model_mut(&mut self, model: &str) -> &mut ModelState {
        let seed = self.seed;
        self.models
            .entry(model.to_owned())
            .or_insert_with(|| ModelState::new(seed, model, None))
    }
}

/// Shared, lock-protected simulator state. The lock is never held across an
/// await, so a plain std mutex is enough.
pub(crate) struct SimState {
    initial: SimConfig,
    inner: Mutex<Inner>,
}

impl SimState {
    pub fn new(config: SimConfig) -> SimState {
        SimState {
            inner: Mutex::new(Inner::from_config(&config)),
            initial: config,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not turn the simulator into a second failure
        // source; the state stays usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How `ok` answers read (fixed at start-up).
    pub fn answer_style(&self) -> AnswerStyle {
        self.initial.answers
    }

    /// Counts the call, remembers the request and draws its outcome.
    pub fn record_call(&self, model: &str, body: Value, authorization: Option<String>) -> Decision {
        let mut guard = self.lock();
        let Inner {
            seed,
            default,
            models,
            ..
        } = &mut *guard;
        let state = models
            .entry(model.to_owned())
            .or_insert_with(|| ModelState::new(*seed, model, None));
        state.calls += 1;
        state.last_request = Some(LastRequest {
            body,
            authorization: authorization.as_deref().map(redact_authorization),
        });
        state.last_authorization = authorization;
        let behavior = state.behavior.as_ref().unwrap_or(default);
        let outcome = match behavior.script.get(state.script_pos) {
            Some(&scripted) => {
                state.script_pos += 1;
                scripted
            }
            None => draw(&mut state.rng, &behavior.mix),
        };
        let jitter = match behavior.jitter_ms {
            0 => 0,
            j => state.rng.u64(0..=j),
        };
        let decision = Decision {
            outcome,
            delay: Duration::from_millis(behavior.latency_ms.saturating_add(jitter)),
            retry_after: behavior
                .retry_after
                .clone()
                .or_else(|| behavior.retry_after_secs.map(|secs| secs.to_string())),
            retry_after_ms: behavior.retry_after_ms,
            huge_body_bytes: behavior.huge_body_bytes.unwrap_or(DEFAULT_HUGE_BODY_BYTES),
            redirect_location: behavior.redirect_location.clone(),
            // An unvalidated `set_behavior` may carry 0; one character then.
            stream_piece_chars: behavior
                .stream_piece_chars
                .unwrap_or(DEFAULT_STREAM_PIECE_CHARS)
                .max(1),
            stream_interval: Duration::from_millis(
                behavior
                    .stream_interval_ms
                    .unwrap_or(DEFAULT_STREAM_INTERVAL_MS),
            ),
            stream_cut_after: behavior
                .stream_cut_after
                .unwrap_or(DEFAULT_STREAM_CUT_AFTER),
        };
        *state.outcomes.entry(outcome).or_insert(0) += 1;
        decision
    }

    /// Replaces one model's behaviour, keeping its counters.
    pub fn set_behavior(&self, model: &str, behavior: Behavior) -> ModelReport {
        let mut guard = self.lock();
        let seed = guard.seed;
        let state = guard.model_mut(model);
        state.behavior = Some(behavior);
        state.restart(seed, model);
        state.report(&Behavior::default())
    }

    /// Replaces the default behaviour; models following it start afresh.
    pub fn set_default(&self, behavior: Behavior) {
        let mut guard = self.lock();
        let Inner {
            seed,
            default,
            models,
            ..
        } = &mut *guard;
        *default = behavior;
        for (name, state) in models.iter_mut() {
            if state.behavior.is_none() {
                state.restart(*seed, name);
            }
        }
    }

    /// Back to the start-up configuration, with counters and last requests
    /// cleared.
    pub fn reset(&self) {
        *self.lock() = Inner::from_config(&self.initial);
    }

    pub fn snapshot(&self) -> ControlSnapshot {
        let guard = self.lock();
        ControlSnapshot {
            seed: guard.seed,
            default: guard.default.clone(),
            models: guard
                .models
                .iter()
                .map(|(name, state)| (name.clone(), state.report(&guard.default)))
                .collect(),
            redirected_calls: guard.redirected_calls,
        }
    }

    /// Counts a call to the redirect target.
    pub fn record_redirected_call(&self) {
        self.lock().redirected_calls += 1;
    }

    /// Calls the redirect target received since start-up or the last reset.
    pub fn redirected_calls(&self) -> u64 {
        self.lock().redirected_calls
    }

    /// Whether `model`'s last request carried exactly this `Authorization`
    /// value (`None`: no such header). False if the model was never called.
    pub fn last_authorization_is(&self, model: &str, expected: Option<&str>) -> bool {
        self.lock().models.get(model).is_some_and(|state| {
            state.last_request.is_some() && state.last_authorization.as_deref() == expected
        })
    }

    pub fn calls(&self, model: &str) -> u64 {
        self.lock().models.get(model).map_or(0, |state| state.calls)
    }

    /// Call counts of the models that were called at least once.
    pub fn call_counts(&self) -> BTreeMap<String, u64> {
        self.lock()
            .models
            .iter()
            .filter(|(_, state)| state.calls > 0)
            .map(|(name, state)| (name.clone(), state.calls))
            .collect()
    }

    /// The built-in model names followed by every model with a behaviour of
    /// its own, without duplicates.
    pub fn listed_models(&self) -> Vec<String> {
        let guard = self.lock();
        let mut names: Vec<String> = BUILTIN_MODELS.iter().map(|m| (*m).to_owned()).collect();
        for (name, state) in &guard.models {
            if state.behavior.is_some() && !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }
}

/// `Authorization` as the control API reports it: the scheme, if any, and
/// `***` in place of the credentials.
fn redact_authorization(value: &str) -> String {
    match value.trim().split_once(char::is_whitespace) {
        Some((scheme, _)) => format!("{scheme} ***"),
        None if value.trim().is_empty() => String::new(),
        None => "***".to_owned(),
    }
}

/// Draws one outcome: shares are laid end to end in the map's (stable) order
/// and whatever is left over is `ok`.
fn draw(rng: &mut Rng, mix: &BTreeMap<Outcome, f64>) -> Outcome {
    let roll = rng.f64();
    let mut upto = 0.0;
    for (&outcome, &share) in mix {
        upto += share;
        if roll < upto {
            return outcome;
        }
    }
    Outcome::Ok
}

/// A generator per model, so that one model's traffic does not shift
/// another's outcomes, and a stable name hash (not std's randomly keyed
/// hasher) so the same seed replays the same outcomes on every run.
fn model_rng(seed: u64, model: &str) -> Rng {
    Rng::with_seed(splitmix64(seed ^ fnv1a(model.as_bytes())))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

/// Spreads nearby seeds (0, 1, 2…) over the whole state space.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
