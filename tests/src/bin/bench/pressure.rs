//! Scenarios 3, 4 and 5 of `make bench`: webhooks end to end (gateway 200 to the NDJSON line
//! at a subscriber) at a steady rate with both services' memory and CPU; pressure
//! recomputation time with 1k, 10k and 100k open jobs; fan-out of one change to many NDJSON
//! subscribers of one planner. Each is bounded in count and time and cleans up its database
//! (dropped with [`TestDb`]) and queues ([`TopologyGuard`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::gateway::Signed;
use crate::measure::{latencies, ms, percentile, PeakRss, Row, Usage};
use tests::{
    amqp::TopologyGuard,
    db::TestDb,
    planner::ADMIN_TOKEN,
    process::{GatewayProcess, PlannerProcess, Running},
};

/// `APP_JOB_MAX_AGE`'s default, as the recompute scenarios use it.
pub const MAX_AGE: Duration = Duration::from_secs(5 * 24 * 3600);
/// Flavors of the recompute scenarios.
pub const FLAVORS: usize = 100;
/// Recomputations timed at each size.
pub const RUNS: usize = 50;

/// Inserts the recompute scenarios' [`FLAVORS`] flavors (`flavor-0` ...) into an empty database.
pub fn insert_flavors(conn: &mut PgConnection) {
    diesel::sql_query(format!(
        "INSERT INTO flavor (name, platform, labels, priority) \
         SELECT 'flavor-' || g, 'github', ARRAY['label-' || g], 0 FROM generate_series(0, {}) g",
        FLAVORS - 1
    ))
    .execute(conn)
    .unwrap();
}

/// Inserts jobs `from..=to` spread over the [`FLAVORS`] flavors: open ones (half `queued`, half
/// `in_progress`, created within the last hour) or completed ones (history), with an empty
/// payload, then refreshes the table's statistics.
pub fn insert_jobs(conn: &mut PgConnection, from: usize, to: usize, open: bool) {
    let status = if open {
        "CASE WHEN g % 2 = 0 THEN 'queued' ELSE 'in_progress' END"
    } else {
        "'completed'"
    };
    diesel::sql_query(format!(
        "INSERT INTO job (platform, id, labels, status, repository, created_at, assigned_flavor) \
         SELECT 'github', g, ARRAY['x'], {status}, 'bench/repo', \
                now() - (g % 3600) * interval '1 second', 'flavor-' || (g % {FLAVORS}) \
         FROM generate_series({from}, {to}) g"
    ))
    .execute(conn)
    .unwrap();
    diesel::sql_query("VACUUM ANALYZE job")
        .execute(conn)
        .unwrap();
}

/// Times [`RUNS`] recomputations (the calculator's own function) and checks each one against
/// `flavors` flavors and `open` open jobs in all; sorted durations.
pub fn time_recompute(conn: &mut PgConnection, flavors: usize, open: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        let (map, _) = planner::pressure::compute(conn, MAX_AGE).unwrap();
        times.push(started.elapsed());
        assert_eq!(map.len(), flavors);
        assert_eq!(map.values().sum::<u64>(), open as u64);
    }
    times.sort();
    times
}

/// Scenario 4: recomputation time with [`FLAVORS`] flavors and 1k, 10k and 100k open jobs (plus
/// as many completed ones).
pub fn recompute(rows: &mut Vec<Row>) {
    let db = TestDb::new();
    let mut conn = PgConnection::establish(db.url()).expect("bench database");
    insert_flavors(&mut conn);
    let mut inserted = 0;
    for open in [1_000usize, 10_000, 100_000] {
        insert_jobs(&mut conn, inserted + 1, open, true);
        insert_jobs(&mut conn, 1_000_000 + inserted + 1, 1_000_000 + open, false);
        inserted = open;
        let times = time_recompute(&mut conn, FLAVORS, open);
        rows.push(Row::new(
            format!("4. pressure recomputation: {FLAVORS} flavors, {open} open jobs (+{open} completed), {RUNS} runs"),
            format!("p50 {}, max {}", ms(percentile(&times, 0.5)), ms(*times.last().unwrap())),
            "< 10 ms at 100k",
        ));
    }
}

/// A release planner and gateway on a database and topology of their own, with the flavor
/// `bench` (label `bench`).
pub(crate) struct Stack {
    _db: TestDb,
    _queues: TopologyGuard,
    pub(crate) gateway: Running,
    pub(crate) planner: Running,
}

