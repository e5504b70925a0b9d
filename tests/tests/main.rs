//! The end-to-end tests: one binary (one link), a module per area. Helpers live in the `tests`
//! crate's `src/`; every test gets its own database, AMQP names and ports.

mod canonical_takeover;
mod console;
mod faults;
mod gateway_api;
mod gce_backend;
mod gce_manager;
mod gce_startup;
mod github_runners;
mod listeners;
mod manager;
mod migrations;
mod observability;
mod open_job_counts;
mod pgbouncer;
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
