//! The console's pages: login and logout, overview, jobs, one job, match, deliveries, runners,
//! and the pressure stream for the overview's script.

use std::collections::HashMap;

use actix_web::{
    get, http::header, http::StatusCode, post, web, HttpRequest, HttpResponse, ResponseError,
};
use askama::Template;
use chrono::{DateTime, Utc};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use schema::{
    models::Job,
    queries::{self, console as console_queries},
};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{
    age, html, html_with, managers, now,
    session::{self, Role},
    Console, ConsoleError, Nav, Viewer,
};
use crate::{
    auth::{text_sha256, token_sha256},
    domain::webhook::GITHUB,
    metrics::DEAD_LETTER_REASONS,
    routes::{
        job_path,
        jobs::JobQuery,
        matching::{verdict, MatchResult},
        pressure::PressureService,
    },
    state::AppState,
};

/// A timestamp as pages show it (UTC, to the second).
pub fn when(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

// ---------------------------------------------------------------------------------------------
// Login and logout

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    nav: Nav,
    csrf: String,
    error: Option<String>,
}

/// The login form, with a fresh login cookie its CSRF token is bound to.
#[get("/login")]
pub async fn login_form_route(
    req: HttpRequest,
    console: web::Data<Console>,
) -> Result<HttpResponse, ConsoleError> {
    login_page(&req, &console, StatusCode::OK, None)
}

fn login_page(
    req: &HttpRequest,
    console: &Console,
    status: StatusCode,
    error: Option<String>,
) -> Result<HttpResponse, ConsoleError> {
    let nonce = session::new_login_nonce();
    let page = LoginPage {
        nav: Nav::anonymous(),
        csrf: console.keys.login_csrf(&nonce),
        error,
    };
    let mut response = html_with(status, &page)?;
    response
        .add_cookie(&session::cookie(
            req,
            session::LOGIN_COOKIE,
            nonce,
            session::LOGIN_FORM_LIFETIME,
        ))
        .map_err(|_| ConsoleError::BadForm)?;
    Ok(response)
}

/// The login form's fields.
#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    csrf: String,
}

/// Signs in with the admin token or a general token (checked as the API checks them); a
/// session cookie and a redirect to the overview, or the form again with 401.
#[post("/login")]
pub async fn login_route(
    req: HttpRequest,
    console: web::Data<Console>,
    state: web::Data<AppState>,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, ConsoleError> {
    let nonce = req
        .cookie(session::LOGIN_COOKIE)
        .ok_or(ConsoleError::Csrf)?;
    if !session::same(&form.csrf, &console.keys.login_csrf(nonce.value())) {
        return Err(ConsoleError::Csrf);
    }
    let token = form.token.trim().to_owned();
    let Some((role, hash)) = verify_token(&state, token).await? else {
        log::info!("event=console_login_refused");
        return login_page(
            &req,
            &console,
            StatusCode::UNAUTHORIZED,
            Some("That token is not the admin token nor a token of this planner.".to_owned()),
        );
    };
    log::info!(
        "event=console_login role={}",
        if role == Role::Admin { "admin" } else { "read" }
    );
    let value = console.keys.new_session(role, hash, now());
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console"))
        .cookie(session::cookie(
            &req,
            session::SESSION_COOKIE,
            value,
            session::SESSION_LIFETIME,
        ))
        .cookie(session::removal(&req, session::LOGIN_COOKIE))
        .finish())
}

/// What a token signs in as, as [`crate::auth`] decides for the API: the admin token (compared
/// in constant time), else a general token found by its stored hash (returned: the session
/// keeps it to check the token still exists).
async fn verify_token(
    state: &AppState,
    token: String,
) -> Result<Option<(Role, Option<[u8; 32]>)>, ConsoleError> {
    if token.is_empty() {
        return Ok(None);
    }
    let text = text_sha256(&token);
    if bool::from(text.ct_eq(&state.admin_token_sha256)) {
        return Ok(Some((Role::Admin, None)));
    }
    let stored = token_sha256(&token);
    let found = state
        .db(move |conn| {
            for hash in [stored, text] {
                if queries::token_name_by_any_hash(conn, &[&hash])?.is_some() {
                    return Ok(Some(hash));
                }
            }
            Ok(None)
        })
        .await?;
    Ok(found.map(|hash| (Role::Read, Some(hash))))
}

/// The logout form's field.
#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

