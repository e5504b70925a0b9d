//! `make bench`: release-mode benchmarks against the real local RabbitMQ (and, as the planner
//! scenarios land, PostgreSQL). Every scenario sends a bounded number of requests in bounded
//! time and stops by itself. Prints a table and writes `BENCHMARKS.md`.
//!
//! Scenario 1 (gateway vs broker ceiling):
//! - broker ceiling: persistent 20 KB messages published with confirms, many in flight on one
//!   channel, mandatory, exactly as the gateway publishes;
//! - gateway at saturation: signed 20 KB `workflow_job` webhooks through `POST /webhook` from
//!   many connections, to the release binary running as its own process;
//! - gateway at a fixed 1,000 webhooks/s: latency percentiles;
//! - resources: gateway resident memory idle and after load, CPU seconds per 1,000 webhooks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::amqp::Topology;
use futures::stream::{FuturesUnordered, StreamExt};
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions, QueuePurgeOptions},
    types::FieldTable,
    BasicProperties,
};
use tests::amqp::{rabbitmq_url, Broker};
use tests::process::Service;

const PAYLOAD_BYTES: usize = 20 * 1024;
const SECRET: &str = "bench-secret";

/// Bounded sizes: each scenario stops by itself.
const CEILING_MESSAGES: usize = 20_000;
const CEILING_IN_FLIGHT: usize = 512;
const SATURATION_WEBHOOKS: usize = 10_000;
const SATURATION_CONNECTIONS: usize = 64;
const FIXED_RATE: u64 = 1_000;
const FIXED_SECONDS: u64 = 5;
const PRESSURE_RATE: u64 = 200;
const PRESSURE_SECONDS: u64 = 5;
const FAN_OUT: usize = 10_000;

struct Row {
    scenario: String,
    figure: String,
    target: String,
}

