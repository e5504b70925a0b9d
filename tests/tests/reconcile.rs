//! Reconciliation end to end: a real planner (PostgreSQL, RabbitMQ) checks its open jobs
//! against a fake GitHub API and completes the ones GitHub reports completed or gone.

use std::time::Duration;

use actors::github::{Client, GitHubError};
use chrono::Utc;
use diesel::RunQueryDsl;
use planner::{
    config::ReconcileConfig,
    domain::labels::IgnoredLabels,
    metrics::ReconcileMetrics,
    reconcile::{Reconciler, NOT_FOUND_CONCLUSION},
    store::{build_pool, PgPool},
};
use schema::queries;
use serde_json::{json, Value};
use tests::{
    amqp::{Broker, TopologyGuard},
    db::TestDb,
    eventually,
    fake_github::{FakeGitHub, JobAnswer},
    fixtures::job_payload,
    planner::{seed, TestPlanner},
};

const LABELS: &[&str] = &["self-hosted", "linux", "large"];

fn github_job(id: i64, status: &str, conclusion: Option<&str>) -> Value {
    json!({
        "id": id, "run_id": 5, "status": status, "conclusion": conclusion,
        "started_at": "2023-04-19T21:13:00Z",
        "completed_at": conclusion.map(|_| "2023-04-19T21:20:00Z"),
        "name": "build", "workflow_name": "CI", "runner_name": "runner-7",
        "labels": LABELS,
    })
}

fn open_large(pool: &PgPool) -> i64 {
    let mut conn = pool.get().unwrap();
    queries::open_job_counts(&mut conn, &["large".to_owned()])
        .unwrap()
        .first()
        .map_or(0, |(_, count)| *count)
}

#[actix_web::test]
async fn lost_completions_are_reconciled_and_open_jobs_stay() {
    let db = TestDb::new();
    let queues = TopologyGuard::unique();
    let topology = queues.topology();
    let fake = FakeGitHub::start().await;
    {
        let mut state = fake.state();
        state.jobs.insert(
            1,
            JobAnswer::Job(github_job(1, "completed", Some("success"))),
        );
        state
            .jobs
            .insert(2, JobAnswer::Job(github_job(2, "queued", None)));
        state.jobs.insert(3, JobAnswer::NotFound);
        state.jobs.insert(
            4,
            JobAnswer::ServerErrors(
                2,
                Box::new(JobAnswer::Job(github_job(4, "completed", Some("failure")))),
            ),
        );
        state.jobs.insert(
            5,
            JobAnswer::Job(github_job(5, "completed", Some("success"))),
        );
    }
    let github = fake.app_config();
    // Seed the jobs before the planner starts reconciling.
    {
        let pool = build_pool(db.url(), 1, Duration::from_secs(5));
        // Flavor `large` gets every job below: its pressure is their count.
        let mut conn = pool.get().unwrap();
        diesel::sql_query(
            "INSERT INTO flavor (name, platform, labels, priority) \
             VALUES ('large', 'github', ARRAY['large'], 1)",
        )
        .execute(&mut conn)
        .unwrap();
        drop(conn);
        for (id, action) in [
            (1, "queued"),
            (2, "queued"),
            (3, "in_progress"),
            (4, "queued"),
        ] {
            // Created in 2023: long overdue.
            seed(
                &pool,
                &job_payload("queued.1", id, action, LABELS),
                &format!("seed-{id}"),
            );
        }
        let mut recent = job_payload("queued.1", 5, "queued", LABELS);
        recent["workflow_job"]["created_at"] = Utc::now().to_rfc3339().into();
        seed(&pool, &recent, "seed-5");
        assert_eq!(open_large(&pool), 5);
    }

    let planner = TestPlanner::builder()
        .database(db.url())
        .topology(topology)
        .tune(move |config| {
            config.github = Some(github);
            config.reconcile = ReconcileConfig {
                after: Duration::from_secs(3600),
                interval: Duration::from_millis(100),
                batch: 50,
            };
        })
        .start()
        .await;
    let metrics = planner.metrics.reconcile.clone();

    let (planner, fake) = (&planner, &fake);
    // Job 4 needs three rounds (two 5xx, then completed).
    eventually(
        "job 4 is completed after its 5xx",
        Duration::from_secs(30),
        || async move {
            planner
                .job(4)
                .await
                .is_some_and(|job| job["status"] == "completed")
        },
    )
    .await;

    let job = planner.job(1).await.unwrap();
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["conclusion"], "success");
    assert_eq!(job["completed_at"], "2023-04-19T21:20:00Z");
    let job = planner.job(2).await.unwrap();
    assert_eq!(job["status"], "queued", "still queued on GitHub: {job}");
    let job = planner.job(3).await.unwrap();
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["conclusion"], NOT_FOUND_CONCLUSION);
    let job = planner.job(4).await.unwrap();
    assert_eq!(job["conclusion"], "failure");
    let job = planner.job(5).await.unwrap();
    assert_eq!(job["status"], "queued", "too recent to be checked");

    {
        let state = fake.state();
        assert_eq!(state.job_lookups.get(&1), Some(&1));
        assert_eq!(
            state.job_lookups.get(&2),
            Some(&1),
            "not checked again within APP_RECONCILE_AFTER"
        );
        assert_eq!(
            state.job_lookups.get(&4),
            Some(&3),
            "5xx: retried in the next rounds"
        );
        assert_eq!(state.job_lookups.get(&5), None, "not due");
        assert_eq!(state.unauthorized, 0);
        assert_eq!(state.bad_headers, 0);
    }
    // Pressure: only the jobs open on GitHub are left.
    assert_eq!(open_large(&planner.pool), 2);
    assert_eq!(metrics.corrected.with_label_values(&["completed"]).get(), 2);
    assert_eq!(metrics.corrected.with_label_values(&["not_found"]).get(), 1);
    assert_eq!(metrics.errors.get(), 2);
    assert_eq!(metrics.checked.get(), 4);

    // A late `completed` webhook for job 1 still applies and wins.
    let publisher = Broker::connect(topology).await;
    let mut late = job_payload("completed.1", 1, "completed", LABELS);
    late["workflow_job"]["conclusion"] = "cancelled".into();
    publisher.publish(&late, "late-completed-1").await;
    eventually(
        "the late webhook applies",
        Duration::from_secs(30),
        || async move {
            planner
                .job(1)
                .await
                .is_some_and(|job| job["conclusion"] == "cancelled")
        },
    )
    .await;
    let job = planner.job(1).await.unwrap();
    assert_eq!(job["status"], "completed");
}