/// Ends the session in this browser.
#[post("/logout")]
pub async fn logout_route(
    req: HttpRequest,
    viewer: Viewer,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ConsoleError> {
    viewer.check_csrf(&form.csrf)?;
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/login"))
        .cookie(session::removal(&req, session::SESSION_COOKIE))
        .finish())
}

// ---------------------------------------------------------------------------------------------
// Overview

/// One flavor on the overview.
pub struct FlavorRow {
    pub name: String,
    pub platform: String,
    pub labels: String,
    pub priority: i32,
    pub enabled: bool,
    pub minimum: i32,
    /// The live pressure (`-` before the calculator has it).
    pub pressure: String,
    pub queued: i64,
    pub running: i64,
    /// Age of the oldest queued job, if any.
    pub oldest_queued: Option<String>,
}

/// One manager on the overview.
pub struct ManagerSummary {
    pub url: String,
    pub error: Option<String>,
    pub states: Vec<(String, usize)>,
    pub total: usize,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    nav: Nav,
    flavors: Vec<FlavorRow>,
    unmatched: i64,
    managers: Vec<ManagerSummary>,
}

#[derive(Default)]
struct Open {
    queued: i64,
    running: i64,
    oldest_queued: Option<DateTime<Utc>>,
}

/// Every flavor with its live pressure and open jobs, and the managers' runners by state.
#[get("")]
pub async fn overview_page(
    viewer: Viewer,
    state: web::Data<AppState>,
    console: web::Data<Console>,
    pressure: web::Data<PressureService>,
) -> Result<HttpResponse, ConsoleError> {
    let (flavors, open) = state
        .db(|conn| {
            Ok((
                queries::list_flavors(conn)?,
                console_queries::open_jobs_by_flavor(conn)?,
            ))
        })
        .await?;
    let mut by_flavor: HashMap<Option<String>, Open> = HashMap::new();
    for row in open {
        let entry = by_flavor.entry(row.flavor).or_default();
        if row.status == "in_progress" {
            entry.running += row.jobs;
        } else {
            entry.queued += row.jobs;
            entry.oldest_queued = Some(
                entry
                    .oldest_queued
                    .map_or(row.oldest, |oldest| oldest.min(row.oldest)),
            );
        }
    }
    let snapshot = pressure
        .broadcaster
        .send(actors::broadcast::Subscribe)
        .await
        .ok()
        .and_then(Result::ok)
        .map(|mut subscription| subscription.current());
    let now = Utc::now();
    let rows = flavors
        .into_iter()
        .map(|flavor| {
            let open = by_flavor
                .remove(&Some(flavor.name.clone()))
                .unwrap_or_default();
            FlavorRow {
                pressure: snapshot
                    .as_ref()
                    .and_then(|snapshot| snapshot.get(&flavor.name))
                    .map_or_else(|| "-".to_owned(), |value| value.to_string()),
                labels: flavor.labels.join(", "),
                priority: flavor.priority,
                enabled: !flavor.is_disabled,
                minimum: flavor.minimum_pressure,
                queued: open.queued,
                running: open.running,
                oldest_queued: open
                    .oldest_queued
                    .map(|oldest| age((now - oldest).num_seconds())),
                name: flavor.name,
                platform: flavor.platform,
            }
        })
        .collect();
    // What is left: jobs no flavor matches, and jobs of flavors deleted since.
    let unmatched = by_flavor.values().map(|open| open.queued).sum();
    let managers = managers::reports(&console)
        .await
        .into_iter()
        .map(|report| {
            let states: Vec<(String, usize)> = report.by_state();
            ManagerSummary {
                total: states.iter().map(|(_, n)| n).sum(),
                error: report.runners.as_ref().err().map(ToString::to_string),
                url: report.url,
                states,
            }
        })
        .collect();
    html(&OverviewPage {
        nav: viewer.nav("overview"),
        flavors: rows,
        unmatched,
        managers,
    })
}

