//! The web console's page loads with 100 flavors and 100k jobs (10k open, 90k completed) and
//! 100k recorded deliveries: each page requested [`LOADS`] times, one after another, by a
//! signed-in client of the planner binary; server time plus loopback, as a browser's first
//! byte to last (assets are cached and left out).

use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};

use crate::measure::{latencies, Row};
use crate::pressure::{insert_flavors, insert_jobs};
use tests::{amqp::TopologyGuard, console::ConsoleClient, db::TestDb, planner::ADMIN_TOKEN};

/// Loads timed per page.
const LOADS: usize = 30;

/// Every page timed.
const PAGES: [(&str, &str); 7] = [
    ("overview", "/console"),
    ("jobs", "/console/jobs"),
    (
        "jobs, filtered",
        "/console/jobs?status=queued&flavor=flavor-7",
    ),
    ("one job", "/console/jobs/github/5000"),
    ("match", "/console/match?labels=label-3"),
    ("deliveries", "/console/deliveries"),
    ("set-up", "/console/setup"),
];

fn insert_deliveries(conn: &mut PgConnection, count: usize) {
    diesel::sql_query(format!(
        "INSERT INTO delivery (id, job_platform, job_id, action, first_seen_at, last_seen_at, \
                               duplicates) \
         SELECT 'delivery-' || g, 'github', g, 'queued', now() - g * interval '1 second', \
                now() - g * interval '1 second', (g % 50 = 0)::int \
         FROM generate_series(1, {count}) g"
    ))
    .execute(conn)
    .unwrap();
    diesel::sql_query("VACUUM ANALYZE delivery")
        .execute(conn)
        .unwrap();
}

/// The console scenario: a row per page.
pub async fn page_loads(rows: &mut Vec<Row>) {
    let db = TestDb::new();
    {
        let mut conn = PgConnection::establish(db.url()).unwrap();
        insert_flavors(&mut conn);
        insert_jobs(&mut conn, 1, 10_000, true);
        insert_jobs(&mut conn, 1_000_001, 1_090_000, false);
        insert_deliveries(&mut conn, 100_000);
    }
    let topology = actors::amqp::Topology::with_prefix(&tests::unique("bench-console"));
    let _queues = TopologyGuard(topology.clone());
    let planner = tests::process::PlannerProcess::new(db.url(), &topology.queue)
        .release()
        .env(
            "RUST_LOG",
            "warn,planner::startup=info,planner::consumer=info",
        )
        .start()
        .await;
    let client = ConsoleClient::signed_in(&planner.url, ADMIN_TOKEN).await;
    for (name, path) in PAGES {
        // One load first: connections and plans warm.
        client.page(path).await;
        let mut times: Vec<Duration> = Vec::with_capacity(LOADS);
        for _ in 0..LOADS {
            let started = Instant::now();
            let body = client.page(path).await;
            times.push(started.elapsed());
            assert!(body.contains("</html>"), "{path}: not a whole page");
        }
        times.sort();
        rows.push(Row::new(
            format!("console: {name} page, 100 flavors, 100k jobs, 100k deliveries"),
            latencies(&times),
            "< 100 ms",
        ));
    }
}
