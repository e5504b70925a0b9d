//! Scenario 7 of `make bench`: the runner manager (release build, exec backend) behind the
//! release gateway and planner, against the fake GitHub as a process on loopback, so the figures
//! are the manager's own:
//! - a queued webhook to the backend's create call: the gateway's 200 for a new job against the
//!   `created_at` the exec backend records when it has started the runner process, one job at
//!   a time (no queueing in the figures);
//! - one reconcile pass at 100 flavors and 1,000 runners: the wall time of every flavor's
//!   passes in the watched window, as the manager logs each (`event=reconcile_pass
//!   duration_us=`, the time `github_runner_manager_reconcile_duration_seconds` records):
//!   p50, p99 and max, and the same quantiles as bucket bounds of the histogram (all an older
//!   build that logs no pass gives); and the manager's CPU per round of all 100 flavors;
//! - the manager's resident memory idle and with 1,000 runners.
//!
//! The runners are `sleep` processes: they never register with the fake GitHub, so they stay
//! `booting` (the boot timeout is an hour) and nothing removes them during the scenario. They are
//! killed with their [`ManagerDir`] at the end.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::gateway::Signed;
use crate::measure::{latencies, ms, percentile, Row, Usage};
use crate::pressure::{job_body, stack, stop};
use tests::manager::{start_release_manager, Flavor, Manager, ManagerDir, ManagerSetup};
use tests::planner::ADMIN_TOKEN;
use tests::process::Service;

/// Webhooks of the create-latency run (one job each, one after the other).
const SAMPLES: usize = 200;
/// Flavors and runners per flavor of the reconcile run.
const FLAVORS: usize = 100;
const RUNNERS_PER_FLAVOR: u32 = 10;
/// How long the reconcile run is watched once every runner exists.
const WATCH: Duration = Duration::from_secs(10);
/// The longest any step may take before the bench gives up.
const LIMIT: Duration = Duration::from_secs(180);

/// A runner that only waits: it never registers, so it stays booting.
fn sleeper(flavor: &str, min: u32, max: u32) -> Flavor {
    Flavor {
        boot_timeout: "1h".to_owned(),
        max_lifetime: "5h".to_owned(),
        command: Some(vec!["sleep".to_owned(), "3600".to_owned()]),
        ..Flavor::new(flavor, min, max)
    }
}

/// The fake GitHub as a release process; its URL.
async fn fake_github() -> (Service, String) {
    let mut fake = Service::spawn_release("fake-github", &[], &[]);
    let url = fake
        .logged_value(
            "event=fake_github_listening",
            "url",
            Duration::from_secs(30),
        )
        .await;
    (fake, url)
}

/// A general planner token.
async fn planner_token(planner_url: &str) -> String {
    let token: Value = reqwest::Client::new()
        .post(format!(
            "{planner_url}/api/v1/auth/token/{}",
            tests::unique("bench-manager")
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    token["token"].as_str().unwrap().to_owned()
}

/// The records of the exec backend for `flavor`: their names and `created_at`s.
fn records(state_dir: &Path, flavor: &str) -> Vec<(String, SystemTime)> {
    std::fs::read_dir(state_dir.join(flavor))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "json"))
        .filter_map(|entry| std::fs::read(entry.path()).ok())
        .filter_map(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .filter_map(|record| {
            let at = chrono::DateTime::parse_from_rfc3339(record["created_at"].as_str()?).ok()?;
            Some((record["name"].as_str()?.to_owned(), at.into()))
        })
        .collect()
}

/// Waits (polling, since the runners' files are all there is to wait on) until `ready`.
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "bench: {what} took over {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The reconcile histogram's series in a scrape.
const RECONCILE: &str = "github_runner_manager_reconcile_duration_seconds";

/// The pass times the manager has logged, in order.
fn logged_passes(log: &str) -> Vec<Duration> {
    log.lines()
        .filter(|line| line.contains("event=reconcile_pass"))
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix("duration_us="))?
                .parse()
                .ok()
        })
        .map(Duration::from_micros)
        .collect()
}

