//! The `gce` backend against the fake Compute Engine API: zone and template fallback, errors
//! that stop it, a timed-out insert found by name, paged label-filtered listings, ended VMs,
//! deletes, retries, token renewal, and both token sources (key-file JWT, metadata server).

use std::time::Duration;

use actors::github::RunnerScope;
use manager::backend::gce::{Gce, JIT_CONFIG_KEY};
use manager::backend::{Backend, RunnerSpec};
use manager::config::{GceBackendConfig, GceEnv, GCE_REQUEST_TIMEOUT};
use reqwest::Url;
use serde_json::json;
use tests::fake_gce::FakeGce;

const ZONES: [&str; 2] = ["europe-west1-b", "europe-west1-c"];
const TEMPLATES: [&str; 2] = ["runner-c4-8", "runner-e2-8"];

fn env(fake: &FakeGce, key_file: Option<std::path::PathBuf>) -> GceEnv {
    GceEnv {
        credentials_file: key_file,
        api_url: Url::parse(&fake.url).unwrap(),
        metadata_url: Url::parse(&fake.url).unwrap(),
        operation_timeout: Duration::from_millis(400),
        request_timeout: GCE_REQUEST_TIMEOUT,
    }
}

fn backend_with(fake: &FakeGce, key_file: Option<std::path::PathBuf>, spot: bool) -> Gce {
    let config = GceBackendConfig {
        project: "test-project".into(),
        zones: ZONES.map(String::from).to_vec(),
        templates: TEMPLATES.map(String::from).to_vec(),
        spot,
        network_tags: vec!["runners".into()],
    };
    let scope = RunnerScope::Repo {
        owner: "Acme".into(),
        repo: "web.site".into(),
    };
    Gce::new(&env(fake, key_file), config, "m1", "small", Some(&scope)).unwrap()
}

fn backend(fake: &FakeGce) -> Gce {
    backend_with(fake, None, false)
}

fn spec(name: &str) -> RunnerSpec {
    RunnerSpec {
        name: name.into(),
        flavor: "small".into(),
        labels: vec!["self-hosted".into()],
        jit_config: "secret-jit-config".to_owned().into(),
        manager_id: "m1".into(),
    }
}

#[actix_rt::test]
async fn an_insert_lands_in_the_first_zone_with_capacity() {
    let fake = FakeGce::start().await;
    fake.no_capacity(ZONES[0], TEMPLATES[0]);
    let gce = backend_with(&fake, None, true);
    let vm = gce.create(spec("m1-small-aaaa0001")).await.unwrap();
    assert_eq!(vm.name, "m1-small-aaaa0001");
    assert!(vm.backend_id.starts_with(ZONES[1]), "{}", vm.backend_id);
    let stored = fake.vm(ZONES[1], "m1-small-aaaa0001").expect("created");
    assert_eq!(stored["sourceInstanceTemplate"], TEMPLATES[0]);
    assert_eq!(stored["labels"]["manager-id"], "m1");
    assert_eq!(stored["labels"]["flavor"], "small");
    assert_eq!(stored["labels"]["zone"], ZONES[1]);
    assert_eq!(stored["labels"]["template"], TEMPLATES[0]);
    assert_eq!(stored["labels"]["owner"], "acme");
    assert_eq!(stored["labels"]["repository"], "web_site");
    assert_eq!(stored["scheduling"]["provisioningModel"], "SPOT");
    let items = stored["metadata"]["items"].as_array().unwrap();
    let item = |key: &str| {
        items
            .iter()
            .find(|i| i["key"] == key)
            .map(|i| i["value"].clone())
    };
    assert_eq!(item(JIT_CONFIG_KEY), Some(json!("secret-jit-config")));
    assert_eq!(item("block-project-ssh-keys"), Some(json!("true")));
    assert!(item("startup-script").is_some());
    assert_eq!(fake.requests_starting("POST").len(), 2);
}

#[actix_rt::test]
async fn every_zone_is_tried_before_the_next_template() {
    let fake = FakeGce::start().await;
    fake.no_capacity(ZONES[0], TEMPLATES[0]);
    fake.no_capacity(ZONES[1], TEMPLATES[0]);
    let gce = backend(&fake);
    gce.create(spec("m1-small-aaaa0002")).await.unwrap();
    let stored = fake.vm(ZONES[0], "m1-small-aaaa0002").expect("created");
    assert_eq!(stored["sourceInstanceTemplate"], TEMPLATES[1]);

    // Nothing anywhere: an error, and every pair was tried once.
    fake.no_capacity(ZONES[0], TEMPLATES[1]);
    fake.no_capacity(ZONES[1], TEMPLATES[1]);
    let before = fake.requests_starting("POST").len();
    let err = gce.create(spec("m1-small-aaaa0003")).await.unwrap_err();
    assert!(err.to_string().contains("no capacity"), "{err}");
    assert_eq!(fake.requests_starting("POST").len() - before, 4);
}

