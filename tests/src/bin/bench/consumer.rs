//! Scenario 2 (the database's ceiling against the planner consumer's rate) and scenario 6 (the
//! consumer's rate and the pressure recomputation as the `job` table grows) of `make bench`.
//!
//! The consumer is measured on a queue filled before the planner starts: from the moment its
//! consumer is registered until every delivery is in the `delivery` table (the planner
//! acknowledges a delivery only after the transaction that applied it has committed). Each job
//! gets the three deliveries of its life (`queued`, `in_progress`, `completed`, GitHub's
//! fixtures, 8 to 13 KB), interleaved as they are in production: jobs start while others queue.

use std::time::{Duration, Instant};

use actors::amqp::Topology;
use diesel::{Connection, PgConnection, RunQueryDsl};
use schema::{
    models::{Job, JobState, Status},
    queries::{self, NewPayload},
    schema::job,
};

use crate::measure::{ms, percentile, Row, Usage};
use crate::pressure::{insert_flavors, insert_jobs, time_recompute, FLAVORS};
use tests::{
    amqp::{Broker, TopologyGuard},
    db::TestDb,
    process::PlannerProcess,
    telemetry::Scrape,
};

/// Rows inserted to find the database's ceiling.
const CEILING_ROWS: usize = 24_000;
/// Rows per statement, and deliveries per transaction of the statements alone.
const BATCH: usize = 64;
/// Jobs whose lives the consumer applies (three deliveries each).
const JOBS: usize = 8_000;
/// Jobs of each scaling step's consumer run.
const SCALING_JOBS: usize = 3_000;
/// Open jobs at every scaling step (the rest of the table is history).
const SCALING_OPEN: usize = 1_000;
/// Publisher confirms awaited at once while filling the queue.
const FILL_IN_FLIGHT: usize = 256;

/// The webhook bodies of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// GitHub's documented payloads (8 to 13 KB: the job, the repository with its URLs, the
    /// sender, ...), as production sees them.
    GitHub,
    /// Only the fields the planner reads (0.4 KB): what the pipeline costs besides storing
    /// GitHub's payloads.
    Minimal,
}

impl Payload {
    /// The body of job `id`'s delivery for `action`.
    pub fn body(self, id: i64, action: &str) -> Vec<u8> {
        let full = crate::pressure::job_body(id, action);
        if self == Payload::GitHub {
            return full;
        }
        let full: serde_json::Value = serde_json::from_slice(&full).unwrap();
        let job = &full["workflow_job"];
        let keep = [
            "id",
            "run_id",
            "run_attempt",
            "status",
            "conclusion",
            "created_at",
            "started_at",
            "completed_at",
            "name",
            "labels",
            "runner_name",
            "workflow_name",
        ];
        let job: serde_json::Map<String, serde_json::Value> = keep
            .iter()
            .map(|key| ((*key).to_owned(), job[*key].clone()))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "action": full["action"],
            "workflow_job": job,
            "repository": {"full_name": full["repository"]["full_name"]},
        }))
        .unwrap()
    }

    fn describe(self) -> &'static str {
        match self {
            Payload::GitHub => "GitHub's 8-13 KB payloads",
            Payload::Minimal => "minimal 0.4 KB payloads",
        }
    }
}

/// The job rows the database ceiling inserts: queued jobs as the consumer stores them.
fn job_rows(count: usize) -> Vec<Job> {
    let now = chrono::Utc::now();
    (1..=count)
        .map(|id| Job {
            state: JobState {
                platform: "github".into(),
                id: i64::try_from(id).unwrap(),
                labels: vec!["self-hosted".into(), "bench".into()],
                status: Status::Queued,
                conclusion: None,
                repository: "octo-org/example-workflow".into(),
                run_id: Some(1),
                run_attempt: Some(1),
                workflow_name: Some("CI".into()),
                job_name: Some("build".into()),
                runner_name: None,
                created_at: now,
                started_at: None,
                completed_at: None,
            },
            assigned_flavor: Some("bench".into()),
            updated_at: now,
        })
        .collect()
}