pub(crate) async fn stack(extra: &[(&str, &str)]) -> Stack {
    let db = TestDb::new();
    let topology = actors::amqp::Topology::with_prefix(&tests::unique("bench-pressure"));
    let queues = TopologyGuard(topology.clone());
    let mut planner = PlannerProcess::new(db.url(), &topology.queue)
        .release()
        .arg("--no-migrate")
        .env(
            "RUST_LOG",
            "warn,planner::startup=info,planner::consumer=info,planner::pressure=info",
        );
    for (key, value) in extra {
        planner = planner.env(key, value);
    }
    let planner = planner.start().await;
    let gateway = GatewayProcess::new(&topology.queue)
        .release()
        .env("RUST_LOG", "info,gateway::routes=warn")
        .start()
        .await;
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/flavors/bench", planner.url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"platform": "github", "labels": ["bench"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    Stack {
        _db: db,
        _queues: queues,
        gateway,
        planner,
    }
}

/// A queued self-hosted job with labels `bench`, created now (GitHub's fixture, 13 KB).
pub fn job_body(id: i64, action: &str) -> Vec<u8> {
    let fixture = match action {
        "in_progress" => "in_progress.1",
        "completed" => "completed.0",
        _ => "queued.1",
    };
    let mut body = tests::fixtures::job_payload(fixture, id, action, &["self-hosted", "bench"]);
    body["workflow_job"]["created_at"] = chrono::Utc::now().to_rfc3339().into();
    serde_json::to_vec(&body).unwrap()
}

pub(crate) async fn stop(stack: Stack) {
    stack.gateway.service.terminate();
    stack.planner.service.terminate();
    let _ = stack.gateway.service.wait(Duration::from_secs(20)).await;
    let _ = stack.planner.service.wait(Duration::from_secs(20)).await;
}

/// Scenarios 3 and 5: `rate` webhooks/s (each a new queued job) for `seconds` through the
/// release gateway and planner; the time from the gateway's 200 for the n-th webhook until a
/// subscriber's NDJSON stream shows a pressure of at least n; both services' resident memory
/// idle and at its peak during the run, and CPU seconds per 1,000 webhooks.
pub async fn end_to_end(rate: u64, seconds: u64, rows: &mut Vec<Row>) {
    let stack = stack(&[]).await;
    let (gateway_pid, planner_pid) = (stack.gateway.service.pid(), stack.planner.service.pid());
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/flavors/bench/pressure",
            stack.planner.url
        ))
        .query(&[("stream", "true")])
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let total = usize::try_from(rate * seconds).unwrap();
    // seen[n] = when the stream first showed pressure >= n.
    let reader = tokio::spawn(async move {
        let mut lines = tests::stream::Lines::new(response);
        let mut seen: Vec<Instant> = Vec::with_capacity(total + 1);
        while seen.len() <= total {
            let Some(line) = lines.next(Duration::from_secs(30)).await else {
                break;
            };
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            let pressure = usize::try_from(value["bench"].as_u64().unwrap_or(0)).unwrap();
            let now = Instant::now();
            while seen.len() <= pressure.min(total) {
                seen.push(now);
            }
        }
        seen
    });
    // Bodies signed before the clock starts: the load generator's own work stays out of it.
    let webhooks: Arc<Vec<Signed>> = Arc::new(
        (1..=total)
            .map(|id| Signed::new(job_body(i64::try_from(id).unwrap(), "queued")))
            .collect(),
    );
    let client = crate::gateway::client(64);
    let url = format!("{}/webhook", stack.gateway.url);
    let idle = (Usage::of(gateway_pid), Usage::of(planner_pid));
    let peaks = (PeakRss::watch(gateway_pid), PeakRss::watch(planner_pid));
    let answered = crate::gateway::at_fixed_rate(rate, seconds, |n| {
        let (client, url, webhooks) = (client.clone(), url.clone(), webhooks.clone());
        async move {
            crate::gateway::post(&client, &url, &webhooks[n], &format!("bench-{n}")).await;
            Instant::now()
        }
    })
    .await;
    // The n-th 200 (in time order) against the moment n jobs were visible.
    let seen = reader.await.unwrap();
    assert_eq!(seen.len(), total + 1, "the stream showed every job");
    let after = (Usage::of(gateway_pid), Usage::of(planner_pid));
    let peak = (peaks.0.peak_mb(), peaks.1.peak_mb());
    drop(peaks);
    let mut delays: Vec<Duration> = answered
        .iter()
        .enumerate()
        .map(|(i, at)| seen[i + 1].saturating_duration_since(*at))
        .collect();
    delays.sort();
    stop(stack).await;
    let per_1000 = |before: Usage, after: Usage| {
        (after.cpu_seconds - before.cpu_seconds) / (total as f64 / 1000.0)
    };
    rows.push(Row::new(
        format!("3. end to end: {rate} webhooks/s for {seconds} s (13 KB, each a new job), gateway 200 -> NDJSON line"),
        latencies(&delays),
        "p99 < 50 ms",
    ));
    rows.push(Row::new(
        "5. resident memory idle / peak during scenario 3 (one stream subscriber)",
        format!(
            "gateway {:.1} MB / {:.1} MB; planner {:.1} MB / {:.1} MB",
            idle.0.rss_mb(),
            peak.0,
            idle.1.rss_mb(),
            peak.1
        ),
        "gateway < 30 MB, planner < 100 MB",
    ));
    rows.push(Row::new(
        "5. CPU per 1,000 webhooks during scenario 3",
        format!(
            "gateway {:.3} CPU s, planner {:.3} CPU s",
            per_1000(idle.0, after.0),
            per_1000(idle.1, after.1)
        ),
        "(reference)",
    ));
}

