//! `POST /webhook`: check, publish, and answer 200 only after the broker's confirm.

use std::time::Instant;

use actix_web::{http::header::HeaderMap, web, HttpRequest, HttpResponse, ResponseError};
use actors::amqp::{Publish, PublishError};
use actors::delivery;
use opentelemetry::{
    global,
    trace::{SpanKind, Status, TraceContextExt, Tracer},
    Context, KeyValue,
};
use serde_json::json;

use crate::error::GatewayError;
use crate::startup::AppState;
use crate::webhook::{Rejection, Validate, Verdict};

/// Bodies up to this size are checked on the HTTP worker itself; larger ones on the
/// validator's threads. GitHub's `workflow_job` deliveries are 5 to 15 KB.
const INLINE_VALIDATION_BYTES: usize = 64 * 1024;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The handler. See the crate docs for the order of checks.
pub async fn receive(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let headers = request.headers();
    let delivery = header(headers, delivery::DELIVERY)
        .unwrap_or("-")
        .to_owned();
    let metrics = &state.metrics;
    metrics.inbound.inc();

    let tracer = global::tracer("gateway");
    let span = tracer
        .span_builder("webhook receive")
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.route", "/webhook"),
            KeyValue::new("github.delivery_id", delivery.clone()),
            KeyValue::new(
                "github.event",
                header(headers, delivery::EVENT).unwrap_or("").to_owned(),
            ),
        ])
        .start(&tracer);
    let context = Context::current_with_span(span);

    let result = handle(headers, payload, &state, &delivery, &context).await;
    if let Err(err) = &result {
        let status = err.status_code();
        if matches!(err, GatewayError::Unavailable { .. }) {
            metrics.outbound_errors.inc();
        } else {
            if status.is_client_error() {
                metrics.inbound_errors.inc();
            }
            metrics.rejected.with_label_values(&[err.reason()]).inc();
        }
        context
            .span()
            .set_status(Status::error(err.reason().to_owned()));
        log::warn!(
            event = "webhook_rejected",
            "delivery.id" = delivery,
            reason = err.reason(),
            status = status.as_u16();
            "webhook rejected"
        );
    }
    context.span().end();
    result
}

async fn handle(
    headers: &HeaderMap,
    payload: web::Payload,
    state: &AppState,
    delivery: &str,
    context: &Context,
) -> Result<HttpResponse, GatewayError> {
    // 1. Signature header first: nothing else is read without one.
    let signature = header(headers, "X-Hub-Signature-256")
        .ok_or(Rejection::MissingSignature)?
        .to_owned();
    let limit = state.max_body_bytes;
    let declared = header(headers, "Content-Length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let body = tokio::time::timeout(state.request_timeout, payload.to_bytes_limited(limit))
        .await
        .map_err(|_| GatewayError::BodyTimeout)?
        .map_err(|_| GatewayError::BodyTooLarge { limit })?
        .map_err(|_| GatewayError::BodyUnreadable)?;

    // 2-4. Signature, event and payload checks: on the HTTP worker for a body of GitHub's
    //      usual size (tens of microseconds: less than handing it to another thread costs),
    //      off it for larger ones, so a big body never holds up the worker's other requests.
    let event = header(headers, delivery::EVENT);
    let verdict = if body.len() <= INLINE_VALIDATION_BYTES {
        state.secrets.validate(&signature, event, &body)?
    } else {
        state
            .validator
            .send(Validate {
                signature,
                event: event.map(str::to_owned),
                body: body.clone(),
            })
            .await
            .map_err(|err| {
                log::error!(event = "validator_unavailable", error:% = err; "validator unavailable");
                GatewayError::Internal
            })??
    };

    let (action, job_id) = match verdict {
        Verdict::Ping => {
            state.metrics.ignored.inc();
            log::info!(event = "webhook_ping", "delivery.id" = delivery; "ping answered");
            return Ok(HttpResponse::Ok().json(json!({ "status": "pong" })));
        }
        Verdict::Ignored { event } => {
            state.metrics.ignored.inc();
            log::info!(
                event = "webhook_ignored",
                "delivery.id" = delivery,
                github_event = event;
                "event not forwarded"
            );
            return Ok(HttpResponse::Accepted().json(json!({
                "status": "ignored",
                "reason": format!("event {event:?} is not forwarded; only workflow_job is"),
            })));
        }
        Verdict::Forward { action, job_id } => (action, job_id),
    };
    let span = context.span();
    span.set_attribute(KeyValue::new("github.action", action.clone()));
    span.set_attribute(KeyValue::new("github.job_id", job_id.0));

    // Bounded in-flight publishes: past APP_MAX_IN_FLIGHT, answer 503 now rather than queue.
    let Ok(_permit) = state.in_flight.try_acquire() else {
        return Err(GatewayError::Overloaded {
            retry_after_secs: state.publish_timeout.as_secs().max(1),
        });
    };

    // 5. Publish and wait for the broker's confirm, bounded by APP_PUBLISH_TIMEOUT. The
    //    publish span's context travels in the AMQP headers (`traceparent`).
    let tracer = global::tracer("gateway");
    let publish_span = tracer
        .span_builder("publish github-workflow-jobs")
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("messaging.system", "rabbitmq"),
            KeyValue::new("messaging.destination.name", "github-workflow-jobs"),
            KeyValue::new("github.delivery_id", delivery.to_owned()),
            KeyValue::new("github.job_id", job_id.0),
        ])
        .start_with_context(&tracer, context);
    let publish_context = context.with_span(publish_span);
    let mut amqp_headers = delivery::amqp_headers(|name| header(headers, name));
    actors::telemetry::inject(&publish_context, &mut amqp_headers);
    let started = Instant::now();
    let publish = state.publishing.publish(Publish {
        body,
        content_type: delivery::CONTENT_TYPE,
        headers: amqp_headers,
    });
    let outcome = match tokio::time::timeout(state.publish_timeout, publish).await {
        Ok(result) => result,
        Err(_elapsed) => Err(PublishError::Channel(format!(
            "no confirm within {:?}",
            state.publish_timeout
        ))),
    };
    match &outcome {
        Ok(()) => publish_context.span().end(),
        Err(err) => {
            publish_context
                .span()
                .set_status(Status::error(err.to_string()));
            publish_context.span().end();
        }
    }
    match outcome {
        Ok(()) => {
            state
                .metrics
                .publish_confirm_seconds
                .observe(started.elapsed().as_secs_f64());
            state.metrics.outbound.inc();
            log::info!(
                event = "webhook_published",
                "delivery.id" = delivery,
                action,
                "job.id" = job_id.0;
                "webhook published"
            );
            Ok(HttpResponse::Ok().json(json!({ "status": "published" })))
        }
        Err(err) => {
            log::warn!(
                event = "webhook_publish_failed",
                "delivery.id" = delivery,
                "job.id" = job_id.0,
                error:% = err;
                "webhook not published"
            );
            Err(GatewayError::Unavailable {
                retry_after_secs: state.publish_timeout.as_secs().max(1),
            })
        }
    }
}
