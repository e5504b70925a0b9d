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

/// Runs the task `work` makes as [`spawn_until_stopped`] does, and a new one each time one
/// ends or panics, after `delay`: for a loop that must not stop while the process runs (the
/// manager's pressure follower). Each restart is logged (`task_restarted`, with whether it
/// panicked) and reported to `restarted` (a metric, a readiness flag). The running task is
/// aborted when `shutdown` comes.
pub fn spawn_supervised<W, F, R>(
    name: &'static str,
    shutdown: ShutdownSignal,
    delay: std::time::Duration,
    mut work: W,
    mut restarted: R,
) where
    W: FnMut() -> F + 'static,
    F: Future<Output = ()> + 'static,
    R: FnMut() + 'static,
{
    /// The running task, aborted when its supervisor is dropped (at shutdown).
    struct Running(tokio::task::JoinHandle<()>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    spawn_until_stopped(name, shutdown, async move {
        loop {
            let mut running = Running(actix_web::rt::spawn(work()));
            let panicked = (&mut running.0).await.is_err_and(|err| err.is_panic());
            log::warn!(
                event = "task_restarted",
                task = name,
                panicked,
                delay_ms = delay.as_millis();
                "task ended: starting it again"
            );
            restarted();
            tokio::time::sleep(delay).await;
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
    async fn a_supervised_task_is_started_again_after_it_panics_or_ends() {
        let shutdown = Shutdown::default();
        let starts = Arc::new(AtomicUsize::new(0));
        let (restarts, mut restarted) = tokio::sync::mpsc::unbounded_channel();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let counted = starts.clone();
        spawn_supervised(
            "test",
            shutdown.signal(),
            Duration::from_millis(1),
            move || {
                let start = counted.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                async move {
                    let _ = tx.send(start);
                    match start {
                        0 => panic!("the first run panics"),
                        1 => {}
                        _ => std::future::pending().await,
                    }
                }
            },
            move || {
                let _ = restarts.send(());
            },
        );
        // The first run panics, the second ends, the third runs on.
        for expected in 0..3 {
            assert_eq!(rx.recv().await, Some(expected));
        }
        restarted.recv().await.unwrap();
        restarted.recv().await.unwrap();
        shutdown.stop();
        // Stopped: the running task (and the sender it holds) is dropped, and none follows.
        assert_eq!(rx.recv().await, None);
        assert!(restarted.recv().await.is_none());
        assert_eq!(starts.load(Ordering::SeqCst), 3);
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