#[actix_web::test]
async fn concurrent_rounds_check_each_job_once() {
    let db = TestDb::new();
    let fake = FakeGitHub::start().await;
    let pool = build_pool(db.url(), 4, Duration::from_secs(5));
    for id in 100..130 {
        seed(
            &pool,
            &job_payload("queued.1", id, "queued", LABELS),
            &format!("seed-{id}"),
        );
        fake.state()
            .jobs
            .insert(id, JobAnswer::Job(github_job(id, "queued", None)));
    }
    let reconciler = || {
        Reconciler::new(
            Client::new(fake.app_config(), "test").unwrap(),
            pool.clone(),
            IgnoredLabels::default(),
            ReconcileConfig {
                after: Duration::from_secs(3600),
                interval: Duration::from_secs(1),
                batch: 20,
            },
            ReconcileMetrics::new().unwrap(),
        )
    };
    let (a, b) = (reconciler(), reconciler());
    let (first, second) = futures::join!(a.round(), b.round());
    let third = reconciler().round().await;
    assert_eq!(
        first.claimed + second.claimed + third.claimed,
        30,
        "{first:?} {second:?} {third:?}"
    );
    {
        let state = fake.state();
        for id in 100..130 {
            assert_eq!(state.job_lookups.get(&id), Some(&1), "job {id}");
        }
    }
    assert_eq!(
        reconciler().round().await.claimed,
        0,
        "nothing due any more"
    );
    fake.stop().await;
}

#[actix_web::test]
async fn tokens_are_refreshed_before_expiry_and_rate_limits_are_respected() {
    let fake = FakeGitHub::start().await;
    fake.state().token_lifetime = Duration::from_secs(4);
    fake.state()
        .jobs
        .insert(1, JobAnswer::Job(github_job(1, "queued", None)));
    let mut config = fake.app_config();
    config.refresh_margin = Duration::from_secs(2);
    let client = Client::new(config, "test").unwrap();
    let (client, fake) = (&client, &fake);
    // Keep calling until a second token was needed; the fake answers 401 to an expired token.
    eventually(
        "a second installation token",
        Duration::from_secs(15),
        || async move {
            client
                .get("/repos/o/r/actions/jobs/1")
                .await
                .expect("lookup");
            fake.state().tokens_issued >= 2
        },
    )
    .await;
    assert_eq!(fake.state().unauthorized, 0, "never an expired token");
    assert_eq!(client.tokens_fetched(), 2);

    // A 429 with Retry-After blocks the client without any request.
    fake.state().rate_limit_next_listing = true;
    let err = client
        .get("/orgs/o/hooks/1/deliveries?per_page=100")
        .await
        .unwrap_err();
    assert!(matches!(err, GitHubError::RateLimited(_)), "{err:?}");
    let sent = fake.state().log.len();
    let err = client.get("/repos/o/r/actions/jobs/1").await.unwrap_err();
    assert!(matches!(err, GitHubError::RateLimited(wait) if wait <= Duration::from_secs(1)));
    assert_eq!(
        fake.state().log.len(),
        sent,
        "nothing sent while rate limited"
    );
    eventually("the limit lifts", Duration::from_secs(5), || async move {
        client.get("/repos/o/r/actions/jobs/1").await.is_ok()
    })
    .await;

    // A 403 secondary limit that names no time: at least a minute without requests.
    fake.state().forbid_next_listing = true;
    let err = client
        .get("/orgs/o/hooks/1/deliveries?per_page=100")
        .await
        .unwrap_err();
    assert_eq!(
        err,
        GitHubError::RateLimited(actors::github::SECONDARY_LIMIT_WAIT)
    );
    let sent = fake.state().log.len();
    let err = client.get("/repos/o/r/actions/jobs/1").await.unwrap_err();
    assert!(matches!(err, GitHubError::RateLimited(wait) if wait > Duration::from_secs(50)));
    assert_eq!(
        fake.state().log.len(),
        sent,
        "nothing sent while rate limited"
    );
}
