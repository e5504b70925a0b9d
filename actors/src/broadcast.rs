//! The pressure broadcaster actor: one per process, it holds the current [`Pressure`] and fans
//! every change out to all stream subscribers.
//!
//! # Why one `tokio::sync::watch` channel
//!
//! Subscribers want the *latest* pressure, not a history: a runner manager that missed three
//! intermediate maps only needs the newest one. A `watch` channel is exactly that: one slot that
//! every receiver shares, overwritten by each publish.
//!
//! - Bounded per client, latest wins: a receiver remembers only the version it has seen (an
//!   integer), so a client that does not read costs nothing more however many changes it
//!   misses, and when it reads again it gets the newest snapshot straight away. The "buffer"
//!   per client is one `Arc` pointer; nothing queues.
//! - O(1) publish: a publish stores one `Arc<Pressure>` and wakes the waiting receivers; it
//!   does not visit, clone to, or wait for any client, so a slow client never slows the others
//!   or the actor. Every subscriber's task is woken once per change; a single-flavor stream
//!   whose flavor did not change compares two integers and sleeps again without writing.
//! - Shared rendering: the snapshot carries its JSON/NDJSON/SSE lines rendered once
//!   ([`Pressure::new`]); 10,000 subscribers send slices of the same buffer.
//! - Removal at once: a subscription is a receiver; dropping it (the HTTP response body is
//!   dropped when the client disconnects) is all it takes, and
//!   [`SubscriberCount`] is the channel's live receiver count.
//!
//! Per-client bounded `mpsc` queues (actix's SSE example) would need the actor to try-send to
//! each client on every change, O(n) work and n copies of the pointer, and a full queue would
//! hold *old* states while dropping the newest: the opposite of what a subscriber wants.
//! `tokio::sync::broadcast` keeps a ring of past values and makes lagging receivers skip with an
//! error; also not "latest state".
//!
//! # Shutdown
//!
//! The actor owns the only sender. [`Shutdown`] (or the actor stopping for any other reason)
//! drops it, which wakes every subscription with "closed" at once, so every stream ends
//! promptly instead of at its next heartbeat.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use tokio::sync::watch;

use crate::pressure::{Pressure, PressureMap};

/// The broadcaster has shut down: no new subscriptions (the service is stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pressure broadcaster is shut down")]
pub struct Closed;

/// Replace the current pressure map. An identical map is ignored (no new generation, no
/// wake-up); a different one becomes the next generation and reaches every subscriber.
/// Answers the generation current after the message.
#[derive(Debug, Message)]
#[rtype(result = "u64")]
pub struct Publish(pub PressureMap);

/// Subscribe to changes. The [`Subscription`] starts at the current snapshot.
#[derive(Debug, Message)]
#[rtype(result = "Result<Subscription, Closed>")]
pub struct Subscribe;

/// The current snapshot (for a plain `GET .../pressure`).
#[derive(Debug, Message)]
#[rtype(result = "Arc<Pressure>")]
pub struct Current;

/// How many subscriptions are alive right now (for a metric).
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct SubscriberCount;

/// End every subscription now and stop the actor. Send it when the service starts shutting
/// down, before waiting for the HTTP server to drain: open streams would otherwise keep their
/// connections busy until the server's shutdown timeout.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// A subscriber's view of the broadcaster: it holds one receiver of the shared slot and no
/// buffer of its own. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    receiver: watch::Receiver<Arc<Pressure>>,
}

impl Subscription {
    /// The newest snapshot; it counts as seen, so [`Subscription::changed`] waits for a later
    /// one.
    pub fn current(&mut self) -> Arc<Pressure> {
        Arc::clone(&self.receiver.borrow_and_update())
    }

    /// Waits for a snapshot newer than the last one seen and returns it (after a burst of
    /// changes: only the newest). `None` once the broadcaster has shut down.
    pub async fn changed(&mut self) -> Option<Arc<Pressure>> {
        self.receiver.changed().await.ok()?;
        Some(self.current())
    }

