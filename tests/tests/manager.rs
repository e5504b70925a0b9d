//! The runner manager end to end, with the real binaries: gateway -> RabbitMQ -> planner ->
//! pressure stream -> manager -> exec backend running the fake runner, which registers with
//! the fake GitHub's JIT configuration, goes busy when the fake assigns it a job, and exits
//! when the job is done.

use std::collections::BTreeSet;
use std::time::Duration;

use actors::github::RunnerScope;
use serde_json::{json, Value};
use tests::eventually;
use tests::fixtures::job_payload;
use tests::manager::{names, Flavor, ManagerDir, Scene, FLAVOR, LABEL, ORG, WAIT};
use tests::unique;

async fn wait_for<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(what, WAIT, condition).await;
}

#[actix_web::test]
async fn scales_up_to_pressure_and_stops_at_the_cap() {
    let scene = Scene::start().await;
    let dir = ManagerDir::new();
    let mut manager = scene
        .manager("m1", &[Flavor::new(FLAVOR, 0, 3)], &dir, &[])
        .await;
    scene.queue(1..=2).await;
    let online = scene.online("m1-small-", 2).await;
    assert_eq!(online.len(), 2);
    for runner in &online {
        assert!(runner.labels.contains(&LABEL.to_owned()), "{runner:?}");
        assert!(
            runner.labels.contains(&"self-hosted".to_owned()),
            "{runner:?}"
        );
    }
    // Five jobs, a cap of three.
    scene.queue(3..=5).await;
    scene.online("m1-small-", 3).await;
    wait_for("three idle runners in the status API", || async {
        manager.runners_in("idle").await.len() == 3
    })
    .await;
    // Several passes later, still three: the cap holds.
    manager
        .service
        .wait_for_log("event=pressure_changed flavor=small pressure=5", WAIT)
        .await;
    manager.wait_for_passes(3.0).await;
    assert_eq!(scene.registered("m1-small-").len(), 3);
    assert_eq!(manager.runners().await.len(), 3);
    assert_eq!(
        manager
            .metric("github_runner_manager_desired_runners{flavor=\"small\"}")
            .await,
        3.0
    );
    // Each runner got the JIT configuration only through its environment.
    assert!(!manager.service.log().contains("RUNNER_JITCONFIG="));
}

#[actix_web::test]
async fn scale_down_removes_idle_runners_only() {
    let scene = Scene::start().await;
    let dir = ManagerDir::new();
    let mut manager = scene
        .manager("m1", &[Flavor::new(FLAVOR, 0, 5)], &dir, &[])
        .await;
    scene.queue(1..=3).await;
    let online = scene.online("m1-small-", 3).await;
    let busy: Vec<String> = online[..2].iter().map(|r| r.name.clone()).collect();
    let idle = online[2].name.clone();
    for name in &busy {
        assert!(scene.fake.assign_job(name), "assign a job to {name}");
    }
    wait_for("two busy runners in the status API", || async {
        manager.runners_in("busy").await.len() == 2
    })
    .await;
    // Two jobs done: desired 1, three runners, two of them busy.
    scene.job(2, "completed").await;
    scene.job(3, "completed").await;
    manager
        .service
        .wait_for_log(
            &format!("event=runner_removed flavor=small runner.name={idle} reason=scale_down"),
            WAIT,
        )
        .await;
    // The busy runners stay, registered and running, several passes later.
    manager.wait_for_passes(3.0).await;
    let shown = manager.runners().await;
    assert_eq!(names(&shown), busy.iter().cloned().collect(), "{shown:?}");
    assert!(
        shown.iter().all(|runner| runner["state"] == "busy"),
        "{shown:?}"
    );
    for name in &busy {
        let runner = scene.fake.runner(name).expect("still registered");
        assert!(runner.busy && runner.online, "{runner:?}");
    }
    assert!(
        scene.fake.runner(&idle).is_none(),
        "the idle runner was deregistered"
    );
    // The last job done too: desired 0, and the busy runners still stay.
    scene.job(1, "completed").await;
    manager
        .service
        .wait_for_log("event=pressure_changed flavor=small pressure=0", WAIT)
        .await;
    manager.wait_for_passes(3.0).await;
    assert_eq!(
        names(&manager.runners_in("busy").await),
        busy.iter().cloned().collect()
    );
    // Their jobs end: the runners exit and are removed as ended.
    for name in &busy {
        assert!(scene.fake.finish_job(name));
    }
    wait_for("no runners left", || async {
        manager.runners().await.is_empty()
    })
    .await;
    assert!(
        manager
            .metric("github_runner_manager_removed_total{flavor=\"small\",reason=\"ended\"}")
            .await
            >= 2.0
    );
    assert!(scene.registered("m1-small-").is_empty());
}

