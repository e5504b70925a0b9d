//! Every listener of the three service binaries (the API on `APP_PORT`, the Prometheus one on
//! `OTEL_EXPORTER_PROMETHEUS_HOST`/`_PORT`) that cannot bind stops start-up with an error that
//! names the address and the variables to change, as when two services are left on the same
//! default port of one host.

use std::net::TcpListener;
use std::time::Duration;

use tests::{
    db::TestDb,
    manager::{manager_env, Flavor, ManagerDir, ManagerSetup},
    process::run,
};

const LIMIT: Duration = Duration::from_secs(60);
const METRICS_VARIABLES: &str = "OTEL_EXPORTER_PROMETHEUS_HOST, OTEL_EXPORTER_PROMETHEUS_PORT";
/// A broker nobody listens on: the services must fail on their listener, not on the broker.
const NO_BROKER: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

/// Which listener a run takes away.
enum Taken {
    /// The API's (`APP_PORT`, on every address).
    Api,
    /// The Prometheus listener's (127.0.0.1).
    Metrics,
}

/// Runs `binary args` with `env` and one of its ports already taken; asserts it fails naming
/// the address and the variables.
async fn fails_on_taken_port(binary: &str, args: &[&str], env: &[(String, String)], taken: Taken) {
    let (holder, address, variables) = match taken {
        Taken::Api => {
            let holder = TcpListener::bind("0.0.0.0:0").unwrap();
            let port = holder.local_addr().unwrap().port();
            (holder, format!("0.0.0.0:{port}"), "APP_PORT")
        }
        Taken::Metrics => {
            let holder = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = holder.local_addr().unwrap().port();
            (holder, format!("127.0.0.1:{port}"), METRICS_VARIABLES)
        }
    };
    let port = holder.local_addr().unwrap().port().to_string();
    let (api_port, metrics_port) = match taken {
        Taken::Api => (port.as_str(), "0"),
        Taken::Metrics => ("0", port.as_str()),
    };
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.extend([
        ("APP_PORT", api_port),
        ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
        ("OTEL_EXPORTER_PROMETHEUS_PORT", metrics_port),
    ]);
    let (status, stderr) = run(binary, args, &vars, LIMIT).await;
    assert!(
        !status.success(),
        "{binary} started on a taken port: {stderr}"
    );
    let expected =
        format!("cannot listen on {address} (set by {variables}): Address already in use");
    assert!(
        stderr.contains(&expected),
        "{binary}: no {expected:?} in:\n{stderr}"
    );
    drop(holder);
}

fn owned(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[actix_rt::test]
async fn gateway_names_the_listener_it_cannot_bind() {
    let env = owned(&[
        ("RABBITMQ_CONNECT_STRING", NO_BROKER),
        ("APP_WEBHOOK_SECRET_VALUE", "s3cret"),
    ]);
    fails_on_taken_port("gateway", &[], &env, Taken::Api).await;
    fails_on_taken_port("gateway", &[], &env, Taken::Metrics).await;
}

#[actix_rt::test]
async fn planner_names_the_listener_it_cannot_bind() {
    let db = TestDb::new();
    let env = owned(&[
        ("POSTGRESQL_DB_CONNECT_STRING", db.url()),
        ("RABBITMQ_CONNECT_STRING", NO_BROKER),
        ("APP_ADMIN_TOKEN_VALUE", tests::planner::ADMIN_TOKEN),
    ]);
    fails_on_taken_port("planner", &["serve"], &env, Taken::Api).await;
    fails_on_taken_port("planner", &["serve"], &env, Taken::Metrics).await;
}

#[actix_rt::test]
async fn manager_names_the_listener_it_cannot_bind() {
    let dir = ManagerDir::new();
    let env = manager_env(&ManagerSetup {
        id: "listeners",
        planner_url: "http://127.0.0.1:1",
        planner_token: "planner_v0_testtesttesttesttest",
        github_url: "http://127.0.0.1:1",
        github_path: "octo-org",
        flavors: &[Flavor::new("small", 0, 1)],
        dir: &dir,
        extra: &[],
    });
    fails_on_taken_port("manager", &["serve"], &env, Taken::Api).await;
    fails_on_taken_port("manager", &["serve"], &env, Taken::Metrics).await;
}
