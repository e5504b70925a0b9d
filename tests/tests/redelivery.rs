//! Redelivery end to end: the gateway finds failed `workflow_job` deliveries on a fake GitHub
//! API and asks for them again; the fake re-sends them, signed, to the gateway's `/webhook`,
//! which hands them to the real RabbitMQ; a real planner stores the job in PostgreSQL.

use std::time::Duration;

use serde_json::json;
use tests::{
    amqp::TopologyGuard,
    db::TestDb,
    eventually,
    fake_github::{FakeGitHub, APP_ID, PRIVATE_KEY},
    fixtures::job_payload,
    gateway::{Options, TestGateway, SECRET},
    planner::TestPlanner,
};

/// A gateway with redelivery against `fake`, every `interval`, on `topology`.
async fn spawn_gateway(
    fake: &FakeGitHub,
    topology: &actors::amqp::Topology,
    interval: &str,
) -> TestGateway {
    let env = [
        ("APP_GITHUB_APP_ID", APP_ID),
        ("APP_GITHUB_APP_INSTALLATION_ID", "777"),
        ("APP_GITHUB_APP_PRIVATE_KEY_VALUE", PRIVATE_KEY),
        ("APP_GITHUB_API_URL", &fake.url),
        ("APP_GITHUB_PATH", "octo-org"),
        ("APP_WEBHOOK_ID", "55"),
        ("APP_REDELIVERY_INTERVAL", interval),
    ];
    TestGateway::spawn(Options {
        amqp_name: Some(topology.queue.clone()),
        env: env
            .iter()
            .map(|&(key, value)| (key, value.to_owned()))
            .collect(),
        ..Options::default()
    })
    .await
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
}

#[actix_web::test]
async fn failed_deliveries_are_redelivered_once_into_the_database() {
    let db = TestDb::new();
    let queues = TopologyGuard::unique();
    let topology = queues.topology();
    let fake = FakeGitHub::start().await;
    {
        let mut state = fake.state();
        state.page_size = 2;
        state.rate_limit_next_listing = true;
    }
    let planner = TestPlanner::builder()
        .database(db.url())
        .topology(topology)
        .start()
        .await;
    let gateway = spawn_gateway(&fake, topology, "200ms").await;
    let (gateway_url, metrics_url) = (gateway.url.clone(), gateway.metrics_url.clone());

    let lost = job_payload("queued.1", 91_001, "queued", &["self-hosted", "linux"]);
    let too_old = job_payload("queued.1", 91_002, "queued", &["self-hosted", "linux"]);
    let retried = job_payload("queued.1", 91_003, "queued", &["self-hosted", "linux"]);
    let lost_id;
    {
        let mut state = fake.state();
        state.webhook_target = Some((gateway_url.clone(), SECRET.to_owned()));
        let minutes = chrono::Duration::minutes;
        lost_id = state.add_delivery(
            "guid-lost",
            chrono::Duration::seconds(60),
            503,
            "workflow_job",
            &lost,
        );
        // Failed, then succeeded on a later attempt: nothing to do.
        state.add_delivery(
            "guid-retried",
            chrono::Duration::seconds(90),
            502,
            "workflow_job",
            &retried,
        );
        state.add_delivery(
            "guid-retried",
            chrono::Duration::seconds(30),
            200,
            "workflow_job",
            &retried,
        );
        // Another event failed: not ours.
        state.add_delivery(
            "guid-push",
            chrono::Duration::seconds(40),
            500,
            "push",
            &json!({}),
        );
        for (n, age) in [10, 20, 50, 70, 80].into_iter().enumerate() {
            state.add_delivery(
                &format!("guid-ok-{n}"),
                chrono::Duration::seconds(age),
                200,
                "workflow_job",
                &retried,
            );
        }
        // Outside GitHub's redelivery window: paging stops before it.
        state.add_delivery(
            "guid-too-old",
            minutes(60 * 24 * 4),
            503,
            "workflow_job",
            &too_old,
        );
        state.add_delivery(
            "guid-older",
            minutes(60 * 24 * 5),
            200,
            "workflow_job",
            &too_old,
        );
    }

    let (planner, fake) = (&planner, &fake);
    // The redelivered job goes gateway -> RabbitMQ -> planner -> PostgreSQL.
    eventually(
        "the lost job reaches the database",
        Duration::from_secs(30),
        || async move { planner.job(91_001).await.is_some() },
    )
    .await;
    let job = planner.job(91_001).await.expect("job");
    assert_eq!(job["status"], "queued", "{job}");

    // Let several more rounds run, then check each failed delivery was asked for once only.
    let listings = fake
        .state()
        .requests("/orgs/octo-org/hooks/55/deliveries?per_page=100")
        .len();
    eventually(
        "three more listing rounds",
        Duration::from_secs(30),
        || async move {
            fake.state()
                .requests("/orgs/octo-org/hooks/55/deliveries?per_page=100")
                .len()
                >= listings + 3
        },
    )
    .await;
    {
        let state = fake.state();
        assert_eq!(
            state.redelivery_requests,
            vec![lost_id],
            "asked once, only for the lost one"
        );
        let redelivered: Vec<_> = state
            .deliveries
            .iter()
            .filter(|d| d.redelivery)
            .map(|d| (d.guid.clone(), d.status_code))
            .collect();
        assert_eq!(
            redelivered,
            vec![("guid-lost".to_owned(), 200)],
            "the gateway took it"
        );
        // Paging: pages of two, followed through `Link` cursors, never past the window.
        assert!(
            state
                .requests("/orgs/octo-org/hooks/55/deliveries?per_page=2&cursor=")
                .len()
                >= 2,
            "later pages were read through Link headers"
        );
        // The 429 was respected: nothing was sent to the API for the next second.
        let log = &state.log;
        let limited = log
            .iter()
            .position(|l| l.status == 429)
            .expect("one 429 served");
        let next = &log[limited + 1];
        assert!(
            next.at.duration_since(log[limited].at) >= Duration::from_millis(950),
            "a request {:?} after the 429's Retry-After: 1",
            next.at.duration_since(log[limited].at)
        );
        assert_eq!(state.unauthorized, 0, "every JWT and token was accepted");
        assert_eq!(state.bad_headers, 0, "GitHub's headers were always sent");
        assert!(state.tokens_issued >= 1);
    }
    assert!(planner.job(91_002).await.is_none(), "outside the window");
    assert!(
        planner.job(91_003).await.is_none(),
        "a delivery that succeeded later"
    );

    let text = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&text, "github_runner_webhook_redelivery_count_total"),
        Some(1.0)
    );
    assert!(
        metric(&text, "github_runner_webhook_redelivery_errors_total") >= Some(1.0),
        "the 429 counts as a failure"
    );
    gateway.stop().await;
}

