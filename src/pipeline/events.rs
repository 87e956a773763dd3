//! A walk as a sequence of events, kept whole so that every request sharing the walk sees
//! every event from the first one on, however late it joins.
//!
//! ```text
//! (source delta+)* (reset (source delta+)*)? done
//! ```
//!
//! The deltas after the last reset, concatenated, are the `done` answer's text. The
//! producer is the walk (in a task of its own, so a client that leaves never stops it);
//! each consumer holds a [`Subscriber`] with its own position in the log.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{Answer, Source};

/// One event of a walk.
#[derive(Debug, Clone)]
pub enum Event {
    /// The pieces that follow are written by this tier (a model call that starts
    /// writing, or a later tier's whole answer).
    Source(Source),
    /// The next piece of the answer.
    Delta(Arc<str>),
    /// Throw the text so far away: the answer starts again (the reason is for people).
    Reset(&'static str),
    /// The whole answer; always the last event.
    Done(Answer),
}

/// The events of one walk, in order.
#[derive(Debug)]
pub struct EventLog {
    events: Mutex<Vec<Event>>,
    /// How many events there are, and whether the producer is gone: wakes subscribers.
    state: watch::Sender<(usize, bool)>,
}

/// The one writer of an [`EventLog`]. Dropped without a `Done` (its walk failed), it
/// closes the log, so that no subscriber waits for ever.
#[derive(Debug)]
pub struct Producer(Arc<EventLog>);

impl Producer {
    /// Appends an event and wakes every subscriber.
    pub fn push(&self, event: Event) {
        let len = match self.0.events.lock() {
            Ok(mut events) => {
                events.push(event);
                events.len()
            }
            Err(_) => return,
        };
        self.0.state.send_modify(|s| s.0 = len);
    }

    /// The log being written.
    pub fn log(&self) -> &Arc<EventLog> {
        &self.0
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.0.state.send_modify(|s| s.1 = true);
    }
}

impl EventLog {
    /// A new, empty log and its writer.
    pub fn channel() -> (Producer, Arc<EventLog>) {
        let log = Arc::new(EventLog {
            events: Mutex::new(Vec::new()),
            state: watch::channel((0, false)).0,
        });
        (Producer(log.clone()), log)
    }

    /// A reader from the first event on.
    pub fn subscribe(self: &Arc<Self>) -> Subscriber {
        Subscriber {
            log: self.clone(),
            next: 0,
            state: self.state.subscribe(),
        }
    }

    /// Whether text was sent since the last reset.
    pub fn has_text(&self) -> bool {
        self.events.lock().is_ok_and(|events| {
            events
                .iter()
                .rev()
                .take_while(|e| !matches!(e, Event::Reset(_)))
                .any(|e| matches!(e, Event::Delta(_)))
        })
    }
}

/// One reader of a walk's events.
pub struct Subscriber {
    log: Arc<EventLog>,
    next: usize,
    state: watch::Receiver<(usize, bool)>,
}

impl Subscriber {
    /// The next event; `None` after `Done`, or when the walk ended without one (its task
    /// failed: the caller then answers by itself).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.event_at(self.next) {
                if matches!(event, Event::Done(_)) {
                    // Nothing comes after Done.
                    self.next = usize::MAX;
                } else {
                    self.next = self.next.saturating_add(1);
                }
                return Some(event);
            }
            if self.next == usize::MAX {
                return None;
            }
            // Woken when an event is pushed or the producer is gone.
            let wanted = self.next;
            let closed = match self
                .state
                .wait_for(|(len, closed)| *len > wanted || *closed)
                .await
            {
                Ok(state) => state.1 && state.0 <= wanted,
                Err(_) => true,
            };
            if closed {
                return None;
            }
        }
    }

    /// The tier of the walk's first text (or of its answer, if that comes first), without
    /// moving this reader on; `None` when the walk ends without one.
    pub async fn first_source(&mut self) -> Option<Source> {
        let mut seen = 0;
        loop {
            {
                let events = self.log.events.lock().ok()?;
                for event in events.iter().skip(seen) {
                    match event {
                        Event::Source(source) => return Some(*source),
                        Event::Done(answer) => return Some(answer.source),
                        _ => {}
                    }
                }
                seen = events.len();
            }
            let closed = match self
                .state
                .wait_for(|(len, closed)| *len > seen || *closed)
                .await
            {
                Ok(state) => state.1 && state.0 <= seen,
                Err(_) => true,
            };
            if closed {
                return None;
            }
        }
    }

    /// Waits for the whole answer (`None` if the walk ended without one).
    pub async fn answer(mut self) -> Option<Answer> {
        while let Some(event) = self.next().await {
            if let Event::Done(answer) = event {
                return Some(answer);
            }
        }
        None
    }

    fn event_at(&self, i: usize) -> Option<Event> {
        self.log.events.lock().ok()?.get(i).cloned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pipeline::Source;
    use std::time::Duration;

    fn answer(text: &str) -> Answer {
        Answer {
            text: Arc::from(text),
            source: Source::Primary,
            model: None,
            external: Duration::ZERO,
            continued: false,
            canned: None,
            usage: None,
        }
    }

    #[tokio::test]
    async fn a_late_subscriber_sees_every_event_from_the_first() {
        let (producer, log) = EventLog::channel();
        producer.push(Event::Delta(Arc::from("a")));
        producer.push(Event::Delta(Arc::from("b")));
        let mut late = log.subscribe();
        producer.push(Event::Done(answer("ab")));

        let mut seen = Vec::new();
        while let Some(e) = late.next().await {
            seen.push(e);
        }

        assert_eq!(seen.len(), 3);
        assert!(matches!(&seen[0], Event::Delta(t) if &**t == "a"));
        assert!(matches!(&seen[2], Event::Done(a) if &*a.text == "ab"));
    }

    #[tokio::test]
    async fn a_subscriber_waits_for_events_still_to_come() {
        let (producer, log) = EventLog::channel();
        let sub = log.subscribe();
        let waiter = tokio::spawn(sub.answer());
        tokio::time::sleep(Duration::from_millis(20)).await;
        producer.push(Event::Delta(Arc::from("x")));
        producer.push(Event::Done(answer("x")));

        let got = waiter.await.unwrap().unwrap();

        assert_eq!(&*got.text, "x");
    }

    #[tokio::test]
    async fn a_walk_that_ends_without_done_ends_its_subscribers() {
        let (producer, log) = EventLog::channel();
        let sub = log.subscribe();
        producer.push(Event::Delta(Arc::from("x")));
        let waiter = tokio::spawn(sub.answer());
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(producer);

        assert!(waiter.await.unwrap().is_none());
    }
}
