//! `/api/v1/match`: which flavor a job with given labels would get, and why.

use actix_web::{get, web, HttpResponse};
use schema::queries;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    auth::Authenticated,
    domain::{labels::parse_list, matching::missing_labels, names::validate_name, webhook::GITHUB},
    error::{ApiError, ErrorBody},
    extract::QueryParams,
    state::AppState,
    store,
};

/// Query of `GET /api/v1/match`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MatchQuery {
    /// The job's `runs-on` labels, comma-separated.
    pub labels: String,
    /// Default `github`.
    pub platform: Option<String>,
}

/// How one flavor fares.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FlavorVerdict {
    pub name: String,
    pub priority: i32,
    pub is_disabled: bool,
    /// Job labels this flavor lacks.
    pub missing_labels: Vec<String>,
    /// Enabled and lacking nothing.
    pub eligible: bool,
}

/// The answer of `GET /api/v1/match`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct MatchResult {
    pub platform: String,
    /// The labels asked about, normalised.
    pub labels: Vec<String>,
    /// The labels that take part in matching (without `APP_IGNORED_LABELS`).
    pub matching_labels: Vec<String>,
    /// The flavor the job would get now, if any.
    pub flavor: Option<String>,
    /// Every flavor of the platform, by name.
    pub flavors: Vec<FlavorVerdict>,
}

/// Which flavor a job with these labels would get now, and why the others would not.
#[utoipa::path(
    params(MatchQuery),
    responses(
        (status = 200, description = "The verdict", body = MatchResult),
        (status = 400, description = "Missing or invalid parameter", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/api/v1/match")]
pub async fn explain(
    _: Authenticated,
    state: web::Data<AppState>,
    query: QueryParams<MatchQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.get()?;
    let platform = query.platform.unwrap_or_else(|| GITHUB.to_owned());
    Ok(HttpResponse::Ok().json(verdict(&state, platform, &query.labels).await?))
}

/// Which flavor of `platform` a job with `labels` (comma-separated) would get now, and how
/// every flavor of the platform fares: the answer of `GET /api/v1/match` (the console shows it
/// too). A 400 names `platform` when it is not a valid name.
pub async fn verdict(
    state: &AppState,
    platform: String,
    labels: &str,
) -> Result<MatchResult, ApiError> {
    validate_name(&platform).map_err(|problem| ApiError::field("platform", problem))?;
    let labels = parse_list(labels);
    let matching_labels = state.ignored_labels.matching_labels(&labels);
    let (lookup, wanted) = (platform.clone(), matching_labels.clone());
    let (specs, flavor) = state
        .db(move |conn| {
            let specs = store::flavor_specs(queries::list_platform_flavors(conn, &lookup)?);
            let flavor = store::match_flavor(conn, &specs, &wanted)?;
            Ok((specs, flavor))
        })
        .await?;
    let flavors = specs
        .into_iter()
        .map(|spec| {
            let missing = missing_labels(&matching_labels, &spec.labels);
            FlavorVerdict {
                eligible: !spec.is_disabled && missing.is_empty(),
                name: spec.name,
                priority: spec.priority,
                is_disabled: spec.is_disabled,
                missing_labels: missing,
            }
        })
        .collect();
    Ok(MatchResult {
        platform,
        labels,
        matching_labels,
        flavor,
        flavors,
    })
}
