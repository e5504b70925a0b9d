//! What every scenario measures with: the table's [`Row`], latency quantiles, a process's
//! memory and CPU from `/proc`, and [`settle`] between scenarios.

use std::time::Duration;

/// One row of the benchmark table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured, and how.
    pub scenario: String,
    /// The figures.
    pub figure: String,
    /// The target, or `(reference)`.
    pub target: String,
}

impl Row {
    /// A row of the table.
    pub fn new(scenario: impl Into<String>, figure: impl Into<String>, target: &str) -> Self {
        Self {
            scenario: scenario.into(),
            figure: figure.into(),
            target: target.to_owned(),
        }
    }
}

/// The median of a few figures (the upper one of an even count).
pub fn median(figures: impl IntoIterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = figures.into_iter().collect();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// The `p` quantile (0 to 1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `p50 .., p99 .., max ..` of sorted durations.
pub fn latencies(sorted: &[Duration]) -> String {
    format!(
        "p50 {}, p99 {}, max {}",
        ms(percentile(sorted, 0.50)),
        ms(percentile(sorted, 0.99)),
        ms(sorted.last().copied().unwrap_or_default())
    )
}

/// Resident memory and CPU time (user + system) of a process, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// CPU seconds used since the process started.
    pub cpu_seconds: f64,
}

impl Usage {
    /// The usage of process `pid` now (zeros if it cannot be read).
    pub fn of(pid: u32) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime, in clock ticks (100 per second on Linux).
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
            .sum();
        Self {
            rss_kib,
            cpu_seconds: ticks / 100.0,
        }
    }

    /// Resident memory in MB.
    pub fn rss_mb(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
}

/// CPU seconds used so far by RabbitMQ (its `beam.smp`; 0 when it is not found) and by this
/// process (the load generator), to tell who spends the machine's cores during a run.
pub fn broker_and_bench_cpu() -> (f64, f64) {
    let broker = std::process::Command::new("pgrep")
        .args(["-o", "beam.smp"])
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8(out.stdout)
                .ok()?
                .trim()
                .parse::<u32>()
                .ok()
        })
        .map_or(0.0, |pid| Usage::of(pid).cpu_seconds);
    (broker, Usage::of(std::process::id()).cpu_seconds)
}

/// Samples the resident memory of `pid` every 50 ms until dropped; [`PeakRss::peak_mb`] tells
/// the highest seen.
pub struct PeakRss {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakRss {
    /// Starts sampling.
    pub fn watch(pid: u32) -> Self {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(Usage::of(pid).rss_kib));
        let seen = peak.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(50));
            loop {
                ticks.tick().await;
                seen.fetch_max(Usage::of(pid).rss_kib, std::sync::atomic::Ordering::Relaxed);
            }
        });
        Self { peak, task }
    }

    /// The highest resident memory seen so far, in MB.
    pub fn peak_mb(&self) -> f64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Lets the machine settle before a scenario, so that one scenario's writes do not land in the
/// next one's figures: a PostgreSQL checkpoint (the previous scenario's dirty pages written
/// now rather than during the next), then the kernel's dirty pages flushed (`sync`) and a
/// moment of quiet.
pub fn settle() {
    use diesel::{Connection, RunQueryDsl};
    let mut conn = diesel::PgConnection::establish(&tests::env::database_url())
        .expect("PostgreSQL for the checkpoint");
    diesel::sql_query("CHECKPOINT")
        .execute(&mut conn)
        .expect("CHECKPOINT (the bench connects as a superuser)");
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(2));
}

/// The machine the figures come from.
pub fn machine() -> String {
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
    format!(
        "{cores} cores ({cpu}), {memory} RAM; RabbitMQ, PostgreSQL, the services and the load \
         generator all share it"
    )
}
