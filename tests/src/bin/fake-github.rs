//! `fake-github`: the tests' fake GitHub API as a process, standing in for GitHub where
//! github.com cannot be reached (the demo of `make run`). It is not GitHub.
//!
//! `fake-github [--listen ADDR] [--runner-group NAME]... [--public-key PEM_FILE]
//! [--auto-assign] [--job-seconds N]`
//!
//! - `--listen` (default `127.0.0.1:0`): where it listens; it logs
//!   `event=fake_github_listening url=...` on stderr, as the services log (`docs/logging.md`).
//! - `--runner-group`: adds an organization runner group besides `Default`.
//! - `--public-key`: the App public key JWTs are checked with; default: the test-only key
//!   pair in `tests/fixtures/github-app/` (its private key is what the demo's services sign
//!   with). Nothing secret is printed.
//! - `--auto-assign`: every runner that comes online gets a job at once (otherwise jobs are
//!   given through `POST /_fake/control/runners/{name}/assign`).
//! - `--job-seconds N`: every job finishes by itself N seconds after it started (otherwise
//!   through `POST /_fake/control/runners/{name}/finish`); the runner then exits.
//!
//! It runs until SIGTERM or SIGINT.

use tests::fake_github::{FakeGitHub, APP_ID, INSTALLATION_ID};

const USAGE: &str = "usage: fake-github [--listen ADDR] [--runner-group NAME]... \
                     [--public-key PEM_FILE] [--auto-assign] [--job-seconds N]";

fn fail(message: &str) -> ! {
    eprintln!("fake-github: {message}\n{USAGE}");
    std::process::exit(2);
}

#[actix_web::main]
async fn main() {
    actors::logging::init();
    let mut listen = "127.0.0.1:0".to_owned();
    let mut groups = Vec::new();
    let mut public_key = None;
    let mut auto_assign = false;
    let mut job_length = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| fail(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--listen" => listen = value("--listen"),
            "--runner-group" => groups.push(value("--runner-group")),
            "--public-key" => public_key = Some(value("--public-key")),
            "--auto-assign" => auto_assign = true,
            "--job-seconds" => {
                let seconds = value("--job-seconds");
                let seconds: u64 = seconds
                    .parse()
                    .unwrap_or_else(|_| fail(&format!("--job-seconds {seconds:?}: not seconds")));
                job_length = Some(std::time::Duration::from_secs(seconds));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => fail(&format!("unknown argument {other:?}")),
        }
    }
    let listener = std::net::TcpListener::bind(&listen)
        .unwrap_or_else(|err| fail(&format!("--listen {listen}: {err}")));
    let fake = FakeGitHub::start_on(listener);
    if let Some(path) = public_key {
        let pem = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| fail(&format!("--public-key {path}: {err}")));
        fake.set_public_key(&pem)
            .unwrap_or_else(|err| fail(&format!("--public-key {path}: {err}")));
    }
    if auto_assign || job_length.is_some() {
        fake.auto_jobs(auto_assign, job_length);
    }
    for group in &groups {
        let id = fake.add_runner_group(group);
        log::info!(
            event = "fake_github_runner_group",
            runner_group = group,
            id;
            "runner group added"
        );
    }
    log::info!(
        event = "fake_github_listening",
        url = fake.url,
        app_id = APP_ID,
        installation_id = INSTALLATION_ID;
        "a stand-in for GitHub's API (not GitHub) listening"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .unwrap_or_else(|err| fail(&format!("cannot wait for SIGTERM: {err}")));
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    fake.stop().await;
}
