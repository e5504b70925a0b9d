//! `planner serve [--no-migrate]` | `planner migrate` | `planner recount` |
//! `planner report waiting-p80 ...`.

use actors::telemetry::Tracing;
use anyhow::{bail, Context};
use planner::{config::Config, startup::Application, store};

fn usage() -> &'static str {
    "usage: planner serve [--no-migrate] | planner migrate | planner recount | \
     planner report waiting-p80 --from YYYY-MM-DD [--to YYYY-MM-DD] [-o PATH] [--no-header] \
     [--per-flavor] [-v]"
}

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    actors::logging::init();
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // Configuration errors name the variable, never its value.
            log::error!(event = "planner_failed", error = format!("{err:#}"); "planner failed");
            eprintln!("planner: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["serve", rest @ ..] => {
            let migrate = match rest {
                [] => true,
                ["--no-migrate"] => false,
                _ => bail!(usage()),
            };
            let mut config = Config::from_env()?;
            config.migrate_on_start = migrate;
            let tracing = Tracing::init("github-runner-planner", &config.telemetry)?;
            let result = match Application::build(config).await {
                Ok(app) => app.run_until_stopped().await.map_err(anyhow::Error::from),
                Err(err) => Err(err),
            };
            // Flushes the spans still buffered (the last deliveries' consume and commit).
            tracing.shutdown();
            result?;
        }
        ["migrate"] => {
            let pool = one_connection_pool()?;
            let applied = actix_web::web::block(move || planner::startup::migrate(&pool)).await??;
            log::info!(
                event = "migrations_applied",
                count = applied.len(),
                versions = applied.join(",");
                "migrations applied"
            );
        }
        ["recount"] => {
            let pool = one_connection_pool()?;
            let corrections =
                actix_web::web::block(move || planner::startup::recount(&pool)).await??;
            for fix in &corrections {
                log::warn!(
                    event = "open_jobs_recounted",
                    flavor = fix.flavor,
                    counted = fix.counted,
                    actual = fix.actual;
                    "open-job count corrected"
                );
            }
            log::info!(
                event = "open_jobs_recount_done",
                corrected_flavors = corrections.len();
                "open jobs recounted"
            );
        }
        ["report", "waiting-p80", rest @ ..] => {
            let options =
                planner::report::WaitingP80Options::parse(rest, chrono::Utc::now().date_naive())?;
            let pool = one_connection_pool()?;
            actix_web::web::block(move || planner::report::run(&pool, &options)).await??;
        }
        _ => bail!(usage()),
    }
    Ok(())
}

/// A pool of one connection to `POSTGRESQL_DB_CONNECT_STRING`, for the one-off commands
/// (through PgBouncer with `APP_DB_PGBOUNCER=true`, as `serve`).
fn one_connection_pool() -> anyhow::Result<store::PgPool> {
    let url = std::env::var("POSTGRESQL_DB_CONNECT_STRING")
        .context("environment variable POSTGRESQL_DB_CONNECT_STRING is required")?;
    let pgbouncer = match std::env::var("APP_DB_PGBOUNCER") {
        Err(_) => false,
        Ok(value) => actors::config::boolean(&value)
            .map_err(|reason| anyhow::anyhow!("environment variable APP_DB_PGBOUNCER {reason}"))?,
    };
    Ok(store::build_pool_via(
        &url,
        1,
        store::CHECKOUT_TIMEOUT,
        pgbouncer,
    ))
}
