//! `/api/v1/jobs`: the jobs the planner knows, in Canonical's shapes.
//!
//! `GET /api/v1/jobs/{platform}` answers a bare JSON array, oldest first, as Canonical's planner
//! does. What ours adds is opt-in and leaves that body as it is: filters and paging are query
//! parameters, and the next page's address is in a `Link` header (`rel="next"`, as GitHub's API
//! pages). `PATCH /api/v1/jobs/{platform}/{id}` sets a start or completion time once.

use std::collections::BTreeMap;

use actix_web::{get, http::header, patch, web, HttpResponse};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, Timelike, Utc};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use schema::{
    models::Job,
    queries::{self, JobFilter},
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use super::{job_path, pressure::PressureService};
use crate::{
    auth::Authenticated,
    domain::{job::Status, names::validate_name},
    error::{ApiError, ErrorBody},
    extract::{JsonBody, QueryParams},
    pressure::Nudge,
    state::AppState,
    store::{self, JobTimesChange, SetTimesError},
};

/// Default page size (Canonical's planner lists this many, and no more).
pub const DEFAULT_LIMIT: i64 = 100;
/// Largest page size.
pub const MAX_LIMIT: i64 = 1000;

/// A job, as the API shows it: the stored job, whose serialized form is Canonical's fields and
/// ours beside them, and its raw payloads.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobBody {
    #[serde(flatten)]
    pub job: Job,
    /// The raw webhook payload of each action received, by action (`queued`, `in_progress`,
    /// ...), each exactly as GitHub sent it. Absent only when asked for with `raw=false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub raw: Option<RawPayloads>,
}

/// A job's payloads by action, each the JSON text GitHub sent, written into the answer as it
/// is (not parsed and re-written).
pub type RawPayloads = BTreeMap<String, Box<RawValue>>;

/// The payloads of job `id` as the answer writes them. The planner stores only bodies it has
/// parsed as JSON; a row that is not JSON (written by hand) is answered as `null` and logged,
/// rather than failing the whole answer.
fn raw_payloads(id: i64, payloads: impl IntoIterator<Item = (String, String)>) -> RawPayloads {
    payloads
        .into_iter()
        .map(|(action, payload)| {
            let raw = RawValue::from_string(payload).unwrap_or_else(|err| {
                log::warn!(
                    event = "payload_not_json",
                    "job.id" = id,
                    action,
                    error:% = err;
                    "a stored payload is not JSON: answered as null"
                );
                RawValue::NULL.to_owned()
            });
            (action, raw)
        })
        .collect()
}

/// Query of `GET /api/v1/jobs/{platform}`: every parameter is optional, and without any the
/// answer is Canonical's (the 100 oldest jobs).
#[derive(Debug, Clone, Deserialize, IntoParams)]
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
    /// Where a page starts: taken from the `Link` header of the previous page.
    pub cursor: Option<String>,
    /// `false` leaves each job's `raw` out (default `true`).
    #[param(value_type = Option<bool>)]
    pub raw: Option<String>,
}

