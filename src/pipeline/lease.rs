//! One upstream call per question across the instances that share a Redis: before a
//! one-turn question's walk calls the models, its instance takes a short lease on the
//! question's key in Redis (`SET key:lease holder NX PX`). The instance that gets it
//! leads: it walks, renewing the lease while it does. The others follow: they wait for
//! the leader's answer to appear in the cache (and serve it as a cache hit), within their
//! own deadline. A leader that dies stops renewing, its lease lapses within
//! [`LEASE_TTL`], and a follower takes over. A leader whose models gave no answer says
//! so in the lease ([`MODELS_GAVE_UP`]) so that its followers go straight to the tiers
//! after the models instead of calling them again. With Redis away, every instance
//! walks on its own, as one instance always did.
//!
//! Within one instance, identical questions already share one walk (`coalesce.rs`), so
//! each instance has at most one leader or follower per question.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Answer, Miss, Pipeline, Source};

/// How long a lease lives without renewal: how long followers wait on a leader that
/// died before one of them takes over.
pub const LEASE_TTL: Duration = Duration::from_millis(2000);

/// How often a leader renews its lease.
const RENEW_EVERY: Duration = Duration::from_millis(600);

/// How often a follower looks for the leader's answer.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// The lease's value once its leader's models gave no answer.
const MODELS_GAVE_UP: &str = "models-gave-up";

/// How long the [`MODELS_GAVE_UP`] mark stays: its followers look every
/// [`POLL_EVERY`], so they all read it in that time.
const GAVE_UP_TTL: Duration = Duration::from_millis(500);

/// The lease's value once its leader's answer is on its way to the cache.
const ANSWERED: &str = "answered";

/// How long the [`ANSWERED`] mark stays: ample for the cache write to land, and short,
/// so that a follower takes over soon if it never does.
const ANSWERED_TTL: Duration = Duration::from_millis(300);

/// What an instance does with a question after the lease.
pub(super) enum Role {
    /// Walk: as the leader (with the lease renewed until the guard is dropped), or
    /// alone (`None`: Redis could not be asked, or the deadline is near).
    Lead(Option<Leadership>),
    /// Another instance's model answered; here as a cache hit.
    Answered(Answer),
    /// The leader's models gave no answer: the tiers after the models answer here.
    ModelsGaveUp,
}

/// A held lease: renewed by a task until the walk ends.
pub(super) struct Leadership {
    pipeline: Arc<Pipeline>,
    key: String,
    holder: Arc<str>,
    renewal: JoinHandle<()>,
}

impl Leadership {
    /// Ends the lease after the walk gave `answer`. A cached answer shortens it to
    /// [`ANSWERED_TTL`] (its write to Redis is queued: the followers find it there
    /// meanwhile); a model's answer that is not cached (written by several calls) frees
    /// it for a follower to take over; an answer from the tiers after the models marks
    /// it [`MODELS_GAVE_UP`].
    pub(super) async fn end(self, answer: &Answer, cached: bool) {
        self.renewal.abort();
        let cache = &self.pipeline.cache;
        if cached {
            cache
                .hand_over_lease(&self.key, &self.holder, ANSWERED, ANSWERED_TTL)
                .await;
        } else if matches!(answer.source, Source::Primary | Source::Secondary) {
            cache.release_lease(&self.key, &self.holder).await;
        } else {
            cache
                .hand_over_lease(&self.key, &self.holder, MODELS_GAVE_UP, GAVE_UP_TTL)
                .await;
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

impl Pipeline {
    /// Leads or follows `miss` across instances (see the module's text). The time spent
    /// on Redis and waiting for a leader is added to the miss's external time: it is not
    /// the service's own overhead.
    pub(super) async fn lead_or_follow(self: &Arc<Self>, miss: &mut Miss) -> Role {
        let waited = Instant::now();
        let role = self.lead_or_follow_inner(miss, waited).await;
        if matches!(role, Role::Lead(_)) {
            miss.external += waited.elapsed();
        }
        role
    }

    async fn lead_or_follow_inner(self: &Arc<Self>, miss: &Miss, waited: Instant) -> Role {
        // The holder is the request id behind a prefix no mark has: a client's own
        // X-Request-Id can never read as a mark.
        let holder: Arc<str> = Arc::from(format!("walk:{}", miss.request_id));
        loop {
            // A leader whose models gave no answer leaves no lead to follow for a new
            // request (only followers that waited on its walk read the mark). One that
            // answered does: its answer is on its way to the cache, and a request that
            // missed it by milliseconds follows (reads it there) instead of calling the
            // models again; the mark lapses after ANSWERED_TTL if the write never lands.
            match self
                .cache
                .take_lease(&miss.key, &holder, LEASE_TTL, MODELS_GAVE_UP)
                .await
            {
                Ok(true) => {
                    self.count_lease("led");
                    return Role::Lead(Some(self.lead(&miss.key, holder)));
                }
                Ok(false) => {}
                Err(_) => {
                    self.count_lease("unavailable");
                    return Role::Lead(None);
                }
            }
            // Another instance leads: wait for its answer.
            loop {
                if Instant::now() + POLL_EVERY >= miss.deadline {
                    // No time left to wait: the walk goes to the tiers after the models.
                    self.count_lease("deadline");
                    return Role::Lead(None);
                }
                tokio::time::sleep(POLL_EVERY).await;
                if let Some(entry) = self.cache.fresh_in_redis(&miss.key).await {
                    self.count_lease("followed");
                    return Role::Answered(Answer {
                        text: entry.answer,
                        source: Source::Cache,
                        model: Some(entry.model),
                        external: miss.external + waited.elapsed(),
                        continued: false,
                        canned: None,
                        usage: None,
                    });
                }
                match self.cache.lease_holder(&miss.key).await {
                    Ok(Some(value)) if value == MODELS_GAVE_UP => {
                        self.count_lease("models_gave_up");
                        return Role::ModelsGaveUp;
                    }
                    Ok(Some(_)) => {}
                    // The leader is gone without an answer: take over.
                    Ok(None) => {
                        self.count_lease("took_over");
                        break;
                    }
                    Err(_) => {
                        self.count_lease("unavailable");
                        return Role::Lead(None);
                    }
                }
            }
        }
    }

    fn lead(self: &Arc<Self>, key: &str, holder: Arc<str>) -> Leadership {
        let pipeline = self.clone();
        let (renew_key, renew_holder) = (key.to_owned(), holder.clone());
        let renewal = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                if !pipeline
                    .cache
                    .renew_lease(&renew_key, &renew_holder, LEASE_TTL)
                    .await
                {
                    return;
                }
            }
        });
        Leadership {
            pipeline: self.clone(),
            key: key.to_owned(),
            holder,
            renewal,
        }
    }

    fn count_lease(&self, result: &str) {
        self.metrics
            .question_leases
            .with_label_values(&[result])
            .inc();
    }
}
