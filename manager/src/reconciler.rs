//! The reconciler: one actor per flavor, with its own state and timers. Each pass lists the
//! backend's runners and GitHub's, lets [`decide`] choose, and carries the actions out: creates
//! (bounded in parallel, backing off after failures), removals and deregistrations, each
//! logged with its reason. A pass runs every `APP_RECONCILE_INTERVAL`, and at once when the
//! flavor's pressure changes; passes never overlap (a trigger during one runs another after).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};

use crate::backend::{Backend, Instance, RunnerSpec, NO_CAPACITY};
use crate::config::{FlavorConfig, DEFAULT_LABELS};
use crate::decide::{self, Action, Observed, Reason, RunnerState};
use crate::github::{DeleteOutcome, GitHub, GitHubError};
use crate::messages::{
    DeleteRunner, GenerateJitConfig, GetRunners, ListRunners, Listed, PressureChanged, RunnerView,
};
use crate::metrics::Metrics;
use crate::planner::Planner;
use crate::status::Readiness;

/// First delay after a failed create; it doubles with each failure in a row.
const CREATE_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Largest delay after failed creates.
const CREATE_BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);

/// What a reconciler is built from.
pub struct ReconcilerConfig {
    /// The flavor.
    pub flavor: FlavorConfig,
    /// The manager's id.
    pub manager_id: String,
    /// The flavor's backend.
    pub backend: Arc<dyn Backend>,
    /// The GitHub actor.
    pub github: Addr<GitHub>,
    /// The planner (for the flavor's labels when the file lists none).
    pub planner: Planner,
    /// `APP_RECONCILE_INTERVAL`.
    pub interval: Duration,
    /// `APP_CREATE_PARALLELISM`.
    pub parallelism: usize,
    /// The metrics.
    pub metrics: Metrics,
    /// `/ready`'s state.
    pub readiness: Arc<Readiness>,
}

/// The reconciler of one flavor.
pub struct Reconciler {
    config: Arc<ReconcilerConfig>,
    prefix: String,
    pressure: Option<u64>,
    /// Whether the follower has said anything yet (a pressure, or that it is unknown).
    pressure_heard: bool,
    labels: Option<Vec<String>>,
    creating: HashMap<String, DateTime<Utc>>,
    removing: HashSet<String>,
    online_at: HashMap<String, DateTime<Utc>>,
    created_here: HashSet<String>,
    instances: Vec<Instance>,
    states: HashMap<String, RunnerState>,
    /// Whether a pass is observing (listing the backend and GitHub) now.
    passing: bool,
    /// Runners whose create, or removal, finished while the pass was observing: its listings
    /// may predate them ([`Reconciler::settle`]).
    created_while_observing: Vec<String>,
    removed_while_observing: Vec<String>,
    again: bool,
    create_failures: u32,
    create_paused_until: Option<Instant>,
    wake_scheduled: bool,
}

/// The pause after `failures` failed creates in a row (at least one): 1 s, 2 s, 4 s, ... up
/// to 5 min.
fn create_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    CREATE_BACKOFF_MIN
        .saturating_mul(1 << doublings)
        .min(CREATE_BACKOFF_MAX)
}

/// The name prefix of a manager's runners of a flavor: `<manager id>-<flavor>-`.
pub fn name_prefix(manager_id: &str, flavor: &str) -> String {
    format!("{manager_id}-{flavor}-")
}

