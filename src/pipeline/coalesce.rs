//! Identical questions in flight share one walk: the first request for a key starts it
//! (in a task of its own) and every later one reads the same event log, from its first
//! event on, so that a late joiner of a stream still gets every piece.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::events::{Event, EventLog, Subscriber};
use super::{Miss, Mode, Pipeline};

/// Identical questions in flight: the event log of the walk answering them.
pub(super) type Flights = Mutex<HashMap<String, Arc<EventLog>>>;

/// Removes a leader's flight when it ends, however it ends (answer, panic, cancellation),
/// so that no later request joins a walk that will never finish.
struct FlightGuard<'a> {
    flights: &'a Flights,
    key: &'a str,
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
    pub fn start(self: &Arc<Self>, miss: Miss, mode: Mode) -> Subscriber {
        let producer = match self.flights.lock() {
            Ok(mut flights) => match flights.get(&miss.key) {
                Some(log) => {
                    self.metrics.coalesced.inc();
                    return log.subscribe();
                }
                None => {
                    let (producer, log) = EventLog::channel();
                    flights.insert(miss.key.clone(), log);
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
                let key = miss.key.clone();
                let _flight = FlightGuard {
                    flights: &pipeline.flights,
                    key: &key,
                };
                let answer = pipeline.walk(miss, mode, &producer).await;
                producer.push(Event::Done(answer));
            },
            span,
        ));
        subscriber
    }
}
