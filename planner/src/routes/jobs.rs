//! `/api/v1/jobs`: the jobs the planner knows, newest first.

use actix_web::{get, web, HttpResponse};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, Utc};
use schema::{
    models::Job,
    queries::{self, JobFilter},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::with_conn;
use crate::{
    auth::Authenticated,
    domain::{job::Status, names::validate_name},
    error::{ApiError, ErrorBody},
    extract::QueryParams,
    state::AppState,
};

/// Default page size.
pub const DEFAULT_LIMIT: i64 = 100;
/// Largest page size.
pub const MAX_LIMIT: i64 = 1000;

/// A job, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct JobBody {
    pub platform: String,
    pub id: i64,
    /// Lowercased `runs-on` labels.
    pub labels: Vec<String>,
    /// `queued`, `waiting`, `in_progress` or `completed`.
    pub status: String,
    pub conclusion: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub assigned_flavor: Option<String>,
    /// `owner/name`.
    pub repository: String,
    pub run_id: Option<i64>,
    pub run_attempt: Option<i64>,
    pub workflow_name: Option<String>,
    pub job_name: Option<String>,
    pub runner_name: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// Raw webhook payload of each action received (only on `GET /api/v1/jobs/{platform}/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payloads: Option<serde_json::Value>,
}

impl JobBody {
    /// The job as the API shows it; `payloads` (action -> raw payload) only for a single job.
    pub(crate) fn new(job: Job, payloads: Option<serde_json::Value>) -> Self {
        Self {
            platform: job.platform,
            id: job.id,
            labels: job.labels,
            status: job.status,
            conclusion: job.conclusion,
            created_at: job.created_at,
            started_at: job.started_at,
            completed_at: job.completed_at,
            assigned_flavor: job.assigned_flavor,
            repository: job.repository,
            run_id: job.run_id,
            run_attempt: job.run_attempt,
            workflow_name: job.workflow_name,
            job_name: job.job_name,
            runner_name: job.runner_name,
            updated_at: job.updated_at,
            payloads,
        }
    }
}

/// A page of jobs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobPage {
    /// Newest first.
    pub jobs: Vec<JobBody>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Query of `GET /api/v1/jobs/{platform}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// `queued`, `waiting`, `in_progress` or `completed`.
    #[param(pattern = "^(queued|waiting|in_progress|completed)$")]
    pub status: Option<String>,
    /// Assigned flavor.
    pub flavor: Option<String>,
    /// `owner/name`.
    pub repository: Option<String>,
    /// 1 to 1000, default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn encode_cursor(job: &JobBody) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", job.created_at.timestamp_micros(), job.id))
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, i64), ApiError> {
    let bad = || ApiError::field("cursor", "not a cursor returned by this API");
    let text =
        String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?).map_err(|_| bad())?;
    let (micros, id) = text.split_once(':').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let id: i64 = id.parse().map_err(|_| bad())?;
    Ok((DateTime::from_timestamp_micros(micros).ok_or_else(bad)?, id))
}

/// A repository filter: any text PostgreSQL can compare (it is a bound parameter, compared for
/// equality), so neither empty nor holding U+0000, which PostgreSQL text cannot.
fn repository_filter(repository: &str) -> Result<(), ApiError> {
    if repository.is_empty() || repository.contains('\0') {
        return Err(ApiError::field(
            "repository",
            "must be `owner/name`, not empty, without U+0000",
        ));
    }
    Ok(())
}

fn platform(platform: &str) -> Result<(), ApiError> {
    validate_name(platform).map_err(|problem| ApiError::field("platform", problem))
}

/// Jobs of a platform, newest first, a page at a time.
#[utoipa::path(
    params(("platform" = String, Path, description = "e.g. `github`"), JobQuery),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "Invalid parameter; the error names it", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/api/v1/jobs/{platform}")]
pub async fn list(
    _: Authenticated,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: QueryParams<JobQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = page(&state, path.into_inner(), query.get()?).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// A page of a platform's jobs as `GET /api/v1/jobs/{platform}` answers it (the console lists
/// them too); a 400 names the parameter at fault.
pub(crate) async fn page(
    state: &AppState,
    path: String,
    query: JobQuery,
) -> Result<JobPage, ApiError> {
    platform(&path)?;
    if let Some(status) = &query.status {
        status
            .parse::<Status>()
            .map_err(|err| ApiError::field("status", err))?;
    }
    if let Some(flavor) = &query.flavor {
        validate_name(flavor).map_err(|problem| ApiError::field("flavor", problem))?;
    }
    if let Some(repository) = &query.repository {
        repository_filter(repository)?;
    }
    let limit = match &query.limit {
        None => DEFAULT_LIMIT,
        Some(limit) => limit
            .parse::<i64>()
            .ok()
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .ok_or_else(|| ApiError::field("limit", "must be an integer from 1 to 1000"))?,
    };
    let filter = JobFilter {
        status: query.status,
        flavor: query.flavor,
        repository: query.repository,
        before: query.cursor.as_deref().map(decode_cursor).transpose()?,
    };
    let pool = state.pool.clone();
    // One more than asked tells whether there is a next page.
    let mut jobs = with_conn(pool, move |conn| {
        Ok(queries::list_jobs(conn, &path, &filter, limit + 1)?)
    })
    .await?
    .into_iter()
    .map(|job| JobBody::new(job, None))
    .collect::<Vec<_>>();
    let more = jobs.len() as i64 > limit;
    jobs.truncate(limit as usize);
    let next_cursor = if more {
        jobs.last().map(encode_cursor)
    } else {
        None
    };
    Ok(JobPage { jobs, next_cursor })
}

/// One job, with the raw payload of each action received.
#[utoipa::path(
    params(("platform" = String, Path), ("id" = i64, Path, description = "GitHub's workflow job id")),
    responses(
        (status = 200, description = "The job", body = JobBody),
        (status = 400, description = "Invalid platform or id", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/api/v1/jobs/{platform}/{id}")]
pub async fn get(
    _: Authenticated,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (path_platform, id) = path.into_inner();
    platform(&path_platform)?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::field("id", "must be an integer"))?;
    let pool = state.pool.clone();
    let lookup = path_platform.clone();
    let found = with_conn(pool, move |conn| {
        let Some(job) = queries::get_job(conn, &lookup, id)? else {
            return Ok(None);
        };
        let payloads = queries::job_payloads(conn, &lookup, id)?;
        Ok(Some((job, payloads)))
    })
    .await?;
    let (job, payloads) =
        found.ok_or_else(|| ApiError::NotFound(format!("job {path_platform}/{id}")))?;
    let payloads = serde_json::Value::Object(payloads.into_iter().collect());
    Ok(HttpResponse::Ok().json(JobBody::new(job, Some(payloads))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let text = URL_SAFE_NO_PAD.encode(format!("{}:{}", at.timestamp_micros(), 42));
        assert_eq!(decode_cursor(&text).unwrap(), (at, 42));
        for garbage in [
            "",
            "!!",
            &URL_SAFE_NO_PAD.encode("x:1"),
            &URL_SAFE_NO_PAD.encode("1"),
        ] {
            assert!(decode_cursor(garbage).is_err(), "{garbage}");
        }
    }
}