#[actix_web::test]
async fn a_cancelled_job_removes_its_idle_runner() {
    let scene = Scene::start().await;
    let dir = ManagerDir::new();
    let mut manager = scene
        .manager("m1", &[Flavor::new(FLAVOR, 0, 5)], &dir, &[])
        .await;
    scene.job(1, "queued").await;
    let online = scene.online("m1-small-", 1).await;
    let mut body = job_payload("queued.1", 1, "completed", &["self-hosted", LABEL]);
    body["workflow_job"]["conclusion"] = "cancelled".into();
    body["workflow_job"]["created_at"] = chrono::Utc::now().to_rfc3339().into();
    tests::gateway::deliver(
        &scene.http,
        &scene.system.gateway_url,
        &body,
        &unique("delivery"),
    )
    .await;
    manager
        .service
        .wait_for_log(
            &format!(
                "event=runner_removed flavor=small runner.name={} reason=scale_down",
                online[0].name
            ),
            WAIT,
        )
        .await;
    wait_for("no runners left", || async {
        manager.runners().await.is_empty()
    })
    .await;
    assert!(scene.registered("m1-small-").is_empty());
}

#[actix_web::test]
async fn runners_that_never_come_online_are_removed_after_the_boot_timeout() {
    let scene = Scene::start().await;
    let dir = ManagerDir::new();
    let mut flavor = Flavor::new(FLAVOR, 1, 1);
    flavor.boot_timeout = "2s".into();
    flavor.max_lifetime = "1h".into();
    // A command that never registers.
    flavor.command = Some(vec!["/bin/sleep".into(), "600".into()]);
    let mut manager = scene.manager("m1", &[flavor], &dir, &[]).await;
    let line = manager
        .service
        .wait_for_log("reason=boot_timeout", WAIT)
        .await;
    let name = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("runner.name="))
        .expect("runner name")
        .to_owned();
    // Deregistered, its process gone, and a new one created in its place.
    assert!(
        scene.fake.runner(&name).is_none(),
        "{name} still registered"
    );
    wait_for("a replacement", || async {
        let shown = manager.runners().await;
        shown.len() == 1 && shown[0]["name"] != name.as_str()
    })
    .await;
    assert!(
        manager
            .metric("github_runner_manager_removed_total{flavor=\"small\",reason=\"boot_timeout\"}")
            .await
            >= 1.0
    );
}

#[actix_web::test]
async fn runners_older_than_max_lifetime_are_removed_even_when_busy() {
    let scene = Scene::start().await;
    let dir = ManagerDir::new();
    let mut flavor = Flavor::new(FLAVOR, 1, 1);
    flavor.boot_timeout = "20s".into();
    flavor.max_lifetime = "25s".into();
    let mut manager = scene.manager("m1", &[flavor], &dir, &[]).await;
    let online = scene.online("m1-small-", 1).await;
    let name = online[0].name.clone();
    assert!(scene.fake.assign_job(&name));
    manager
        .service
        .wait_for_log(
            &format!("event=runner_removed flavor=small runner.name={name} reason=max_lifetime"),
            WAIT,
        )
        .await;
    wait_for("its process is gone", || async {
        !names(&manager.runners().await).contains(&name)
    })
    .await;
}

