//! Following the planner: its pressure stream, and a flavor's labels, both through one
//! [`Planner`] client (one connection pool and one certificate store for the process).
//!
//! [`follow`] reads `GET /api/v1/flavors/_/pressure?stream=true` (NDJSON, one
//! `{"flavor": pressure, ...}` object per line: at once, on every change, and at every
//! heartbeat) and tells each flavor's reconciler its pressure whenever it changes. The stream
//! sends the whole current state first, so a reconnect needs nothing replayed. When the stream
//! breaks it reconnects with capped, jittered exponential backoff ([`actors::reconnect`]); the
//! reconcilers keep the last pressure they were told for the grace period, then are told
//! `None` and fall back to their `min_runners`.
//!
//! A loop that takes no messages is a plain task here, not an actor: [`spawn`] runs it
//! supervised ([`actors::task::spawn_supervised`]), started again whenever it ends or panics.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::Recipient;
use actors::pressure::PressureMap;
use actors::reconnect::Backoff;
use futures::StreamExt;
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};

use crate::messages::PressureChanged;
use crate::metrics::Metrics;
use crate::status::Readiness;

/// Longest wait for a connection to the planner.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence on the stream before it counts as broken (the planner sends a line at least
/// every heartbeat, 30 s by default).
pub const STREAM_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept to the planner: every flavor's first creates ask for its labels at
/// once (hundreds of connections at 100 flavors), and none of them is needed after.
const IDLE_CONNECTIONS: usize = 4;
/// Longest wait for a flavor's labels.
const LABELS_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest line accepted.
const MAX_LINE: usize = 1024 * 1024;

/// The planner's API as the manager calls it: its base URL, a general planner token, and the
/// process's one HTTP client for it. Cheap to clone (the client is shared, not copied): building
/// a client loads the system's certificate store, so one per call would cost a store each.
#[derive(Clone)]
pub struct Planner {
    http: reqwest::Client,
    url: Url,
    token: SecretString,
}

impl Planner {
    /// The client of the planner at `url`, calling it with `token`.
    pub fn new(url: Url, token: SecretString) -> Result<Self, PlannerError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(IDLE_CONNECTIONS)
            .build()
            .map_err(PlannerError::Client)?;
        Ok(Self { http, url, token })
    }

    /// The labels of a planner flavor (`GET /api/v1/flavors/{name}`).
    pub async fn flavor_labels(&self, flavor: &str) -> Result<Vec<String>, PlannerError> {
        #[derive(serde::Deserialize)]
        struct Flavor {
            labels: Vec<String>,
        }
        let mut url = self.url.clone();
        url.path_segments_mut()
            .map_err(|_| PlannerError::NotABase)?
            .pop_if_empty()
            .extend(["api", "v1", "flavors", flavor]);
        let response = self
            .http
            .get(url)
            .bearer_auth(self.token.expose_secret())
            .timeout(LABELS_TIMEOUT)
            .send()
            .await
            .map_err(PlannerError::Connect)?;
        if !response.status().is_success() {
            return Err(PlannerError::Status(response.status().as_u16()));
        }
        let flavor: Flavor = response.json().await.map_err(PlannerError::Flavor)?;
        Ok(flavor.labels)
    }
}

/// How long the follower waits before it is started again after ending or panicking.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Where and how to follow.
#[derive(Clone)]
pub struct Follow {
    /// The planner.
    pub planner: Planner,
    /// Each flavor's reconciler.
    pub reconcilers: HashMap<String, Recipient<PressureChanged>>,
    /// How long the last known pressure holds after the stream breaks.
    pub grace: Duration,
    /// Reconnect delays.
    pub reconnect: Backoff,
    /// `/ready`'s state.
    pub readiness: std::sync::Arc<Readiness>,
    /// The metrics.
    pub metrics: Metrics,
}

/// What the follower keeps across its restarts: since when the pressure has been unknown (none
/// while the stream is connected), and whether the reconcilers have been told so. A follower
/// that keeps ending still falls back to `min_runners` after the grace.
#[derive(Clone)]
struct Lost {
    since: Rc<Cell<Option<Instant>>>,
    announced: Rc<Cell<bool>>,
}

impl Lost {
    /// Marks the stream lost (not ready, not connected); `true` when it was connected until
    /// now, and the grace starts.
    fn begin(&self, readiness: &Readiness, metrics: &Metrics) -> bool {
        readiness.set_planner(false);
        metrics.planner_connected.set(0);
        if self.since.get().is_some() {
            return false;
        }
        self.since.set(Some(Instant::now()));
        self.announced.set(false);
        true
    }
}

/// Follows the pressure stream until `shutdown`, supervised: a follower that ends or panics is
/// logged (`task_restarted`), counted (`github_runner_manager_pressure_follower_restarts_total`)
/// and started again after [`RESTART_DELAY`]; meanwhile the stream counts as lost (`/ready`
/// names the planner) and the grace period runs on.
pub fn spawn(follow: Follow, shutdown: actors::task::ShutdownSignal) {
    let lost = Lost {
        since: Rc::new(Cell::new(Some(Instant::now()))),
        announced: Rc::new(Cell::new(false)),
    };
    let (readiness, metrics) = (follow.readiness.clone(), follow.metrics.clone());
    let restarted = lost.clone();
    actors::task::spawn_supervised(
        "pressure_follower",
        shutdown,
        RESTART_DELAY,
        move || run(follow.clone(), lost.clone()),
        move || {
            metrics.follower_restarts.inc();
            restarted.begin(&readiness, &metrics);
        },
    );
}

