//! `manager serve | check-config`: see the crate documentation of [`manager`].

use std::process::ExitCode;

use actors::telemetry::Tracing;
use manager::{Application, Config};

const USAGE: &str = "usage: manager serve | manager check-config";

#[actix_web::main]
async fn main() -> ExitCode {
    actors::logging::init();
    let command = std::env::args().nth(1);
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            log::error!(event = "startup_failed", error:% = err; "manager not started");
            eprintln!("manager: {err}");
            return ExitCode::from(2);
        }
    };
    match command.as_deref() {
        Some("check-config") => {
            println!(
                "manager: configuration is valid: manager id {}, {} flavor(s) in {}",
                config.manager_id,
                config.flavors.len(),
                config.config_path.display()
            );
            ExitCode::SUCCESS
        }
        Some("serve") => serve(config).await,
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    let tracing = match Tracing::init("github-runner-manager", &config.telemetry) {
        Ok(tracing) => tracing,
        Err(err) => {
            eprintln!("manager: {err}");
            return ExitCode::from(2);
        }
    };
    let code = match Application::build(config).await {
        Ok(app) => match app.run_until_stopped().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                log::error!(event = "server_failed", error:% = err; "manager failed");
                ExitCode::FAILURE
            }
        },
        Err(err) => {
            log::error!(event = "startup_failed", error:% = err; "manager not started");
            eprintln!("manager: {err}");
            ExitCode::FAILURE
        }
    };
    tracing.shutdown();
    code
}
