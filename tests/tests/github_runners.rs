//! The GitHub client's self-hosted runner calls (JIT configurations, listings, deregistration,
//! runner groups) against the fake GitHub, and the fake's runner side with the `fake-runner`
//! binary: what the runner manager relies on.

use std::time::Duration;

use actors::github::{Client, DeleteOutcome, GitHubError, JitConfig, RunnerScope};
use secrecy::ExposeSecret;
use tests::eventually;
use tests::fake_github::{runner_side, FakeGitHub};
use tests::fake_runner::{EXIT_DONE, EXIT_REMOVED, EXIT_TERMINATED};
use tests::process::Service;

const LIMIT: Duration = Duration::from_secs(20);

/// A fake GitHub and a client of it.
async fn fake_and_client() -> (FakeGitHub, Client) {
    let fake = FakeGitHub::start().await;
    let client = Client::new(fake.app_config(), "test").unwrap();
    (fake, client)
}

fn org() -> RunnerScope {
    RunnerScope::parse("acme").unwrap()
}

fn labels(names: &[&str]) -> Vec<String> {
    names.iter().map(|l| (*l).to_owned()).collect()
}

async fn jit(client: &Client, scope: &RunnerScope, name: &str) -> JitConfig {
    client
        .generate_jit_config(scope, name, 1, &labels(&["self-hosted", "small"]), "_work")
        .await
        .expect("JIT configuration")
}

/// Starts `fake-runner` with `config`, as a manager's `exec` backend would, and waits until it
/// logs `state` (`idle`; `busy` with auto-assigned jobs).
async fn start_runner(config: &JitConfig, state: &str) -> Service {
    let mut runner = Service::spawn(
        "fake-runner",
        &[],
        &[
            (
                "RUNNER_JITCONFIG",
                config.encoded_jit_config.expose_secret(),
            ),
            ("RUNNER_NAME", &config.runner_name),
            ("RUNNER_FLAVOR", "small"),
            ("RUNNER_LABELS", "self-hosted,small"),
            ("RUNNER_MANAGER_ID", "m1"),
        ],
    );
    let line = format!("runner.name={} state={state}", config.runner_name);
    runner.wait_for_log(&line, LIMIT).await;
    runner
}

#[actix_web::test]
async fn jit_configurations_register_offline_runners_with_unique_names() {
    let (fake, client) = fake_and_client().await;
    let repo = RunnerScope::parse("acme/app").unwrap();

    let config = jit(&client, &org(), "m1-small-a").await;
    assert_eq!(config.runner_name, "m1-small-a");
    let runner = fake.runner("m1-small-a").expect("registered");
    assert_eq!(runner.id, config.runner_id);
    assert_eq!(runner.scope, "orgs/acme");
    assert_eq!(runner.labels, labels(&["self-hosted", "small"]));
    assert!(!runner.online && !runner.busy, "{runner:?}");
    assert!(!format!("{config:?}").contains(config.encoded_jit_config.expose_secret()));

    // GitHub's 409 for a name taken in the scope; the same name in another scope is fine.
    let err = client
        .generate_jit_config(&org(), "m1-small-a", 1, &labels(&["x"]), "_work")
        .await
        .unwrap_err();
    assert_eq!(err, GitHubError::Status(409));
    let other = jit(&client, &repo, "m1-small-a").await;
    assert_ne!(other.runner_id, config.runner_id);
    // An unknown runner group: 404; no labels: 422.
    let err = client
        .generate_jit_config(&org(), "m1-small-b", 99, &labels(&["x"]), "_work")
        .await
        .unwrap_err();
    assert_eq!(err, GitHubError::NotFound);
    let err = client
        .generate_jit_config(&org(), "m1-small-b", 1, &[], "_work")
        .await
        .unwrap_err();
    assert_eq!(err, GitHubError::Status(422));
    assert_eq!(fake.runners().len(), 2, "failed requests register nothing");
    assert_eq!(
        fake.requests("/orgs/acme/actions/runners/generate-jitconfig")
            .iter()
            .map(|r| r.status)
            .collect::<Vec<_>>(),
        [201, 409, 404, 422]
    );
    fake.stop().await;
}

