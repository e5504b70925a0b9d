//! The `gce` backend's part of `make bench` (`BENCH_ONLY=gce`), against the fake Compute Engine
//! API (`tests::fake_gce`) on loopback, so the figures are the manager's own work plus the
//! fake's (which answers from memory: a real API adds its network and server time).
//!
//! - GCE 1: one listing of 1,000 VMs over 3 zones (`aggregatedList` with the label filter,
//!   every page), timed in process; and [`manager::decide::decide`] over those 1,000 VMs and
//!   their 1,000 GitHub registrations.
//! - GCE 2: the real manager binary's reconcile pass with those 1,000 VMs and registrations
//!   (nothing to do: the desired count is 1,000): its `reconcile_duration_seconds` histogram
//!   (listing the backend and GitHub, deciding), and the Compute and GitHub calls per pass.
//! - GCE 3: queued webhook (sent to the gateway) -> the manager's `instances.insert` arriving
//!   at the fake, through RabbitMQ, the planner and its pressure stream; one webhook at a time,
//!   each sent once the previous runner's create has finished.
//!
//! The fake's VMs carry what a real listing returns of this manager's VMs that weighs most: the
//! metadata with the startup script and a JIT configuration.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use actors::github::RunnerScope;
use chrono::Utc;
use manager::backend::gce::{Gce, JIT_CONFIG_KEY, STARTUP_SCRIPT};
use manager::backend::{Backend, Instance};
use manager::config::{GceBackendConfig, GceEnv, GCE_REQUEST_TIMEOUT};
use manager::decide::{self, Observed};
use manager::github::Runner;
use serde_json::json;
use tests::fake_gce::FakeGce;
use tests::manager::{Flavor, Manager, ManagerDir, Scene, FLAVOR, LABEL, ORG};

use crate::measure::{latencies, ms, percentile, Row};

/// VMs of the listing scenarios.
const VMS: usize = 1_000;
/// Their zones.
const ZONES: [&str; 3] = ["europe-west1-b", "europe-west1-c", "europe-west1-d"];
/// Timed runs of GCE 1.
const RUNS: usize = 30;
/// Passes of GCE 2.
const PASSES: f64 = 10.0;
/// Webhooks of GCE 3.
const WEBHOOKS: usize = 100;
/// The longest any step may take.
const STEP: Duration = Duration::from_secs(60);
const PASS_COUNT: &str = "github_runner_manager_reconcile_duration_seconds_count{flavor=\"small\"}";
const PASS_SUM: &str = "github_runner_manager_reconcile_duration_seconds_sum{flavor=\"small\"}";

/// Runs the three scenarios on an actix system of their own (the fakes are actix servers).
pub fn scenarios(rows: &mut Vec<Row>) {
    let found = std::thread::spawn(|| {
        actix_rt::System::new().block_on(async {
            let mut rows = Vec::new();
            eprintln!("bench: gce listing and decide ...");
            listing(&mut rows).await;
            eprintln!("bench: gce reconcile pass of the manager ...");
            manager_pass(&mut rows).await;
            eprintln!("bench: gce webhook to insert ...");
            webhook_to_insert(&mut rows).await;
            rows
        })
    })
    .join()
    .expect("the gce scenarios");
    rows.extend(found);
}

/// `<manager id>-small-<i>`.
fn vm_name(i: usize) -> String {
    format!("m1-small-{i:08x}")
}

/// [`VMS`] running VMs of manager `m1`, flavor `small`, spread over [`ZONES`].
fn seed(fake: &FakeGce) {
    let jit = "x".repeat(1_200);
    for i in 0..VMS {
        let zone = ZONES[i % ZONES.len()];
        let name = vm_name(i);
        fake.seed(
            zone,
            &name,
            json!({"manager-id": "m1", "flavor": "small", "zone": zone,
                   "template": "runner-c4-8", "owner": ORG}),
        );
        let mut state = fake.state.lock().expect("fake state");
        let vm = state
            .instances
            .get_mut(zone)
            .and_then(|vms| vms.get_mut(&name))
            .expect("seeded");
        vm["metadata"] = json!({"items": [
            {"key": JIT_CONFIG_KEY, "value": jit},
            {"key": "block-project-ssh-keys", "value": "true"},
            {"key": "startup-script", "value": STARTUP_SCRIPT},
        ]});
    }
}

