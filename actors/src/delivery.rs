//! The message between the gateway and the planner: one GitHub webhook delivery on AMQP.
//!
//! The gateway publishes, the planner consumes, and both read this module for what the message
//! is, so the two ends cannot drift apart:
//! - the body is the webhook request body, byte for byte, with content type [`CONTENT_TYPE`];
//! - the AMQP headers are the request's [`FORWARDED_HEADERS`] (as Canonical's gateway copies
//!   them), long strings, plus the W3C trace context ([`crate::telemetry::inject`]); the planner
//!   reads [`Headers`] back from them;
//! - `workflow_job.id` is a [`JobId`]: a JSON integer that PostgreSQL's `bigint` holds (the
//!   column type of Canonical's planner as of ours). The gateway refuses any other id with 400
//!   and publishes nothing; a message with another id that still reaches the planner (published
//!   by something else) is poison there and goes to the dead-letter queue.

use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::{Deserialize, Serialize};

/// `X-GitHub-Event`: the event's name (`workflow_job`, `ping`, ...).
pub const EVENT: &str = "X-GitHub-Event";
/// `X-GitHub-Delivery`: GitHub's unique id of the delivery (a redelivery keeps it).
pub const DELIVERY: &str = "X-GitHub-Delivery";
/// `X-GitHub-Hook-ID`.
pub const HOOK_ID: &str = "X-GitHub-Hook-ID";
/// `X-GitHub-Hook-Installation-Target-Type`.
pub const TARGET_TYPE: &str = "X-GitHub-Hook-Installation-Target-Type";
/// `X-GitHub-Hook-Installation-Target-ID`.
pub const TARGET_ID: &str = "X-GitHub-Hook-Installation-Target-ID";

/// Request headers copied onto the AMQP message when present, under the same names.
pub const FORWARDED_HEADERS: [&str; 5] = [EVENT, DELIVERY, HOOK_ID, TARGET_TYPE, TARGET_ID];

/// Content type of the message: the body is GitHub's JSON.
pub const CONTENT_TYPE: &str = "application/json";

/// The only event the gateway forwards and the planner applies.
pub const WORKFLOW_JOB: &str = "workflow_job";

/// `workflow_job.id`: a JSON integer within PostgreSQL's `bigint` (`i64`). An integer above
/// `i64::MAX`, a fraction, an exponent or a string is not a job id, at either end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub i64);

impl JobId {
    /// The id in an already parsed JSON value, if it is one.
    pub fn from_json(value: &serde_json::Value) -> Option<Self> {
        value.as_i64().map(Self)
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The headers of a message the planner reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// [`EVENT`].
    pub event: Option<String>,
    /// [`DELIVERY`].
    pub delivery: Option<String>,
}

impl Headers {
    /// Reads the headers of a consumed message (long or short strings; anything else counts as
    /// absent).
    pub fn from_amqp(table: Option<&FieldTable>) -> Self {
        let header = |name: &str| -> Option<String> {
            match table?.inner().get(name)? {
                AMQPValue::LongString(value) => {
                    Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
                }
                AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
                _ => None,
            }
        };
        Self {
            event: header(EVENT),
            delivery: header(DELIVERY),
        }
    }
}

/// The AMQP headers of the message for a request whose headers `request` looks up by name: each
/// of [`FORWARDED_HEADERS`] that is present, as a long string.
pub fn amqp_headers<'a>(request: impl Fn(&str) -> Option<&'a str>) -> FieldTable {
    let mut table = FieldTable::default();
    for name in FORWARDED_HEADERS {
        if let Some(value) = request(name) {
            table.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_bigint_integers_only() {
        let parsed = |text: &str| serde_json::from_str::<JobId>(text).ok();
        let read = |text: &str| JobId::from_json(&serde_json::from_str(text).unwrap());
        for (text, expected) in [
            ("42", Some(JobId(42))),
            ("-7", Some(JobId(-7))),
            ("9223372036854775807", Some(JobId(i64::MAX))),
            ("9223372036854775808", None),
            ("18446744073709551615", None),
            ("1.0", None),
            ("1e3", None),
            ("\"42\"", None),
            ("null", None),
        ] {
            assert_eq!(parsed(text), expected, "{text}");
            assert_eq!(read(text), expected, "{text}");
        }
    }

    #[test]
    fn forwarded_headers_round_trip() {
        let request = |name: &str| match name {
            EVENT => Some("workflow_job"),
            DELIVERY => Some("d-1"),
            HOOK_ID => Some("7"),
            _ => None,
        };
        let table = amqp_headers(request);
        assert_eq!(table.inner().len(), 3);
        assert_eq!(
            Headers::from_amqp(Some(&table)),
            Headers {
                event: Some("workflow_job".into()),
                delivery: Some("d-1".into()),
            }
        );
        assert_eq!(Headers::from_amqp(None), Headers::default());
    }
}