#[actix_web::test]
async fn runners_and_runner_groups_are_read_across_pages() {
    let fake = FakeGitHub::start().await;
    fake.state().runner_page_size = 10;
    let client = Client::new(fake.app_config(), "test").unwrap();
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(fake.add_runner(&org(), &format!("r{i}"), &["small"], i % 2 == 0));
    }
    fake.add_runner(
        &RunnerScope::parse("acme/app").unwrap(),
        "repo-runner",
        &["x"],
        true,
    );
    fake.assign_job("r0");

    let runners = client.list_runners(&org()).await.unwrap();
    assert_eq!(runners.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    assert_eq!(runners[0].status, "online");
    assert!(runners[0].busy);
    assert_eq!(runners[1].status, "offline");
    assert_eq!(runners[1].labels, labels(&["small"]));
    assert_eq!(
        fake.requests("/orgs/acme/actions/runners").len(),
        3,
        "three pages of ten"
    );
    let repo = client
        .list_runners(&RunnerScope::parse("acme/app").unwrap())
        .await
        .unwrap();
    assert_eq!(repo.len(), 1);
    assert_eq!(repo[0].name, "repo-runner");

    // Runner groups: an organization's are listed (paged); a repository has only Default.
    let mut last = 0;
    for i in 0..14 {
        last = fake.add_runner_group(&format!("group-{i}"));
    }
    assert_eq!(
        client.runner_group_id(&org(), "group-13").await.unwrap(),
        Some(last)
    );
    assert_eq!(
        client.runner_group_id(&org(), "Default").await.unwrap(),
        Some(1)
    );
    assert_eq!(
        client.runner_group_id(&org(), "missing").await.unwrap(),
        None
    );
    // Fifteen groups, ten a page: group-13 is on the second page, Default on the first (no
    // second page read), and a missing group reads both.
    assert_eq!(
        fake.requests("/orgs/acme/actions/runner-groups").len(),
        2 + 1 + 2
    );
    let repo = RunnerScope::parse("acme/app").unwrap();
    assert_eq!(
        client.runner_group_id(&repo, "Default").await.unwrap(),
        Some(1)
    );
    assert_eq!(
        client.runner_group_id(&repo, "group-1").await.unwrap(),
        None
    );
    fake.stop().await;
}

#[actix_web::test]
async fn a_listing_longer_than_the_page_cap_is_an_error() {
    let fake = FakeGitHub::start().await;
    fake.state().runner_page_size = 1;
    let client = Client::new(fake.app_config(), "test").unwrap();
    for i in 0..=actors::github::MAX_PAGES {
        fake.add_runner(&org(), &format!("r{i}"), &["small"], true);
    }
    let err = client.list_runners(&org()).await.unwrap_err();
    assert!(matches!(err, GitHubError::Invalid(_)), "{err:?}");
    assert_eq!(
        fake.requests("/orgs/acme/actions/runners").len(),
        actors::github::MAX_PAGES,
        "stops at the cap"
    );
    fake.stop().await;
}

#[actix_web::test]
async fn deregistration_keeps_busy_runners() {
    let (fake, client) = fake_and_client().await;
    let busy = fake.add_runner(&org(), "busy", &["small"], true);
    let idle = fake.add_runner(&org(), "idle", &["small"], true);
    assert!(fake.assign_job("busy"));

    assert_eq!(
        client.delete_runner(&org(), busy).await.unwrap(),
        DeleteOutcome::Busy
    );
    assert!(fake.runner("busy").is_some(), "a busy runner stays");
    assert_eq!(
        client.delete_runner(&org(), idle).await.unwrap(),
        DeleteOutcome::Deleted
    );
    assert!(fake.runner("idle").is_none());
    assert_eq!(
        client.delete_runner(&org(), idle).await.unwrap(),
        DeleteOutcome::NotFound
    );
    // Another scope's runner is not found from this one.
    let repo = RunnerScope::parse("acme/app").unwrap();
    assert_eq!(
        client.delete_runner(&repo, busy).await.unwrap(),
        DeleteOutcome::NotFound
    );
    // The job ends: GitHub removes the ephemeral runner itself.
    assert!(fake.finish_job("busy"));
    assert_eq!(
        client.delete_runner(&org(), busy).await.unwrap(),
        DeleteOutcome::NotFound
    );
    let statuses: Vec<u16> = fake
        .requests("/orgs/acme/actions/runners/")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [422, 204, 404, 404]);
    fake.stop().await;
}

#[actix_web::test]
async fn rate_limits_outages_and_server_errors_are_errors_not_outcomes() {
    let (fake, client) = fake_and_client().await;
    let id = fake.add_runner(&org(), "r", &["small"], true);

    fake.rate_limit("/orgs/acme/actions/runners", 1, Duration::from_secs(1));
    let err = client.list_runners(&org()).await.unwrap_err();
    assert!(matches!(err, GitHubError::RateLimited(_)), "{err:?}");
    let sent = fake.state().log.len();
    let err = client.delete_runner(&org(), id).await.unwrap_err();
    assert!(matches!(err, GitHubError::RateLimited(_)), "{err:?}");
    assert_eq!(fake.state().log.len(), sent, "nothing sent while limited");
    assert!(fake.runner("r").is_some());
    // The client says how long the limit holds; after it, calls go out again.
    tokio::time::sleep(client.blocked_for().unwrap_or_default()).await;
    assert_eq!(client.list_runners(&org()).await.unwrap().len(), 1);

    fake.fail("/orgs/acme/actions/runners", 1, 502);
    let err = client.list_runners(&org()).await.unwrap_err();
    assert_eq!(err, GitHubError::Server(502));
    assert!(err.is_transient());

    fake.set_down(true);
    let err = client.delete_runner(&org(), id).await.unwrap_err();
    assert_eq!(err, GitHubError::Server(503));
    let err = client
        .generate_jit_config(&org(), "new", 1, &labels(&["x"]), "_work")
        .await
        .unwrap_err();
    assert_eq!(err, GitHubError::Server(503));
    assert!(fake.runner("r").is_some() && fake.runner("new").is_none());
    fake.set_down(false);
    assert_eq!(
        client.delete_runner(&org(), id).await.unwrap(),
        DeleteOutcome::Deleted
    );
    fake.stop().await;
}

