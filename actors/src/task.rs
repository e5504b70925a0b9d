//! Plain supervised tasks: a loop that takes no messages (the planner's consumer and
//! reconciliation, the gateway's redelivery) is not an actor but a task of the service's
//! runtime, run until its [`Shutdown`] says stop, as zero-to-production's
//! `run_worker_until_stopped` is. What has state behind a mailbox stays an actor.

use std::future::Future;

use tokio::sync::watch;

/// The stop signal of a service's tasks: [`Shutdown::stop`] (or dropping it) stops every task
/// started with one of its [`Shutdown::signal`]s.
#[derive(Debug)]
pub struct Shutdown(watch::Sender<()>);

/// What a task waits on to stop.
#[derive(Debug, Clone)]
pub struct ShutdownSignal(watch::Receiver<()>);

impl Default for Shutdown {
    fn default() -> Self {
        Self(watch::channel(()).0)
    }
}

impl Shutdown {
    /// A signal for one more task.
    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal(self.0.subscribe())
    }

    /// Stops every task of this signal (at its next `.await`).
    pub fn stop(self) {}
}

impl ShutdownSignal {
    /// Resolves once the [`Shutdown`] is stopped or dropped.
    pub async fn stopped(mut self) {
        while self.0.changed().await.is_ok() {}
    }
}

/// Runs `work` as a task of the current (actix) runtime until it ends or `shutdown` comes,
/// whichever is first. `name` is the `task` field of its log lines: `task_stopped` when stopped,
/// `task_ended` (a warning: these loops run forever) when `work` returned on its own.
pub fn spawn_until_stopped<F>(name: &'static str, shutdown: ShutdownSignal, work: F)
where
    F: Future<Output = ()> + 'static,
{
    actix_web::rt::spawn(async move {
        tokio::select! {
            () = work => log::warn!(event = "task_ended", task = name; "task ended on its own"),
            () = shutdown.stopped() => log::info!(event = "task_stopped", task = name; "task stopped"),
        }
    });
}

/// Runs `round` on `state` at once and then every `interval` after the previous one ended (one
/// at a time), as [`spawn_until_stopped`] does.
pub fn spawn_every<S: 'static>(
    name: &'static str,
    interval: std::time::Duration,
    shutdown: ShutdownSignal,
    mut state: S,
    round: for<'a> fn(&'a mut S) -> futures::future::LocalBoxFuture<'a, ()>,
) {
    spawn_until_stopped(name, shutdown, async move {
        loop {
            round(&mut state).await;
            tokio::time::sleep(interval).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[actix_web::test]
    async fn a_task_runs_until_its_shutdown_and_not_after() {
        let shutdown = Shutdown::default();
        let rounds = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let counted = rounds.clone();
        spawn_until_stopped("test", shutdown.signal(), async move {
            loop {
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        // It runs: two rounds come.
        rx.recv().await.unwrap();
        rx.recv().await.unwrap();
        shutdown.stop();
        // Once stopped, its future is dropped (no round can follow): the channel closes.
        while rx.recv().await.is_some() {}
        assert!(rounds.load(Ordering::SeqCst) >= 2);
    }

    #[actix_web::test]
    async fn dropping_the_shutdown_stops_the_task_too() {
        let shutdown = Shutdown::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        spawn_until_stopped("test", shutdown.signal(), async move {
            let _kept = tx;
            std::future::pending::<()>().await;
        });
        drop(shutdown);
        // The task's future (and the sender it holds) is dropped.
        assert!(rx.recv().await.is_none());
    }
}
