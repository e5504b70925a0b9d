//! Where runners run. A [`Backend`] creates a runner from a [`RunnerSpec`], deletes one by
//! name, and lists the runners of this manager and one flavor, including those that have ended,
//! which it reports as such until they are deleted.
//!
//! Each flavor gets its own backend value (its own command, machine type, ...). A new kind of
//! backend (OpenStack, LXD, GCE) is one new module implementing the trait, and one arm in
//! [`build`].

pub mod exec;
pub mod gce;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use secrecy::SecretString;

use crate::config::{BackendConfig, Config, FlavorConfig};
use crate::metrics::Metrics;

/// What a backend needs to start one runner.
#[derive(Debug, Clone)]
pub struct RunnerSpec {
    /// `<manager id>-<flavor>-<random>`, also its name in GitHub.
    pub name: String,
    /// The flavor.
    pub flavor: String,
    /// Its GitHub labels.
    pub labels: Vec<String>,
    /// GitHub's just-in-time runner configuration (a secret: it registers a runner).
    pub jit_config: SecretString,
    /// The manager's id.
    pub manager_id: String,
}

/// A runner as the backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The runner's name (the key of [`Backend::delete`]).
    pub name: String,
    /// The backend's own id (a process id, a machine id).
    pub backend_id: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Whether its process or machine has ended (a finished or cancelled job, a crash).
    pub ended: bool,
}

/// What a backend call can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The runner could not be started.
    #[error("cannot start the runner: {0}")]
    Start(String),
    /// The backend's records could not be read or written.
    #[error("backend state: {0}")]
    State(String),
    /// The runner could not be stopped.
    #[error("cannot stop the runner: {0}")]
    Stop(String),
    /// No capacity for the runner anywhere the backend may start it (every zone and template
    /// of a `gce` flavor): worth trying again later, not a fault of the settings.
    #[error("no capacity: {0}")]
    NoCapacity(String),
}

impl BackendError {
    /// A short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Start(_) => "backend_start",
            Self::State(_) => "backend_state",
            Self::Stop(_) => "backend_stop",
            Self::NoCapacity(_) => NO_CAPACITY,
        }
    }
}

/// The metrics reason of [`BackendError::NoCapacity`].
pub const NO_CAPACITY: &str = "no_capacity";

/// Runners of one flavor on one kind of infrastructure.
pub trait Backend: Send + Sync + 'static {
    /// `exec`, `gce`, ...
    fn kind(&self) -> &'static str;

    /// Starts a runner. On success it is listed from then on.
    fn create(&self, spec: RunnerSpec) -> BoxFuture<'_, Result<Instance, BackendError>>;

    /// Stops a runner and forgets it. A runner that is already gone is not an error.
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BackendError>>;

    /// This manager's runners of this flavor, ended ones included.
    fn list(&self) -> BoxFuture<'_, Result<Vec<Instance>, BackendError>>;
}

/// The backend of `flavor`, for the manager `manager_id`; it counts what is its own (a `gce`
/// backend's capacity misses) in `metrics`.
pub fn build(
    flavor: &FlavorConfig,
    config: &Config,
    metrics: &Metrics,
) -> Result<Arc<dyn Backend>, BackendError> {
    let manager_id = config.manager_id.as_str();
    let exec_state_dir = config.exec_state_dir.as_path();
    match &flavor.backend {
        BackendConfig::Gce(gce) => Ok(Arc::new(
            gce::Gce::new(
                &config.gce,
                gce.clone(),
                manager_id,
                &flavor.name,
                Some(&config.github_path),
            )
            .map_err(|err| BackendError::State(err.to_string()))?
            .count_capacity_misses(metrics.capacity_misses.clone()),
        )),
        BackendConfig::Exec {
            command,
            stop_grace,
        } => Ok(Arc::new(exec::Exec::new(
            exec_state_dir,
            manager_id,
            &flavor.name,
            command.clone(),
            *stop_grace,
        )?)),
    }
}
