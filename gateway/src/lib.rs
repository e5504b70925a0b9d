//! The webhook gateway: takes GitHub `workflow_job` webhooks, checks their signature, and hands
//! them to RabbitMQ, answering GitHub with 200 only once the broker has confirmed the message.
//!
//! - [`config`]: the typed configuration, read once from the environment.
//! - [`webhook`]: the pure checks (signature, event, payload shape) and the validator actor.
//! - [`routes`]: `POST /webhook`, `GET /health`, `GET /ready`.
//! - [`metrics`]: the Prometheus metrics, served on their own listener.
//! - [`startup`]: [`Application`], which binds the listener and starts the actors.

pub mod config;
pub mod error;
pub mod metrics;
// issue 9: redelivery of failed deliveries
pub mod redelivery;
pub mod routes;
pub mod startup;
pub mod webhook;

pub use config::Config;
pub use startup::Application;
