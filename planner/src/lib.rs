//! The runner planner: consumes the gateway's `workflow_job` deliveries, keeps every self-hosted
//! job in PostgreSQL, matches jobs to runner flavors and serves the admin REST API.
//!
//! - [`config`]: the environment, read once.
//! - [`startup::Application`]: builds and runs everything; tests build it on port 0.
//! - [`consumer`]: the AMQP consumer actor; [`store`]: the job-store actor and transactions.
//! - [`domain`]: pure logic (state machine, labels, matching, webhook classification).
//! - [`routes`]: the REST API; [`error`]: its one error type.
//! - [`metrics`]: the Prometheus metrics, served on their own listener.
//! - [`takeover`]: converting a database of Canonical's planner before the migrations;
//!   [`report`]: `planner report waiting-p80`.

pub mod auth;
pub mod config;
pub mod consumer;
pub mod domain;
pub mod error;
pub mod extract;
pub mod messages;
pub mod metrics;
// issue 9: reconciliation with GitHub's API
pub mod pressure;
pub mod reconcile;
pub mod report;
pub mod routes;
pub mod startup;
pub mod state;
pub mod store;
pub mod takeover;