#[actix_web::test]
async fn a_stand_in_runner_connects_runs_its_job_and_exits() {
    let (fake, client) = fake_and_client().await;
    let config = jit(&client, &org(), "m1-small-job").await;
    let mut runner = start_runner(&config, "idle").await;
    let listed = client.list_runners(&org()).await.unwrap();
    assert_eq!(listed[0].status, "online");
    assert!(!listed[0].busy);

    assert!(fake.assign_job("m1-small-job"));
    runner
        .wait_for_log("runner.name=m1-small-job state=busy", LIMIT)
        .await;
    assert!(client.list_runners(&org()).await.unwrap()[0].busy);
    assert!(fake.finish_job("m1-small-job"));
    runner.wait_for_log("state=done", LIMIT).await;
    assert!(!runner
        .log()
        .contains(config.encoded_jit_config.expose_secret()));
    let status = runner.wait(LIMIT).await;
    assert_eq!(status.code(), Some(EXIT_DONE));
    assert!(client.list_runners(&org()).await.unwrap().is_empty());
    // Long polls: one answered by the job's start, one by its end (more only if a step took
    // longer than a poll's wait), never a busy loop.
    let polls = fake.state().runner_polls;
    assert!((2..=6).contains(&polls), "{polls} polls");
    fake.stop().await;
}

#[actix_web::test]
async fn a_stand_in_runner_exits_when_deregistered_or_terminated() {
    let (fake, client) = fake_and_client().await;

    let removed = jit(&client, &org(), "m1-small-removed").await;
    let runner = start_runner(&removed, "idle").await;
    assert_eq!(
        client
            .delete_runner(&org(), removed.runner_id)
            .await
            .unwrap(),
        DeleteOutcome::Deleted
    );
    assert_eq!(runner.wait(LIMIT).await.code(), Some(EXIT_REMOVED));

    let stopped = jit(&client, &org(), "m1-small-stopped").await;
    let runner = start_runner(&stopped, "idle").await;
    runner.terminate();
    assert_eq!(runner.wait(LIMIT).await.code(), Some(EXIT_TERMINATED));
    fake.stop().await;
}

#[actix_web::test]
async fn a_runner_whose_process_dies_goes_offline_and_can_be_deregistered() {
    let (fake, client) = fake_and_client().await;
    fake.state().offline_after = Duration::from_millis(300);
    let config = jit(&client, &org(), "m1-small-killed").await;
    let mut runner = start_runner(&config, "idle").await;
    assert!(fake.assign_job("m1-small-killed"));
    runner.wait_for_log("state=busy", LIMIT).await;
    // A long poll in flight keeps it connected beyond `offline_after`.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(fake.runner("m1-small-killed").unwrap().online);
    assert_eq!(
        client
            .delete_runner(&org(), config.runner_id)
            .await
            .unwrap(),
        DeleteOutcome::Busy
    );
    runner.kill();
    runner.wait(LIMIT).await;
    let client = &client;
    eventually("the dead runner offline", LIMIT, || async move {
        let runners = client.list_runners(&org()).await.unwrap();
        runners[0].status == "offline" && !runners[0].busy
    })
    .await;
    assert_eq!(
        client
            .delete_runner(&org(), config.runner_id)
            .await
            .unwrap(),
        DeleteOutcome::Deleted
    );
    fake.stop().await;
}

