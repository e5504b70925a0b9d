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
//!
//! Here are the selection and the loop; the settings are [`crate::config::RedeliveryConfig`],
//! the counters [`crate::metrics::RedeliveryMetrics`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use actors::github::GitHubError;
use actors::task::{spawn_every, ShutdownSignal};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::config::RedeliveryConfig;
use crate::metrics::RedeliveryMetrics;

/// GitHub keeps deliveries, and redelivers them, for 3 days.
pub const REDELIVERY_WINDOW: Duration = Duration::from_secs(3 * 24 * 3600);
/// Most GUIDs remembered as asked for.
pub const MAX_REMEMBERED: usize = 100_000;
/// Most pages read in one round (10 000 deliveries).
pub const MAX_PAGES: usize = 100;
/// Overlap with the previous round, for clocks that disagree.
const SKEW_MARGIN: Duration = Duration::from_secs(5 * 60);

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

/// Runs a [`Redeliverer`] round at start and then every `interval`, one at a time, as a task
/// until `shutdown`.
pub fn spawn(redeliverer: Redeliverer, interval: Duration, shutdown: ShutdownSignal) {
    log::info!(
        event = "redelivery_started",
        hook = redeliverer.hook_path,
        interval_ms = interval.as_millis();
        "redelivery of failed deliveries started"
    );
    spawn_every(
        "redelivery",
        interval,
        shutdown,
        redeliverer,
        |redeliverer| {
            Box::pin(async move {
                redeliverer.round().await;
            })
        },
    );
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
}
