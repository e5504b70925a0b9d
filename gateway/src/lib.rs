//! The webhook gateway: takes GitHub `workflow_job` webhooks, checks their signature, and hands
//! them to RabbitMQ, answering GitHub with 200 only once the broker has confirmed the message.
//!
//! - [`config`]: the typed configuration, read once from the environment (redelivery's
//!   included).
//! - [`webhook`]: the pure checks (signature, event, payload shape) and the validator actor
//!   that runs them for large bodies.
//! - [`routes`]: `POST /webhook`, `GET /health`, `GET /ready`.
//! - [`metrics`]: every Prometheus metric of the gateway (redelivery's included), served on
//!   their own listener.
//! - [`redelivery`]: the periodic task (a plain task until shutdown) asking GitHub to redeliver
//!   failed deliveries.
//! - [`error`]: every refusal and its HTTP status.
//! - [`startup`]: [`Application`], which binds the listener and starts the actors.
//!
//! What the gateway publishes (headers, body, the job id rule) is `actors::delivery`, the
//! contract the planner reads too.

pub mod config;
pub mod error;
pub mod metrics;
pub mod redelivery;
pub mod routes;
pub mod startup;
pub mod webhook;

pub use config::Config;
pub use startup::Application;