/// One NDJSON subscriber over a raw TCP connection (10,000 of them must be cheap on the client
/// side too): returns when its stream contains `needle`, with the time it did and the
/// connection, still open: a runner manager stays subscribed, so closing 10,000 connections is
/// no part of a change reaching them (the caller closes them once every subscriber has it).
async fn subscriber(
    port: u16,
    ready: Arc<tokio::sync::Semaphore>,
    needle: &'static [u8],
) -> Option<(Instant, tokio::net::TcpStream)> {
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!(
        "GET /api/v1/flavors/_/pressure?stream=true HTTP/1.1\r\nHost: bench\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.ok()?;
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 512];
    // The headers and the first line.
    while !buffer.windows(2).any(|w| w == b"}\n") {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    ready.add_permits(1);
    buffer.clear();
    loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if buffer.windows(needle.len()).any(|w| w == needle) {
            return Some((Instant::now(), socket));
        }
    }
}

/// Scenario 4, fan-out: `count` NDJSON subscribers of one release planner; its RSS, and the time
/// from a flavor change (the PATCH sent) until the last subscriber has the new line.
pub async fn fan_out(count: usize, rows: &mut Vec<Row>) {
    let stack = stack(&[("APP_STREAM_HEARTBEAT", "10m")]).await;
    let pid = stack.planner.service.pid();
    let port: u16 = stack
        .planner
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let idle = Usage::of(pid);
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    let connecting = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count {
        let (ready, connecting) = (ready.clone(), connecting.clone());
        tasks.push(tokio::spawn(async move {
            let permit = connecting.acquire_owned().await.unwrap();
            let ready_inner = Arc::new(tokio::sync::Semaphore::new(0));
            let watcher = ready_inner.clone();
            let run = tokio::spawn(subscriber(port, ready_inner, br#""bench":5"#));
            // Release the connect slot once this subscriber has its first line.
            let _ = tokio::time::timeout(Duration::from_secs(60), watcher.acquire()).await;
            drop(permit);
            ready.add_permits(1);
            run.await.ok().flatten()
        }));
    }
    let all_ready = tokio::time::timeout(
        Duration::from_secs(120),
        ready.acquire_many(u32::try_from(count).unwrap()),
    )
    .await;
    let connect_time = started.elapsed();
    let subscribed = Usage::of(pid);
    let changed_at = Instant::now();
    let response = reqwest::Client::new()
        .patch(format!("{}/api/v1/flavors/bench", stack.planner.url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"minimum_pressure": 5}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let answered = changed_at.elapsed();
    let mut updated = 0;
    let mut first = Duration::MAX;
    let mut last = Duration::ZERO;
    let mut open = Vec::with_capacity(count);
    for task in tasks {
        if let Ok(Ok(Some((at, socket)))) =
            tokio::time::timeout(Duration::from_secs(30), task).await
        {
            updated += 1;
            let after = at.saturating_duration_since(changed_at);
            first = first.min(after);
            last = last.max(after);
            open.push(socket);
        }
    }
    let after = Usage::of(pid);
    drop(open);
    stop(stack).await;
    rows.push(Row::new(
        format!(
            "4. fan-out: {count} NDJSON subscribers on one planner (connected in {:.1} s{})",
            connect_time.as_secs_f64(),
            if all_ready.is_ok() { "" } else { ", NOT ALL" }
        ),
        format!(
            "RSS {:.1} MB idle / {:.1} MB subscribed / {:.1} MB after the change; {updated} updated after the PATCH was sent: first {}, last {} (PATCH answered in {})",
            idle.rss_mb(),
            subscribed.rss_mb(),
            after.rss_mb(),
            ms(first),
            ms(last),
            ms(answered)
        ),
        "< 300 MB; all within 250 ms",
    ));
}