/// The database alone: [`CEILING_ROWS`] jobs, each a job row and its 13 KB payload, inserted
/// [`BATCH`] per statement (one multi-row insert of each), a transaction per batch, into the
/// same tables, indexes and triggers the planner writes, from as many sessions at once as the
/// consumer has transactions in flight. Jobs per second.
pub fn database_ceiling(payload: Payload) -> f64 {
    let db = TestDb::new();
    let rows = job_rows(CEILING_ROWS);
    let body = String::from_utf8(payload.body(1, "queued")).unwrap();
    per_second_in_sessions(&db, &rows, |conn, jobs| {
        let payloads: Vec<NewPayload<'_>> = jobs
            .iter()
            .map(|row| NewPayload {
                platform: "github",
                job_id: row.state.id,
                action: "queued",
                payload: &body,
            })
            .collect();
        conn.transaction::<_, diesel::result::Error, _>(|conn| {
            diesel::insert_into(job::table).values(jobs).execute(conn)?;
            queries::upsert_payloads(conn, &payloads)
        })
        .unwrap();
    })
}

/// The planner's own statements without the broker: the consumer's job lives, classified
/// and applied by the job store's `apply_batch` straight from the bench, [`BATCH`] deliveries
/// per transaction, from as many sessions as the consumer has transactions in flight: what the
/// consumer would do if receiving, classifying and acknowledging cost nothing. Deliveries per
/// second.
pub fn statements_ceiling(payload: Payload) -> f64 {
    let db = TestDb::new();
    insert_bench_flavor(&mut PgConnection::establish(db.url()).expect("bench database"));
    let events: Vec<_> = lives(payload, 1, JOBS)
        .into_iter()
        .map(|(body, delivery)| {
            tests::planner::job_event(&serde_json::from_slice(&body).unwrap(), &delivery)
        })
        .collect();
    let ignored = planner::domain::labels::IgnoredLabels::default();
    per_second_in_sessions(&db, &events, |conn, batch| {
        planner::store::apply_batch(conn, &ignored, batch).unwrap();
    })
}

/// Runs `work` on `items` [`BATCH`] at a time, the batches dealt in turn to as many sessions
/// of `db` as the consumer has transactions in flight, each on a thread of its own; items per
/// second.
fn per_second_in_sessions<T: Sync>(
    db: &TestDb,
    items: &[T],
    work: impl Fn(&mut PgConnection, &[T]) + Sync,
) -> f64 {
    let sessions = planner::consumer::BATCHES_IN_FLIGHT;
    let mut connections: Vec<PgConnection> = (0..sessions)
        .map(|_| PgConnection::establish(db.url()).expect("bench database"))
        .collect();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (session, conn) in connections.iter_mut().enumerate() {
            let work = &work;
            scope.spawn(move || {
                for batch in items.chunks(BATCH).skip(session).step_by(sessions) {
                    work(conn, batch);
                }
            });
        }
    });
    items.len() as f64 / started.elapsed().as_secs_f64()
}

/// Fills the queue with the lives of jobs `first..first + jobs` ([`lives`]).
async fn fill_queue(topology: &Topology, payload: Payload, first: usize, jobs: usize) -> usize {
    let publisher = Broker::connect(topology).await;
    let messages = lives(payload, first, jobs);
    let count = messages.len();
    publisher.publish_all(messages, FILL_IN_FLIGHT).await;
    count
}

/// The deliveries (body, delivery id) of the lives of jobs `first..first + jobs`, in the order
/// a busy installation sends them (job n queued while job n-100 starts and n-200 completes).
pub fn lives(payload: Payload, first: usize, jobs: usize) -> Vec<(Vec<u8>, String)> {
    let mut messages = Vec::with_capacity(jobs * 3);
    for step in 0..jobs + 200 {
        for (lag, action) in [(0, "queued"), (100, "in_progress"), (200, "completed")] {
            if let Some(n) = step.checked_sub(lag).filter(|n| *n < jobs) {
                let id = i64::try_from(first + n).unwrap();
                messages.push((payload.body(id, action), format!("bench-{id}-{action}")));
            }
        }
    }
    messages
}