#[actix_web::test]
async fn orphans_are_deregistered_and_other_managers_runners_are_not_touched() {
    let scene = Scene::start().await;
    let scope = RunnerScope::Org(ORG.to_owned());
    let orphan = scene
        .fake
        .add_runner(&scope, "m1-small-0000dead", &["self-hosted", LABEL], false);
    scene
        .fake
        .add_runner(&scope, "m2-small-0000beef", &["self-hosted", LABEL], true);
    let unrelated = scene
        .fake
        .add_runner(&scope, "hand-made-runner", &["self-hosted"], false);
    // Flavor `small-gpu`'s runners start with flavor `small`'s prefix too.
    let other_flavor = scene.fake.add_runner(
        &scope,
        "m1-small-gpu-0000cafe",
        &["self-hosted", LABEL],
        false,
    );
    let dir_one = ManagerDir::new();
    let dir_two = ManagerDir::new();
    let mut one = scene
        .manager("m1", &[Flavor::new(FLAVOR, 1, 5)], &dir_one, &[])
        .await;
    let two = scene
        .manager("m2", &[Flavor::new(FLAVOR, 2, 5)], &dir_two, &[])
        .await;
    one.service
        .wait_for_log("runner.name=m1-small-0000dead reason=orphan", WAIT)
        .await;
    assert!(scene.fake.runners().iter().all(|r| r.id != orphan));
    // Each manager keeps its own floor: one runner for m1, two for m2 (plus m2's hand-added
    // registration, which is m2's orphan and so m2's to deregister, not m1's).
    scene.online("m1-small-", 1).await;
    wait_for("m2's two runners online", || async {
        two.runners_in("idle").await.len() == 2
    })
    .await;
    let ids: BTreeSet<u64> = scene.fake.runners().iter().map(|r| r.id).collect();
    assert!(
        ids.contains(&unrelated),
        "a runner without a manager id was touched"
    );
    assert!(
        ids.contains(&other_flavor),
        "flavor small took another flavor's runner for its own"
    );
    assert!(!one.service.log().contains("m1-small-gpu-"));
    assert!(names(&one.runners().await)
        .iter()
        .all(|n| n.starts_with("m1-")));
    assert!(names(&two.runners().await)
        .iter()
        .all(|n| n.starts_with("m2-")));
    assert!(
        !one.service.log().contains("m2-small-"),
        "m1 acted on m2's runners"
    );
    assert!(
        !two.service.log().contains("m1-small-"),
        "m2 acted on m1's runners"
    );
}

#[actix_web::test]
async fn a_manager_killed_mid_create_restarts_without_duplicates_or_orphans() {
    let scene = Scene::start().await;
    let dir = ManagerDir::new();
    let flavors = [Flavor::new(FLAVOR, 0, 6)];
    let mut manager = scene.manager("m1", &flavors, &dir, &[]).await;
    scene.queue(1..=4).await;
    // Killed as soon as the first runner is created, with the others under way.
    manager
        .service
        .wait_for_log("event=runner_created", WAIT)
        .await;
    manager.service.kill();
    let _ = manager.service.wait(WAIT).await;
    let restarted = scene.manager("m1", &flavors, &dir, &[]).await;
    scene.online("m1-small-", 4).await;
    // Settled: exactly the desired four, in the backend and in GitHub, no orphan left.
    restarted.wait_for_passes(3.0).await;
    let shown = restarted.runners().await;
    let registered: BTreeSet<String> = scene
        .registered("m1-small-")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(shown.len(), 4, "{shown:?}");
    assert_eq!(names(&shown), registered, "backend and GitHub agree");
    assert_eq!(dir.recorded_pids().len(), 4);
}