/// The pressure of every flavor as Server-Sent Events, for the overview's `EventSource`: the
/// API's stream, authenticated by the session cookie (an `EventSource` cannot send a bearer
/// token). Without a valid session a 401, not the login page: an `EventSource` given an error
/// status stops, where it would reconnect forever to a redirect's HTML.
#[get("/stream")]
pub async fn stream_route(
    viewer: Option<Viewer>,
    req: HttpRequest,
    pressure: web::Data<PressureService>,
) -> Result<HttpResponse, ConsoleError> {
    if viewer.is_none() {
        return Ok(HttpResponse::Unauthorized().finish());
    }
    let subscription = pressure
        .broadcaster
        .send(actors::broadcast::Subscribe)
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or(crate::error::ApiError::ShuttingDown)?;
    Ok(actors::stream::respond(
        &req,
        subscription,
        actors::pressure::Filter::All,
        pressure.heartbeat,
    ))
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// The job list's filters, as the form sends them (empty: no filter).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct JobsForm {
    pub platform: String,
    pub status: String,
    pub flavor: String,
    pub repository: String,
    pub limit: String,
    pub cursor: String,
}

/// An `<option>`.
pub struct Choice {
    pub value: &'static str,
    pub selected: bool,
}

/// A job in a list.
pub struct JobRow {
    pub href: String,
    pub id: String,
    pub name: String,
    pub repository: String,
    pub status: String,
    pub labels: String,
    pub flavor: String,
    pub created: String,
}

#[derive(Template)]
#[template(path = "console/jobs.html")]
struct JobsPage {
    nav: Nav,
    form: JobsForm,
    statuses: Vec<Choice>,
    jobs: Vec<JobRow>,
    next: Option<String>,
    error: Option<String>,
}

fn some(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

fn encode(value: &str) -> String {
    utf8_percent_encode(value, NON_ALPHANUMERIC).to_string()
}

impl JobsForm {
    /// This form's query string with another cursor.
    fn with_cursor(&self, cursor: &str) -> String {
        let pairs = [
            ("platform", &self.platform),
            ("status", &self.status),
            ("flavor", &self.flavor),
            ("repository", &self.repository),
            ("limit", &self.limit),
        ];
        let mut query: Vec<String> = pairs
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(key, value)| format!("{key}={}", encode(value)))
            .collect();
        query.push(format!("cursor={}", encode(cursor)));
        format!("/console/jobs?{}", query.join("&"))
    }
}

fn job_href(platform: &str, id: impl std::fmt::Display) -> String {
    format!("/console/jobs/{}/{id}", encode(platform))
}

/// The API's job list with its filters and paging; a filter the API would refuse is a 400
/// naming it, above the form.
#[get("/jobs")]
pub async fn jobs_page(
    viewer: Viewer,
    state: web::Data<AppState>,
    form: web::Query<JobsForm>,
) -> Result<HttpResponse, ConsoleError> {
    let mut form = form.into_inner();
    if form.platform.trim().is_empty() {
        form.platform = GITHUB.to_owned();
    }
    let query = JobQuery {
        status: some(&form.status),
        flavor: some(&form.flavor),
        repository: some(&form.repository),
        limit: some(&form.limit),
        cursor: some(&form.cursor),
        // The list shows no payloads.
        raw: Some("false".to_owned()),
    };
    let page = crate::routes::jobs::page(&state, form.platform.trim().to_owned(), query).await;
    let statuses = ["", "queued", "waiting", "in_progress", "completed"]
        .into_iter()
        .map(|value| Choice {
            value,
            selected: form.status == value,
        })
        .collect();
    let (status, jobs, next, error) = match page {
        Ok(page) => (
            StatusCode::OK,
            page.jobs
                .into_iter()
                .map(|body| job_row(body.job))
                .collect(),
            page.next_cursor.map(|cursor| form.with_cursor(&cursor)),
            None,
        ),
        Err(err) if err.status_code().is_client_error() => {
            (err.status_code(), Vec::new(), None, Some(err.to_string()))
        }
        Err(err) => return Err(err.into()),
    };
    html_with(
        status,
        &JobsPage {
            nav: viewer.nav("jobs"),
            form,
            statuses,
            jobs,
            next,
            error,
        },
    )
}

fn job_row(job: Job) -> JobRow {
    let state = job.state;
    JobRow {
        href: job_href(&state.platform, state.id),
        id: state.id.to_string(),
        name: state.job_name.unwrap_or_default(),
        repository: state.repository,
        status: state.status.as_str().to_owned(),
        labels: state.labels.join(", "),
        flavor: job.assigned_flavor.unwrap_or_default(),
        created: when(&state.created_at),
    }
}

/// A step of a job's life.
pub struct Step {
    pub what: &'static str,
    pub at: Option<String>,
}

/// A delivery in a list.
pub struct DeliveryRow {
    pub id: String,
    pub job: String,
    pub job_href: String,
    pub action: String,
    pub first_seen: String,
    pub last_seen: String,
    pub duplicates: i32,
}