fn payload() -> Vec<u8> {
    let mut value: serde_json::Value =
        serde_json::from_slice(&tests::fixtures::fixture("workflow_job/queued.1.json")).unwrap();
    let base = serde_json::to_vec(&value).unwrap().len();
    value["padding"] =
        serde_json::Value::String("x".repeat(PAYLOAD_BYTES.saturating_sub(base + 14)));
    let body = serde_json::to_vec(&value).unwrap();
    assert!((PAYLOAD_BYTES - 64..=PAYLOAD_BYTES + 64).contains(&body.len()));
    body
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Resident memory (KiB) and CPU seconds (user + system) of a process, from /proc.
fn resources(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    (rss, ticks / 100.0)
}

async fn broker_ceiling(body: &[u8]) -> f64 {
    let topology = Topology::with_prefix(&tests::unique("bench-ceiling"));
    let broker = Broker::connect(topology.clone()).await;
    let connection = actors::amqp::connect(&rabbitmq_url(), "bench", Duration::from_secs(5))
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut sent = 0;
    let mut confirmed = 0;
    while confirmed < CEILING_MESSAGES {
        while sent < CEILING_MESSAGES && in_flight.len() < CEILING_IN_FLIGHT {
            let confirm = channel
                .basic_publish(
                    topology.exchange.as_str().into(),
                    topology.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into())
                        .with_headers(FieldTable::default()),
                )
                .await
                .unwrap();
            in_flight.push(confirm);
            sent += 1;
        }
        let confirmation = in_flight.next().await.unwrap().unwrap();
        assert!(confirmation.is_ack());
        confirmed += 1;
    }
    let rate = CEILING_MESSAGES as f64 / started.elapsed().as_secs_f64();
    let _ = channel
        .queue_purge(topology.queue.as_str().into(), QueuePurgeOptions::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    broker.cleanup().await;
    rate
}

/// A signed webhook body; cloning it is cheap.
#[derive(Clone)]
struct Signed {
    body: bytes::Bytes,
    signature: String,
}

async fn post(client: &reqwest::Client, url: &str, webhook: &Signed) -> Duration {
    let started = Instant::now();
    let response = client
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-GitHub-Event", "workflow_job")
        .header("X-GitHub-Delivery", "bench")
        .header("X-Hub-Signature-256", webhook.signature.as_str())
        .body(webhook.body.clone())
        .send()
        .await
        .expect("request");
    let status = response.status();
    let _ = response.bytes().await;
    assert_eq!(status, 200, "gateway answered {status}");
    started.elapsed()
}

/// The broker alone at the gateway's fixed rate: publish-to-confirm latency of persistent
/// 20 KB messages at FIXED_RATE per second, each awaited on its own (the floor under the
/// gateway's latency at that rate).
async fn broker_fixed_rate(body: &[u8]) -> Vec<Duration> {
    let topology = Topology::with_prefix(&tests::unique("bench-broker-rate"));
    let broker = Broker::connect(topology.clone()).await;
    let connection = actors::amqp::connect(&rabbitmq_url(), "bench", Duration::from_secs(5))
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body = bytes::Bytes::copy_from_slice(body);
    let total = (FIXED_RATE * FIXED_SECONDS) as usize;
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / FIXED_RATE as u32);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut confirms = Vec::with_capacity(total);
    for _ in 0..total {
        ticker.tick().await;
        let channel = channel.clone();
        let topology = topology.clone();
        let body = body.clone();
        confirms.push(tokio::spawn(async move {
            let started = Instant::now();
            let confirmation = channel
                .basic_publish(
                    topology.exchange.as_str().into(),
                    topology.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into()),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirmation.is_ack());
            started.elapsed()
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for confirm in confirms {
        latencies.push(confirm.await.unwrap());
    }
    latencies.sort();
    let _ = connection.close(200, "done".into()).await;
    broker.cleanup().await;
    latencies
}

async fn gateway_scenarios(body: Vec<u8>, ceiling: f64, rows: &mut Vec<Row>) {
    let topology = Topology::with_prefix(&tests::unique("bench-gateway"));
    let broker = Broker::connect(topology.clone()).await;
    let mut gateway = Service::spawn_release(
        "gateway",
        &[],
        &[
            ("RABBITMQ_CONNECT_STRING", &rabbitmq_url()),
            ("APP_WEBHOOK_SECRET_VALUE", SECRET),
            ("APP_PORT", "0"),
            ("APP_AMQP_NAME", &topology.queue),
            ("OTEL_EXPORTER_PROMETHEUS_PORT", "0"),
            // One log line per webhook is for operators, not for a benchmark.
            ("RUST_LOG", "info,gateway::routes=warn"),
        ],
    );
    let port = gateway
        .logged_value("event=gateway_listening", "port", Duration::from_secs(10))
        .await;
    gateway
        .wait_for_log("event=amqp_connected", Duration::from_secs(10))
        .await;
    let pid = gateway.pid();
    let url = format!("http://127.0.0.1:{port}/webhook");
    let webhook = Signed {
        signature: gateway::webhook::sign(SECRET, &body),
        body: body.into(),
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(SATURATION_CONNECTIONS)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (idle_rss, _) = resources(pid);

    // Warm-up: connections and the first allocations.
    for _ in 0..200 {
        post(&client, &url, &webhook).await;
    }

    // Saturation: SATURATION_CONNECTIONS workers, SATURATION_WEBHOOKS requests in all.
    let (_, cpu_before) = resources(pid);
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..SATURATION_CONNECTIONS {
        let client = client.clone();
        let url = url.clone();
        let next = next.clone();
        let webhook = webhook.clone();
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < SATURATION_WEBHOOKS {
                post(&client, &url, &webhook).await;
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let elapsed = started.elapsed();
    let (loaded_rss, cpu_after) = resources(pid);
    let rate = SATURATION_WEBHOOKS as f64 / elapsed.as_secs_f64();
    let cpu_per_1000 = (cpu_after - cpu_before) / (SATURATION_WEBHOOKS as f64 / 1000.0);

    // Fixed rate: FIXED_RATE webhooks/s for FIXED_SECONDS, each request on its own schedule.
    let total = (FIXED_RATE * FIXED_SECONDS) as usize;
    let interval = Duration::from_secs(1) / FIXED_RATE as u32;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = Vec::with_capacity(total);
    for _ in 0..total {
        ticker.tick().await;
        let client = client.clone();
        let url = url.clone();
        let webhook = webhook.clone();
        requests.push(tokio::spawn(
            async move { post(&client, &url, &webhook).await },
        ));
    }
    let mut latencies = Vec::with_capacity(total);
    for request in requests {
        latencies.push(request.await.unwrap());
    }
    latencies.sort();
    let p50 = percentile(&latencies, 0.50);
    let p99 = percentile(&latencies, 0.99);
    let max = *latencies.last().unwrap();

    gateway.terminate();
    let status = gateway.wait(Duration::from_secs(20)).await;
    assert!(status.success(), "gateway exited with {status}");
    broker.cleanup().await;

    rows.push(Row {
        scenario: format!(
            "1. broker ceiling: {CEILING_MESSAGES} persistent 20 KB publishes with confirms, {CEILING_IN_FLIGHT} in flight, one channel"
        ),
        figure: format!("{ceiling:.0} msg/s"),
        target: "(reference)".into(),
    });
    rows.push(Row {
        scenario: format!(
            "1. gateway saturation: {SATURATION_WEBHOOKS} signed 20 KB webhooks, {SATURATION_CONNECTIONS} connections"
        ),
        figure: format!("{rate:.0} webhooks/s = {:.2} x ceiling", rate / ceiling),
        target: ">= 0.8 x ceiling".into(),
    });
    rows.push(Row {
        scenario: format!("1. gateway at a fixed {FIXED_RATE} webhooks/s for {FIXED_SECONDS} s"),
        figure: format!("p50 {}, p99 {}, max {}", ms(p50), ms(p99), ms(max)),
        target: "p99 < 10 ms".into(),
    });
    rows.push(Row {
        scenario: "5. gateway resident memory: idle / after saturation".into(),
        figure: format!(
            "{:.1} MB / {:.1} MB",
            idle_rss as f64 / 1024.0,
            loaded_rss as f64 / 1024.0
        ),
        target: "< 30 MB".into(),
    });
    rows.push(Row {
        scenario: "5. gateway CPU per 1,000 webhooks (saturation run)".into(),
        figure: format!("{cpu_per_1000:.3} CPU s"),
        target: "(reference)".into(),
    });
}

/// Scenario 4 (pressure): recomputation time, webhook-to-stream latency, fan-out.
async fn pressure_scenarios(rows: &mut Vec<Row>) {
    use tests::pressure_bench;
    let mut pressure_rows = Vec::new();
    eprintln!("bench: pressure recomputation ...");
    tokio::task::block_in_place(|| pressure_bench::recompute(&mut pressure_rows));
    eprintln!("bench: webhook to stream latency ...");
    pressure_bench::latency(PRESSURE_RATE, PRESSURE_SECONDS, &mut pressure_rows).await;
    eprintln!("bench: fan-out to {FAN_OUT} subscribers ...");
    pressure_bench::fan_out(FAN_OUT, &mut pressure_rows).await;
    rows.extend(
        pressure_rows
            .into_iter()
            .map(|(scenario, figure, target)| Row {
                scenario,
                figure,
                target,
            }),
    );
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or("?".into(), |kib| {
            format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0)
        });
    format!("{cores} cores ({cpu}), {memory} RAM; RabbitMQ, PostgreSQL, the services and the load generator all share it")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut rows = Vec::new();
    // `BENCH_ONLY=pressure make bench`: the pressure scenarios alone.
    let only_pressure = std::env::var("BENCH_ONLY").is_ok_and(|only| only == "pressure");
    if only_pressure {
        pressure_scenarios(&mut rows).await;
    }
    let body = payload();
    if !only_pressure {
        eprintln!("bench: broker ceiling ...");
        let ceiling = broker_ceiling(&body).await;
        eprintln!("bench: broker at a fixed rate ...");
        let broker_latencies = broker_fixed_rate(&body).await;
        rows.push(Row {
            scenario: format!(
                "1. broker alone at a fixed {FIXED_RATE} msg/s for {FIXED_SECONDS} s: publish to confirm"
            ),
            figure: format!(
                "p50 {}, p99 {}, max {}",
                ms(percentile(&broker_latencies, 0.50)),
                ms(percentile(&broker_latencies, 0.99)),
                ms(*broker_latencies.last().unwrap())
            ),
            target: "(reference)".into(),
        });
        eprintln!("bench: gateway ...");
        gateway_scenarios(body, ceiling, &mut rows).await;
        pressure_scenarios(&mut rows).await;
    }

    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut table = String::from("| scenario | measured | target |\n|---|---|---|\n");
    for row in &rows {
        table.push_str(&format!(
            "| {} | {} | {} |\n",
            row.scenario, row.figure, row.target
        ));
    }
    println!("{table}");

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let notes = existing
        .split_once("<!-- notes -->")
        .map(|(_, notes)| notes.trim().to_owned())
        .unwrap_or_default();
    let document = format!(
        "# Benchmarks\n\nCommand: `make bench` (release build; `tests/src/bin/bench.rs`).\n\
         Machine: {}.\nDate: {date}.\n\n## Latest run\n\n{table}\n<!-- notes -->\n{notes}\n",
        machine()
    );
    std::fs::write(&path, document).expect("write BENCHMARKS.md");
    eprintln!("bench: wrote {}", path.display());
}
