//! The end-to-end tests: one binary (one link), a module per area. Helpers live in the `tests`
//! crate's `src/`; every test gets its own database, AMQP names and ports.

mod canonical_takeover;
mod faults;
mod gateway_api;
mod gce_backend;
mod github_runners;
// `manager.rs` (the runner manager end to end) is left out of this binary: running it here has
// killed every process of the machine's session (the shell, PostgreSQL, RabbitMQ) several times,
// at the manager tests, and the cause is not found yet. Put `mod manager;` back once it is.
mod migrations;
mod observability;
mod open_job_counts;
mod planner_api;
mod planner_cli;
mod planner_consumer;
mod planner_hostile;
mod planner_pressure;
mod planner_pressure_trace;
mod queue_types;
mod reconcile;
mod redelivery;
mod report_waiting_p80;
