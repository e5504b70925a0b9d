//! The consumer's spans: one `consume` span per delivery, one `commit` span per delivery of a
//! transaction.

use std::time::Instant;

use actors::telemetry;
use lapin::message::Delivery;
use opentelemetry::{
    global,
    trace::{SpanKind, Status, TraceContextExt, Tracer},
    Context as TraceContext, KeyValue,
};

use crate::domain::{job::JobEvent, webhook::Headers};

/// A delivery being processed: when it arrived and the context of its `consume` span.
pub(super) struct Received {
    pub(super) delivery: Delivery,
    pub(super) at: Instant,
    pub(super) trace: TraceContext,
}

impl Received {
    /// Starts the `consume` span, continuing the trace from the delivery's AMQP headers.
    pub(super) fn new(delivery: Delivery, at: Instant, queue: &str, headers: &Headers) -> Self {
        let parent = delivery
            .properties
            .headers()
            .as_ref()
            .map(telemetry::extract)
            .unwrap_or_default();
        let tracer = global::tracer("planner");
        let span = tracer
            .span_builder("consume")
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", "rabbitmq"),
                KeyValue::new("messaging.destination.name", queue.to_owned()),
                KeyValue::new(
                    "github.delivery_id",
                    headers.delivery.clone().unwrap_or_default(),
                ),
                KeyValue::new("github.event", headers.event.clone().unwrap_or_default()),
            ])
            .start_with_context(&tracer, &parent);
        Self {
            delivery,
            at,
            trace: parent.with_span(span),
        }
    }

    pub(super) fn describe(&self, event: &JobEvent) {
        let span = self.trace.span();
        span.set_attribute(KeyValue::new("github.action", event.action().as_str()));
        span.set_attribute(KeyValue::new("github.job_id", event.job.id));
    }

    /// Ends the `consume` span with what became of the delivery.
    pub(super) fn finish(&self, outcome: &'static str, error: Option<String>) {
        let span = self.trace.span();
        span.set_attribute(KeyValue::new("planner.outcome", outcome));
        if let Some(error) = error {
            span.set_status(Status::error(error));
        }
        span.end();
    }
}

/// Starts one `commit` span per delivery of a transaction, each the child of its delivery's
/// `consume` span.
pub(super) fn commit_spans(batch: &[&Received]) -> Vec<TraceContext> {
    let tracer = global::tracer("planner");
    let size = batch.len() as i64;
    batch
        .iter()
        .map(|received| {
            let span = tracer
                .span_builder("commit")
                .with_kind(SpanKind::Internal)
                .with_attributes([
                    KeyValue::new("db.system", "postgresql"),
                    KeyValue::new("planner.batch_size", size),
                ])
                .start_with_context(&tracer, &received.trace);
            received.trace.with_span(span)
        })
        .collect()
}

/// Ends `commit` spans: committed, or (`Some(error)`) given up on.
pub(super) fn end_commit_spans(spans: Vec<TraceContext>, error: Option<&str>) {
    for context in spans {
        let span = context.span();
        if let Some(error) = error {
            span.set_status(Status::error(error.to_owned()));
        }
        span.end();
    }
}
