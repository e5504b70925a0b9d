//! Reconnecting with capped, jittered exponential backoff: the one way every long-lived
//! connection in the services (the AMQP publisher, the job consumer, the pressure calculator's
//! `LISTEN` connection) waits between attempts.
//!
//! - [`Backoff`] is the policy: the first delay and the cap. Each delay is about twice the last,
//!   with jitter so that many processes cut off together do not all come back in step.
//! - [`Delays`] is one outage's sequence of delays; [`Delays::reset`] starts again from the
//!   first delay once a connection was established.
//! - [`forever`] runs a connection's session again and again with those delays in between; the
//!   session tells it, through [`Connected`], when it got far enough to count as connected.
//!
//! An actor that reconnects by messages to itself (the publisher) uses [`Delays`] directly; a
//! plain task uses [`forever`].
//!
//! ```
//! use std::time::Duration;
//! use actors::reconnect::Backoff;
//!
//! let mut delays = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).delays();
//! for _ in 0..20 {
//!     let delay = delays.next_delay();
//!     assert!(delay >= Duration::from_millis(100) && delay <= Duration::from_secs(2));
//! }
//! ```

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Capped exponential backoff with jitter: the first delay and the largest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay after a failure.
    pub min: Duration,
    /// The largest delay (before jitter, which adds up to one more delay of the same size).
    pub max: Duration,
}

impl Backoff {
    /// Delays from `min`, doubling, up to `max`.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self { min, max }
    }

    /// The delays of one outage, starting from [`Backoff::min`].
    pub fn delays(self) -> Delays {
        Delays {
            backoff: self,
            inner: self.build(),
        }
    }

    fn build(self) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// The sequence of delays of one outage (see [`Backoff::delays`]). It never ends.
#[derive(Debug)]
pub struct Delays {
    backoff: Backoff,
    inner: ExponentialBackoff,
}

impl Delays {
    /// How long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.inner.next().unwrap_or(self.backoff.max)
    }

    /// Back to the first delay: call once a connection has been established.
    pub fn reset(&mut self) {
        self.inner = self.backoff.build();
    }
}

/// Handed to each session by [`forever`]: the session calls [`Connected::mark`] once it has
/// connected (and set up whatever it needs), so the next outage starts from the first delay.
#[derive(Debug, Clone, Default)]
pub struct Connected(Arc<AtomicBool>);

impl Connected {
    /// The session is connected: after it ends, the delays start from the first one again.
    pub fn mark(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`Connected::mark`] was called.
    pub fn is_marked(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Runs `session` again and again, forever, waiting the next of `backoff`'s delays after each
/// end. `ended` is told how the session ended and how long the wait before the next one is (to
/// log it and update metrics). A session that marked itself [`Connected`] resets the delays.
///
/// The caller stops it by dropping (or aborting) the future, for instance by racing it against a
/// shutdown signal.
pub async fn forever<S, F, E>(
    backoff: Backoff,
    mut session: S,
    mut ended: impl FnMut(Result<(), E>, Duration),
) where
    S: FnMut(Connected) -> F,
    F: Future<Output = Result<(), E>>,
{
    let mut delays = backoff.delays();
    loop {
        let connected = Connected::default();
        let outcome = session(connected.clone()).await;
        if connected.is_marked() {
            delays.reset();
        }
        let delay = delays.next_delay();
        ended(outcome, delay);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{cell::RefCell, rc::Rc};

    const MIN: Duration = Duration::from_millis(1);
    const MAX: Duration = Duration::from_millis(8);

    #[test]
    fn delays_grow_to_the_cap_and_reset() {
        let mut delays = Backoff::new(MIN, MAX).delays();
        let first = delays.next_delay();
        assert!(first >= MIN && first <= 2 * MIN, "{first:?}");
        let later: Vec<Duration> = (0..30).map(|_| delays.next_delay()).collect();
        assert!(later.iter().all(|d| *d <= 2 * MAX), "{later:?}");
        assert!(later.iter().any(|d| *d >= MAX), "{later:?}");
        delays.reset();
        let again = delays.next_delay();
        assert!(again <= 2 * MIN, "{again:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn sessions_are_retried_and_a_connected_one_resets_the_delays() {
        type Ends = Vec<(Result<(), String>, Duration)>;
        let ends: Rc<RefCell<Ends>> = Rc::default();
        let attempts = Rc::new(RefCell::new(0u32));
        let run = forever(
            Backoff::new(MIN, MAX),
            |connected| {
                let attempts = attempts.clone();
                async move {
                    *attempts.borrow_mut() += 1;
                    let n = *attempts.borrow();
                    if n == 6 {
                        connected.mark();
                        Ok(())
                    } else {
                        Err(format!("attempt {n}"))
                    }
                }
            },
            |outcome, delay| ends.borrow_mut().push((outcome, delay)),
        );
        let wait = async {
            while ends.borrow().len() < 7 {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::select! {
            () = run => unreachable!("forever ends only when dropped"),
            () = wait => {}
        }
        let ends = ends.borrow();
        assert_eq!(ends[0].0, Err("attempt 1".to_owned()));
        assert_eq!(ends[5].0, Ok(()));
        // After the connected session the delay starts from the first one again.
        assert!(ends[4].1 >= 8 * MIN, "{:?}", ends[4].1);
        assert!(ends[5].1 <= 2 * MIN, "{:?}", ends[5].1);
    }
}
