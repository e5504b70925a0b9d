//! `fake-runner`: a stand-in for GitHub's runner application that speaks the fake GitHub's
//! runner side (see `tests::fake_runner`). Started by the manager's `exec` backend with
//! `RUNNER_JITCONFIG`, `RUNNER_NAME`, `RUNNER_FLAVOR`, `RUNNER_LABELS`, `RUNNER_MANAGER_ID`.

use tests::fake_runner::{self, RunnerEnv, EXIT_BAD_CONFIG};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    actors::logging::init();
    let code = match RunnerEnv::from_env() {
        Ok(env) => fake_runner::run(env).await,
        Err(err) => {
            log::error!(event = "fake_runner_bad_config", error:% = err; "fake runner not started");
            EXIT_BAD_CONFIG
        }
    };
    std::process::exit(code);
}
