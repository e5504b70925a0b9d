//! Redelivery of failed webhook deliveries: GitHub does not retry a delivery that failed (the
//! gateway was down, or answered 503), so the gateway asks it to.
//!
//! Every `APP_REDELIVERY_INTERVAL` (default 600 s; the first round at start-up) a round pages
//! through the hook's recent deliveries, newest first (`GET {hook}/deliveries?per_page=100`,
//! cursor pagination through the `Link` header), down to GitHub's redelivery window (3 days) or
//! the start of the last complete round (less a margin for clock skew), whichever is later. A
//! delivery is asked for again (`POST {hook}/deliveries/{id}/attempts`) when it is a
//! `workflow_job` event, its status code is not 2xx, no later delivery of the same GUID
//! succeeded, and its GUID has not been asked for already. The GUIDs asked for are remembered
//! for the window, at most [`MAX_REMEMBERED`] of them (oldest forgotten first).
//!
//! A rate limit ends the round (the client then refuses to send until it lifts); a round that
//! did not finish does not move the scan mark, so the next one covers its ground again.
//! `{hook}` is `/orgs/{org}/hooks/{id}` for `APP_GITHUB_PATH=org`, or
//! `/repos/{owner}/{repo}/hooks/{id}` for `APP_GITHUB_PATH=owner/repo`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use actix::{Actor, AsyncContext, Context, WrapFuture};
use actors::config::{self, ConfigError, Source};
use actors::github::GitHubError;
use chrono::{DateTime, Utc};
use prometheus::{IntCounter, Registry};
use serde::Deserialize;