/// Follows the pressure stream, reconnecting, until the task is stopped.
async fn run(follow: Follow, lost: Lost) {
    let mut url = follow.planner.url.clone();
    url.set_path("/api/v1/flavors/_/pressure");
    url.set_query(Some("stream=true"));
    let mut last: HashMap<String, Option<u64>> = HashMap::new();
    let mut delays = follow.reconnect.delays();
    loop {
        match read_stream(&url, &follow, &mut last, &lost).await {
            Ok(()) => {
                log::warn!(event = "pressure_stream_ended"; "the planner ended the pressure stream")
            }
            Err(reason) => log::warn!(
                event = "pressure_stream_failed",
                error:% = reason;
                "lost the planner's pressure stream"
            ),
        }
        if lost.begin(&follow.readiness, &follow.metrics) {
            delays.reset();
        }
        let delay = delays.next_delay();
        let lost_for = lost.since.get().map_or(Duration::ZERO, |at| at.elapsed());
        let to_grace = follow.grace.saturating_sub(lost_for);
        if !lost.announced.get() && to_grace <= delay {
            tokio::time::sleep(to_grace).await;
            log::warn!(
                event = "pressure_unknown",
                grace_ms = follow.grace.as_millis(),
                fallback = "min_runners";
                "pressure unknown for too long: keeping each flavor's minimum"
            );
            for (flavor, reconciler) in &follow.reconcilers {
                last.insert(flavor.clone(), None);
                reconciler.do_send(PressureChanged(None));
            }
            lost.announced.set(true);
            tokio::time::sleep(delay - to_grace).await;
        } else {
            tokio::time::sleep(delay).await;
        }
    }
}

/// Why a call to the planner failed: its pressure stream, or a flavor's labels.
#[derive(Debug, thiserror::Error)]
pub enum PlannerError {
    /// No answer (connection refused, timeout, TLS).
    #[error("planner: {0}")]
    Connect(reqwest::Error),
    /// An answer other than 2xx.
    #[error("planner answered {0}")]
    Status(u16),
    /// The stream sent nothing, not even a heartbeat, for this long.
    #[error("silent for {0:?}")]
    Silent(Duration),
    /// The answer broke off.
    #[error("read: {0}")]
    Read(reqwest::Error),
    /// A stream line that is not a pressure map.
    #[error("not a pressure line: {0}")]
    Line(serde_json::Error),
    /// A stream line longer than any pressure map.
    #[error("line too long")]
    LineTooLong,
    /// A flavor answer that is not a flavor.
    #[error("planner flavor: {0}")]
    Flavor(reqwest::Error),
    /// The HTTP client could not be built (no TLS backend).
    #[error("planner client: {0}")]
    Client(reqwest::Error),
    /// `APP_PLANNER_URL` cannot take a path (a URL such as `mailto:`).
    #[error("planner URL cannot have a path")]
    NotABase,
}

/// One connection: reads lines until the stream ends or fails.
async fn read_stream(
    url: &Url,
    follow: &Follow,
    last: &mut HashMap<String, Option<u64>>,
    lost: &Lost,
) -> Result<(), PlannerError> {
    let response = follow
        .planner
        .http
        .get(url.clone())
        .bearer_auth(follow.planner.token.expose_secret())
        .header("Accept", actors::stream::NDJSON)
        .send()
        .await
        .map_err(PlannerError::Connect)?;
    if !response.status().is_success() {
        return Err(PlannerError::Status(response.status().as_u16()));
    }
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(STREAM_IDLE, body.next()).await {
            Err(_) => return Err(PlannerError::Silent(STREAM_IDLE)),
            Ok(None) => return Ok(()),
            Ok(Some(Err(err))) => return Err(PlannerError::Read(err)),
            Ok(Some(Ok(chunk))) => chunk,
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let map: PressureMap =
                serde_json::from_slice(&line[..end]).map_err(PlannerError::Line)?;
            if lost.since.take().is_some() {
                log::info!(
                    event = "pressure_stream_connected",
                    flavors = map.len();
                    "following the planner's pressure stream"
                );
                follow.readiness.set_planner(true);
                follow.metrics.planner_connected.set(1);
            }
            for (flavor, reconciler) in &follow.reconcilers {
                // A flavor the planner does not list needs no runners beyond its floor.
                let pressure = Some(map.get(flavor).copied().unwrap_or(0));
                if last.get(flavor) != Some(&pressure) {
                    last.insert(flavor.clone(), pressure);
                    reconciler.do_send(PressureChanged(pressure));
                }
            }
        }
        if buffer.len() > MAX_LINE {
            return Err(PlannerError::LineTooLong);
        }
    }
}
