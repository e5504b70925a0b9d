//! End-to-end test helpers: isolated databases, in-process planners, a TCP proxy that can cut
//! connections, and AMQP helpers. Tests live in `tests/`.

pub mod cut_proxy;
pub mod db;
pub mod planner;
