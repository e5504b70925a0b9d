//! Actor building blocks shared by the gateway and the planner.
//!
//! - [`amqp::Topology`]: the exchange, queue and dead-letter names both services declare
//!   identically, so whichever starts first creates them and the other finds them unchanged.
//! - [`amqp::Publisher`]: the supervised AMQP publisher actor (connection, channel, reconnects,
//!   pipelined publisher confirms).
//! - [`telemetry`]: logging, the Prometheus listener and HTTP metrics, OpenTelemetry traces and
//!   their propagation through AMQP headers.

pub mod amqp;
pub mod config;
pub mod telemetry;