    /// True when a snapshot newer than the last one seen is waiting.
    pub fn has_changed(&self) -> bool {
        self.receiver.has_changed().unwrap_or(false)
    }
}

/// The broadcaster actor. `Broadcaster::new(initial).start()`.
pub struct Broadcaster {
    current: Arc<Pressure>,
    /// `None` after shutdown; dropping it closes every subscription.
    sender: Option<watch::Sender<Arc<Pressure>>>,
}

impl Broadcaster {
    /// A broadcaster whose first snapshot is `initial`.
    ///
    /// Generations start at the current Unix time in microseconds and grow by one per change,
    /// so SSE event ids keep growing across restarts of the process too (as long as it
    /// publishes fewer than a million changes per second of uptime).
    pub fn new(initial: PressureMap) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_micros())
            .unwrap_or_default();
        Self::with_generation(initial, u64::try_from(now).unwrap_or(u64::MAX / 2))
    }

    /// A broadcaster whose first snapshot is `initial` at `generation`.
    pub fn with_generation(initial: PressureMap, generation: u64) -> Self {
        let current = Arc::new(Pressure::new(initial, generation));
        let (sender, _) = watch::channel(Arc::clone(&current));
        Self {
            current,
            sender: Some(sender),
        }
    }

    fn subscribers(&self) -> usize {
        self.sender
            .as_ref()
            .map_or(0, watch::Sender::receiver_count)
    }

    fn close(&mut self) {
        if self.sender.take().is_some() {
            log::info!(
                event = "pressure_broadcaster_closing",
                generation = self.current.generation();
                "closing every pressure stream"
            );
        }
    }
}

impl Actor for Broadcaster {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        log::info!(
            event = "pressure_broadcaster_started",
            generation = self.current.generation(),
            flavors = self.current.flavors().len();
            "pressure broadcaster started"
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.close();
    }
}

impl Handler<Publish> for Broadcaster {
    type Result = u64;

    fn handle(&mut self, Publish(flavors): Publish, _: &mut Self::Context) -> u64 {
        if flavors == *self.current.flavors() {
            log::trace!(
                event = "pressure_unchanged",
                generation = self.current.generation();
                "pressure unchanged"
            );
            return self.current.generation();
        }
        let generation = self.current.generation() + 1;
        self.current = Arc::new(Pressure::new(flavors, generation));
        if let Some(sender) = &self.sender {
            // Stores the pointer and wakes the waiting receivers; works with none too.
            sender.send_replace(Arc::clone(&self.current));
        }
        log::debug!(
            event = "pressure_changed",
            generation,
            flavors = self.current.flavors().len(),
            subscribers = self.subscribers();
            "pressure changed"
        );
        generation
    }
}

impl Handler<Subscribe> for Broadcaster {
    type Result = Result<Subscription, Closed>;

    fn handle(&mut self, _: Subscribe, _: &mut Self::Context) -> Self::Result {
        let sender = self.sender.as_ref().ok_or(Closed)?;
        let mut receiver = sender.subscribe();
        receiver.mark_unchanged();
        Ok(Subscription { receiver })
    }
}

impl Handler<Current> for Broadcaster {
    type Result = Arc<Pressure>;

    fn handle(&mut self, _: Current, _: &mut Self::Context) -> Self::Result {
        Arc::clone(&self.current)
    }
}

impl Handler<SubscriberCount> for Broadcaster {
    type Result = usize;

    fn handle(&mut self, _: SubscriberCount, _: &mut Self::Context) -> usize {
        self.subscribers()
    }
}