/// Deliveries the planner has applied and acknowledged (or found duplicate), from its metrics:
/// polling its own counter costs the database nothing.
pub async fn applied(client: &reqwest::Client, metrics_url: &str) -> f64 {
    let scrape = Scrape::get_with(client, metrics_url).await;
    scrape.sum("github_runner_planner_webhook_consumed_total")
        + scrape.sum("github_runner_planner_webhook_duplicates_total")
}

/// What one consumer run measured.
struct Consumed {
    /// Deliveries applied per second.
    rate: f64,
    /// Planner CPU seconds per 1,000 deliveries.
    cpu_per_1000: f64,
    /// Planner resident memory at the end, MB.
    rss_mb: f64,
    /// Mean deliveries per transaction.
    batch: f64,
}

/// Inserts flavor `bench`, the one the consumer scenarios' jobs (label `bench`) match.
pub fn insert_bench_flavor(conn: &mut PgConnection) {
    diesel::sql_query(
        "INSERT INTO flavor (name, platform, labels, priority) \
         VALUES ('bench', 'github', ARRAY['bench'], 0)",
    )
    .execute(conn)
    .expect("bench flavor");
}

/// Fills a queue with `jobs` job lives (ids from `first`), starts a release planner on `db`
/// and times it until every delivery is applied.
async fn consume(db: &TestDb, payload: Payload, first: usize, jobs: usize) -> Consumed {
    let topology = Topology::with_prefix(&tests::unique("bench-consumer"));
    let _queues = TopologyGuard(topology.clone());
    let count = fill_queue(&topology, payload, first, jobs).await;
    tokio::task::block_in_place(crate::measure::settle);
    let planner = PlannerProcess::new(db.url(), &topology.queue)
        .release()
        .arg("--no-migrate")
        .env(
            "RUST_LOG",
            "warn,planner::startup=info,planner::consumer=info",
        )
        .start()
        .await;
    let started = Instant::now();
    let pid = planner.service.pid();
    let cpu_before = Usage::of(pid).cpu_seconds;
    let deadline = started + Duration::from_secs(120);
    let client = reqwest::Client::new();
    while applied(&client, &planner.metrics_url).await < count as f64 {
        assert!(
            Instant::now() < deadline,
            "the planner did not apply {count} deliveries within 2 minutes; it logged:\n{}",
            planner.service.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let usage = Usage::of(pid);
    let scrape = Scrape::get(&planner.metrics_url).await;
    let batch = scrape.sum("github_runner_planner_consumer_batch_deliveries_sum")
        / scrape.sum("github_runner_planner_consumer_batch_deliveries_count");
    planner.service.terminate();
    let _ = planner.service.wait(Duration::from_secs(20)).await;
    Consumed {
        rate: count as f64 / elapsed.as_secs_f64(),
        cpu_per_1000: (usage.cpu_seconds - cpu_before) / (count as f64 / 1000.0),
        rss_mb: usage.rss_mb(),
        batch,
    }
}

/// Scenario 2: the database's ceiling, then the planner consumer on a pre-filled queue; with
/// GitHub's payloads, then with minimal ones.
pub async fn scenario_2(rows: &mut Vec<Row>) {
    for payload in [Payload::GitHub, Payload::Minimal] {
        eprintln!("bench: database ceiling ({}) ...", payload.describe());
        tokio::task::block_in_place(crate::measure::settle);
        let ceiling = tokio::task::block_in_place(|| database_ceiling(payload));
        eprintln!(
            "bench: the planner's statements alone ({}) ...",
            payload.describe()
        );
        tokio::task::block_in_place(crate::measure::settle);
        let statements = tokio::task::block_in_place(|| statements_ceiling(payload));
        eprintln!("bench: consumer ({}) ...", payload.describe());
        let db = TestDb::new();
        insert_bench_flavor(&mut PgConnection::establish(db.url()).expect("bench database"));
        let consumed = consume(&db, payload, 1, JOBS).await;
        let what = payload.describe();
        rows.push(Row::new(
            format!(
                "2. database ceiling, {what}: {CEILING_ROWS} jobs (row + payload) inserted {BATCH} per statement, a transaction per {BATCH}, {} sessions",
                planner::consumer::BATCHES_IN_FLIGHT
            ),
            format!("{ceiling:.0} jobs/s"),
            "(reference)",
        ));
        rows.push(Row::new(
            format!(
                "2. the planner's statements alone, {what}: the consumer's {} deliveries classified and applied by the job store's `apply_batch` from the bench, {BATCH} per transaction, {} sessions (no broker)",
                JOBS * 3,
                planner::consumer::BATCHES_IN_FLIGHT
            ),
            format!("{statements:.0} events/s"),
            "(reference)",
        ));
        rows.push(Row::new(
            format!(
                "2. consumer, {what}: {} deliveries ({JOBS} jobs: queued, in_progress, completed) from a pre-filled queue, ack after commit",
                JOBS * 3
            ),
            format!(
                "{:.0} events/s = {:.2} x ceiling = {:.2} x the statements alone; {:.1} deliveries per transaction; planner {:.3} CPU s per 1,000, {:.1} MB",
                consumed.rate,
                consumed.rate / ceiling,
                consumed.rate / statements,
                consumed.batch,
                consumed.cpu_per_1000,
                consumed.rss_mb
            ),
            ">= 5,000 events/s and >= 0.8 x ceiling",
        ));
    }
}

/// Scenario 6: at 1k, 10k, 100k and 1M rows in `job` ([`SCALING_OPEN`] open, the rest
/// completed history with empty payloads), the pressure recomputation time and the consumer's
/// rate on [`SCALING_JOBS`] more job lives.
pub async fn scenario_6(rows: &mut Vec<Row>) {
    let db = TestDb::new();
    let mut conn = PgConnection::establish(db.url()).expect("bench database");
    insert_flavors(&mut conn);
    // The consumer's jobs go to a flavor of their own, so the recompute checks stay exact.
    insert_bench_flavor(&mut conn);
    tokio::task::block_in_place(|| insert_jobs(&mut conn, 1, SCALING_OPEN, true));
    // Rows in `job`: the open jobs, then history, and the jobs each step's consumer completes.
    let mut rows_now = SCALING_OPEN;
    let mut next_history = 1_000_000;
    let mut next_job = 10_000_000;
    for target in [1_000usize, 10_000, 100_000, 1_000_000] {
        eprintln!("bench: scaling at {target} rows ...");
        if target > rows_now {
            let to = next_history + target - rows_now - 1;
            tokio::task::block_in_place(|| insert_jobs(&mut conn, next_history, to, false));
            next_history = to + 1;
            rows_now = target;
        }
        let times =
            tokio::task::block_in_place(|| time_recompute(&mut conn, FLAVORS + 1, SCALING_OPEN));
        let consumed = consume(&db, Payload::GitHub, next_job, SCALING_JOBS).await;
        next_job += SCALING_JOBS;
        rows_now += SCALING_JOBS;
        rows.push(Row::new(
            format!(
                "6. {target} rows in job ({SCALING_OPEN} open, {FLAVORS} flavors): recompute ({} runs); consumer on {} more deliveries",
                crate::pressure::RUNS,
                SCALING_JOBS * 3
            ),
            format!(
                "recompute p50 {}, max {}; consumer {:.0} events/s ({:.1} per transaction)",
                ms(percentile(&times, 0.5)),
                ms(*times.last().unwrap()),
                consumed.rate,
                consumed.batch
            ),
            "flat as history grows",
        ));
    }
}