/// The reconcile histogram of every flavor added up: `(upper bound, cumulative count)` per
/// bucket, the sum and the count.
fn passes_histogram(text: &str) -> (Vec<(f64, f64)>, f64, f64) {
    let value = |line: &str| -> Option<f64> { line.rsplit_once(' ')?.1.parse().ok() };
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let (mut sum, mut count) = (0.0, 0.0);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(RECONCILE) else {
            continue;
        };
        if rest.starts_with("_sum{") {
            sum += value(line).unwrap_or(0.0);
        } else if rest.starts_with("_count{") {
            count += value(line).unwrap_or(0.0);
        } else if rest.starts_with("_bucket{") {
            let Some(le) = rest
                .split("le=\"")
                .nth(1)
                .and_then(|le| le.split('"').next())
                .and_then(|le| le.parse::<f64>().ok())
            else {
                continue;
            };
            let n = value(line).unwrap_or(0.0);
            match buckets.iter_mut().find(|(bound, _)| *bound == le) {
                Some(bucket) => bucket.1 += n,
                None => buckets.push((le, n)),
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    (buckets, sum, count)
}

/// The bucket bound at or under which the `q` quantile of the passes between two scrapes lies.
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], count: f64, q: f64) -> String {
    after
        .iter()
        .map(|(bound, n)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == bound)
                .map_or(0.0, |(_, n)| *n);
            (*bound, n - earlier)
        })
        .find(|(_, n)| *n >= q * count)
        .map_or("over the largest bucket".to_owned(), |(bound, _)| {
            format!("<= {}", ms(Duration::from_secs_f64(bound)))
        })
}

async fn start(
    id: &str,
    planner_url: &str,
    token: &str,
    github_url: &str,
    flavors: &[Flavor],
    dir: &ManagerDir,
) -> Manager {
    start_release_manager(&ManagerSetup {
        id,
        planner_url,
        planner_token: token,
        github_url,
        github_path: "bench-org",
        flavors,
        dir,
        extra: &[(
            "RUST_LOG",
            "warn,manager::startup=info,manager::reconciler=debug",
        )],
    })
    .await
}

