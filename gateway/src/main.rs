//! `gateway`: see the crate documentation of [`gateway`].

use actors::telemetry::Tracing;
use gateway::{Application, Config};

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    actors::logging::init();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            log::error!(event = "startup_failed", error:% = err; "gateway not started");
            eprintln!("gateway: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let tracing = match Tracing::init("github-runner-webhook-gateway", &config.telemetry) {
        Ok(tracing) => tracing,
        Err(err) => {
            eprintln!("gateway: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let code = match Application::build(config).await {
        Ok(app) => match app.run_until_stopped().await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                log::error!(event = "server_failed", error:% = err; "gateway failed");
                std::process::ExitCode::FAILURE
            }
        },
        Err(err) => {
            log::error!(event = "startup_failed", error:% = err; "gateway not started");
            eprintln!("gateway: {err}");
            std::process::ExitCode::FAILURE
        }
    };
    tracing.shutdown();
    code
}