#[actix_web::test]
async fn the_fake_refuses_jwts_not_signed_by_the_app_key() {
    let fake = FakeGitHub::start().await;
    let response = reqwest::Client::new()
        .post(format!("{}/app/installations/777/access_tokens", fake.url))
        .header("Accept", "application/vnd.github+json")
        .header("X-GitHub-Api-Version", "2022-11-28")
        .header("User-Agent", "test")
        .bearer_auth("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiI0MjQyIn0.bm90LWEtc2lnbmF0dXJl")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(fake.state().tokens_issued, 0);
    fake.stop().await;
}

#[actix_web::test]
async fn later_rounds_stop_at_the_previous_scan_and_ask_only_for_new_failures() {
    use gateway::config::{HookOwner, RedeliveryConfig};
    use gateway::metrics::RedeliveryMetrics;
    use gateway::redelivery::Redeliverer;
    let fake = FakeGitHub::start().await;
    let payload = job_payload("queued.1", 92_001, "queued", &["self-hosted"]);
    let first = {
        let mut state = fake.state();
        state.page_size = 2;
        for n in 0..5 {
            let age = chrono::Duration::minutes(20 + n);
            state.add_delivery(&format!("guid-ok-{n}"), age, 200, "workflow_job", &payload);
        }
        state.add_delivery(
            "guid-a",
            chrono::Duration::minutes(30),
            503,
            "workflow_job",
            &payload,
        )
    };
    let config = RedeliveryConfig {
        owner: HookOwner::Repo("octo".into(), "repo".into()),
        hook_id: 9,
        interval: Duration::from_secs(600),
        app: fake.app_config(),
    };
    let metrics = RedeliveryMetrics::register(&prometheus::Registry::new()).unwrap();
    let mut redeliverer = Redeliverer::new(&config, metrics.clone()).unwrap();
    let report = redeliverer.round().await;
    assert!(report.complete, "{report:?}");
    assert_eq!(report.pages, 3, "six deliveries, two per page");
    assert_eq!(report.asked, 1);

    // New: a failure after the first scan, and one from before it that was never listed
    // (older than the previous scan less its margin): only the new one is asked for.
    let second = {
        let mut state = fake.state();
        state.add_delivery(
            "guid-b",
            chrono::Duration::seconds(1),
            500,
            "workflow_job",
            &payload,
        );
        state.add_delivery(
            "guid-c",
            chrono::Duration::minutes(40),
            500,
            "workflow_job",
            &payload,
        );
        state.deliveries.retain(|d| !d.redelivery);
        state.requests("/repos/octo/repo/hooks/9/deliveries").len()
    };
    let report = redeliverer.round().await;
    assert_eq!(report.asked, 1, "{report:?}");
    assert!(
        report.pages <= 2,
        "stopped at the previous scan: {report:?}"
    );
    let state = fake.state();
    let asked: Vec<String> = state
        .redelivery_requests
        .iter()
        .map(|id| {
            state
                .deliveries
                .iter()
                .find(|d| d.id == *id)
                .unwrap()
                .guid
                .clone()
        })
        .collect();
    assert_eq!(asked, vec!["guid-a".to_owned(), "guid-b".to_owned()]);
    assert_eq!(state.redelivery_requests[0], first);
    assert!(state.requests("/repos/octo/repo/hooks/9/deliveries").len() > second);
    assert_eq!(metrics.asked.get(), 2);
    assert_eq!(metrics.failures.get(), 0);
}