impl From<console_queries::Delivery> for DeliveryRow {
    fn from(delivery: console_queries::Delivery) -> Self {
        Self {
            job: format!("{}/{}", delivery.job_platform, delivery.job_id),
            job_href: job_href(&delivery.job_platform, delivery.job_id),
            id: delivery.id,
            action: delivery.action,
            first_seen: when(&delivery.first_seen_at),
            last_seen: when(&delivery.last_seen_at),
            duplicates: delivery.duplicates,
        }
    }
}

/// How every flavor fares for some labels, as the match page and a job's page show it.
pub struct MatchView {
    pub flavor: Option<String>,
    pub labels: String,
    pub matching_labels: String,
    pub rows: Vec<VerdictRow>,
}

/// One flavor's verdict.
pub struct VerdictRow {
    pub name: String,
    pub priority: i32,
    pub enabled: bool,
    pub missing: String,
    pub eligible: bool,
    pub chosen: bool,
}

impl From<MatchResult> for MatchView {
    fn from(result: MatchResult) -> Self {
        let rows = result
            .flavors
            .into_iter()
            .map(|verdict| VerdictRow {
                chosen: result.flavor.as_deref() == Some(verdict.name.as_str()),
                name: verdict.name,
                priority: verdict.priority,
                enabled: !verdict.is_disabled,
                missing: verdict.missing_labels.join(", "),
                eligible: verdict.eligible,
            })
            .collect();
        Self {
            flavor: result.flavor,
            labels: result.labels.join(", "),
            matching_labels: result.matching_labels.join(", "),
            rows,
        }
    }
}

#[derive(Template)]
#[template(path = "console/job.html")]
struct JobPage {
    nav: Nav,
    job: JobRow,
    conclusion: String,
    runner: String,
    workflow: String,
    steps: Vec<Step>,
    deliveries: Vec<DeliveryRow>,
    verdict: MatchView,
}

/// One job: its timeline (the times the planner keeps, and each delivery as it arrived), the
/// flavor it was given, and which flavor its labels would get now and why.
#[get("/jobs/{platform}/{id}")]
pub async fn job_page(
    viewer: Viewer,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ConsoleError> {
    let (platform, id) = job_path(path)?;
    let lookup = platform.clone();
    let found = state
        .db(move |conn| {
            let Some(job) = queries::get_job(conn, &lookup, id)? else {
                return Ok(None);
            };
            let deliveries = console_queries::job_deliveries(conn, &lookup, id)?;
            Ok(Some((job, deliveries)))
        })
        .await?;
    let (job, deliveries) =
        found.ok_or_else(|| ConsoleError::NotFound(format!("job {platform}/{id}")))?;
    let verdict = verdict(
        &state,
        job.state.platform.clone(),
        &job.state.labels.join(","),
    )
    .await?;
    let waiting = deliveries
        .iter()
        .find(|delivery| delivery.action == "waiting")
        .map(|delivery| when(&delivery.first_seen_at));
    let steps = vec![
        Step {
            what: "queued",
            at: Some(when(&job.state.created_at)),
        },
        Step {
            what: "waiting (first heard of)",
            at: waiting,
        },
        Step {
            what: "in progress",
            at: job.state.started_at.as_ref().map(when),
        },
        Step {
            what: "completed",
            at: job.state.completed_at.as_ref().map(when),
        },
    ];
    let page = JobPage {
        nav: viewer.nav("jobs"),
        conclusion: job.state.conclusion.clone().unwrap_or_default(),
        runner: job.state.runner_name.clone().unwrap_or_default(),
        workflow: job.state.workflow_name.clone().unwrap_or_default(),
        steps,
        deliveries: deliveries.into_iter().map(DeliveryRow::from).collect(),
        verdict: verdict.into(),
        job: job_row(job),
    };
    html(&page)
}

// ---------------------------------------------------------------------------------------------
// Match

/// The match form.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct MatchForm {
    pub labels: Option<String>,
    pub platform: String,
}

#[derive(Template)]
#[template(path = "console/match.html")]
struct MatchPage {
    nav: Nav,
    labels: String,
    platform: String,
    verdict: Option<MatchView>,
    error: Option<String>,
}

