//! `POST /webhook`: check, publish, and answer 200 only after the broker's confirm.

use actix_web::{http::header::HeaderMap, web, HttpRequest, HttpResponse};
use actors::amqp::{Publish, PublishError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde_json::json;

use crate::error::GatewayError;
use crate::startup::AppState;
use crate::webhook::{Rejection, Validate, Verdict};

/// Headers copied from the request onto the AMQP message, as Canonical's gateway does.
pub const FORWARDED_HEADERS: [&str; 5] = [
    "X-GitHub-Event",
    "X-GitHub-Delivery",
    "X-GitHub-Hook-ID",
    "X-GitHub-Hook-Installation-Target-Type",
    "X-GitHub-Hook-Installation-Target-ID",
];

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
    let delivery = header(headers, "X-GitHub-Delivery")
        .unwrap_or("-")
        .to_owned();
    let result = handle(headers, payload, &state, &delivery).await;
    match &result {
        Ok(_) => {}
        Err(err) => log::warn!(
            "event=webhook_rejected delivery={delivery:?} reason={} status={}",
            err.reason(),
            actix_web::ResponseError::status_code(err).as_u16()
        ),
    }
    result
}

async fn handle(
    headers: &HeaderMap,
    payload: web::Payload,
    state: &AppState,
    delivery: &str,
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
    let body = payload
        .to_bytes_limited(limit)
        .await
        .map_err(|_| GatewayError::BodyTooLarge { limit })?
        .map_err(|_| GatewayError::BodyUnreadable)?;

    // 2-4. Signature, event and payload checks, off the HTTP worker.
    let event = header(headers, "X-GitHub-Event").map(str::to_owned);
    let verdict = state
        .validator
        .send(Validate {
            signature,
            event: event.clone(),
            body: body.clone(),
        })
        .await
        .map_err(|err| {
            log::error!("event=validator_unavailable error={err}");
            GatewayError::Internal
        })??;

    let (action, job_id) = match verdict {
        Verdict::Ping => {
            log::info!("event=webhook_ping delivery={delivery:?}");
            return Ok(HttpResponse::Ok().json(json!({ "status": "pong" })));
        }
        Verdict::Ignored { event } => {
            log::info!("event=webhook_ignored delivery={delivery:?} github_event={event:?}");
            return Ok(HttpResponse::Accepted().json(json!({
                "status": "ignored",
                "reason": format!("event {event:?} is not forwarded; only workflow_job is"),
            })));
        }
        Verdict::Forward { action, job_id } => (action, job_id),
    };

    // 5. Publish and wait for the broker's confirm, bounded by APP_PUBLISH_TIMEOUT.
    let mut amqp_headers = FieldTable::default();
    for name in FORWARDED_HEADERS {
        if let Some(value) = header(headers, name) {
            amqp_headers.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
        }
    }
    let publish = state.publisher.send(Publish {
        body: body.to_vec(),
        content_type: "application/json",
        headers: amqp_headers,
    });
    let outcome = match tokio::time::timeout(state.publish_timeout, publish).await {
        Ok(Ok(result)) => result,
        Ok(Err(_mailbox)) => Err(PublishError::Stopped),
        Err(_elapsed) => Err(PublishError::Channel(format!(
            "no confirm within {:?}",
            state.publish_timeout
        ))),
    };
    match outcome {
        Ok(()) => {
            log::info!(
                "event=webhook_published delivery={delivery:?} action={action:?} job_id={job_id}"
            );
            Ok(HttpResponse::Ok().json(json!({ "status": "published" })))
        }
        Err(err) => {
            log::warn!(
                "event=webhook_publish_failed delivery={delivery:?} job_id={job_id} error={err}"
            );
            Err(GatewayError::Unavailable {
                retry_after_secs: state.publish_timeout.as_secs().max(1),
            })
        }
    }
}
