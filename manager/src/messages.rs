//! Every message between the manager's actors.

use actix::Message;

use crate::decide::RunnerState;
use crate::github::{DeleteOutcome, GitHubError, JitConfig, Runner};

/// To the GitHub actor: a JIT configuration for a new runner.
#[derive(Debug, Message)]
#[rtype(result = "Result<JitConfig, JitError>")]
pub struct GenerateJitConfig {
    /// The runner's name.
    pub name: String,
    /// Its runner group by name (`None`: the default group).
    pub runner_group: Option<String>,
    /// Its labels.
    pub labels: Vec<String>,
}

/// Why a runner got no JIT configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JitError {
    /// The flavor's `runner_group` could not be resolved to an id (no group of that name, or
    /// GitHub did not answer).
    #[error("runner group: {0}")]
    RunnerGroup(GitHubError),
    /// GitHub refused or did not answer the JIT configuration request.
    #[error("JIT configuration: {0}")]
    Jit(GitHubError),
}

impl JitError {
    /// The `reason` label of the failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::RunnerGroup(_) => "runner_group",
            Self::Jit(_) => "jit_config",
        }
    }
}

/// To the GitHub actor: the registered runners whose names start with `prefix`.
#[derive(Debug, Message)]
#[rtype(result = "Result<Listed, GitHubError>")]
pub struct ListRunners {
    /// `<manager id>-<flavor>-`.
    pub prefix: String,
}

/// The answer to [`ListRunners`]: the runners of a listing, and when that listing was asked
/// for (it may be up to the GitHub actor's maximum age old).
#[derive(Debug, Clone)]
pub struct Listed {
    /// The runners of the prefix.
    pub runners: Vec<Runner>,
    /// When the listing was asked for.
    pub asked_at: chrono::DateTime<chrono::Utc>,
}

/// To the GitHub actor: deregister a runner.
#[derive(Debug, Message)]
#[rtype(result = "Result<DeleteOutcome, GitHubError>")]
pub struct DeleteRunner {
    /// Its GitHub id.
    pub runner_id: u64,
}

/// To a reconciler: the planner's pressure for its flavor changed, or (`None`) has been unknown
/// for longer than the grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct PressureChanged(pub Option<u64>);

/// To a reconciler: its runners as the status API shows them.
#[derive(Debug, Message)]
#[rtype(result = "Vec<RunnerView>")]
pub struct GetRunners;

/// One runner in the status API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunnerView {
    /// Its name (also in GitHub).
    pub name: String,
    /// Its flavor.
    pub flavor: String,
    /// What it is doing.
    pub state: RunnerState,
    /// When it was created (when its creation started, while `creating`).
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it was first seen online in GitHub.
    pub online_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The backend's id (a process id for `exec`); none while `creating`.
    pub backend_id: Option<String>,
}
