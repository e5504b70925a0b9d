//! `GET /api/v1/flavors/{name}/pressure`: how many runners a flavor (or, with `_`, every flavor)
//! needs now, once or as a stream (`?stream=true`: NDJSON; `Accept: text/event-stream`: SSE).
//!
//! Answers come from the broadcaster's current snapshot, never from a query per client; only a
//! flavor missing from the snapshot is looked up in the database (404, or created a moment ago).

use std::time::Duration;

use actix::{Addr, Recipient};
use actix_web::{get, web, HttpRequest, HttpResponse};
use actors::{
    broadcast::{Broadcaster, Subscribe, Subscription},
    pressure::Filter,
    stream,
};
use schema::queries;

use super::valid_name;
use crate::{
    auth::Authenticated,
    error::{ApiError, ErrorBody},
    pressure::Nudge,
    state::AppState,
};

/// How long a request for a flavor that exists but is not in the snapshot yet (created a moment
/// ago) waits for the calculator to catch up.
const CATCH_UP: Duration = Duration::from_secs(5);

/// What the pressure route needs besides [`AppState`].
pub struct PressureService {
    /// The process's broadcaster.
    pub broadcaster: Addr<Broadcaster>,
    /// The process's calculator.
    pub calculator: Recipient<Nudge>,
    /// `APP_STREAM_HEARTBEAT`.
    pub heartbeat: Duration,
}

/// The pressure of one flavor (`{"name": n}`) or, with `_`, of every flavor. With `?stream=true`
/// an NDJSON stream (`application/x-ndjson`): the current map at once, a line whenever it changes
/// and at least every `APP_STREAM_HEARTBEAT`. With `Accept: text/event-stream`: Server-Sent
/// Events (`event: pressure`, `id:` a growing generation, `: keep-alive` comments).
#[utoipa::path(
    params(
        ("name" = String, Path, description = "A flavor, or `_` for every flavor"),
        ("stream" = Option<bool>, Query, description = "`true`: an NDJSON stream of changes"),
    ),
    responses(
        (status = 200, description = "Flavor name -> pressure; a stream of such objects with `?stream=true` (NDJSON) or `Accept: text/event-stream` (SSE)",
            content(
                (std::collections::BTreeMap<String, u64> = "application/json"),
                (std::collections::BTreeMap<String, u64> = "application/x-ndjson"),
                (String = "text/event-stream"),
            )),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 404, description = "No such flavor", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/api/v1/flavors/{name}/pressure")]
pub async fn pressure(
    _: Authenticated,
    req: HttpRequest,
    name: web::Path<String>,
    state: web::Data<AppState>,
    service: web::Data<PressureService>,
) -> Result<HttpResponse, ApiError> {
    let filter = Filter::from_path(&name);
    if let Filter::Flavor(flavor) = &filter {
        valid_name(flavor)?;
    }
    let mut subscription = subscribe(&service.broadcaster).await?;
    if let Filter::Flavor(flavor) = &filter {
        if subscription.current().get(flavor).is_none() {
            let lookup = flavor.clone();
            let exists = state
                .db(move |conn| Ok(queries::get_flavor(conn, &lookup)?))
                .await?
                .is_some();
            if !exists {
                return Err(ApiError::NotFound(format!("flavor {flavor}")));
            }
            service.calculator.do_send(Nudge::default());
            catch_up(&mut subscription, flavor).await?;
        }
    }
    if stream::wants_stream(&req) {
        return Ok(stream::respond(
            &req,
            subscription,
            filter,
            service.heartbeat,
        ));
    }
    let current = subscription.current();
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(current.view(&filter).json().clone()))
}

async fn subscribe(broadcaster: &Addr<Broadcaster>) -> Result<Subscription, ApiError> {
    match broadcaster.send(Subscribe).await {
        Ok(Ok(subscription)) => Ok(subscription),
        Ok(Err(_)) | Err(_) => Err(ApiError::ShuttingDown),
    }
}

/// Waits (at most [`CATCH_UP`]) until the snapshot has `flavor`.
async fn catch_up(subscription: &mut Subscription, flavor: &str) -> Result<(), ApiError> {
    let wait = async {
        loop {
            match subscription.changed().await {
                Some(snapshot) if snapshot.get(flavor).is_some() => return Ok(()),
                Some(_) => continue,
                None => return Err(ApiError::ShuttingDown),
            }
        }
    };
    // After the deadline, answer with what there is (`{}` for the flavor).
    tokio::time::timeout(CATCH_UP, wait).await.unwrap_or(Ok(()))
}
