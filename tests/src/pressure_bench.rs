//! Pressure scenarios of `make bench` (called from `src/bin/bench.rs`): recomputation time at 1k,
//! 10k and 100k open jobs, webhook-to-stream latency through the release gateway and planner,
//! and fan-out to many NDJSON subscribers of one planner. Each is bounded in count and time and
//! cleans up its database (dropped with [`TestDb`]) and queues ([`TopologyGuard`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    db::{rabbitmq_url, TestDb},
    planner::{TopologyGuard, ADMIN_TOKEN},
    process::Service,
};

/// One row of the benchmark table: scenario, figure, target.
pub type Row = (String, String, String);

const MAX_AGE: Duration = Duration::from_secs(5 * 24 * 3600);
const FLAVORS: usize = 100;
const RUNS: usize = 50;

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Recomputation time (the calculator's own query function) with 100 flavors and 1k, 10k and
/// 100k open jobs (plus as many completed ones, which the partial index leaves out).
pub fn recompute(rows: &mut Vec<Row>) {
    let db = TestDb::new();
    let mut conn = PgConnection::establish(db.url()).expect("bench database");
    diesel::sql_query(format!(
        "INSERT INTO flavor (name, platform, labels, priority) \
         SELECT 'flavor-' || g, 'github', ARRAY['label-' || g], 0 FROM generate_series(0, {}) g",
        FLAVORS - 1
    ))
    .execute(&mut conn)
    .unwrap();
    let mut inserted = 0;
    for open in [1_000usize, 10_000, 100_000] {
        diesel::sql_query(format!(
            "INSERT INTO job (platform, id, labels, status, repository, created_at, assigned_flavor) \
             SELECT 'github', g, ARRAY['x'], \
                    CASE WHEN g % 2 = 0 THEN 'queued' ELSE 'in_progress' END, 'bench/repo', \
                    now() - (g % 3600) * interval '1 second', 'flavor-' || (g % {FLAVORS}) \
             FROM generate_series({}, {}) g",
            inserted + 1,
            open
        ))
        .execute(&mut conn)
        .unwrap();
        // History: as many completed jobs as open ones.
        diesel::sql_query(format!(
            "INSERT INTO job (platform, id, labels, status, repository, created_at, assigned_flavor) \
             SELECT 'github', g, ARRAY['x'], 'completed', 'bench/repo', now(), 'flavor-' || (g % {FLAVORS}) \
             FROM generate_series({}, {}) g",
            1_000_000 + inserted + 1,
            1_000_000 + open
        ))
        .execute(&mut conn)
        .unwrap();
        inserted = open;
        diesel::sql_query("VACUUM ANALYZE job")
            .execute(&mut conn)
            .unwrap();
        let mut times = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let started = Instant::now();
            let (map, _) = planner::pressure::compute(&mut conn, MAX_AGE).unwrap();
            times.push(started.elapsed());
            assert_eq!(map.len(), FLAVORS);
            assert_eq!(map.values().sum::<u64>(), open as u64);
        }
        times.sort();
        if open == 100_000 {
            #[derive(diesel::QueryableByName)]
            struct Plan {
                #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
                line: String,
            }
            let plan: Vec<Plan> = diesel::sql_query(
                "EXPLAIN (ANALYZE, BUFFERS) \
                 SELECT assigned_flavor, count(*), min(created_at) FROM job \
                 WHERE status IN ('queued', 'in_progress') AND assigned_flavor IS NOT NULL \
                   AND created_at > now() - interval '5 days' GROUP BY assigned_flavor",
            )
            .load(&mut conn)
            .unwrap();
            for line in plan {
                eprintln!("bench: plan: {}", line.line);
            }
        }
        rows.push((
            format!("4. pressure recomputation: {FLAVORS} flavors, {open} open jobs (+{open} completed), {RUNS} runs"),
            format!(
                "p50 {}, max {}",
                ms(percentile(&times, 0.5)),
                ms(*times.last().unwrap())
            ),
            "< 10 ms at 100k".into(),
        ));
    }
}