#[actix_web::test]
async fn planner_down_keeps_the_last_pressure_for_the_grace_then_min_runners() {
    let scene = Scene::start().await;
    let dir = ManagerDir::new();
    let mut manager = scene
        .manager(
            "m1",
            &[Flavor::new(FLAVOR, 1, 5)],
            &dir,
            &[("APP_PRESSURE_GRACE", "4s")],
        )
        .await;
    scene.queue(1..=3).await;
    scene.online("m1-small-", 3).await;
    scene.system.planner.kill();
    manager
        .service
        .wait_for_log("event=pressure_stream_failed", WAIT)
        .await;
    let lost = std::time::Instant::now();
    // Within the grace nothing changes.
    manager
        .service
        .wait_for_log("event=pressure_unknown", WAIT)
        .await;
    assert!(lost.elapsed() >= Duration::from_secs(3), "grace cut short");
    assert_eq!(scene.registered("m1-small-").len(), 3);
    // Then min_runners: one stays.
    wait_for("one runner left", || async {
        manager.runners().await.len() == 1
    })
    .await;
    assert_eq!(scene.registered("m1-small-").len(), 1);
    let ready = scene
        .http
        .get(format!("{}/ready", manager.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["failing"], json!(["planner stream"]));
}

#[actix_web::test]
async fn github_down_or_rate_limited_backs_off_and_kills_nothing() {
    let scene = Scene::start().await;
    let dir = ManagerDir::new();
    let mut manager = scene
        .manager("m1", &[Flavor::new(FLAVOR, 0, 5)], &dir, &[])
        .await;
    scene.queue(1..=2).await;
    let online = scene.online("m1-small-", 2).await;
    let before: BTreeSet<String> = online.into_iter().map(|r| r.name).collect();
    scene.fake.set_down(true);
    // Pressure falls to zero while GitHub is down: nothing may be removed.
    scene.job(1, "completed").await;
    scene.job(2, "completed").await;
    manager
        .service
        .wait_for_log("event=pressure_changed flavor=small pressure=0", WAIT)
        .await;
    manager
        .wait_for_more(
            "github_runner_manager_failures_total{flavor=\"small\",reason=\"github_list\"}",
            3.0,
        )
        .await;
    assert_eq!(names(&manager.runners().await), before);
    let ready = scene
        .http
        .get(format!("{}/ready", manager.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    // Rate-limited after it comes back: still nothing removed while the limit holds.
    scene.fake.set_down(false);
    scene.fake.rate_limit(
        &format!("/orgs/{ORG}/actions/runners"),
        1,
        Duration::from_secs(3),
    );
    manager
        .service
        .wait_for_log("event=github_rate_limited", WAIT)
        .await;
    assert_eq!(names(&manager.runners().await), before);
    // Then it scales down as it should.
    wait_for("no runners left", || async {
        manager.runners().await.is_empty()
    })
    .await;
    assert!(scene.registered("m1-small-").is_empty());
    assert!(manager.service.log().contains("event=runner_removed"));
}

#[actix_web::test]
async fn the_status_api_needs_a_token_and_check_config_names_the_fault() {
    let scene = Scene::start().await;
    let dir = ManagerDir::new();
    let manager = scene
        .manager(
            "m1",
            &[Flavor::new(FLAVOR, 0, 1)],
            &dir,
            &[("APP_MANAGER_ADMIN_TOKEN_VALUE", "manager-admin-token-1")],
        )
        .await;
    let get = |token: Option<&str>| {
        let request = scene.http.get(format!("{}/api/v1/runners", manager.url));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };
    assert_eq!(get(None).send().await.unwrap().status(), 401);
    assert_eq!(get(Some("wrong")).send().await.unwrap().status(), 401);
    assert_eq!(get(Some(&scene.token)).send().await.unwrap().status(), 200);
    assert_eq!(
        get(Some("manager-admin-token-1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    wait_for("ready", || async {
        scene
            .http
            .get(format!("{}/ready", manager.url))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    // A bad flavor file: `check-config` names the file, line and key, and exits 2.
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[flavor]]\nname = \"small\"\nmax_runner = 3\n[flavor.backend]\nkind = \"exec\"\ncommand = [\"/bin/true\"]\n",
    )
    .unwrap();
    let output = std::process::Command::new(tests::process::binary("manager"))
        .arg("check-config")
        .env_clear()
        .env("APP_PLANNER_URL", &scene.system.planner_url)
        .env("APP_PLANNER_TOKEN_VALUE", &scene.token)
        .env("APP_MANAGER_ID", "m1")
        .env("APP_MANAGER_CONFIG", &file)
        .env("APP_GITHUB_APP_ID", tests::fake_github::APP_ID)
        .env("APP_GITHUB_APP_INSTALLATION_ID", "777")
        .env(
            "APP_GITHUB_APP_PRIVATE_KEY_VALUE",
            tests::fake_github::PRIVATE_KEY,
        )
        .env("APP_GITHUB_PATH", ORG)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:3: max_runner:", file.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}

#[actix_web::test]
async fn a_runner_github_calls_busy_is_kept_until_github_lets_it_go() {
    let scene = Scene::start().await;
    let dir = ManagerDir::new();
    let mut manager = scene
        .manager("m1", &[Flavor::new(FLAVOR, 0, 5)], &dir, &[])
        .await;
    scene.queue(1..=2).await;
    let online = scene.online("m1-small-", 2).await;
    // GitHub's listing says idle, its DELETE says busy (the runner took a job in between).
    for runner in &online {
        scene.fake.fail(
            &format!("/orgs/{ORG}/actions/runners/{}", runner.id),
            1000,
            422,
        );
    }
    scene.job(2, "completed").await;
    manager
        .service
        .wait_for_log("event=runner_kept_busy flavor=small", WAIT)
        .await;
    manager.wait_for_passes(3.0).await;
    // Both still run and stay registered: a 422 never leads to the backend's delete.
    assert_eq!(manager.runners().await.len(), 2);
    assert_eq!(scene.registered("m1-small-").len(), 2);
    let alive = dir
        .recorded_pids()
        .into_iter()
        .filter(|(pid, start)| {
            i32::try_from(*pid)
                .is_ok_and(|pid| manager::backend::exec::process_start_time(pid) == Some(*start))
        })
        .count();
    assert_eq!(alive, 2, "a runner GitHub called busy was stopped");
    assert!(
        manager
            .metric("github_runner_manager_kept_busy_total{flavor=\"small\"}")
            .await
            >= 1.0
    );
    assert!(
        !manager.service.log().contains("event=runner_removed"),
        "{}",
        manager.service.log()
    );
    // GitHub lets go: the scale-down goes through.
    scene.fake.state().faults.clear();
    manager
        .service
        .wait_for_log("event=runner_removed flavor=small", WAIT)
        .await;
    wait_for("one runner left", || async {
        manager.runners().await.len() == 1
    })
    .await;
    assert_eq!(scene.registered("m1-small-").len(), 1);
}

#[actix_web::test]
async fn the_dashboard_and_alert_rules_use_only_exported_metrics() {
    let scene = Scene::start().await;
    let dir = ManagerDir::new();
    let mut manager = scene
        .manager("m1", &[Flavor::new(FLAVOR, 0, 5)], &dir, &[])
        .await;
    // Traffic that makes every labelled series exist: a runner created, online (boot time),
    // busy and refused once by GitHub (kept), a JIT failure, and removed.
    scene.job(1, "queued").await;
    scene.online("m1-small-", 1).await;
    scene.fake.fail(
        &format!("/orgs/{ORG}/actions/runners/generate-jitconfig"),
        1,
        500,
    );
    scene.job(2, "queued").await;
    for runner in scene.online("m1-small-", 2).await {
        scene.fake.fail(
            &format!("/orgs/{ORG}/actions/runners/{}", runner.id),
            1,
            422,
        );
    }
    scene.job(2, "completed").await;
    manager
        .service
        .wait_for_log("event=runner_kept_busy", WAIT)
        .await;
    manager
        .service
        .wait_for_log("event=runner_removed", WAIT)
        .await;
    let text = scene
        .http
        .get(&manager.metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .chain(
            tests::promql::PROMETHEUS_SERIES
                .iter()
                .map(|s| s.to_string()),
        )
        .collect();
    let cos = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manager/cos");
    let found = tests::promql::Expressions::under(&[cos]);
    assert_eq!((found.dashboards, found.rule_files), (1, 1));
    let mut used = BTreeSet::new();
    let missing: Vec<String> = found
        .expressions
        .iter()
        .flat_map(|(from, expr)| {
            tests::promql::metric_names(expr)
                .into_iter()
                .inspect(|name| {
                    used.insert(name.clone());
                })
                .filter(|name| !exported.contains(name))
                .map(move |name| format!("{name} (in {from}: {expr})"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the manager's dashboard or alert rules use metrics it does not export:\n{}",
        missing.join("\n")
    );
    // The checks saw the metrics the alerts are about.
    for name in [
        "github_runner_manager_removed_total",
        "github_runner_manager_failures_total",
        "github_runner_manager_pressure",
        "github_runner_manager_max_runners",
        "github_runner_manager_planner_connected",
        "github_runner_manager_boot_duration_seconds_bucket",
        "github_runner_manager_kept_busy_total",
    ] {
        assert!(used.contains(name), "{name} is used by no panel or rule");
    }
}

#[actix_web::test]
async fn a_runner_group_is_resolved_once_and_an_unknown_one_fails_creates_clearly() {
    let scene = Scene::start().await;
    let group_id = scene.fake.add_runner_group("gpu-runners");
    let groups = format!("/orgs/{ORG}/actions/runner-groups");
    let in_group = |group: &str| Flavor {
        runner_group: Some(group.to_owned()),
        ..Flavor::new(FLAVOR, 3, 3)
    };
    let dir = ManagerDir::new();
    let _manager = scene
        .manager("m1", &[in_group("gpu-runners")], &dir, &[])
        .await;
    // Three creates at once (min_runners): every runner registered in the group, which was
    // looked up once for all of them.
    let online = scene.online("m1-small-", 3).await;
    for runner in &online {
        assert_eq!(runner.group_id, group_id, "{runner:?}");
    }
    assert_eq!(scene.fake.requests(&groups).len(), 1);

    // A group GitHub does not know: each create fails with reason runner_group, the manager
    // backs off and retries, and keeps running.
    let other_dir = ManagerDir::new();
    let mut other = scene
        .manager("m2", &[in_group("no-such-group")], &other_dir, &[])
        .await;
    other
        .wait_for_more(
            "github_runner_manager_failures_total{flavor=\"small\",reason=\"runner_group\"}",
            2.0,
        )
        .await;
    let line = other
        .service
        .wait_for_log("event=runner_create_failed", WAIT)
        .await;
    assert!(line.contains("reason=runner_group"), "{line}");
    assert!(line.contains("no-such-group"), "{line}");
    assert!(other.service.is_running());
    assert!(scene.registered("m2-small-").is_empty());
    assert!(other.runners().await.is_empty());
}

#[actix_web::test]
async fn failing_jit_configurations_back_off_the_flavor() {
    let scene = Scene::start().await;
    let jit = format!("/orgs/{ORG}/actions/runners/generate-jitconfig");
    scene.fake.fail(&jit, 4, 500);
    let dir = ManagerDir::new();
    let manager = scene
        .manager("m1", &[Flavor::new(FLAVOR, 1, 1)], &dir, &[])
        .await;
    // min_runners asks for one runner at once; it comes after four failed attempts.
    scene.online("m1-small-", 1).await;
    let asked: Vec<std::time::Instant> = scene
        .fake
        .requests(&jit)
        .iter()
        .map(|request| request.at)
        .collect();
    assert_eq!(asked.len(), 5, "one request per attempt, no more");
    let gaps: Vec<Duration> = asked.windows(2).map(|w| w[1] - w[0]).collect();
    // The pause after the n-th failure in a row: 1 s, 2 s, 4 s, 8 s.
    for (gap, pause) in gaps.iter().zip([1, 2, 4, 8]) {
        assert!(
            *gap >= Duration::from_secs(pause) - Duration::from_millis(100),
            "gaps {gaps:?}"
        );
    }
    assert!(gaps.windows(2).all(|w| w[1] > w[0]), "gaps {gaps:?}");
    assert_eq!(
        manager
            .metric("github_runner_manager_failures_total{flavor=\"small\",reason=\"jit_config\"}")
            .await,
        4.0
    );
    assert_eq!(
        manager
            .metric("github_runner_manager_created_total{flavor=\"small\"}")
            .await,
        1.0
    );
}