#[actix_web::test]
async fn the_runner_side_takes_each_jit_configuration_once() {
    let (fake, client) = fake_and_client().await;
    let config = jit(&client, &org(), "m1-small-once").await;
    let http = reqwest::Client::builder().timeout(LIMIT).build().unwrap();
    let call = |path: &str, credential: &str| {
        let request = if path == runner_side::CONNECT_PATH {
            http.post(format!("{}{path}", fake.url))
        } else {
            http.get(format!("{}{path}", fake.url))
        };
        request
            .header("Authorization", format!("Bearer {credential}"))
            .send()
    };
    let secret = config.encoded_jit_config.expose_secret();
    let payload = runner_side::JitPayload::decode(secret).expect("a fake JIT configuration");
    assert_eq!(payload.url, fake.url);
    assert_eq!(payload.runner_id, config.runner_id);

    let poll = format!("{}?wait_ms=0", runner_side::POLL_PATH);
    let connect = runner_side::CONNECT_PATH;
    let mut statuses = Vec::new();
    for (path, credential) in [
        (poll.as_str(), secret),
        (connect, "forged"),
        (connect, secret),
        (connect, secret),
    ] {
        statuses.push(call(path, credential).await.unwrap().status().as_u16());
    }
    assert_eq!(
        statuses,
        [409, 401, 200, 409],
        "a poll before connecting, a forged configuration, a connect, a second connect"
    );
    let idle: serde_json::Value = call(&poll, secret).await.unwrap().json().await.unwrap();
    assert_eq!(idle["state"], "idle");
    // A long poll answers as soon as a job is assigned.
    let waiting = call(&format!("{}?wait_ms=20000", runner_side::POLL_PATH), secret);
    let assign = async {
        fake.wait_until("the long poll", LIMIT, |state| state.runner_polls == 3)
            .await;
        assert!(fake.assign_job("m1-small-once"));
    };
    let (busy, ()) = tokio::join!(waiting, assign);
    let busy: serde_json::Value = busy.unwrap().json().await.unwrap();
    assert_eq!(busy["state"], "busy");
    fake.stop().await;
}

/// A client of the `fake-github` process at `url`, with the test-only App key.
fn client_of(url: &str) -> Client {
    let vars: &[(&str, &str)] = &[
        ("APP_GITHUB_APP_ID", tests::fake_github::APP_ID),
        ("APP_GITHUB_APP_INSTALLATION_ID", "777"),
        (
            "APP_GITHUB_APP_PRIVATE_KEY_VALUE",
            tests::fake_github::PRIVATE_KEY,
        ),
        ("APP_GITHUB_API_URL", url),
    ];
    let config = actors::github::AppConfig::from_source(&vars)
        .unwrap()
        .unwrap();
    Client::new(config, "test").unwrap()
}

#[actix_web::test]
async fn the_fake_github_binary_stands_in_for_github() {
    let mut fake = Service::spawn("fake-github", &["--runner-group", "gpu"], &[]);
    let url = fake
        .logged_value("event=fake_github_listening", "url", LIMIT)
        .await;
    let client = client_of(&url);
    let gpu = client.runner_group_id(&org(), "gpu").await.unwrap();
    assert_eq!(gpu, Some(2));
    let config = client
        .generate_jit_config(&org(), "demo-gpu-1", 2, &labels(&["gpu"]), "_work")
        .await
        .unwrap();

    // The control routes drive it from another process, as the demo does.
    let http = reqwest::Client::builder().timeout(LIMIT).build().unwrap();
    let listed: serde_json::Value = http
        .get(format!("{url}/_fake/control/runners"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["name"], "demo-gpu-1");
    assert_eq!(listed[0]["online"], false);
    let assign = format!("{url}/_fake/control/runners/demo-gpu-1/assign");
    let refused = http.post(&assign).send().await.unwrap();
    assert_eq!(refused.status(), 409, "an offline runner gets no job");
    let mut runner = start_runner(&config, "idle").await;
    assert_eq!(http.post(&assign).send().await.unwrap().status(), 204);
    runner.wait_for_log("state=busy", LIMIT).await;
    let finish = format!("{url}/_fake/control/runners/demo-gpu-1/finish");
    assert_eq!(http.post(&finish).send().await.unwrap().status(), 204);
    assert_eq!(runner.wait(LIMIT).await.code(), Some(EXIT_DONE));
    assert!(!fake.log().contains("PRIVATE KEY"));
    fake.terminate();
    assert_eq!(fake.wait(LIMIT).await.code(), Some(0));
}

#[actix_web::test]
async fn the_fake_github_binary_can_run_jobs_by_itself() {
    let mut fake = Service::spawn("fake-github", &["--auto-assign", "--job-seconds", "1"], &[]);
    let url = fake
        .logged_value("event=fake_github_listening", "url", LIMIT)
        .await;
    let client = client_of(&url);
    let config = jit(&client, &org(), "demo-small-1").await;
    let runner = start_runner(&config, "busy").await;
    assert!(client.list_runners(&org()).await.unwrap()[0].busy);
    assert_eq!(runner.wait(LIMIT).await.code(), Some(EXIT_DONE));
    assert!(client.list_runners(&org()).await.unwrap().is_empty());
    fake.terminate();
    assert_eq!(fake.wait(LIMIT).await.code(), Some(0));
}
