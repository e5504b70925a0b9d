//! `/api/v1/flavors`: runner flavors. Every change re-matches the jobs that have not started.

use actix_web::{delete, get, patch, post, web, HttpResponse};
use diesel::{PgConnection, QueryResult};
use schema::{
    models::{Flavor, FlavorChanges, NewFlavor},
    queries,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{path_name, with_conn};
use crate::{
    auth::{Admin, Authenticated},
    domain::{
        labels::{normalize, IgnoredLabels},
        names::validate_name,
    },
    error::{ApiError, ErrorBody},
    extract::JsonBody,
    state::AppState,
    store,
};

/// A flavor, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FlavorBody {
    pub platform: String,
    pub name: String,
    /// Lowercased.
    pub labels: Vec<String>,
    pub priority: i32,
    pub is_disabled: bool,
    pub minimum_pressure: i32,
}

impl From<Flavor> for FlavorBody {
    fn from(flavor: Flavor) -> Self {
        Self {
            platform: flavor.platform,
            name: flavor.name,
            labels: flavor.labels,
            priority: flavor.priority,
            is_disabled: flavor.is_disabled,
            minimum_pressure: flavor.minimum_pressure,
        }
    }
}

/// Body of `POST /api/v1/flavors/{name}`. Other fields are ignored (and logged), as
/// Canonical's planner ignores them; `null` for an optional field is its default, as there.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateFlavor {
    /// Platform of the jobs this flavor serves, e.g. `github`.
    pub platform: String,
    /// Labels the flavor's runners offer (lowercased on input).
    pub labels: Vec<String>,
    /// Higher wins. Default 0.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2147483647)]
    pub priority: Option<i64>,
    /// Default `false`.
    #[serde(default)]
    pub is_disabled: Option<bool>,
    /// Runners to keep however few jobs there are. Default 0.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2147483647)]
    pub minimum_pressure: Option<i64>,
}

/// Body of `PATCH /api/v1/flavors/{name}`: at least one field (Canonical's planner has only
/// `is_disabled`). Other fields are ignored (and logged).
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateFlavor {
    pub is_disabled: Option<bool>,
    pub labels: Option<Vec<String>>,
    #[schema(minimum = 0, maximum = 2147483647)]
    pub priority: Option<i64>,
    #[schema(minimum = 0, maximum = 2147483647)]
    pub minimum_pressure: Option<i64>,
}

/// Runs a change to the flavors off the async workers; the change re-matches, leaving out the
/// ignored labels, the jobs that have not started.
async fn change<T, F>(state: web::Data<AppState>, work: F) -> Result<T, ApiError>
where
    F: FnOnce(&mut PgConnection, &IgnoredLabels) -> QueryResult<T> + Send + 'static,
    T: Send + 'static,
{
    let pool = state.pool.clone();
    with_conn(pool, move |conn| Ok(work(conn, &state.ignored_labels)?)).await
}

fn non_negative(field: &str, value: i64) -> Result<i32, ApiError> {
    i32::try_from(value)
        .ok()
        .filter(|value| *value >= 0)
        .ok_or_else(|| ApiError::field(field, "must be between 0 and 2147483647"))
}

fn labels(labels: &[String]) -> Result<Vec<String>, ApiError> {
    for (index, label) in labels.iter().enumerate() {
        let problem = if label.trim().is_empty() {
            "must not be empty"
        } else if label.contains('\0') {
            // PostgreSQL text cannot hold it.
            "must not contain U+0000"
        } else {
            continue;
        };
        return Err(ApiError::field(&format!("labels[{index}]"), problem));
    }
    Ok(normalize(labels))
}

/// Every flavor, by name. Admin only, as in Canonical's planner: flavors are the whole
/// configuration of every runner pool.
#[utoipa::path(
    responses(
        (status = 200, description = "Every flavor, by name", body = [FlavorBody]),
        (status = 403, description = "Not the admin token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/api/v1/flavors")]
pub async fn list(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let flavors = state.db(|conn| Ok(queries::list_flavors(conn)?)).await?;
    let body: Vec<FlavorBody> = flavors.into_iter().map(FlavorBody::from).collect();
    Ok(HttpResponse::Ok().json(body))
}