fn gce_env(fake: &FakeGce, operation_timeout: Duration) -> Vec<(String, String)> {
    vec![
        ("APP_GCE_API_URL".into(), fake.url.clone()),
        ("APP_GCE_METADATA_URL".into(), fake.url.clone()),
        (
            "APP_GCE_OPERATION_TIMEOUT".into(),
            format!("{}ms", operation_timeout.as_millis()),
        ),
    ]
}

fn gce_flavor(min: u32, max: u32) -> Flavor {
    let mut flavor = Flavor::new(FLAVOR, min, max);
    flavor.boot_timeout = "1h".into();
    flavor.max_lifetime = "2h".into();
    let zones: Vec<String> = ZONES.iter().map(|z| format!("{z:?}")).collect();
    flavor.backend = Some(format!(
        "kind = \"gce\"\nproject = \"test-project\"\nzones = [{}]\ntemplates = [\"runner-c4-8\"]\n",
        zones.join(", ")
    ));
    flavor
}

async fn listing(rows: &mut Vec<Row>) {
    let fake = FakeGce::start().await;
    seed(&fake);
    let env = GceEnv {
        credentials_file: None,
        api_url: fake.url.parse().expect("URL"),
        metadata_url: fake.url.parse().expect("URL"),
        operation_timeout: Duration::from_secs(5),
        request_timeout: GCE_REQUEST_TIMEOUT,
    };
    let config = GceBackendConfig {
        project: "test-project".into(),
        zones: ZONES.map(String::from).to_vec(),
        templates: vec!["runner-c4-8".into()],
        spot: false,
        network_tags: vec![],
        other_zones: true,
    };
    let gce = Gce::new(&env, config, "m1", "small", None).expect("backend");
    // The first listing fetches the token.
    let instances: Vec<Instance> = gce.list().await.expect("listing");
    assert_eq!(instances.len(), VMS);
    let before = fake.requests_starting("GET").len();
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        let listed = gce.list().await.expect("listing");
        times.push(started.elapsed());
        assert_eq!(listed.len(), VMS);
    }
    let calls = (fake.requests_starting("GET").len() - before) as f64 / RUNS as f64;
    times.sort();
    rows.push(Row::new(
        format!(
            "GCE 1. listing {VMS} VMs over {} zones (aggregatedList, label filter, 500 per page, ~4 KB per VM), {RUNS} runs, in process",
            ZONES.len()
        ),
        format!("{}; {calls:.0} calls per listing", latencies(&times)),
        "(reference)",
    ));

    let runners: Vec<Runner> = instances
        .iter()
        .enumerate()
        .map(|(i, instance)| Runner {
            id: i as u64 + 1,
            name: instance.name.clone(),
            status: "online".into(),
            busy: i % 2 == 0,
            labels: vec!["self-hosted".into(), LABEL.into()],
        })
        .collect();
    let seen: HashSet<String> = runners.iter().map(|r| r.name.clone()).collect();
    let none = HashSet::new();
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let observed = Observed {
            now: Utc::now(),
            desired: VMS as u32,
            scale_down: true,
            instances: &instances,
            github: Some(&runners),
            listed_at: Utc::now(),
            creating: &none,
            removing: &none,
            seen_online: &seen,
            boot_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(86_400),
        };
        let started = Instant::now();
        let plan = decide::decide(&observed);
        times.push(started.elapsed());
        assert!(plan.actions.is_empty(), "{:?}", &plan.actions[..1]);
    }
    times.sort();
    rows.push(Row::new(
        format!("GCE 1. decide over {VMS} VMs and {VMS} GitHub registrations, {RUNS} runs"),
        format!(
            "p50 {}, max {}",
            ms(percentile(&times, 0.5)),
            ms(*times.last().expect("runs"))
        ),
        "(reference)",
    ));
}

