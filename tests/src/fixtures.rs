//! The webhook payloads GitHub documents (`tests/fixtures`, from `@octokit/webhooks-examples`).

use std::path::PathBuf;

/// Path of a fixture file, e.g. `fixture_path("workflow_job/queued.0.json")`.
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The bytes of a fixture file, unchanged.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}
