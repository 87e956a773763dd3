//! Identical questions in flight share one walk: the first request for a key starts it
//! (in a task of its own) and every later one reads the same event log, from its first
//! event on, so that a late joiner of a stream still gets every piece.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use super::events::{Event, EventLog, Subscriber};
use super::lease::Role;
use super::{Miss, Mode, Pipeline, Source, catch_panic};

/// Identical questions in flight, by mode and cache key: the event log of the walk
/// answering them. Streamed and whole walks are kept apart, so that a stream never waits
/// on a walk that calls the models whole (and a JSON request never pays for a stream).
pub(super) type Flights = Mutex<HashMap<(Mode, String), Arc<EventLog>>>;

/// Removes a leader's flight when it ends, however it ends (answer, panic, cancellation),
/// so that no later request joins a walk that will never finish.
struct FlightGuard<'a> {
    flights: &'a Flights,
    key: &'a (Mode, String),
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut f) = self.flights.lock() {
            f.remove(self.key);
        }
    }
}

impl Pipeline {
    /// The tiers after the fresh cache, for a question the cache did not have: joins the
    /// walk already answering the same question, or starts one in a task of its own (so
    /// that a client that leaves never stops it, and its answer is still cached). Read
    /// the walk through the returned subscriber, from its first event on.
    pub fn start(self: &Arc<Self>, mut miss: Miss, mode: Mode) -> Subscriber {
        let flight = (mode, miss.key.clone());
        if !miss.models {
            return self.start_without_models(miss, &flight);
        }
        // A conversation's answer depends on more than its last question: never shared.
        let producer = match self.flights.lock() {
            _ if miss.history.is_some() => EventLog::channel().0,
            Ok(mut flights) => match flights.get(&flight) {
                Some(log) => {
                    self.metrics.coalesced.inc();
                    return log.subscribe();
                }
                None => {
                    let (producer, log) = EventLog::channel();
                    flights.insert(flight.clone(), log);
                    producer
                }
            },
            // A poisoned map: walk alone, uncoalesced.
            Err(_) => EventLog::channel().0,
        };
        let subscriber = producer.log().subscribe();
        let pipeline = self.clone();
        // Every log line of the walk (each model call above all) carries the id.
        let span = tracing::info_span!("pipeline", request_id = %miss.request_id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _flight = miss.history.is_none().then_some(FlightGuard {
                    flights: &pipeline.flights,
                    key: &flight,
                });
                let question = miss.question.clone();
                let one_turn = miss.history.is_none();
                // Across instances sharing the Redis: lead, or follow another's walk.
                let role = if one_turn && pipeline.cache.coalesces_across_instances() {
                    pipeline.lead_or_follow(&mut miss).await
                } else {
                    Role::Lead(None)
                };
                let leadership = match role {
                    Role::Lead(leadership) => leadership,
                    Role::Answered(answer) => {
                        producer.push(Event::Source(answer.source));
                        producer.push(Event::Delta(answer.text.clone()));
                        producer.push(Event::Done(answer));
                        return;
                    }
                    Role::ModelsGaveUp => {
                        let answer =
                            pipeline.last_resort(&question, None, miss.stale, miss.external);
                        producer.push(Event::Source(answer.source));
                        producer.push(Event::Delta(answer.text.clone()));
                        producer.push(Event::Done(answer));
                        return;
                    }
                };
                let walked = catch_panic(pipeline.walk(miss, mode, &producer), &pipeline.metrics);
                let answer = match walked.await {
                    Some(answer) => answer,
                    // A failure around the model tiers (which guard themselves): take
                    // back what was sent; the tiers that cannot fail answer.
                    None => {
                        if producer.log().has_text() {
                            producer.push(Event::Reset("the answer broke off"));
                        }
                        let answer = pipeline.last_resort(&question, None, None, Duration::ZERO);
                        producer.push(Event::Source(answer.source));
                        producer.push(Event::Delta(answer.text.clone()));
                        answer
                    }
                };
                // What the walk cached (a one-turn answer written by one model call).
                let cached = one_turn
                    && !answer.continued
                    && matches!(answer.source, Source::Primary | Source::Secondary);
                let ended = answer.clone();
                producer.push(Event::Done(answer));
                if let Some(leadership) = leadership {
                    leadership.end(&ended, cached).await;
                }
            },
            span,
        ));
        subscriber
    }

    /// A question that may not call the models: it shares the walk in flight for it, or
    /// (that walk ended meanwhile) is answered at once by the tiers after the models.
    fn start_without_models(self: &Arc<Self>, miss: Miss, flight: &(Mode, String)) -> Subscriber {
        if miss.history.is_none()
            && let Ok(flights) = self.flights.lock()
            && let Some(log) = flights.get(flight)
        {
            self.metrics.coalesced.inc();
            return log.subscribe();
        }
        self.fallback(super::Tier::Primary, super::GiveUp::Budget);
        let answer = self.last_resort(&miss.question, None, miss.stale, miss.external);
        let (producer, log) = EventLog::channel();
        producer.push(Event::Source(answer.source));
        producer.push(Event::Delta(answer.text.clone()));
        producer.push(Event::Done(answer));
        log.subscribe()
    }
}
