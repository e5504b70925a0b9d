//! Scenario 1 (and the gateway's part of 5): the broker's own ceiling for persistent 20 KB
//! messages published with confirms, against the gateway's saturation rate with signed 20 KB
//! webhooks; the gateway's latency at a fixed rate against the broker's own at that rate; the
//! gateway's memory and CPU.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::amqp::Topology;
use futures::stream::{FuturesUnordered, StreamExt};
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::FieldTable,
    BasicProperties, Channel,
};

use crate::measure::{broker_and_bench_cpu, latencies, median, Row, Usage};
use tests::amqp::{Broker, TopologyGuard};
use tests::env::rabbitmq_url;
use tests::gateway::SECRET;
use tests::process::GatewayProcess;

/// Size of every message and webhook body of this scenario.
pub const PAYLOAD_BYTES: usize = 20 * 1024;
const CEILING_MESSAGES: usize = 20_000;
const CEILING_IN_FLIGHT: usize = 512;
const SATURATION_WEBHOOKS: usize = 10_000;
/// As many requests in flight as the ceiling has publishes in flight: the broker confirms
/// persistent messages in batches after writing them, so the rate both reach depends on it.
const SATURATION_CONNECTIONS: usize = CEILING_IN_FLIGHT;
const FIXED_RATE: u64 = 1_000;
const FIXED_SECONDS: u64 = 5;

/// A `workflow_job` fixture padded to [`PAYLOAD_BYTES`].
pub fn payload() -> Vec<u8> {
    let mut value: serde_json::Value =
        serde_json::from_slice(&tests::fixtures::fixture("workflow_job/queued.1.json")).unwrap();
    let base = serde_json::to_vec(&value).unwrap().len();
    value["padding"] =
        serde_json::Value::String("x".repeat(PAYLOAD_BYTES.saturating_sub(base + 14)));
    let body = serde_json::to_vec(&value).unwrap();
    assert!((PAYLOAD_BYTES - 64..=PAYLOAD_BYTES + 64).contains(&body.len()));
    body
}

/// A channel of its own on the test broker with publisher confirms, and the topology it
/// publishes to (declared; deleted when its guard is dropped).
async fn confirming_channel(prefix: &str) -> (TopologyGuard, lapin::Connection, Channel) {
    let topology = TopologyGuard(Topology::with_prefix(&tests::unique(prefix)));
    drop(Broker::connect(topology.topology()).await);
    let connection = actors::amqp::connect(&rabbitmq_url(), "bench", Duration::from_secs(5))
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (topology, connection, channel)
}

/// Publishes `body` as the gateway does (persistent, mandatory, JSON); resolves on the confirm.
async fn publish(channel: &Channel, topology: &Topology, body: &[u8]) {
    let confirmation = channel
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
        .unwrap()
        .await
        .unwrap();
    assert!(confirmation.is_ack());
}

/// The broker alone: `CEILING_MESSAGES` publishes with `CEILING_IN_FLIGHT` awaiting their
/// confirms on one channel. Messages per second.
pub async fn broker_ceiling(body: &[u8]) -> f64 {
    let (topology, connection, channel) = confirming_channel("bench-ceiling").await;
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut sent = 0;
    while sent < CEILING_MESSAGES || !in_flight.is_empty() {
        while sent < CEILING_MESSAGES && in_flight.len() < CEILING_IN_FLIGHT {
            in_flight.push(publish(&channel, topology.topology(), body));
            sent += 1;
        }
        in_flight.next().await;
    }
    let rate = CEILING_MESSAGES as f64 / started.elapsed().as_secs_f64();
    drop(in_flight);
    let _ = connection.close(200, "done".into()).await;
    drop(topology);
    rate
}

/// The broker alone at `FIXED_RATE` messages per second, each publish awaited on its own:
/// publish-to-confirm latencies, sorted (the floor under the gateway's latency at that rate).
pub async fn broker_fixed_rate(body: &[u8]) -> Vec<Duration> {
    let (queues, connection, channel) = confirming_channel("bench-broker-rate").await;
    let body = bytes::Bytes::copy_from_slice(body);
    let topology = queues.topology().clone();
    let latencies = at_fixed_rate(FIXED_RATE, FIXED_SECONDS, move |_| {
        let (channel, topology, body) = (channel.clone(), topology.clone(), body.clone());
        async move {
            let started = Instant::now();
            publish(&channel, &topology, &body).await;
            started.elapsed()
        }
    })
    .await;
    let _ = connection.close(200, "done".into()).await;
    drop(queues);
    latencies
}