impl Handler<Shutdown> for Broadcaster {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        log::info!(
            event = "pressure_broadcaster_shutdown",
            subscribers = self.subscribers();
            "pressure broadcaster shutting down"
        );
        self.close();
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, u64)]) -> PressureMap {
        entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[actix_rt::test]
    async fn a_change_reaches_subscribers_with_the_next_generation() {
        let addr = Broadcaster::with_generation(map(&[("a", 1)]), 10).start();
        let mut subscription = addr.send(Subscribe).await.unwrap().unwrap();
        assert_eq!(subscription.current().generation(), 10);
        assert!(!subscription.has_changed());

        assert_eq!(addr.send(Publish(map(&[("a", 2)]))).await.unwrap(), 11);
        let next = subscription.changed().await.unwrap();
        assert_eq!(next.generation(), 11);
        assert_eq!(next.get("a"), Some(2));
        assert_eq!(addr.send(Current).await.unwrap().generation(), 11);
    }

    #[actix_rt::test]
    async fn an_identical_map_is_ignored() {
        let addr = Broadcaster::with_generation(map(&[("a", 1), ("b", 0)]), 1).start();
        let subscription = addr.send(Subscribe).await.unwrap().unwrap();
        let generation = addr
            .send(Publish(map(&[("b", 0), ("a", 1)])))
            .await
            .unwrap();
        assert_eq!(generation, 1);
        // The handler has run (we have its answer): nothing was sent.
        assert!(!subscription.has_changed());
        assert_eq!(addr.send(Current).await.unwrap().generation(), 1);
    }

    #[actix_rt::test]
    async fn a_subscriber_that_does_not_read_holds_only_the_latest_state() {
        let addr = Broadcaster::with_generation(map(&[("a", 0)]), 0).start();
        let mut slow = addr.send(Subscribe).await.unwrap().unwrap();
        for n in 1..=10_000 {
            addr.do_send(Publish(map(&[("a", n)])));
        }
        assert_eq!(addr.send(Current).await.unwrap().generation(), 10_000);
        let latest = slow.changed().await.unwrap();
        assert_eq!(latest.get("a"), Some(10_000));
        assert!(!slow.has_changed(), "nothing older is queued behind it");
    }

    #[actix_rt::test]
    async fn dropping_a_subscription_unsubscribes_at_once() {
        let addr = Broadcaster::new(map(&[("a", 0)])).start();
        assert_eq!(addr.send(SubscriberCount).await.unwrap(), 0);
        let first = addr.send(Subscribe).await.unwrap().unwrap();
        let second = addr.send(Subscribe).await.unwrap().unwrap();
        assert_eq!(addr.send(SubscriberCount).await.unwrap(), 2);
        drop(first);
        assert_eq!(addr.send(SubscriberCount).await.unwrap(), 1);
        drop(second);
        assert_eq!(addr.send(SubscriberCount).await.unwrap(), 0);
    }

    #[actix_rt::test]
    async fn shutdown_closes_every_subscription() {
        let addr = Broadcaster::new(map(&[("a", 0)])).start();
        let mut one = addr.send(Subscribe).await.unwrap().unwrap();
        let mut two = addr.send(Subscribe).await.unwrap().unwrap();
        addr.send(Shutdown).await.unwrap();
        assert!(one.changed().await.is_none());
        assert!(two.changed().await.is_none());
        assert!(addr.send(Subscribe).await.is_err(), "the actor is stopped");
    }

    #[actix_rt::test]
    async fn the_actor_stopping_closes_every_subscription() {
        let addr = Broadcaster::new(map(&[("a", 0)])).start();
        let mut subscription = addr.send(Subscribe).await.unwrap().unwrap();
        // The last address gone: actix stops the actor.
        drop(addr);
        assert!(subscription.changed().await.is_none());
    }

    #[test]
    fn generations_start_from_the_clock_and_grow_across_restarts() {
        let before = Broadcaster::new(PressureMap::new()).current.generation();
        let after = Broadcaster::new(PressureMap::new()).current.generation();
        assert!(before > 1_700_000_000_000_000, "microseconds since 1970");
        assert!(after >= before);
    }
}