async fn wait_passes(manager: &Manager, from: f64, count: f64) {
    let deadline = Instant::now() + STEP;
    while manager.metric(PASS_COUNT).await < from + count {
        assert!(Instant::now() < deadline, "no reconcile passes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn manager_pass(rows: &mut Vec<Row>) {
    let scene = Scene::start().await;
    let fake = FakeGce::start().await;
    seed(&fake);
    let scope = RunnerScope::Org(ORG.to_owned());
    for i in 0..VMS {
        scene
            .fake
            .add_runner(&scope, &vm_name(i), &["self-hosted", LABEL], true);
    }
    let dir = ManagerDir::new();
    let vars = gce_env(&fake, Duration::from_secs(5));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let flavor = gce_flavor(VMS as u32, VMS as u32);
    let manager = scene.manager("m1", &[flavor], &dir, &vars).await;
    // The first passes fetch tokens and the planner's answer.
    wait_passes(&manager, 0.0, 2.0).await;
    let (count, sum) = (
        manager.metric(PASS_COUNT).await,
        manager.metric(PASS_SUM).await,
    );
    let gce_calls = fake.requests_starting("").len();
    let github_calls = scene.fake.requests("/orgs/").len();
    wait_passes(&manager, count, PASSES).await;
    let (count_after, sum_after) = (
        manager.metric(PASS_COUNT).await,
        manager.metric(PASS_SUM).await,
    );
    let passes = count_after - count;
    let gce_calls = (fake.requests_starting("").len() - gce_calls) as f64 / passes;
    let github_calls = (scene.fake.requests("/orgs/").len() - github_calls) as f64 / passes;
    assert!(
        fake.requests_starting("POST").is_empty() && fake.requests_starting("DELETE").is_empty(),
        "the pass had something to do"
    );
    rows.push(Row::new(
        format!(
            "GCE 2. manager reconcile pass, {VMS} VMs over {} zones, {VMS} GitHub registrations, nothing to do ({passes:.0} passes)",
            ZONES.len()
        ),
        format!(
            "mean {} per pass; {gce_calls:.1} Compute calls and {github_calls:.1} GitHub calls per pass",
            ms(Duration::from_secs_f64((sum_after - sum) / passes))
        ),
        "(reference)",
    ));
}

async fn webhook_to_insert(rows: &mut Vec<Row>) {
    let scene = Scene::start().await;
    let fake = FakeGce::start().await;
    let dir = ManagerDir::new();
    // Operations are done at their first poll: 100 ms after the insert.
    let vars = gce_env(&fake, Duration::from_secs(2));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let manager = scene
        .manager("m1", &[gce_flavor(0, 1_000)], &dir, &vars)
        .await;
    wait_passes(&manager, 0.0, 1.0).await;
    let created = "github_runner_manager_created_total{flavor=\"small\"}";
    let mut latencies_seen = Vec::with_capacity(WEBHOOKS);
    for i in 1..=WEBHOOKS {
        let sent = Instant::now();
        scene.job(i as i64, "queued").await;
        let deadline = Instant::now() + STEP;
        let inserted = loop {
            if let Some(at) = fake
                .state
                .lock()
                .expect("fake state")
                .insert_times
                .get(i - 1)
            {
                break *at;
            }
            assert!(Instant::now() < deadline, "no insert for webhook {i}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        latencies_seen.push(inserted - sent);
        while manager.metric(created).await < i as f64 {
            assert!(Instant::now() < deadline, "runner {i} not created");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    latencies_seen.sort();
    rows.push(Row::new(
        format!("GCE 3. queued webhook -> instances.insert at the fake (gateway, RabbitMQ, planner, stream, manager, JIT configuration), {WEBHOOKS} webhooks one at a time"),
        latencies(&latencies_seen),
        "(reference)",
    ));
}