/// A new runner name of `prefix`: the prefix and 8 random lowercase hex digits.
fn new_runner_name(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

/// Whether `name` is a runner name of `prefix`: the prefix and exactly the 8 lowercase hex
/// digits [`new_runner_name`] adds. The runners of a flavor `a-b` (`<id>-a-b-<hex>`) start with
/// flavor `a`'s prefix too; they are never taken for `a`'s.
pub fn is_runner_name(prefix: &str, name: &str) -> bool {
    name.strip_prefix(prefix).is_some_and(|suffix| {
        suffix.len() == 8
            && suffix
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl Reconciler {
    /// A reconciler; it starts reconciling when started.
    pub fn new(config: ReconcilerConfig) -> Self {
        let prefix = name_prefix(&config.manager_id, &config.flavor.name);
        let labels = config.flavor.labels.clone();
        Self {
            config: Arc::new(config),
            prefix,
            pressure: None,
            pressure_heard: false,
            labels,
            creating: HashMap::new(),
            removing: HashSet::new(),
            online_at: HashMap::new(),
            created_here: HashSet::new(),
            instances: Vec::new(),
            states: HashMap::new(),
            passing: false,
            created_while_observing: Vec::new(),
            removed_while_observing: Vec::new(),
            again: false,
            create_failures: 0,
            create_paused_until: None,
            wake_scheduled: false,
        }
    }

    fn flavor(&self) -> &str {
        &self.config.flavor.name
    }

    fn pass(&mut self, ctx: &mut Context<Self>) {
        if self.passing {
            self.again = true;
            return;
        }
        self.passing = true;
        let started = Instant::now();
        let backend = self.config.backend.clone();
        let github = self.config.github.clone();
        let prefix = self.prefix.clone();
        let observe = async move {
            let instances = backend.list().await;
            let runners = match github.send(ListRunners { prefix }).await {
                Ok(Ok(runners)) => Ok(runners),
                Ok(Err(err)) => Err(ListError::GitHub(err)),
                Err(_) => Err(ListError::Stopped),
            };
            (instances, runners)
        };
        ctx.spawn(
            observe
                .into_actor(self)
                .map(move |(instances, runners), actor, ctx| {
                    actor.passing = false;
                    actor.apply(instances, runners, ctx);
                    let took = started.elapsed();
                    actor
                        .config
                        .metrics
                        .reconcile_seconds
                        .with_label_values(&[actor.flavor()])
                        .observe(took.as_secs_f64());
                    log::debug!(
                        event = "reconcile_pass",
                        flavor = actor.flavor(),
                        duration_us = took.as_micros();
                        "reconcile pass done"
                    );
                    if std::mem::take(&mut actor.again) {
                        actor.pass(ctx);
                    }
                }),
        );
    }

    fn apply(
        &mut self,
        instances: Result<Vec<Instance>, crate::backend::BackendError>,
        runners: Result<Listed, ListError>,
        ctx: &mut Context<Self>,
    ) {
        let flavor = self.flavor().to_owned();
        let metrics = self.config.metrics.clone();
        let instances = match instances {
            Ok(instances) => {
                self.config.readiness.set_backend(true);
                self.settle(instances)
            }
            Err(err) => {
                self.created_while_observing.clear();
                self.removed_while_observing.clear();
                self.config.readiness.set_backend(false);
                metrics
                    .failures
                    .with_label_values(&[flavor.as_str(), err.reason()])
                    .inc();
                log::warn!(
                    event = "backend_list_failed",
                    flavor,
                    error:% = err;
                    "cannot list the backend's runners"
                );
                return;
            }
        };
        let runners = match runners {
            Ok(runners) => Some(runners),
            Err(err) => {
                metrics
                    .failures
                    .with_label_values(&[flavor.as_str(), "github_list"])
                    .inc();
                log::warn!(
                    event = "github_list_failed",
                    flavor,
                    error:% = err;
                    "cannot list GitHub's runners"
                );
                None
            }
        };
        let now = Utc::now();
        let listed_at = runners.as_ref().map_or(now, |listed| listed.asked_at);
        let runners = runners.map(|listed| listed.runners);
        for runner in runners.iter().flatten() {
            if runner.status != "online" || self.online_at.contains_key(&runner.name) {
                continue;
            }
            self.online_at.insert(runner.name.clone(), listed_at);
            if self.created_here.contains(&runner.name) {
                if let Some(instance) = instances.iter().find(|i| i.name == runner.name) {
                    let boot = (listed_at - instance.created_at)
                        .to_std()
                        .unwrap_or_default();
                    metrics
                        .boot_seconds
                        .with_label_values(&[flavor.as_str()])
                        .observe(boot.as_secs_f64());
                    log::info!(
                        event = "runner_online",
                        flavor,
                        "runner.name" = runner.name,
                        boot_ms = boot.as_millis();
                        "runner online"
                    );
                }
            }
        }
        let known: HashSet<&str> = instances
            .iter()
            .map(|i| i.name.as_str())
            .chain(self.creating.keys().map(String::as_str))
            .collect();
        self.online_at
            .retain(|name, _| known.contains(name.as_str()));
        self.created_here
            .retain(|name| known.contains(name.as_str()));

        let desired = decide::desired(
            self.pressure,
            self.config.flavor.min_runners,
            self.config.flavor.max_runners,
        );
        metrics
            .desired
            .with_label_values(&[flavor.as_str()])
            .set(i64::from(desired));
        metrics
            .max_runners
            .with_label_values(&[flavor.as_str()])
            .set(i64::from(self.config.flavor.max_runners));
        if let Some(pressure) = self.pressure {
            metrics
                .pressure
                .with_label_values(&[flavor.as_str()])
                .set(i64::try_from(pressure).unwrap_or(i64::MAX));
        }
        let creating: HashSet<String> = self.creating.keys().cloned().collect();
        let seen_online: HashSet<String> = self.online_at.keys().cloned().collect();
        let plan = decide::decide(&Observed {
            now,
            desired,
            scale_down: self.pressure_heard,
            instances: &instances,
            github: runners.as_deref(),
            listed_at,
            creating: &creating,
            removing: &self.removing,
            seen_online: &seen_online,
            boot_timeout: self.config.flavor.boot_timeout,
            max_lifetime: self.config.flavor.max_lifetime,
        });
        self.instances = instances;
        self.states = plan.states.iter().cloned().collect();
        for action in plan.actions {
            match action {
                Action::Create(count) => self.create(count, ctx),
                Action::Remove {
                    name,
                    runner_id,
                    reason,
                } => self.remove(name, runner_id, reason, ctx),
                Action::Deregister { name, runner_id } => self.deregister(name, runner_id, ctx),
            }
        }
        self.count_states();
    }

    /// The backend's listing with what finished while the pass was observing: a runner created
    /// since may be missing from it (and GitHub may list its registration already), a runner
    /// removed since may still be in it. Without this a pass would create again what was just
    /// created (past `max_runners`) and take the new runner's registration for an orphan.
    fn settle(&mut self, mut listed: Vec<Instance>) -> Vec<Instance> {
        let removed = std::mem::take(&mut self.removed_while_observing);
        listed.retain(|instance| !removed.contains(&instance.name));
        for name in std::mem::take(&mut self.created_while_observing) {
            if listed.iter().any(|instance| instance.name == name) {
                continue;
            }
            if let Some(instance) = self.instances.iter().find(|i| i.name == name) {
                listed.push(instance.clone());
            }
        }
        listed
    }

    /// Whether the last create found capacity: `/ready` and the gauge say when none was found.
    fn set_capacity(&self, found: bool) {
        let flavor = self.flavor();
        self.config.readiness.set_capacity(flavor, found);
        self.config
            .metrics
            .capacity_exhausted
            .with_label_values(&[flavor])
            .set(i64::from(!found));
    }

    fn count_states(&self) {
        let flavor = self.flavor();
        let mut counts: HashMap<RunnerState, i64> = HashMap::new();
        for view in self.views() {
            *counts.entry(view.state).or_default() += 1;
        }
        for state in RunnerState::ALL {
            self.config
                .metrics
                .runners
                .with_label_values(&[flavor, state.as_str()])
                .set(counts.get(&state).copied().unwrap_or(0));
        }
    }

    fn views(&self) -> Vec<RunnerView> {
        let flavor = self.flavor();
        let mut views: Vec<RunnerView> = self
            .instances
            .iter()
            .map(|instance| RunnerView {
                name: instance.name.clone(),
                flavor: flavor.to_owned(),
                state: if self.removing.contains(&instance.name) {
                    RunnerState::Removing
                } else {
                    self.states
                        .get(&instance.name)
                        .copied()
                        .unwrap_or(RunnerState::Booting)
                },
                created_at: instance.created_at,
                online_at: self.online_at.get(&instance.name).copied(),
                backend_id: Some(instance.backend_id.clone()),
            })
            .collect();
        for (name, started) in &self.creating {
            if !self.instances.iter().any(|i| &i.name == name) {
                views.push(RunnerView {
                    name: name.clone(),
                    flavor: flavor.to_owned(),
                    state: RunnerState::Creating,
                    created_at: *started,
                    online_at: None,
                    backend_id: None,
                });
            }
        }
        views
    }

    fn create(&mut self, count: u32, ctx: &mut Context<Self>) {
        if let Some(until) = self.create_paused_until {
            let now = Instant::now();
            if until > now {
                if !self.wake_scheduled {
                    self.wake_scheduled = true;
                    ctx.run_later(until - now, |actor, ctx| {
                        actor.wake_scheduled = false;
                        actor.pass(ctx);
                    });
                }
                log::debug!(
                    event = "create_paused",
                    flavor = self.flavor(),
                    wait_ms = (until - now).as_millis();
                    "runner creation paused"
                );
                return;
            }
        }
        let room = self.config.parallelism.saturating_sub(self.creating.len());
        for _ in 0..(count as usize).min(room) {
            let name = new_runner_name(&self.prefix);
            self.creating.insert(name.clone(), Utc::now());
            let config = self.config.clone();
            let labels = self.labels.clone();
            let job_name = name.clone();
            let work = async move { create_runner(&config, &job_name, labels).await };
            ctx.spawn(work.into_actor(self).map(move |result, actor, ctx| {
                actor.creating.remove(&name);
                let flavor = actor.flavor().to_owned();
                match result {
                    Ok((instance, labels)) => {
                        actor.labels = Some(labels);
                        actor.created_here.insert(name.clone());
                        actor.create_failures = 0;
                        actor.create_paused_until = None;
                        actor.set_capacity(true);
                        actor
                            .config
                            .metrics
                            .created
                            .with_label_values(&[flavor.as_str()])
                            .inc();
                        log::info!(
                            event = "runner_created",
                            flavor,
                            "runner.name" = name,
                            backend_id = instance.backend_id;
                            "runner created"
                        );
                        if actor.passing {
                            actor.created_while_observing.push(name);
                        }
                        if !actor.instances.iter().any(|i| i.name == instance.name) {
                            actor.instances.push(instance);
                        }
                    }
                    Err((reason, error)) => {
                        actor.create_failures = actor.create_failures.saturating_add(1);
                        let wait = create_backoff(actor.create_failures);
                        actor.create_paused_until = Some(Instant::now() + wait);
                        if reason == NO_CAPACITY {
                            actor.set_capacity(false);
                        }
                        actor
                            .config
                            .metrics
                            .failures
                            .with_label_values(&[flavor.as_str(), reason])
                            .inc();
                        log::warn!(
                            event = "runner_create_failed",
                            flavor,
                            "runner.name" = name,
                            reason,
                            retry_in_ms = wait.as_millis(),
                            error:% = error;
                            "cannot create a runner"
                        );
                    }
                }
                actor.count_states();
                let _ = ctx;
            }));
        }
    }

    fn remove(
        &mut self,
        name: String,
        runner_id: Option<u64>,
        reason: Reason,
        ctx: &mut Context<Self>,
    ) {
        if !self.removing.insert(name.clone()) {
            return;
        }
        let config = self.config.clone();
        let job_name = name.clone();
        let work = async move { remove_runner(&config, &job_name, runner_id, reason).await };
        ctx.spawn(work.into_actor(self).map(move |outcome, actor, _| {
            actor.removing.remove(&name);
            actor.finish_removal(&name, reason, outcome);
        }));
    }

    fn deregister(&mut self, name: String, runner_id: u64, ctx: &mut Context<Self>) {
        if !self.removing.insert(name.clone()) {
            return;
        }
        let github = self.config.github.clone();
        let work = async move {
            match github.send(DeleteRunner { runner_id }).await {
                Ok(Ok(DeleteOutcome::Deleted | DeleteOutcome::NotFound)) => Removal::Done,
                Ok(Ok(DeleteOutcome::Busy)) => Removal::KeptBusy,
                Ok(Err(err)) => Removal::Failed("deregister", err.to_string()),
                Err(_) => Removal::Failed("deregister", "GitHub actor stopped".into()),
            }
        };
        ctx.spawn(work.into_actor(self).map(move |outcome, actor, _| {
            actor.removing.remove(&name);
            actor.finish_removal(&name, Reason::Orphan, outcome);
        }));
    }

    fn finish_removal(&mut self, name: &str, reason: Reason, outcome: Removal) {
        let flavor = self.flavor().to_owned();
        let metrics = &self.config.metrics;
        match outcome {
            Removal::Done => {
                metrics
                    .removed
                    .with_label_values(&[flavor.as_str(), reason.as_str()])
                    .inc();
                self.instances.retain(|i| i.name != name);
                self.online_at.remove(name);
                if self.passing {
                    self.removed_while_observing.push(name.to_owned());
                }
                log::info!(
                    event = "runner_removed",
                    flavor,
                    "runner.name" = name,
                    reason = reason.as_str();
                    "runner removed"
                );
            }
            Removal::KeptBusy => {
                metrics
                    .kept_busy
                    .with_label_values(&[flavor.as_str()])
                    .inc();
                log::info!(
                    event = "runner_kept_busy",
                    flavor,
                    "runner.name" = name,
                    reason = reason.as_str();
                    "runner kept: busy with a job"
                );
            }
            Removal::Failed(step, error) => {
                metrics
                    .failures
                    .with_label_values(&[flavor.as_str(), step])
                    .inc();
                log::warn!(
                    event = "runner_remove_failed",
                    flavor,
                    "runner.name" = name,
                    reason = reason.as_str(),
                    step,
                    error:% = error;
                    "cannot remove a runner"
                );
            }
        }
        self.count_states();
    }
}

/// Why this pass does not know the runners GitHub lists.
#[derive(Debug, thiserror::Error)]
enum ListError {
    /// GitHub's answer.
    #[error(transparent)]
    GitHub(#[from] GitHubError),
    /// The GitHub actor has stopped (shutdown).
    #[error("GitHub actor stopped")]
    Stopped,
}

/// How a removal ended.
enum Removal {
    Done,
    KeptBusy,
    Failed(&'static str, String),
}

/// Labels, JIT configuration, backend start. Errors carry a metrics reason.
async fn create_runner(
    config: &ReconcilerConfig,
    name: &str,
    labels: Option<Vec<String>>,
) -> Result<(Instance, Vec<String>), (&'static str, String)> {
    let labels = match labels {
        Some(labels) => labels,
        None => {
            let mut labels = config
                .planner
                .flavor_labels(&config.flavor.name)
                .await
                .map_err(|err| ("planner_labels", err.to_string()))?;
            for label in DEFAULT_LABELS {
                if !labels.iter().any(|l| l.eq_ignore_ascii_case(label)) {
                    labels.push(label.to_owned());
                }
            }
            labels
        }
    };
    let jit = config
        .github
        .send(GenerateJitConfig {
            name: name.to_owned(),
            runner_group: config.flavor.runner_group.clone(),
            labels: labels.clone(),
        })
        .await
        .map_err(|_| ("jit_config", "GitHub actor stopped".to_owned()))?
        .map_err(|err| (err.reason(), err.to_string()))?;
    let spec = RunnerSpec {
        name: name.to_owned(),
        flavor: config.flavor.name.clone(),
        labels: labels.clone(),
        jit_config: jit.encoded_jit_config,
        manager_id: config.manager_id.clone(),
    };
    match config.backend.create(spec).await {
        Ok(instance) => Ok((instance, labels)),
        Err(err) => {
            // Registered but never started: deregister now rather than leave an orphan.
            let _ = config
                .github
                .send(DeleteRunner {
                    runner_id: jit.runner_id,
                })
                .await;
            Err((err.reason(), err.to_string()))
        }
    }
}

/// Scale-down deregisters first (GitHub's 422 keeps a runner that has just taken a job); the
/// other reasons stop the runner first and then deregister whatever is left.
async fn remove_runner(
    config: &ReconcilerConfig,
    name: &str,
    runner_id: Option<u64>,
    reason: Reason,
) -> Removal {
    let deregister = |runner_id: u64| async move {
        match config.github.send(DeleteRunner { runner_id }).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("GitHub actor stopped".to_owned()),
        }
    };
    if reason == Reason::ScaleDown {
        let Some(runner_id) = runner_id else {
            return Removal::Failed("deregister", "not registered".into());
        };
        match deregister(runner_id).await {
            Ok(DeleteOutcome::Deleted | DeleteOutcome::NotFound) => {}
            Ok(DeleteOutcome::Busy) => return Removal::KeptBusy,
            Err(err) => return Removal::Failed("deregister", err),
        }
        return match config.backend.delete(name).await {
            Ok(()) => Removal::Done,
            Err(err) => Removal::Failed(err.reason(), err.to_string()),
        };
    }
    if let Err(err) = config.backend.delete(name).await {
        return Removal::Failed(err.reason(), err.to_string());
    }
    if let Some(runner_id) = runner_id {
        match deregister(runner_id).await {
            Ok(_) => {}
            // The registration is left for the orphan rule of a later pass.
            Err(err) => {
                log::warn!(
                    event = "runner_deregister_failed",
                    "runner.name" = name,
                    error:% = err;
                    "cannot deregister a runner from GitHub"
                )
            }
        }
    }
    Removal::Done
}

impl Actor for Reconciler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        log::info!(
            event = "reconciler_started",
            flavor = self.flavor(),
            min = self.config.flavor.min_runners,
            max = self.config.flavor.max_runners;
            "reconciler started"
        );
        self.set_capacity(true);
        self.pass(ctx);
        ctx.run_interval(self.config.interval, |actor, ctx| actor.pass(ctx));
    }
}

impl Supervised for Reconciler {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Work in flight was dropped with the old context; the next pass sees what is left.
        self.creating.clear();
        self.removing.clear();
        self.passing = false;
        self.created_while_observing.clear();
        self.removed_while_observing.clear();
        self.again = false;
        self.wake_scheduled = false;
    }
}

impl Handler<PressureChanged> for Reconciler {
    type Result = ();

    fn handle(&mut self, msg: PressureChanged, ctx: &mut Context<Self>) {
        if self.pressure_heard && self.pressure == msg.0 {
            return;
        }
        self.pressure_heard = true;
        log::info!(
            event = "pressure_changed",
            flavor = self.flavor(),
            pressure = msg.0.map_or("unknown".to_owned(), |p| p.to_string());
            "pressure changed"
        );
        self.pressure = msg.0;
        self.pass(ctx);
    }
}

impl Handler<GetRunners> for Reconciler {
    type Result = MessageResult<GetRunners>;

    fn handle(&mut self, _: GetRunners, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.views())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use futures::future::{BoxFuture, FutureExt};
    use secrecy::SecretString;
    use tokio::sync::{oneshot, watch};

    use super::*;
    use crate::backend::BackendError;
    use crate::config::BackendConfig;
    use crate::github::{JitConfig, Runner, RunnerApi, RunnerScope};

    #[test]
    fn a_runner_name_is_its_prefix_and_eight_hex_digits_exactly() {
        let prefix = name_prefix("m1", "a");
        let name = new_runner_name(&prefix);
        assert!(is_runner_name(&prefix, &name), "{name}");
        assert!(is_runner_name(&prefix, "m1-a-0000beef"));
        // Flavor `a-b`'s runner, a longer or shorter suffix, other digits.
        assert!(!is_runner_name(&prefix, "m1-a-b-0000beef"));
        assert!(!is_runner_name(&prefix, "m1-a-0000beef0"));
        assert!(!is_runner_name(&prefix, "m1-a-beef"));
        assert!(!is_runner_name(&prefix, "m1-a-0000BEEF"));
        assert!(!is_runner_name(&prefix, "m1-a-0000beeg"));
        assert!(!is_runner_name(&prefix, "m2-a-0000beef"));
    }

    #[test]
    fn create_backoff_doubles_from_one_second_to_five_minutes() {
        let secs: Vec<u64> = (1..=10).map(|n| create_backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(create_backoff(u32::MAX), CREATE_BACKOFF_MAX);
    }

    const FLAVOR: &str = "small";

    /// Runners that start only once the gate opens; it counts the creates begun.
    struct GatedBackend {
        instances: Mutex<Vec<Instance>>,
        begun: watch::Sender<usize>,
        gate: watch::Receiver<bool>,
    }

    impl Backend for GatedBackend {
        fn kind(&self) -> &'static str {
            "gated"
        }

        fn create(&self, spec: RunnerSpec) -> BoxFuture<'_, Result<Instance, BackendError>> {
            async move {
                self.begun.send_modify(|begun| *begun += 1);
                let mut gate = self.gate.clone();
                let _ = gate.wait_for(|open| *open).await;
                let instance = Instance {
                    name: spec.name,
                    backend_id: "1".to_owned(),
                    created_at: Utc::now(),
                    ended: false,
                };
                self.instances.lock().unwrap().push(instance.clone());
                Ok(instance)
            }
            .boxed()
        }

        fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
            self.instances.lock().unwrap().retain(|i| i.name != name);
            futures::future::ready(Ok(())).boxed()
        }

        fn list(&self) -> BoxFuture<'_, Result<Vec<Instance>, BackendError>> {
            let listed = self.instances.lock().unwrap().clone();
            futures::future::ready(Ok(listed)).boxed()
        }
    }

    /// GitHub whose second listing opens the backend's gate and answers only when told.
    struct SlowListing {
        registered: Mutex<Vec<Runner>>,
        listings: AtomicUsize,
        deletes: AtomicUsize,
        open_gate: watch::Sender<bool>,
        answer: Mutex<Option<oneshot::Receiver<()>>>,
    }

    impl RunnerApi for SlowListing {
        fn generate_jit_config<'a>(
            &'a self,
            _: &'a RunnerScope,
            name: &'a str,
            _: u64,
            labels: &'a [String],
        ) -> BoxFuture<'a, Result<JitConfig, GitHubError>> {
            let mut registered = self.registered.lock().unwrap();
            let runner_id = registered.len() as u64 + 1;
            registered.push(Runner {
                id: runner_id,
                name: name.to_owned(),
                status: "offline".to_owned(),
                busy: false,
                labels: labels.to_vec(),
            });
            futures::future::ready(Ok(JitConfig {
                runner_id,
                runner_name: name.to_owned(),
                encoded_jit_config: SecretString::from("jit"),
            }))
            .boxed()
        }

        fn list_runners<'a>(
            &'a self,
            _: &'a RunnerScope,
        ) -> BoxFuture<'a, Result<Vec<Runner>, GitHubError>> {
            async move {
                if self.listings.fetch_add(1, Ordering::SeqCst) == 1 {
                    self.open_gate.send_replace(true);
                    let answer = self.answer.lock().unwrap().take();
                    if let Some(answer) = answer {
                        let _ = answer.await;
                    }
                }
                Ok(self.registered.lock().unwrap().clone())
            }
            .boxed()
        }

        fn delete_runner<'a>(
            &'a self,
            _: &'a RunnerScope,
            id: u64,
        ) -> BoxFuture<'a, Result<DeleteOutcome, GitHubError>> {
            self.deletes.fetch_add(1, Ordering::SeqCst);
            self.registered.lock().unwrap().retain(|r| r.id != id);
            futures::future::ready(Ok(DeleteOutcome::Deleted)).boxed()
        }

        fn runner_group_id<'a>(
            &'a self,
            _: &'a RunnerScope,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<u64>, GitHubError>> {
            futures::future::ready(Ok(Some(crate::github::DEFAULT_RUNNER_GROUP_ID))).boxed()
        }
    }

    /// Waits, checking every few milliseconds, until `ready` answers true (at most 10 s).
    async fn until<F: std::future::Future<Output = bool>>(
        what: &str,
        mut ready: impl FnMut() -> F,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[actix_rt::test]
    async fn runners_created_while_a_pass_lists_count_and_are_no_orphans() {
        let (open_gate, gate) = watch::channel(false);
        let (begun, mut creates_begun) = watch::channel(0);
        let (release, answer) = oneshot::channel();
        let backend = Arc::new(GatedBackend {
            instances: Mutex::new(Vec::new()),
            begun,
            gate,
        });
        let api = Arc::new(SlowListing {
            registered: Mutex::new(Vec::new()),
            listings: AtomicUsize::new(0),
            deletes: AtomicUsize::new(0),
            open_gate,
            answer: Mutex::new(Some(answer)),
        });
        let readiness = Arc::new(Readiness::new());
        let metrics = Metrics::new().unwrap();
        // No listing is served old: every pass waits for its own, as after a GitHub outage.
        let github = GitHub::new(
            api.clone(),
            RunnerScope::Org("org".to_owned()),
            Duration::ZERO,
            readiness.clone(),
        )
        .start();
        let reconciler = Reconciler::new(ReconcilerConfig {
            flavor: FlavorConfig {
                name: FLAVOR.to_owned(),
                max_runners: 3,
                min_runners: 3,
                labels: Some(vec!["self-hosted".to_owned()]),
                runner_group: None,
                boot_timeout: Duration::from_secs(3600),
                max_lifetime: Duration::from_secs(5 * 3600),
                backend: BackendConfig::Exec {
                    command: vec!["unused".to_owned()],
                    stop_grace: Duration::from_secs(1),
                },
            },
            manager_id: "m1".to_owned(),
            backend: backend.clone(),
            github,
            planner: Planner::new(
                "http://127.0.0.1:9".parse().unwrap(),
                SecretString::from("unused"),
            )
            .unwrap(),
            interval: Duration::from_secs(3600),
            parallelism: 4,
            metrics: metrics.clone(),
            readiness,
        })
        .start();

        // The first pass asks for the three runners; their starts wait at the gate.
        creates_begun.wait_for(|begun| *begun == 3).await.unwrap();
        // The second pass lists the backend (nothing yet), then GitHub, whose listing opens the
        // gate and answers only once the three creates have finished.
        reconciler.send(PressureChanged(Some(3))).await.unwrap();
        until("the three creates to finish", || async {
            let views = reconciler.send(GetRunners).await.unwrap();
            views.len() == 3 && views.iter().all(|v| v.state != RunnerState::Creating)
        })
        .await;
        release.send(()).unwrap();
        let passes = || {
            metrics
                .reconcile_seconds
                .with_label_values(&[FLAVOR])
                .get_sample_count()
        };
        until("the second pass", || async { passes() >= 2 }).await;

        let views = reconciler.send(GetRunners).await.unwrap();
        assert_eq!(views.len(), 3, "{views:?}");
        assert!(
            views.iter().all(|v| v.state == RunnerState::Booting),
            "{views:?}"
        );
        assert_eq!(*creates_begun.borrow(), 3, "created past max_runners");
        assert_eq!(
            api.deletes.load(Ordering::SeqCst),
            0,
            "deregistered a new runner"
        );
        assert_eq!(api.registered.lock().unwrap().len(), 3);
    }
}