/// Starts `rate` requests per second for `seconds` (the n-th at n/rate s, each on its own
/// task, so a slow answer never delays the next request) and returns what they answered,
/// sorted.
pub async fn at_fixed_rate<F, Fut, T>(rate: u64, seconds: u64, mut request: F) -> Vec<T>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + Ord + 'static,
{
    let total = usize::try_from(rate * seconds).unwrap();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / u32::try_from(rate).unwrap());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total);
    for n in 0..total {
        ticker.tick().await;
        tasks.push(tokio::spawn(request(n)));
    }
    let mut answers = Vec::with_capacity(total);
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers.sort();
    answers
}

/// A signed webhook body; cloning it is cheap.
#[derive(Clone)]
pub struct Signed {
    /// The body.
    pub body: bytes::Bytes,
    /// Its `X-Hub-Signature-256`.
    pub signature: String,
}

impl Signed {
    /// `body` signed with the test secret.
    pub fn new(body: Vec<u8>) -> Self {
        Self {
            signature: gateway::webhook::sign(SECRET, &body),
            body: body.into(),
        }
    }
}

/// Sends one webhook (`workflow_job`, delivery id `delivery`); asserts the 200 and returns
/// how long it took. `url` is the gateway's `/webhook`.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    webhook: &Signed,
    delivery: &str,
) -> Duration {
    let started = Instant::now();
    let response = client
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-GitHub-Event", "workflow_job")
        .header("X-GitHub-Delivery", delivery)
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

/// An HTTP client with a pool for `connections` connections to one host.
pub fn client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Rounds of scenario 1's ceiling and saturation runs, alternated; the medians are reported
/// (single runs on the shared 2-core machine vary by about 15 %).
const ROUNDS: usize = 3;

/// Scenario 1: the broker's fixed-rate latency; then [`ROUNDS`] rounds of the broker's ceiling
/// and the release gateway at saturation, alternated; then the gateway at the same fixed rate;
/// its memory and CPU.
pub async fn scenarios(rows: &mut Vec<Row>) {
    let body = payload();
    eprintln!("bench: broker at a fixed rate ...");
    let broker_latencies = broker_fixed_rate(&body).await;
    rows.push(Row::new(
        format!("1. broker alone at a fixed {FIXED_RATE} msg/s for {FIXED_SECONDS} s: publish to confirm"),
        latencies(&broker_latencies),
        "(reference)",
    ));

    let queues = TopologyGuard(Topology::with_prefix(&tests::unique("bench-gateway")));
    let broker = Broker::connect(queues.topology()).await;
    // One log line per webhook is for operators, not for a benchmark.
    let gateway = GatewayProcess::new(&queues.topology().queue)
        .release()
        .env("RUST_LOG", "info,gateway::routes=warn")
        .start()
        .await;
    let pid = gateway.service.pid();
    let url = format!("{}/webhook", gateway.url);
    let webhook = Signed::new(body.clone());
    let client = client(SATURATION_CONNECTIONS);
    let idle = Usage::of(pid);
    // Warm-up: connections and the first allocations.
    for _ in 0..200 {
        post(&client, &url, &webhook, "bench").await;
    }

    let (mut ceilings, mut rates, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    // CPU seconds per 1,000 messages of the broker and the load generator, in the ceiling runs
    // and in the saturation runs.
    let (mut ceiling_cpu, mut saturation_cpu) = ((0.0, 0.0), (0.0, 0.0));
    let per_1000 = |before: (f64, f64), after: (f64, f64), messages: usize| {
        let thousands = (messages * ROUNDS) as f64 / 1000.0;
        (
            (after.0 - before.0) / thousands,
            (after.1 - before.1) / thousands,
        )
    };
    let add = |total: &mut (f64, f64), part: (f64, f64)| {
        total.0 += part.0;
        total.1 += part.1;
    };
    for round in 1..=ROUNDS {
        eprintln!("bench: broker ceiling, round {round} ...");
        let before = broker_and_bench_cpu();
        ceilings.push(broker_ceiling(&body).await);
        add(
            &mut ceiling_cpu,
            per_1000(before, broker_and_bench_cpu(), CEILING_MESSAGES),
        );
        eprintln!("bench: gateway saturation, round {round} ...");
        // SATURATION_CONNECTIONS workers, SATURATION_WEBHOOKS requests in all.
        let others = broker_and_bench_cpu();
        let before = Usage::of(pid);
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..SATURATION_CONNECTIONS)
            .map(|_| {
                let (client, url, next, webhook) =
                    (client.clone(), url.clone(), next.clone(), webhook.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < SATURATION_WEBHOOKS {
                        post(&client, &url, &webhook, "bench").await;
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
        rates.push(SATURATION_WEBHOOKS as f64 / started.elapsed().as_secs_f64());
        add(
            &mut saturation_cpu,
            per_1000(others, broker_and_bench_cpu(), SATURATION_WEBHOOKS),
        );
        let after = Usage::of(pid);
        cpu.push((after.cpu_seconds - before.cpu_seconds) / (SATURATION_WEBHOOKS as f64 / 1000.0));
        // The next round starts from an empty queue, as the ceiling's does.
        broker.purge().await;
    }
    let loaded = Usage::of(pid);
    let ratios: Vec<String> = ceilings
        .iter()
        .zip(&rates)
        .map(|(ceiling, rate)| format!("{:.2}", rate / ceiling))
        .collect();
    let (ceiling, rate, cpu_per_1000) = (median(ceilings), median(rates), median(cpu));

    eprintln!("bench: gateway at a fixed rate ...");
    // Fixed rate, each request on its own schedule.
    let fixed = at_fixed_rate(FIXED_RATE, FIXED_SECONDS, |_| {
        let (client, url, webhook) = (client.clone(), url.clone(), webhook.clone());
        async move { post(&client, &url, &webhook, "bench").await }
    })
    .await;

    gateway.service.terminate();
    let status = gateway.service.wait(Duration::from_secs(20)).await;
    assert!(status.success(), "gateway exited with {status}");
    drop(broker);
    drop(queues);

    rows.push(Row::new(
        format!(
            "1. broker ceiling: {CEILING_MESSAGES} persistent 20 KB publishes with confirms, {CEILING_IN_FLIGHT} in flight, one channel (median of {ROUNDS})"
        ),
        format!("{ceiling:.0} msg/s"),
        "(reference)",
    ));
    rows.push(Row::new(
        format!(
            "1. gateway saturation: {SATURATION_WEBHOOKS} signed 20 KB webhooks, {SATURATION_CONNECTIONS} connections (median of {ROUNDS}, each round right after a ceiling run)"
        ),
        format!(
            "{rate:.0} webhooks/s = {:.2} x ceiling (rounds: {})",
            rate / ceiling,
            ratios.join(", ")
        ),
        ">= 0.8 x ceiling",
    ));
    rows.push(Row::new(
        format!("1. gateway at a fixed {FIXED_RATE} webhooks/s for {FIXED_SECONDS} s"),
        latencies(&fixed),
        "p99 < 10 ms",
    ));
    rows.push(Row::new(
        format!(
            "5. gateway resident memory: idle / after saturation ({SATURATION_CONNECTIONS} concurrent 20 KB webhooks)"
        ),
        format!("{:.1} MB / {:.1} MB", idle.rss_mb(), loaded.rss_mb()),
        "(reference; the target is under scenario 3)",
    ));
    rows.push(Row::new(
        "1. CPU per 1,000 messages: broker and load generator in the ceiling runs; broker, load generator and gateway in the saturation runs",
        format!(
            "ceiling: broker {:.3}, publisher {:.3} CPU s; saturation: broker {:.3}, HTTP client {:.3}, gateway {cpu_per_1000:.3} CPU s",
            ceiling_cpu.0, ceiling_cpu.1, saturation_cpu.0, saturation_cpu.1
        ),
        "(reference)",
    ));
    rows.push(Row::new(
        "5. gateway CPU per 1,000 webhooks (saturation run)",
        format!("{cpu_per_1000:.3} CPU s"),
        "(reference)",
    ));
}