fn encode_cursor(job: &Job) -> String {
    let job = &job.state;
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

/// What a query value may hold unescaped in the `Link` header's address: RFC 3986's unreserved
/// characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The `Link` header of a page followed by another: the same query with the next `cursor`, as
/// an address relative to the server (`</api/v1/jobs/github?limit=10&cursor=...>;
/// rel="next"`), so that it holds behind any proxy.
fn next_link(platform: &str, query: &[(&str, Option<&str>)], cursor: &str) -> String {
    let mut link = format!("</api/v1/jobs/{platform}?");
    let parameters = query
        .iter()
        .filter_map(|(name, value)| value.map(|value| (*name, value)))
        .chain([("cursor", cursor)]);
    for (index, (name, value)) in parameters.enumerate() {
        if index > 0 {
            link.push('&');
        }
        link.push_str(name);
        link.push('=');
        link.extend(utf8_percent_encode(value, QUERY_VALUE));
    }
    link.push_str(">; rel=\"next\"");
    link
}

/// Jobs of a platform, oldest first, as a bare JSON array (Canonical's shape). A page at a
/// time: when there are more, the `Link` header gives the next page's address.
#[utoipa::path(
    params(("platform" = String, Path, description = "e.g. `github`"), JobQuery),
    responses(
        (status = 200, description = "Jobs, oldest first (at most `limit`)", body = [JobBody],
            headers(("Link" = String, description = "`<address of the next page>; rel=\"next\"` when there are more jobs; absent on the last page"))),
        (status = 400, description = "Invalid parameter; the error names it", body = ErrorBody),
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
    let path = path.into_inner();
    let query = query.get()?;
    let page = page(&state, path.clone(), query.clone()).await?;
    let mut response = HttpResponse::Ok();
    if let Some(cursor) = &page.next_cursor {
        let query = [
            ("status", query.status.as_deref()),
            ("flavor", query.flavor.as_deref()),
            ("repository", query.repository.as_deref()),
            ("limit", query.limit.as_deref()),
            ("raw", query.raw.as_deref()),
        ];
        response.insert_header((header::LINK, next_link(&path, &query, cursor)));
    }
    Ok(response.json(page.jobs))
}

/// A page of a platform's jobs, oldest first.
pub(crate) struct JobPage {
    /// The jobs, as the API shows them.
    pub(crate) jobs: Vec<JobBody>,
    /// The cursor of the next page, when there are more jobs.
    pub(crate) next_cursor: Option<String>,
}

/// A page of a platform's jobs as `GET /api/v1/jobs/{platform}` answers it (the console lists
/// them too); a 400 names the parameter at fault.
pub(crate) async fn page(
    state: &AppState,
    path: String,
    query: JobQuery,
) -> Result<JobPage, ApiError> {
    platform(&path)?;
    let status = query
        .status
        .as_deref()
        .map(str::parse::<Status>)
        .transpose()
        .map_err(|err| ApiError::field("status", err))?;
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
    let with_raw = match query.raw.as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(ApiError::field("raw", "must be true or false")),
    };
    let filter = JobFilter {
        status,
        flavor: query.flavor,
        repository: query.repository,
        after: query.cursor.as_deref().map(decode_cursor).transpose()?,
    };
    let (jobs, more, mut raw) = state
        .db(move |conn| {
            // One more than asked tells whether there is a next page.
            let mut jobs = queries::list_jobs(conn, &path, &filter, limit + 1)?;
            let more = jobs.len() as i64 > limit;
            jobs.truncate(limit as usize);
            let mut raw: BTreeMap<i64, Vec<(String, String)>> = BTreeMap::new();
            if with_raw {
                let ids: Vec<i64> = jobs.iter().map(|job| job.state.id).collect();
                for (id, action, payload) in queries::jobs_payloads(conn, &path, &ids)? {
                    raw.entry(id).or_default().push((action, payload));
                }
            }
            Ok((jobs, more, raw))
        })
        .await?;
    let next_cursor = if more {
        jobs.last().map(encode_cursor)
    } else {
        None
    };
    let jobs = jobs
        .into_iter()
        .map(|job| {
            let payloads = with_raw
                .then(|| raw_payloads(job.state.id, raw.remove(&job.state.id).unwrap_or_default()));
            JobBody { job, raw: payloads }
        })
        .collect();
    Ok(JobPage { jobs, next_cursor })
}

/// One job, with the raw payload of each action received.
#[utoipa::path(
    params(("platform" = String, Path), ("id" = i64, Path, description = "GitHub's workflow job id")),
    responses(
        (status = 200, description = "The job", body = JobBody),
        (status = 400, description = "Invalid platform or id", body = ErrorBody),
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
    let (path_platform, id) = job_path(path)?;
    let lookup = path_platform.clone();
    let found = state
        .db(move |conn| {
            let Some(job) = queries::get_job(conn, &lookup, id)? else {
                return Ok(None);
            };
            let payloads = queries::job_payloads(conn, &lookup, id)?;
            Ok(Some((job, payloads)))
        })
        .await?;
    let (job, payloads) =
        found.ok_or_else(|| ApiError::NotFound(format!("job {path_platform}/{id}")))?;
    Ok(HttpResponse::Ok().json(JobBody {
        job,
        raw: Some(raw_payloads(id, payloads)),
    }))
}

/// Body of `PATCH /api/v1/jobs/{platform}/{id}`: either time, or both, or neither (nothing
/// changes). Other fields are ignored (and logged), as Canonical's planner ignores them.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateJob {
    /// RFC 3339 (`2025-01-15T10:31:00Z`); only when the job has none yet.
    #[serde(default, deserialize_with = "rfc3339")]
    pub started_at: Option<DateTime<Utc>>,
    /// RFC 3339; only when the job has none yet. The job is then completed.
    #[serde(default, deserialize_with = "rfc3339")]
    pub completed_at: Option<DateTime<Utc>>,
}