struct Stack {
    _db: TestDb,
    _queues: TopologyGuard,
    gateway: Service,
    planner: Service,
    gateway_url: String,
    planner_url: String,
}

async fn stack(extra: &[(&str, &str)]) -> Stack {
    let db = TestDb::new();
    let topology = actors::amqp::Topology::with_prefix(&crate::unique("bench-pressure"));
    let queues = TopologyGuard(topology.clone());
    let rabbitmq = rabbitmq_url();
    let mut vars = vec![
        ("POSTGRESQL_DB_CONNECT_STRING", db.url()),
        ("RABBITMQ_CONNECT_STRING", rabbitmq.as_str()),
        ("APP_ADMIN_TOKEN_VALUE", ADMIN_TOKEN),
        ("APP_AMQP_NAME", topology.queue.as_str()),
        ("APP_PORT", "0"),
        ("OTEL_EXPORTER_PROMETHEUS_PORT", "0"),
        (
            "RUST_LOG",
            "warn,planner::startup=info,planner::consumer=info,planner::pressure=info",
        ),
    ];
    vars.extend_from_slice(extra);
    let mut planner = Service::spawn_release("planner", &["serve", "--no-migrate"], &vars);
    let port = planner
        .logged_value("event=planner_listening", "port", Duration::from_secs(20))
        .await;
    planner
        .wait_for_log("event=consumer_started", Duration::from_secs(20))
        .await;
    let planner_url = format!("http://127.0.0.1:{port}");
    let mut gateway = Service::spawn_release(
        "gateway",
        &[],
        &[
            ("RABBITMQ_CONNECT_STRING", &rabbitmq),
            ("APP_WEBHOOK_SECRET_VALUE", SECRET),
            ("APP_PORT", "0"),
            ("APP_AMQP_NAME", &topology.queue),
            ("OTEL_EXPORTER_PROMETHEUS_PORT", "0"),
            ("RUST_LOG", "info,gateway::routes=warn"),
        ],
    );
    let port = gateway
        .logged_value("event=gateway_listening", "port", Duration::from_secs(10))
        .await;
    gateway
        .wait_for_log("event=amqp_connected", Duration::from_secs(10))
        .await;
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{planner_url}/api/v1/flavors/bench"))
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
        gateway_url: format!("http://127.0.0.1:{port}"),
        planner_url,
    }
}

const SECRET: &str = "bench-secret";

fn job_body(id: i64) -> Vec<u8> {
    let mut body: serde_json::Value =
        serde_json::from_slice(&crate::fixtures::fixture("workflow_job/queued.1.json")).unwrap();
    body["action"] = "queued".into();
    body["workflow_job"]["id"] = id.into();
    body["workflow_job"]["status"] = "queued".into();
    body["workflow_job"]["labels"] = serde_json::json!(["self-hosted", "bench"]);
    body["workflow_job"]["created_at"] = chrono::Utc::now().to_rfc3339().into();
    serde_json::to_vec(&body).unwrap()
}

async fn stop(stack: Stack) {
    stack.gateway.terminate();
    stack.planner.terminate();
    let _ = stack.gateway.wait(Duration::from_secs(20)).await;
    let _ = stack.planner.wait(Duration::from_secs(20)).await;
}

