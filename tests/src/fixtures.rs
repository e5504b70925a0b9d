//! The one fixture loader: the webhook payloads GitHub documents (`tests/fixtures`, from
//! `@octokit/webhooks-examples`), as bytes ([`fixture`]) or as a `workflow_job` body to edit
//! ([`workflow_job`], [`job_payload`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex, PoisonError};

use serde_json::Value;

/// Path of a fixture file, e.g. `fixture_path("workflow_job/queued.0.json")`.
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The bytes of a fixture file, unchanged, e.g. `fixture("ping.json")`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

/// The `workflow_job` fixture `tests/fixtures/workflow_job/<name>.json` as JSON, e.g.
/// `workflow_job("queued.1")`.
pub fn workflow_job(name: &str) -> Value {
    // Read and parsed once per process: the benchmarks build tens of thousands of bodies.
    static PARSED: LazyLock<Mutex<HashMap<String, Value>>> = LazyLock::new(Default::default);
    let mut parsed = PARSED.lock().unwrap_or_else(PoisonError::into_inner);
    parsed
        .entry(name.to_owned())
        .or_insert_with(|| {
            let file = format!("workflow_job/{name}.json");
            serde_json::from_slice(&fixture(&file))
                .unwrap_or_else(|err| panic!("fixture {file} is not JSON: {err}"))
        })
        .clone()
}

/// The `workflow_job` fixture `name` as a self-hosted job with `labels`, id `id` and action
/// (and status) `action`.
pub fn job_payload(name: &str, id: i64, action: &str, labels: &[&str]) -> Value {
    let mut body = workflow_job(name);
    body["action"] = action.into();
    body["workflow_job"]["id"] = id.into();
    body["workflow_job"]["status"] = action.into();
    body["workflow_job"]["labels"] = labels.into();
    body
}