/// An RFC 3339 time as Go's `time.Time` (Canonical's planner) reads it: `T` between date and
/// time, `Z` or a numeric offset, no leap second; `null` is no time.
fn rfc3339<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    let Some(text) = Option::<String>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let invalid =
        || serde::de::Error::custom("must be an RFC 3339 time, e.g. 2025-01-15T10:31:00Z");
    if text.as_bytes().get(10) != Some(&b'T') || text.ends_with('z') {
        return Err(invalid());
    }
    let at = DateTime::parse_from_rfc3339(&text).map_err(|_| invalid())?;
    if at.nanosecond() >= 1_000_000_000 {
        return Err(invalid());
    }
    Ok(Some(at.with_timezone(&Utc)))
}

/// Sets a job's start or completion time, each only once (Canonical's debugging aid). A
/// completion completes the job: its pressure drops at once.
#[utoipa::path(
    params(("platform" = String, Path), ("id" = i64, Path, description = "GitHub's workflow job id")),
    request_body = UpdateJob,
    responses(
        (status = 204, description = "Set (or nothing to set)"),
        (status = 400, description = "Invalid platform, id or body, or a time that is set already; the error names the field", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[patch("/api/v1/jobs/{platform}/{id}")]
pub async fn update(
    _: Authenticated,
    state: web::Data<AppState>,
    pressure: web::Data<PressureService>,
    path: web::Path<(String, String)>,
    body: JsonBody<UpdateJob>,
) -> Result<HttpResponse, ApiError> {
    let (path_platform, id) = job_path(path)?;
    let body = body.read().await?;
    let change = JobTimesChange {
        started_at: body.started_at,
        completed_at: body.completed_at,
    };
    let lookup = path_platform.clone();
    let outcome = state
        .db(move |conn| Ok(store::set_job_times(conn, &lookup, id, change)))
        .await?;
    match outcome {
        Ok(()) => {}
        Err(SetTimesError::NotFound) => {
            return Err(ApiError::NotFound(format!("job {path_platform}/{id}")))
        }
        Err(SetTimesError::AlreadySet(field)) => {
            return Err(ApiError::field(field, "is already set; it can be set once"))
        }
        Err(SetTimesError::Database(err)) => return Err(err.into()),
    }
    if change != JobTimesChange::default() {
        log::info!(event = "job_times_set", platform = path_platform, "job.id" = id; "job times set");
        // The trigger's NOTIFY would do too; this spares the round trip.
        pressure.calculator.do_send(Nudge::default());
    }
    Ok(HttpResponse::NoContent().finish())
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

    #[test]
    fn the_next_link_keeps_the_query_and_escapes_it() {
        let link = next_link(
            "github",
            &[
                ("status", Some("queued")),
                ("flavor", None),
                ("repository", Some("octo/a b&c=d\r\n")),
                ("limit", Some("7")),
            ],
            "MTox",
        );
        assert_eq!(
            link,
            "</api/v1/jobs/github?status=queued&repository=octo%2Fa%20b%26c%3Dd%0D%0A&limit=7&cursor=MTox>; rel=\"next\""
        );
    }

    #[test]
    fn times_are_read_as_go_reads_rfc_3339() {
        let read = |json: &str| crate::extract::from_json::<UpdateJob>(json.as_bytes());
        let body =
            read(r#"{"started_at": "2025-01-15T10:31:00.5+02:00", "completed_at": null}"#).unwrap();
        assert_eq!(
            body.started_at,
            Some("2025-01-15T08:31:00.5Z".parse::<DateTime<Utc>>().unwrap())
        );
        assert_eq!(body.completed_at, None);
        for bad in [
            "2025-01-15 10:31:00Z",
            "2025-01-15T10:31:00z",
            "2025-01-15T10:31:00",
            "2025-01-15",
            "2016-12-31T23:59:60Z",
            "yesterday",
        ] {
            let err = read(&format!(r#"{{"started_at": "{bad}"}}"#)).unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with("started_at: must be an RFC 3339"),
                "{bad}: {message}"
            );
        }
        assert!(read(r#"{"completed_at": 17}"#)
            .unwrap_err()
            .to_string()
            .starts_with("completed_at:"));
    }
}