/// Creates a flavor; jobs that have not started are re-matched.
#[utoipa::path(
    params(("name" = String, Path, description = "1-63 of a-z 0-9 - _ . (not `_`)")),
    request_body = CreateFlavor,
    responses(
        (status = 201, description = "Created", body = FlavorBody),
        (status = 400, description = "Invalid name or body; the error names the field", body = ErrorBody),
        (status = 409, description = "A flavor of that name exists", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/api/v1/flavors/{name}")]
pub async fn create(
    _: Authenticated,
    state: web::Data<AppState>,
    name: web::Path<String>,
    body: JsonBody<CreateFlavor>,
) -> Result<HttpResponse, ApiError> {
    let name = path_name(name)?;
    let body = body.read().await?;
    validate_name(&body.platform).map_err(|problem| ApiError::field("platform", problem))?;
    let new = NewFlavor {
        name: name.clone(),
        platform: body.platform,
        labels: labels(&body.labels)?,
        priority: non_negative("priority", body.priority.unwrap_or(0))?,
        is_disabled: body.is_disabled.unwrap_or(false),
        minimum_pressure: non_negative("minimum_pressure", body.minimum_pressure.unwrap_or(0))?,
    };
    let created = change(state, move |conn, ignored| {
        store::create_flavor(conn, ignored, &new)
    })
    .await?
    .ok_or_else(|| ApiError::Conflict(format!("flavor {name}")))?;
    log::info!(event = "flavor_created", flavor = name; "flavor created");
    Ok(HttpResponse::Created().json(FlavorBody::from(created)))
}

/// One flavor.
#[utoipa::path(
    params(("name" = String, Path)),
    responses(
        (status = 200, description = "The flavor", body = FlavorBody),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 404, description = "No such flavor", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/api/v1/flavors/{name}")]
pub async fn get(
    _: Authenticated,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path_name(name)?;
    let lookup = name.clone();
    let flavor = state
        .db(move |conn| Ok(queries::get_flavor(conn, &lookup)?))
        .await?;
    let flavor = flavor.ok_or_else(|| ApiError::NotFound(format!("flavor {name}")))?;
    Ok(HttpResponse::Ok().json(FlavorBody::from(flavor)))
}

/// Enables or disables a flavor (or changes its labels, priority, minimum pressure); jobs that
/// have not started are re-matched.
#[utoipa::path(
    params(("name" = String, Path)),
    request_body = UpdateFlavor,
    responses(
        (status = 204, description = "Changed"),
        (status = 400, description = "Invalid name or body; the error names the field", body = ErrorBody),
        (status = 404, description = "No such flavor", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[patch("/api/v1/flavors/{name}")]
pub async fn update(
    _: Authenticated,
    state: web::Data<AppState>,
    name: web::Path<String>,
    body: JsonBody<UpdateFlavor>,
) -> Result<HttpResponse, ApiError> {
    let name = path_name(name)?;
    let body = body.read().await?;
    let changes = FlavorChanges {
        labels: body.labels.as_deref().map(labels).transpose()?,
        priority: body
            .priority
            .map(|value| non_negative("priority", value))
            .transpose()?,
        is_disabled: body.is_disabled,
        minimum_pressure: body
            .minimum_pressure
            .map(|value| non_negative("minimum_pressure", value))
            .transpose()?,
    };
    if changes.labels.is_none()
        && changes.priority.is_none()
        && changes.is_disabled.is_none()
        && changes.minimum_pressure.is_none()
    {
        return Err(ApiError::field(
            "body",
            "expected at least one of is_disabled, labels, priority, minimum_pressure",
        ));
    }
    let lookup = name.clone();
    let updated = change(state, move |conn, ignored| {
        store::update_flavor(conn, ignored, &lookup, &changes)
    })
    .await?;
    updated.ok_or_else(|| ApiError::NotFound(format!("flavor {name}")))?;
    log::info!(event = "flavor_updated", flavor = name; "flavor updated");
    Ok(HttpResponse::NoContent().finish())
}

/// Deletes a flavor; its started and completed jobs keep its name, waiting work is re-matched.
/// Deleting a flavor that does not exist is not an error (200 with an empty body, as
/// Canonical's planner answers either way).
#[utoipa::path(
    params(("name" = String, Path)),
    responses(
        (status = 200, description = "Deleted, or there was no such flavor (empty body)"),
        (status = 400, description = "Invalid name", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/api/v1/flavors/{name}")]
pub async fn delete(
    _: Authenticated,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path_name(name)?;
    let lookup = name.clone();
    let deleted = change(state, move |conn, ignored| {
        store::delete_flavor(conn, ignored, &lookup)
    })
    .await?;
    if deleted.is_some() {
        log::info!(event = "flavor_deleted", flavor = name; "flavor deleted");
    }
    Ok(HttpResponse::Ok().finish())
}
