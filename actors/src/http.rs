//! What every service's HTTP server shares: the request log ([`log_request`]).

use std::time::Instant;

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
};

/// actix-web middleware (use with `middleware::from_fn`) logging each answered request once
/// its answer starts: method, path and query (never headers or bodies), status, and the time
/// to the answer's head in milliseconds (`event=request`).
pub async fn log_request(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path_and_query().map_or_else(
        || request.path().to_owned(),
        |path| path.as_str().to_owned(),
    );
    let response = next.call(request).await?;
    log::info!(
        event = "request",
        method:% = method,
        path,
        status = response.status().as_u16(),
        duration_ms = format!("{:.3}", started.elapsed().as_secs_f64() * 1000.0);
        "request answered"
    );
    Ok(response)
}