/// `runs-on` labels in, the flavor they would get and why the others would not out.
#[get("/match")]
pub async fn matching_page(
    viewer: Viewer,
    state: web::Data<AppState>,
    form: web::Query<MatchForm>,
) -> Result<HttpResponse, ConsoleError> {
    let form = form.into_inner();
    let platform = some(&form.platform).unwrap_or_else(|| GITHUB.to_owned());
    let (status, verdict, error) = match &form.labels {
        None => (StatusCode::OK, None, None),
        Some(labels) => match verdict(&state, platform.clone(), labels).await {
            Ok(result) => (StatusCode::OK, Some(result.into()), None),
            Err(err) if err.status_code().is_client_error() => {
                (err.status_code(), None, Some(err.to_string()))
            }
            Err(err) => return Err(err.into()),
        },
    };
    html_with(
        status,
        &MatchPage {
            nav: viewer.nav("match"),
            labels: form.labels.unwrap_or_default(),
            platform,
            verdict,
            error,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Deliveries

/// Deliveries shown on the page.
const RECENT_DELIVERIES: i64 = 50;

#[derive(Template)]
#[template(path = "console/deliveries.html")]
struct DeliveriesPage {
    nav: Nav,
    totals: console_queries::DeliveryTotals,
    applied: u64,
    duplicates: u64,
    discarded: u64,
    dead_lettered: Vec<(&'static str, u64)>,
    dead_letter_queue: i64,
    recent: Vec<DeliveryRow>,
}

/// What the planner knows of deliveries: those it recorded (with the duplicates counted), what
/// this process did with each since it started, and the messages waiting in the dead-letter
/// queue at the last poll of its depth.
#[get("/deliveries")]
pub async fn deliveries_page(
    viewer: Viewer,
    state: web::Data<AppState>,
    console: web::Data<Console>,
) -> Result<HttpResponse, ConsoleError> {
    let (totals, recent) = state
        .db(|conn| {
            Ok((
                console_queries::delivery_totals(conn)?,
                console_queries::recent_deliveries(conn, RECENT_DELIVERIES)?,
            ))
        })
        .await?;
    let metrics = &console.metrics;
    html(&DeliveriesPage {
        nav: viewer.nav("deliveries"),
        totals,
        applied: metrics.applied(),
        duplicates: metrics.duplicates.get(),
        discarded: crate::metrics::total(&metrics.discarded),
        dead_lettered: DEAD_LETTER_REASONS
            .iter()
            .map(|reason| {
                (
                    *reason,
                    console
                        .metrics
                        .dead_lettered
                        .with_label_values(&[reason])
                        .get(),
                )
            })
            .collect(),
        dead_letter_queue: console
            .metrics
            .queue_messages
            .with_label_values(&["dead_letter"])
            .get(),
        recent: recent.into_iter().map(DeliveryRow::from).collect(),
    })
}

// ---------------------------------------------------------------------------------------------
// Runners

/// One runner in the list.
pub struct RunnerRow {
    pub name: String,
    pub flavor: String,
    pub state: String,
    pub created: String,
    pub online: String,
    pub backend_id: String,
}

/// One manager's runners.
pub struct ManagerRunners {
    pub url: String,
    pub error: Option<String>,
    pub runners: Vec<RunnerRow>,
}

#[derive(Template)]
#[template(path = "console/runners.html")]
struct RunnersPage {
    nav: Nav,
    configured: bool,
    managers: Vec<ManagerRunners>,
}

/// Every runner of every configured manager.
#[get("/runners")]
pub async fn runners_page(
    viewer: Viewer,
    console: web::Data<Console>,
) -> Result<HttpResponse, ConsoleError> {
    let managers = managers::reports(&console)
        .await
        .into_iter()
        .map(|report| {
            let (runners, error) = match report.runners {
                Ok(runners) => (runners, None),
                Err(err) => (Vec::new(), Some(err.to_string())),
            };
            ManagerRunners {
                url: report.url,
                error,
                runners: runners
                    .into_iter()
                    .map(|runner| RunnerRow {
                        created: when(&runner.created_at),
                        online: runner.online_at.as_ref().map(when).unwrap_or_default(),
                        backend_id: runner.backend_id.unwrap_or_default(),
                        name: runner.name,
                        flavor: runner.flavor,
                        state: runner.state,
                    })
                    .collect(),
            }
        })
        .collect();
    html(&RunnersPage {
        nav: viewer.nav("runners"),
        configured: !console.config.managers.is_empty(),
        managers,
    })
}