/// Webhook-to-stream latency: `rate` webhooks/s for `seconds` through the release gateway; the
/// time from the gateway's 200 for the n-th webhook until a subscriber's NDJSON stream shows a
/// pressure of at least n.
pub async fn latency(rate: u64, seconds: u64, rows: &mut Vec<Row>) {
    let stack = stack(&[]).await;
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/flavors/bench/pressure",
            stack.planner_url
        ))
        .query(&[("stream", "true")])
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let total = (rate * seconds) as usize;
    // seen[n] = when the stream first showed pressure >= n.
    let reader = tokio::spawn(async move {
        let mut lines = crate::stream::Lines::new(response);
        let mut seen: Vec<Instant> = Vec::with_capacity(total + 1);
        while seen.len() <= total {
            let Some(line) = lines.next(Duration::from_secs(30)).await else {
                break;
            };
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            let pressure = value["bench"].as_u64().unwrap_or(0) as usize;
            let now = Instant::now();
            while seen.len() <= pressure.min(total) {
                seen.push(now);
            }
        }
        seen
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("{}/webhook", stack.gateway_url);
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate as u32);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = Vec::with_capacity(total);
    for id in 1..=total as i64 {
        ticker.tick().await;
        let client = client.clone();
        let body = job_body(id);
        let signature = gateway::webhook::sign(SECRET, &body);
        let url = url.clone();
        requests.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .header("Content-Type", "application/json")
                .header("X-GitHub-Event", "workflow_job")
                .header("X-GitHub-Delivery", format!("bench-{id}"))
                .header("X-Hub-Signature-256", signature)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            Instant::now()
        }));
    }
    let mut answered = Vec::with_capacity(total);
    for request in requests {
        answered.push(request.await.unwrap());
    }
    // The n-th 200 (in time order) against the moment n jobs were visible.
    answered.sort();
    let seen = reader.await.unwrap();
    assert_eq!(seen.len(), total + 1, "the stream showed every job");
    let mut latencies: Vec<Duration> = answered
        .iter()
        .enumerate()
        .map(|(i, at)| seen[i + 1].saturating_duration_since(*at))
        .collect();
    latencies.sort();
    stop(stack).await;
    rows.push((
        format!("4. webhook to stream line: {rate} webhooks/s for {seconds} s, gateway 200 -> NDJSON line"),
        format!(
            "p50 {}, p99 {}, max {}",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(*latencies.last().unwrap())
        ),
        "p99 < 50 ms".into(),
    ));
}

/// One NDJSON subscriber over a raw TCP connection (10,000 of them must be cheap on the client
/// side too): returns when its stream contains `needle`, with the time it did.
async fn subscriber(
    port: u16,
    ready: Arc<tokio::sync::Semaphore>,
    needle: &'static [u8],
) -> Option<Instant> {
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
            return Some(Instant::now());
        }
    }
}

/// Fan-out: `count` NDJSON subscribers of one release planner; its RSS, and the time from a
/// flavor change (the PATCH sent) until the last subscriber has the new line.
pub async fn fan_out(count: usize, rows: &mut Vec<Row>) {
    let stack = stack(&[("APP_STREAM_HEARTBEAT", "10m")]).await;
    let pid = stack.planner.pid();
    let port: u16 = stack
        .planner_url
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let idle = rss_kib(pid);
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
    let all_ready =
        tokio::time::timeout(Duration::from_secs(120), ready.acquire_many(count as u32)).await;
    let connect_time = started.elapsed();
    let subscribed_rss = rss_kib(pid);
    let changed_at = Instant::now();
    let response = reqwest::Client::new()
        .patch(format!("{}/api/v1/flavors/bench", stack.planner_url))
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
    for task in tasks {
        if let Ok(Ok(Some(at))) = tokio::time::timeout(Duration::from_secs(30), task).await {
            updated += 1;
            let after = at.saturating_duration_since(changed_at);
            first = first.min(after);
            last = last.max(after);
        }
    }
    let after_rss = rss_kib(pid);
    stop(stack).await;
    rows.push((
        format!(
            "4. fan-out: {count} NDJSON subscribers on one planner (connected in {:.1} s{})",
            connect_time.as_secs_f64(),
            if all_ready.is_ok() { "" } else { ", NOT ALL" }
        ),
        format!(
            "RSS {:.1} MB idle / {:.1} MB subscribed / {:.1} MB after the change; {updated} updated after the PATCH was sent: first {}, last {} (PATCH answered in {})",
            idle as f64 / 1024.0,
            subscribed_rss as f64 / 1024.0,
            after_rss as f64 / 1024.0,
            ms(first),
            ms(last),
            ms(answered)
        ),
        "< 300 MB; all within 250 ms".into(),
    ));
}
