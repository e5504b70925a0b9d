//! The runner manager: follows the planner's pressure and keeps each flavor's ephemeral GitHub
//! Actions runners at that count.
//!
//! - [`config`]: the environment and the TOML flavor file, validated at start-up.
//! - [`planner`]: the pressure stream follower (reconnects with backoff; a grace period, then
//!   `min_runners`).
//! - [`github`]: where runners register, and the GitHub actor (token cache, rate limits).
//! - [`decide`]: the reconcile rules as one pure function.
//! - [`reconciler`]: one actor per flavor carrying the decisions out.
//! - [`backend`]: where runners run ([`backend::exec`]: a command per runner).
//! - [`status`]: `GET /api/v1/runners`, `/health`, `/ready`; [`metrics`]: Prometheus.
//! - [`startup`]: [`Application::build`] wires it together.

pub mod backend;
pub mod config;
pub mod decide;
pub mod error;
pub mod github;
pub mod messages;
pub mod metrics;
pub mod planner;
pub mod reconciler;
pub mod startup;
pub mod status;

pub use config::Config;
pub use error::Error;
pub use startup::Application;