/// GitHub keeps deliveries, and redelivers them, for 3 days.
pub const REDELIVERY_WINDOW: Duration = Duration::from_secs(3 * 24 * 3600);
/// Default of `APP_REDELIVERY_INTERVAL`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);
/// Most GUIDs remembered as asked for.
pub const MAX_REMEMBERED: usize = 100_000;
/// Most pages read in one round (10 000 deliveries).
pub const MAX_PAGES: usize = 100;
/// Overlap with the previous round, for clocks that disagree.
const SKEW_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Where the webhook lives: `APP_GITHUB_PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOwner {
    /// An organization's hook.
    Org(String),
    /// A repository's hook (`owner/repo`).
    Repo(String, String),
}

/// Settings of redelivery.
#[derive(Debug, Clone)]
pub struct RedeliveryConfig {
    /// `APP_GITHUB_PATH`: `org` or `owner/repo`.
    pub owner: HookOwner,
    /// `APP_WEBHOOK_ID`: the hook's id.
    pub hook_id: u64,
    /// `APP_REDELIVERY_INTERVAL` (default 600 s): time between rounds.
    pub interval: Duration,
    /// The GitHub App (`APP_GITHUB_APP_*`, `APP_GITHUB_API_URL`).
    pub app: actors::github::AppConfig,
}

fn name_part(value: &str) -> bool {
    !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Parses `APP_GITHUB_PATH`.
pub fn parse_owner(value: &str) -> Result<HookOwner, String> {
    let invalid = || "must be an organization (org) or a repository (owner/repo)".to_owned();
    match value.split_once('/') {
        None if name_part(value) => Ok(HookOwner::Org(value.to_owned())),
        Some((owner, repo)) if name_part(owner) && name_part(repo) => {
            Ok(HookOwner::Repo(owner.to_owned(), repo.to_owned()))
        }
        _ => Err(invalid()),
    }
}

impl RedeliveryConfig {
    /// Reads the redelivery variables: `Ok(None)` when neither the hook (`APP_GITHUB_PATH`,
    /// `APP_WEBHOOK_ID`) nor a GitHub App is configured; otherwise all of them are required.
    pub fn from_source(source: &dyn Source) -> Result<Option<Self>, ConfigError> {
        let app = actors::github::AppConfig::from_source(source)?;
        let hook_set = ["APP_GITHUB_PATH", "APP_WEBHOOK_ID"]
            .iter()
            .any(|name| source.get(name).is_some());
        if app.is_none() && !hook_set {
            return Ok(None);
        }
        let owner = config::required(source, "APP_GITHUB_PATH").and_then(|value| {
            parse_owner(value.trim()).map_err(|reason| ConfigError::new("APP_GITHUB_PATH", reason))
        })?;
        let hook_id = config::required(source, "APP_WEBHOOK_ID").and_then(|value| {
            config::positive_integer::<u64>(value.trim())
                .map_err(|reason| ConfigError::new("APP_WEBHOOK_ID", reason))
        })?;
        let interval = config::parsed(
            source,
            "APP_REDELIVERY_INTERVAL",
            DEFAULT_INTERVAL,
            config::duration,
        )?;
        let app = app.ok_or_else(|| {
            ConfigError::new(
                "APP_GITHUB_APP_ID",
                "is required for redelivery (APP_GITHUB_PATH/APP_WEBHOOK_ID are set)",
            )
        })?;
        Ok(Some(Self {
            owner,
            hook_id,
            interval,
            app,
        }))
    }

    /// `/orgs/{org}/hooks/{id}` or `/repos/{owner}/{repo}/hooks/{id}`.
    pub fn hook_path(&self) -> String {
        match &self.owner {
            HookOwner::Org(org) => format!("/orgs/{org}/hooks/{}", self.hook_id),
            HookOwner::Repo(owner, repo) => {
                format!("/repos/{owner}/{repo}/hooks/{}", self.hook_id)
            }
        }
    }
}

/// Redelivery counters, registered in the gateway's registry.
#[derive(Clone)]
pub struct RedeliveryMetrics {
    /// `github_runner_webhook_gateway_redeliveries_total`: redeliveries GitHub accepted.
    pub asked: IntCounter,
    /// `github_runner_webhook_gateway_redelivery_failures_total`: failed requests of a round
    /// (listing deliveries or asking for one, rate limits included).
    pub failures: IntCounter,
}

impl RedeliveryMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let asked = IntCounter::new(
            "github_runner_webhook_gateway_redeliveries_total",
            "Failed workflow_job deliveries GitHub was asked to redeliver (and accepted).",
        )?;
        let failures = IntCounter::new(
            "github_runner_webhook_gateway_redelivery_failures_total",
            "Failed requests to GitHub while looking for or redelivering failed deliveries.",
        )?;
        registry.register(Box::new(asked.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        Ok(Self { asked, failures })
    }
}

/// One entry of `GET .../deliveries` (the fields used).
#[derive(Debug, Clone, Deserialize)]
pub struct Delivery {
    /// The delivery's id (one per attempt).
    pub id: u64,
    /// The `X-GitHub-Delivery` GUID, shared by an event's attempts.
    pub guid: String,
    /// When GitHub sent it.
    pub delivered_at: DateTime<Utc>,
    /// The status code the gateway answered (0 or absent: no answer).
    #[serde(default)]
    pub status_code: Option<u16>,
    /// The event (`workflow_job`, `ping`, ...).
    pub event: String,
}

impl Delivery {
    fn succeeded(&self) -> bool {
        self.status_code
            .is_some_and(|code| (200..300).contains(&code))
    }
}

/// The GUIDs already asked for: bounded in count and forgotten after the window.
#[derive(Debug, Default)]
pub struct Remembered {
    at: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
    capacity: usize,
}

impl Remembered {
    /// Remembers at most `capacity` GUIDs.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// Whether `guid` was asked for within the window.
    pub fn contains(&mut self, guid: &str, now: Instant) -> bool {
        self.expire(now);
        self.at.contains_key(guid)
    }

    /// Remembers `guid` as asked for at `now`.
    pub fn insert(&mut self, guid: String, now: Instant) {
        self.expire(now);
        if self.at.insert(guid.clone(), now).is_none() {
            self.order.push_back((now, guid));
        }
        while self.at.len() > self.capacity {
            match self.order.pop_front() {
                Some((_, oldest)) => {
                    self.at.remove(&oldest);
                }
                None => break,
            }
        }
    }

    /// How many GUIDs are remembered.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < REDELIVERY_WINDOW {
                break;
            }
            let (_, guid) = self.order.pop_front().expect("front exists");
            self.at.remove(&guid);
        }
    }
}

/// Picks, from one page (newest first), the deliveries to ask for again. `succeeded` collects
/// the GUIDs seen succeeding so far this round (they are newer than what follows).
pub fn select_failed<'a>(
    page: &'a [Delivery],
    cutoff: DateTime<Utc>,
    succeeded: &mut HashSet<String>,
    remembered: &mut Remembered,
    now: Instant,
) -> (Vec<&'a Delivery>, bool) {
    let mut picked = Vec::new();
    let mut reached_cutoff = false;
    for delivery in page {
        if delivery.delivered_at < cutoff {
            reached_cutoff = true;
            break;
        }
        if delivery.succeeded() {
            succeeded.insert(delivery.guid.clone());
        } else if delivery.event == "workflow_job"
            && !succeeded.contains(&delivery.guid)
            && !remembered.contains(&delivery.guid, now)
            && !picked.iter().any(|p: &&Delivery| p.guid == delivery.guid)
        {
            picked.push(delivery);
        }
    }
    (picked, reached_cutoff)
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Pages read.
    pub pages: usize,
    /// Redeliveries GitHub accepted.
    pub asked: usize,
    /// Failed requests.
    pub failures: usize,
    /// Whether the round covered everything down to its cutoff.
    pub complete: bool,
}

/// Asks GitHub to redeliver failed deliveries.
pub struct Redeliverer {
    client: actors::github::Client,
    hook_path: String,
    remembered: Remembered,
    /// Start of the last complete round.
    scanned_since: Option<DateTime<Utc>>,
    metrics: RedeliveryMetrics,
}

impl Redeliverer {
    /// A redeliverer for `config`'s hook.
    pub fn new(config: &RedeliveryConfig, metrics: RedeliveryMetrics) -> Result<Self, GitHubError> {
        Ok(Self {
            client: actors::github::Client::new(
                config.app.clone(),
                "github-runner-webhook-gateway",
            )?,
            hook_path: config.hook_path(),
            remembered: Remembered::with_capacity(MAX_REMEMBERED),
            scanned_since: None,
            metrics,
        })
    }

    fn failed(&self, report: &mut RoundReport, what: &str, err: &GitHubError) {
        report.failures += 1;
        self.metrics.failures.inc();
        log::warn!(
            event = "redelivery_request_failed",
            request = what,
            hook = self.hook_path,
            error:% = err;
            "redelivery request to GitHub failed"
        );
    }

    /// One round.
    pub async fn round(&mut self) -> RoundReport {
        let started = Utc::now();
        let window_start =
            started - chrono::Duration::from_std(REDELIVERY_WINDOW).expect("window fits chrono");
        let cutoff = match self.scanned_since {
            Some(since) => {
                (since - chrono::Duration::from_std(SKEW_MARGIN).expect("margin")).max(window_start)
            }
            None => window_start,
        };
        let mut report = RoundReport::default();
        let mut succeeded = HashSet::new();
        let mut next = Some(format!("{}/deliveries?per_page=100", self.hook_path));
        let mut all_asked = true;
        while let Some(url) = next.take() {
            if report.pages >= MAX_PAGES {
                // Unfinished: the mark stays, the next round covers this ground again.
                next = Some(url);
                break;
            }
            let answer = match self.client.get(&url).await {
                Ok(answer) => answer,
                Err(err) => {
                    self.failed(&mut report, "list_deliveries", &err);
                    return report;
                }
            };
            report.pages += 1;
            let page: Vec<Delivery> = match answer.json() {
                Ok(page) => page,
                Err(err) => {
                    self.failed(&mut report, "list_deliveries", &err);
                    return report;
                }
            };
            let now = Instant::now();
            let (picked, reached_cutoff) =
                select_failed(&page, cutoff, &mut succeeded, &mut self.remembered, now);
            for delivery in picked {
                let path = format!("{}/deliveries/{}/attempts", self.hook_path, delivery.id);
                match self.client.post(&path).await {
                    Ok(_) => {
                        self.remembered
                            .insert(delivery.guid.clone(), Instant::now());
                        self.metrics.asked.inc();
                        report.asked += 1;
                        log::info!(
                            event = "redelivery_asked",
                            "delivery.id" = delivery.guid,
                            "hook_delivery.id" = delivery.id,
                            status = delivery.status_code.unwrap_or(0);
                            "asked GitHub to redeliver a failed delivery"
                        );
                    }
                    Err(err) => {
                        self.failed(&mut report, "redeliver", &err);
                        if matches!(err, GitHubError::RateLimited(_) | GitHubError::Forbidden(_)) {
                            return report;
                        }
                        if err.is_transient() {
                            // Asked again next round: the mark must not move past it.
                            all_asked = false;
                        } else {
                            // GitHub refuses this one for good (gone, 422): do not insist.
                            self.remembered
                                .insert(delivery.guid.clone(), Instant::now());
                        }
                    }
                }
            }
            if reached_cutoff || page.is_empty() {
                break;
            }
            next = answer.next_page();
            if next.is_none() {
                break;
            }
        }
        report.complete = next.is_none() && all_asked;
        if report.complete {
            self.scanned_since = Some(started);
        }
        log::info!(
            event = "redelivery_round",
            hook = self.hook_path,
            pages = report.pages,
            asked = report.asked,
            failures = report.failures,
            complete = report.complete;
            "redelivery round done"
        );
        report
    }
}

/// The actor running a [`Redeliverer`] round at start and then every interval, one at a time.
pub struct RedeliveryActor {
    redeliverer: Option<Redeliverer>,
    interval: Duration,
}

impl RedeliveryActor {
    /// An actor for `redeliverer`.
    pub fn new(redeliverer: Redeliverer, interval: Duration) -> Self {
        Self {
            redeliverer: Some(redeliverer),
            interval,
        }
    }
}

impl Actor for RedeliveryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(mut redeliverer) = self.redeliverer.take() else {
            return;
        };
        let interval = self.interval;
        log::info!(
            event = "redelivery_started",
            hook = redeliverer.hook_path,
            interval_ms = interval.as_millis();
            "redelivery of failed deliveries started"
        );
        ctx.spawn(
            async move {
                loop {
                    redeliverer.round().await;
                    tokio::time::sleep(interval).await;
                }
            }
            .into_actor(self),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: u64, guid: &str, minutes_ago: i64, code: u16, event: &str) -> Delivery {
        Delivery {
            id,
            guid: guid.into(),
            delivered_at: Utc::now() - chrono::Duration::minutes(minutes_ago),
            status_code: Some(code),
            event: event.into(),
        }
    }

    #[test]
    fn hook_paths_follow_the_owner() {
        assert_eq!(
            parse_owner("canonical"),
            Ok(HookOwner::Org("canonical".into()))
        );
        assert_eq!(
            parse_owner("canonical/repo.x"),
            Ok(HookOwner::Repo("canonical".into(), "repo.x".into()))
        );
        for bad in ["", "a/b/c", "a/", "../x", "a b"] {
            assert!(parse_owner(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_unanswered_failed_workflow_jobs_are_picked() {
        let page = vec![
            delivery(9, "g-retried", 1, 200, "workflow_job"),
            delivery(8, "g-push", 2, 500, "push"),
            delivery(7, "g-failed", 3, 503, "workflow_job"),
            delivery(6, "g-retried", 4, 502, "workflow_job"),
            delivery(5, "g-failed", 5, 503, "workflow_job"),
            delivery(4, "g-asked", 6, 0, "workflow_job"),
            delivery(3, "g-old", 60 * 24 * 4, 503, "workflow_job"),
            delivery(2, "g-older", 60 * 24 * 5, 503, "workflow_job"),
        ];
        let now = Instant::now();
        let mut remembered = Remembered::with_capacity(10);
        remembered.insert("g-asked".into(), now);
        let mut succeeded = HashSet::new();
        let cutoff = Utc::now() - chrono::Duration::days(3);
        let (picked, reached) = select_failed(&page, cutoff, &mut succeeded, &mut remembered, now);
        let ids: Vec<u64> = picked.iter().map(|d| d.id).collect();
        assert_eq!(ids, vec![7], "newest failed attempt of each GUID, once");
        assert!(reached, "the page reached the window's start");
    }

    #[test]
    fn remembered_guids_are_bounded_and_expire() {
        let now = Instant::now();
        let mut remembered = Remembered::with_capacity(2);
        remembered.insert("a".into(), now);
        remembered.insert("b".into(), now);
        remembered.insert("c".into(), now);
        assert_eq!(remembered.len(), 2);
        assert!(
            !remembered.contains("a", now),
            "the oldest is forgotten first"
        );
        assert!(remembered.contains("c", now));
        let later = now + REDELIVERY_WINDOW + Duration::from_secs(1);
        assert!(!remembered.contains("c", later));
        assert!(remembered.is_empty());
    }

    const KEY: &str = include_str!("../../tests/fixtures/github-app/test-only-private-key.pem");

    #[test]
    fn configuration_is_all_or_nothing() {
        assert!(RedeliveryConfig::from_source(&[("OTHER", "x")])
            .unwrap()
            .is_none());
        let full = [
            ("APP_GITHUB_APP_ID", "1"),
            ("APP_GITHUB_APP_INSTALLATION_ID", "2"),
            ("APP_GITHUB_APP_PRIVATE_KEY_VALUE", KEY),
            ("APP_GITHUB_PATH", "octo/repo"),
            ("APP_WEBHOOK_ID", "77"),
        ];
        let config = RedeliveryConfig::from_source(&full).unwrap().unwrap();
        assert_eq!(config.hook_path(), "/repos/octo/repo/hooks/77");
        assert_eq!(config.interval, DEFAULT_INTERVAL);
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[("APP_GITHUB_PATH", "octo")], "APP_WEBHOOK_ID"),
            (&[("APP_WEBHOOK_ID", "1")], "APP_GITHUB_PATH"),
            (
                &[("APP_GITHUB_PATH", "octo"), ("APP_WEBHOOK_ID", "1")],
                "APP_GITHUB_APP_ID",
            ),
            (&full[..3], "APP_GITHUB_PATH"),
        ];
        for (vars, variable) in cases {
            let err = RedeliveryConfig::from_source(&vars).expect_err("an error");
            assert_eq!(err.variable, variable, "{err}");
        }
    }
}