#[actix_rt::test]
async fn an_error_other_than_capacity_stops_the_fallback() {
    let fake = FakeGce::start().await;
    fake.fail_inserts(ZONES[0], TEMPLATES[0], "RESOURCE_NOT_FOUND");
    let err = backend(&fake)
        .create(spec("m1-small-aaaa0004"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("RESOURCE_NOT_FOUND"), "{err}");
    assert_eq!(fake.requests_starting("POST").len(), 1);
    assert!(fake.vms().is_empty());
}

#[actix_rt::test]
async fn a_timed_out_insert_is_looked_up_by_name_not_retried_elsewhere() {
    let fake = FakeGce::start().await;
    fake.slow_zone(ZONES[0]);
    let vm = backend(&fake)
        .create(spec("m1-small-aaaa0005"))
        .await
        .unwrap();
    assert!(vm.backend_id.starts_with(ZONES[0]));
    assert_eq!(fake.requests_starting("POST").len(), 1);
    assert_eq!(
        fake.vms(),
        [(ZONES[0].to_owned(), "m1-small-aaaa0005".to_owned())]
    );
}

#[actix_rt::test]
async fn a_name_taken_in_the_zone_is_the_runner_already_created() {
    let fake = FakeGce::start().await;
    fake.seed(
        ZONES[0],
        "m1-small-aaaa0006",
        json!({"manager-id": "m1", "flavor": "small"}),
    );
    let vm = backend(&fake)
        .create(spec("m1-small-aaaa0006"))
        .await
        .unwrap();
    assert_eq!(vm.name, "m1-small-aaaa0006");
    assert_eq!(fake.vms().len(), 1);
}

#[actix_rt::test]
async fn listings_follow_pages_and_keep_to_this_manager_and_flavor() {
    let fake = FakeGce::start().await;
    let ours = json!({"manager-id": "m1", "flavor": "small"});
    for i in 0..5 {
        fake.seed(ZONES[i % 2], &format!("m1-small-{i:08}"), ours.clone());
    }
    fake.seed(
        ZONES[0],
        "m2-small-00000000",
        json!({"manager-id": "m2", "flavor": "small"}),
    );
    fake.seed(
        ZONES[1],
        "m1-large-00000000",
        json!({"manager-id": "m1", "flavor": "large"}),
    );
    fake.set_page_size(2);
    let mut names: Vec<String> = backend(&fake)
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|vm| vm.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        (0..5)
            .map(|i| format!("m1-small-{i:08}"))
            .collect::<Vec<_>>()
    );
    let pages = fake.requests_starting("GET /compute/v1/projects/test-project/aggregated");
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert!(pages[1].contains("pageToken=page-2"), "{pages:?}");
}

#[actix_rt::test]
async fn a_terminated_vm_is_ended_and_deleted() {
    let fake = FakeGce::start().await;
    let gce = backend(&fake);
    gce.create(spec("m1-small-aaaa0007")).await.unwrap();
    fake.terminate(ZONES[0], "m1-small-aaaa0007");
    let listed = gce.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].ended);
    gce.delete("m1-small-aaaa0007").await.unwrap();
    assert!(fake.vms().is_empty());
    assert!(gce.list().await.unwrap().is_empty());
    // Gone already: not an error.
    gce.delete("m1-small-aaaa0007").await.unwrap();
    gce.delete("m1-small-never").await.unwrap();
}

#[actix_rt::test]
async fn transient_failures_are_retried() {
    let fake = FakeGce::start().await;
    let gce = backend(&fake);
    fake.fail_next(&[503, 429, 500]);
    assert!(gce.list().await.unwrap().is_empty());
    assert_eq!(fake.requests_starting("GET").len(), 4);

    fake.fail_next(&[503, 503, 503, 503]);
    let err = gce.list().await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");

    // A 4xx is not retried.
    fake.fail_next(&[403]);
    let before = fake.requests_starting("GET").len();
    gce.list().await.unwrap_err();
    assert_eq!(fake.requests_starting("GET").len() - before, 1);
}

#[actix_rt::test]
async fn a_refused_token_is_renewed_once() {
    let fake = FakeGce::start().await;
    let gce = backend(&fake);
    gce.list().await.unwrap();
    gce.list().await.unwrap();
    assert_eq!(
        fake.state.lock().unwrap().tokens_issued,
        1,
        "the token is cached"
    );
    fake.revoke_tokens();
    gce.list().await.unwrap();
    let state = fake.state.lock().unwrap();
    assert_eq!((state.tokens_issued, state.unauthorized), (2, 1));
}

#[actix_rt::test]
async fn a_service_account_key_gets_tokens_by_jwt_grant() {
    let fake = FakeGce::start().await;
    let dir = std::env::temp_dir().join(tests::unique("gce-key"));
    std::fs::create_dir_all(&dir).unwrap();
    let gce = backend_with(&fake, Some(fake.key_file(&dir)), false);
    gce.create(spec("m1-small-aaaa0008")).await.unwrap();
    assert_eq!(fake.state.lock().unwrap().tokens_issued, 1);

    // A key file that is not one names the variable and never its content.
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        "{\"type\": \"service_account\", \"private_key\": \"x\"}",
    )
    .unwrap();
    let config = GceBackendConfig {
        project: "test-project".into(),
        zones: vec![ZONES[0].into()],
        templates: vec![TEMPLATES[0].into()],
        spot: false,
        network_tags: vec![],
    };
    let err = Gce::new(&env(&fake, Some(bad)), config, "m1", "small", None)
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("APP_GCE_CREDENTIALS_FILE"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[actix_rt::test]
async fn without_a_key_the_metadata_server_gives_the_token() {
    let fake = FakeGce::start().await;
    let gce = backend(&fake);
    gce.create(spec("m1-small-aaaa0009")).await.unwrap();
    assert_eq!(fake.state.lock().unwrap().tokens_issued, 1);
    // The metadata server refuses a request without its header.
    let answer = reqwest::get(format!(
        "{}{}",
        fake.url,
        manager::backend::gce::METADATA_TOKEN_PATH
    ))
    .await
    .unwrap();
    assert_eq!(answer.status(), 403);
}
