//! Acknowledging applied deliveries together: one `basic.ack` with `multiple` for every
//! delivery of the channel up to a tag, once all of them are settled, rather than one frame
//! (and a round through lapin's threads) per delivery.
//!
//! A channel's delivery tags grow in the order of its deliveries. [`Acks`] keeps the tags not
//! settled yet; a delivery whose transaction committed waits there, with what to record once
//! it is acknowledged, until every older one is settled too: a batch that commits before an
//! older batch still in flight is acknowledged with it. Deliveries settled on their own (a
//! rejection to the dead-letter queue, an acknowledgement of something discarded) leave the
//! set when settled, and an acknowledgement with `multiple` never reaches them twice: the
//! broker settles only the deliveries still outstanding.

use std::collections::BTreeMap;

/// The deliveries of one channel not settled yet, by delivery tag; each applied one with its
/// record.
#[derive(Debug)]
pub(super) struct Acks<T> {
    open: BTreeMap<u64, Option<T>>,
}

impl<T> Default for Acks<T> {
    fn default() -> Self {
        Self {
            open: BTreeMap::new(),
        }
    }
}

impl<T> Acks<T> {
    /// A delivery was received.
    pub(super) fn received(&mut self, tag: u64) {
        self.open.insert(tag, None);
    }

    /// A delivery was settled on its own (rejected, or acknowledged alone).
    pub(super) fn settled_alone(&mut self, tag: u64) {
        self.open.remove(&tag);
    }

    /// A delivery's transaction committed: it is acknowledged with the older ones.
    pub(super) fn applied(&mut self, tag: u64, record: T) {
        if let Some(slot) = self.open.get_mut(&tag) {
            *slot = Some(record);
        }
    }

    /// The deliveries to acknowledge now, oldest first: the applied ones older than the oldest
    /// delivery not settled yet. Acknowledging the last of them with `multiple` acknowledges
    /// all of them. Taken out of the set: the caller acknowledges them.
    pub(super) fn take_ready(&mut self) -> Vec<T> {
        let mut ready = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            if entry.get().is_none() {
                break;
            }
            ready.extend(entry.remove());
        }
        ready
    }

    /// Deliveries not settled yet.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each delivery's record is its tag.

    #[test]
    fn a_batch_is_acknowledged_once_every_older_delivery_is_settled() {
        let mut acks = Acks::default();
        (1..=6).for_each(|tag| acks.received(tag));
        // The newer batch (4-6) commits first: it waits for the older one.
        for tag in 4..=6 {
            acks.applied(tag, tag);
        }
        assert!(acks.take_ready().is_empty());
        acks.applied(1, 1);
        assert_eq!(acks.take_ready(), [1]);
        // 2 is dead-lettered on its own, 3 applied: everything up to 6 is ready.
        acks.settled_alone(2);
        assert!(acks.take_ready().is_empty(), "3 is not applied yet");
        acks.applied(3, 3);
        assert_eq!(acks.take_ready(), [3, 4, 5, 6]);
        assert_eq!(acks.len(), 0);
        assert!(acks.take_ready().is_empty());
    }

    #[test]
    fn deliveries_settled_alone_never_hold_the_others_back() {
        let mut acks = Acks::default();
        (1..=3).for_each(|tag| acks.received(tag));
        acks.applied(3, 3);
        acks.settled_alone(1);
        acks.settled_alone(2);
        assert_eq!(acks.take_ready(), [3]);
        // A tag never received is not waited for, and an applied tag never received is not
        // acknowledged.
        acks.applied(9, 9);
        assert!(acks.take_ready().is_empty());
    }
}