/// Scenario 7 (group `manager`).
pub async fn scenarios(rows: &mut Vec<Row>) {
    let stack = stack(&[]).await;
    let (fake, github_url) = fake_github().await;
    let planner = &stack.planner.url;
    let token = planner_token(planner).await;

    // Create latency: one queued job at a time, each answered by one new runner.
    let dir = ManagerDir::new();
    let flavors = [sleeper("bench", 0, SAMPLES as u32)];
    let manager = start("bench-a", planner, &token, &github_url, &flavors, &dir).await;
    let idle = Usage::of(manager.service.pid());
    let client = crate::gateway::client(1);
    let url = format!("{}/webhook", stack.gateway.url);
    let webhooks: Vec<Signed> = (1..=SAMPLES)
        .map(|id| Signed::new(job_body(i64::try_from(id).unwrap(), "queued")))
        .collect();
    let mut delays = Vec::with_capacity(SAMPLES);
    for (n, webhook) in webhooks.iter().enumerate() {
        let sent = SystemTime::now();
        crate::gateway::post(&client, &url, webhook, &format!("bench-manager-{n}")).await;
        let state = dir.state_dir();
        until("a runner per queued job", || {
            records(&state, "bench").len() > n
        })
        .await;
        let newest = records(&state, "bench")
            .into_iter()
            .map(|(_, at)| at)
            .max()
            .unwrap();
        delays.push(newest.duration_since(sent).unwrap_or_default());
    }
    delays.sort();
    rows.push(Row::new(
        format!("7. manager: queued webhook (gateway 200) -> exec backend has started the runner, {SAMPLES} jobs one at a time"),
        latencies(&delays),
        "p99 < 100 ms",
    ));
    manager.service.terminate();
    let _ = manager.service.wait(Duration::from_secs(20)).await;
    drop(dir);

    // A reconcile pass at 100 flavors and 1,000 runners, and the memory it takes.
    let http = reqwest::Client::new();
    for i in 0..FLAVORS {
        let response = http
            .post(format!("{planner}/api/v1/flavors/flavor-{i}"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"platform": "github", "labels": [format!("label-{i}")]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let dir = ManagerDir::new();
    let flavors: Vec<Flavor> = (0..FLAVORS)
        .map(|i| {
            sleeper(
                &format!("flavor-{i}"),
                RUNNERS_PER_FLAVOR,
                RUNNERS_PER_FLAVOR,
            )
        })
        .collect();
    let manager = start("bench-b", planner, &token, &github_url, &flavors, &dir).await;
    let pid = manager.service.pid();
    let total = FLAVORS * RUNNERS_PER_FLAVOR as usize;
    let filled = Instant::now();
    let state = dir.state_dir();
    until("1,000 runners", || {
        (0..FLAVORS)
            .map(|i| records(&state, &format!("flavor-{i}")).len())
            .sum::<usize>()
            >= total
    })
    .await;
    let fill = filled.elapsed();
    let scrape = || async {
        http.get(&manager.metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // Steady state: the watch starts after two more rounds of every flavor, so no pass it
    // counts began while the last runners were being started (each start forks the manager
    // on the reconcilers' thread).
    let filled_passes = passes_histogram(&scrape().await).2;
    let deadline = Instant::now() + LIMIT;
    while passes_histogram(&scrape().await).2 < filled_passes + 2.0 * FLAVORS as f64 {
        assert!(
            Instant::now() < deadline,
            "bench: two rounds took over {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logged_before = logged_passes(&manager.service.log()).len();
    let before = (passes_histogram(&scrape().await), Usage::of(pid));
    tokio::time::sleep(WATCH).await;
    let after = (passes_histogram(&scrape().await), Usage::of(pid));
    let with_runners = Usage::of(pid);
    let mut logged: Vec<Duration> = logged_passes(&manager.service.log()).split_off(logged_before);
    logged.sort();
    let seconds = after.0 .1 - before.0 .1;
    let count = after.0 .2 - before.0 .2;
    assert!(count > 0.0, "no reconcile pass in {WATCH:?}");
    let rounds = count / FLAVORS as f64;
    let cpu_per_round = (after.1.cpu_seconds - before.1.cpu_seconds) / rounds;
    let logged = if logged.is_empty() {
        "no pass logged".to_owned()
    } else {
        format!(
            "{}, min {}",
            latencies(&logged),
            ms(percentile(&logged, 0.0))
        )
    };
    let quantiles = format!(
        "{logged}; histogram buckets: p50 {}, p99 {}",
        bucket_quantile(&before.0 .0, &after.0 .0, count, 0.50),
        bucket_quantile(&before.0 .0, &after.0 .0, count, 0.99)
    );
    rows.push(Row::new(
        format!("7. manager: one reconcile pass (wall time) at {FLAVORS} flavors x {RUNNERS_PER_FLAVOR} runners (exec, 1 s interval, {} s watched)", WATCH.as_secs()),
        format!(
            "{quantiles}; mean {}; {count:.0} passes",
            ms(Duration::from_secs_f64(seconds / count)),
        ),
        "< 50 ms",
    ));
    rows.push(Row::new(
        format!("7. manager: CPU per round of all {FLAVORS} flavors (same run)"),
        format!(
            "{} (1,000 runners created in {:.1} s)",
            ms(Duration::from_secs_f64(cpu_per_round)),
            fill.as_secs_f64()
        ),
        "(reference)",
    ));
    rows.push(Row::new(
        "7. manager resident memory: idle / with 1,000 runners",
        format!("{:.1} MB / {:.1} MB", idle.rss_mb(), with_runners.rss_mb()),
        "< 40 MB",
    ));
    manager.service.terminate();
    let _ = manager.service.wait(Duration::from_secs(20)).await;
    drop(dir);
    fake.terminate();
    stop(stack).await;
}
