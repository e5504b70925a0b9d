//! The runner planner: consumes the gateway's `workflow_job` deliveries, keeps every self-hosted
//! job in PostgreSQL, matches jobs to runner flavors, computes and streams each flavor's
//! pressure, reconciles forgotten jobs with GitHub and serves the admin REST API.
//!
//! - [`config`]: the environment, read once (reconciliation's settings included).
//! - [`startup::Application`]: builds and runs everything; tests build it on port 0.
//! - [`consumer`]: the AMQP consumer (sessions, batches, settling), a plain task until shutdown;
//!   [`store`]: the job-store actor and its transactions; [`messages`]: what is sent to the
//!   store.
//! - [`domain`]: pure logic (state machine, labels, matching, webhook classification).
//! - [`pressure`]: the pressure formula ([`pressure::formula`]) and the calculator actor that
//!   feeds the broadcaster; [`routes::pressure`] serves it once or as a stream.
//! - [`reconcile`]: the periodic task checking quiet open jobs against GitHub's API.
//! - [`console`]: the web console under `/console` (server-rendered pages, a login session).
//! - [`routes`]: the REST API; [`auth`]: bearer tokens; [`error`]: the one error type.
//! - [`metrics`]: every Prometheus metric of the planner (reconciliation's included), served on
//!   their own listener.
//! - [`takeover`]: converting a database of Canonical's planner before the migrations;
//!   [`report`]: `planner report waiting-p80`.

pub mod auth;
pub mod config;
pub mod console;
pub mod consumer;
pub mod domain;
pub mod error;
pub mod extract;
pub mod messages;
pub mod metrics;
pub mod pgtls;
pub mod pressure;
pub mod reconcile;
pub mod report;
pub mod routes;
pub mod startup;
pub mod state;
pub mod store;
pub mod takeover;
