//! Actor building blocks shared by the gateway and the planner.
//!
//! - [`amqp::Topology`]: the exchange, queue and dead-letter names both services declare
//!   identically, so whichever starts first creates them and the other finds them unchanged.
//! - [`amqp::Publisher`]: the supervised AMQP publisher actor (connection, channel, reconnects,
//!   pipelined publisher confirms).
//! - [`delivery`]: the message between the gateway and the planner (headers, body, the job id
//!   rule), one type both ends use.
//! - [`http`]: what every service's HTTP server shares (the request log).
//! - [`logging`]: the `log` + `env_logger` set-up and how a record's key-values are written.
//! - [`telemetry`]: the Prometheus listener and HTTP metrics, OpenTelemetry traces and
//!   their propagation through AMQP headers.
//! - [`pressure::Pressure`]: an immutable pressure snapshot with its lines rendered once.
//! - [`broadcast::Broadcaster`]: the actor that fans pressure changes out to every stream
//!   subscriber (one `watch` slot: latest state wins, nothing queues per client).
//! - [`reconnect`]: capped, jittered exponential backoff and the reconnect loop every
//!   long-lived connection uses.
//! - [`task`]: plain supervised tasks with a shutdown signal, for the loops that take no
//!   messages.
//! - [`stream::respond`]: the NDJSON / Server-Sent Events streaming response on a subscription.

pub mod amqp;
pub mod broadcast;
pub mod config;
pub mod delivery;
pub mod github;
pub mod http;
pub mod logging;
pub mod pressure;
pub mod reconnect;
pub mod stream;
pub mod task;
pub mod telemetry;
