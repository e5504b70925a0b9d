//! `make bench`: release-mode benchmarks against the real local RabbitMQ and PostgreSQL and the
//! release binaries of both services. Prints a table and, when every scenario ran, writes it to
//! `BENCHMARKS.md` above the notes kept there. The bench is a target of its own: none of this
//! is compiled into the `tests` library the integration tests link.
//!
//! Every scenario sends a bounded number of requests or messages, waits a bounded time, cleans
//! up its database and queues, and answers rows of the table:
//! - [`gateway`]: scenario 1 (the broker's ceiling against the gateway's saturation rate and its
//!   latency at a fixed rate) and the gateway's part of scenario 5.
//! - [`consumer`]: scenario 2 (the database's ceiling against the planner consumer's rate) and
//!   scenario 6 (the consumer rate and the pressure recomputation as the `job` table grows).
//! - [`pressure`]: scenario 3 (end to end, gateway 200 to stream line, with both services'
//!   memory and CPU: scenario 5) and scenario 4 (recomputation with many open jobs, fan-out).
//! - [`cluster`]: on the 3-node RabbitMQ cluster with quorum queues (`BENCH_ONLY=cluster`):
//!   two gateways' CPU per webhook against two minimal HMAC-only handlers (`minimal-webhook`;
//!   alone: `cluster-gateway`), the database ceiling against one planner, and two planners on
//!   one queue (alone: `cluster-consumer`).
//! - [`manager`]: scenario 7 (the runner manager: queued webhook to runner start, a reconcile
//!   pass at 100 flavors and 1,000 runners, memory).
//! - [`console`]: the web console's page loads with 100 flavors and 100k jobs.
//! - [`gce`]: the `gce` backend against the fake Compute Engine API (listing 1,000 VMs, the
//!   manager's reconcile pass over them, queued webhook to insert call).
//! - [`measure`]: what they measure with.
//!
//! `BENCH_ONLY=gateway,consumer,e2e,recompute,fanout,scaling,manager,console,cluster,gce` (and
//! `cluster-gateway`, `cluster-consumer`: the halves of `cluster`) runs
//! only the named groups (the table is printed, `BENCHMARKS.md` is left alone).

mod cluster;
mod console;
mod consumer;
mod gateway;
mod gce;
mod manager;
mod measure;
mod pressure;

use measure::Row;

/// Webhooks per second and seconds of scenario 3 (end to end).
const END_TO_END_RATE: u64 = 500;
const END_TO_END_SECONDS: u64 = 10;
/// Stream subscribers of the fan-out scenario.
const FAN_OUT: usize = 10_000;
const GROUPS: [&str; 12] = [
    "gateway",
    "consumer",
    "e2e",
    "recompute",
    "fanout",
    "scaling",
    "manager",
    "console",
    "cluster",
    "cluster-gateway",
    "cluster-consumer",
    "gce",
];

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let only: Option<Vec<String>> = std::env::var("BENCH_ONLY").ok().map(|only| {
        only.split(',')
            .map(|group| group.trim().to_owned())
            .collect()
    });
    if let Some(unknown) = only
        .iter()
        .flatten()
        .find(|group| !GROUPS.contains(&group.as_str()))
    {
        eprintln!("bench: unknown group {unknown:?} in BENCH_ONLY (groups: {GROUPS:?})");
        std::process::exit(2);
    }
    let wanted = |group: &str| {
        only.as_ref()
            .is_none_or(|only| only.iter().any(|g| g == group))
    };

    let mut rows: Vec<Row> = Vec::new();
    let settle = || tokio::task::block_in_place(measure::settle);
    if wanted("gateway") {
        settle();
        gateway::scenarios(&mut rows).await;
    }
    if wanted("consumer") {
        // Settles before each of its runs itself.
        consumer::scenario_2(&mut rows).await;
    }
    if wanted("e2e") {
        settle();
        eprintln!("bench: end to end ...");
        pressure::end_to_end(END_TO_END_RATE, END_TO_END_SECONDS, &mut rows).await;
    }
    if wanted("recompute") {
        settle();
        eprintln!("bench: pressure recomputation ...");
        tokio::task::block_in_place(|| pressure::recompute(&mut rows));
    }
    if wanted("fanout") {
        settle();
        eprintln!("bench: fan-out to {FAN_OUT} subscribers ...");
        pressure::fan_out(FAN_OUT, &mut rows).await;
    }
    if wanted("scaling") {
        settle();
        consumer::scenario_6(&mut rows).await;
    }
    if wanted("manager") {
        settle();
        eprintln!("bench: runner manager ...");
        manager::scenarios(&mut rows).await;
    }
    if wanted("console") {
        settle();
        eprintln!("bench: console page loads ...");
        console::page_loads(&mut rows).await;
    }
    let (cluster_gateway, cluster_consumer) = (
        wanted("cluster") || wanted("cluster-gateway"),
        wanted("cluster") || wanted("cluster-consumer"),
    );
    if cluster_gateway || cluster_consumer {
        cluster::scenarios(&mut rows, cluster_gateway, cluster_consumer).await;
    }
    if wanted("gce") {
        settle();
        tokio::task::block_in_place(|| gce::scenarios(&mut rows));
    }

    let mut table = String::from("| scenario | measured | target |\n|---|---|---|\n");
    for row in &rows {
        table.push_str(&format!(
            "| {} | {} | {} |\n",
            row.scenario, row.figure, row.target
        ));
    }
    println!("{table}");
    if only.is_some() {
        eprintln!("bench: BENCH_ONLY set, BENCHMARKS.md left as it is");
        return;
    }

    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let notes = existing
        .split_once("<!-- notes -->")
        .map(|(_, notes)| notes.trim().to_owned())
        .unwrap_or_default();
    let document = format!(
        "# Benchmarks\n\nCommand: `make bench` (release build; `tests/src/bin/bench/`).\n\
         Machine: {}.\nDate: {date}.\n\n## Latest run\n\n\
         {table}\n<!-- notes -->\n{notes}\n",
        measure::machine()
    );
    std::fs::write(&path, document).expect("write BENCHMARKS.md");
    eprintln!("bench: wrote {}", path.display());
}
