//! The `gce` backend against the fake Compute Engine API: zone and template fallback (the
//! regions' other zones included), errors that stop it, a timed-out insert found by name,
//! idempotent insert retries, paged label-filtered listings, ended VMs, deletes, retries (of
//! Compute calls and token requests), token renewal, and both token sources (key-file JWT,
//! metadata server).

use std::time::Duration;

use actors::github::RunnerScope;
use manager::backend::gce::{Gce, JIT_CONFIG_KEY};
use manager::backend::{Backend, RunnerSpec};
use manager::config::{GceBackendConfig, GceEnv, GCE_REQUEST_TIMEOUT};
use reqwest::Url;
use serde_json::json;
use tests::fake_gce::FakeGce;

pub(crate) const ZONES: [&str; 2] = ["europe-west1-b", "europe-west1-c"];
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

fn config() -> GceBackendConfig {
    GceBackendConfig {
        project: "test-project".into(),
        zones: ZONES.map(String::from).to_vec(),
        templates: TEMPLATES.map(String::from).to_vec(),
        spot: false,
        network_tags: vec!["runners".into()],
        other_zones: true,
    }
}

fn backend_of(
    fake: &FakeGce,
    key_file: Option<std::path::PathBuf>,
    config: GceBackendConfig,
) -> Gce {
    let scope = RunnerScope::Repo {
        owner: "Acme".into(),
        repo: "web.site".into(),
    };
    Gce::new(&env(fake, key_file), config, "m1", "small", Some(&scope)).unwrap()
}

fn backend_with(fake: &FakeGce, key_file: Option<std::path::PathBuf>, spot: bool) -> Gce {
    backend_of(fake, key_file, GceBackendConfig { spot, ..config() })
}

pub(crate) fn backend(fake: &FakeGce) -> Gce {
    backend_with(fake, None, false)
}

pub(crate) fn spec(name: &str) -> RunnerSpec {
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
    assert_eq!(stored["tags"]["items"], json!(["runners"]));
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

/// The project's zones: two regions, one zone of europe-west1 down.
fn zones_of_two_regions(fake: &FakeGce) {
    for (zone, status) in [
        ("europe-west1-b", "UP"),
        ("europe-west1-c", "UP"),
        ("europe-west1-d", "DOWN"),
        ("europe-west1-e", "UP"),
        ("europe-west4-a", "UP"),
    ] {
        fake.zone(zone, status);
    }
}

/// The zones of the inserts so far, in order.
fn insert_zones(fake: &FakeGce) -> Vec<String> {
    fake.requests_starting("POST")
        .iter()
        .map(|r| r.split('/').nth(6).unwrap_or_default().to_owned())
        .collect()
}

#[actix_rt::test]
async fn the_regions_other_up_zones_are_tried_after_the_listed_ones() {
    let fake = FakeGce::start().await;
    zones_of_two_regions(&fake);
    fake.set_page_size(2);
    for zone in ZONES {
        fake.no_capacity(zone, TEMPLATES[0]);
    }
    let gce = backend(&fake);
    let vm = gce.create(spec("m1-small-aaaa0010")).await.unwrap();
    assert!(
        vm.backend_id.starts_with("europe-west1-e/"),
        "{}",
        vm.backend_id
    );
    let stored = fake
        .vm("europe-west1-e", "m1-small-aaaa0010")
        .expect("created");
    assert_eq!(stored["sourceInstanceTemplate"], TEMPLATES[0]);
    // The down zone and the other region's zone are never tried.
    assert_eq!(
        insert_zones(&fake),
        ["europe-west1-b", "europe-west1-c", "europe-west1-e"]
    );
    let listings = fake.requests_starting("GET /compute/v1/projects/test-project/zones?");
    // Four zones are UP: two pages of two.
    assert_eq!(listings.len(), 2, "every page: {listings:?}");
    assert!(listings[0].contains("filter=status"), "{listings:?}");

    // Every zone full for the first template: the second goes through the same zones, and the
    // list of zones is not asked again.
    fake.no_capacity("europe-west1-e", TEMPLATES[0]);
    gce.create(spec("m1-small-aaaa0011")).await.unwrap();
    let stored = fake.vm(ZONES[0], "m1-small-aaaa0011").expect("created");
    assert_eq!(stored["sourceInstanceTemplate"], TEMPLATES[1]);
    assert_eq!(
        insert_zones(&fake)[3..],
        [ZONES[0], ZONES[1], "europe-west1-e", ZONES[0]]
    );
    assert_eq!(
        fake.requests_starting("GET /compute/v1/projects/test-project/zones?")
            .len(),
        2,
        "the zones are cached"
    );
}

#[actix_rt::test]
async fn other_zones_false_keeps_to_the_listed_zones() {
    let fake = FakeGce::start().await;
    zones_of_two_regions(&fake);
    for zone in ZONES {
        for template in TEMPLATES {
            fake.no_capacity(zone, template);
        }
    }
    let gce = backend_of(
        &fake,
        None,
        GceBackendConfig {
            other_zones: false,
            ..config()
        },
    );
    let err = gce.create(spec("m1-small-aaaa0012")).await.unwrap_err();
    assert!(err.to_string().contains("no capacity"), "{err}");
    assert_eq!(
        insert_zones(&fake),
        [ZONES[0], ZONES[1], ZONES[0], ZONES[1]]
    );
    assert!(fake
        .requests_starting("GET /compute/v1/projects/test-project/zones?")
        .is_empty());
    assert!(fake.vms().is_empty());
}

#[actix_rt::test]
async fn an_insert_whose_answer_is_lost_is_retried_with_its_request_id() {
    let fake = FakeGce::start().await;
    fake.lose_next_insert_answer(503);
    let vm = backend(&fake)
        .create(spec("m1-small-aaaa0013"))
        .await
        .unwrap();
    assert!(vm.backend_id.starts_with(ZONES[0]));
    let posts = fake.requests_starting("POST");
    assert_eq!(posts.len(), 2, "{posts:?}");
    let request_id = |post: &str| {
        post.split(['?', '&'])
            .find_map(|pair| pair.strip_prefix("requestId="))
            .map(str::to_owned)
            .expect("a requestId")
    };
    assert_eq!(request_id(&posts[0]), request_id(&posts[1]));
    // The retry was answered with the first operation, not a 409 or a second VM.
    assert_eq!(fake.state.lock().unwrap().replayed_requests, 1);
    assert_eq!(
        fake.vms(),
        [(ZONES[0].to_owned(), "m1-small-aaaa0013".to_owned())]
    );
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
async fn a_token_is_renewed_before_it_expires() {
    let fake = FakeGce::start().await;
    // Renewed a minute before expiry: one second after it is issued.
    fake.token_lifetime(61);
    let gce = backend(&fake);
    gce.list().await.unwrap();
    assert_eq!(fake.state.lock().unwrap().tokens_issued, 1);
    tests::eventually("a second token", Duration::from_secs(10), || async {
        gce.list().await.unwrap();
        fake.state.lock().unwrap().tokens_issued == 2
    })
    .await;
    assert_eq!(
        fake.state.lock().unwrap().unauthorized,
        0,
        "renewed before use, not after a refusal"
    );
}

#[actix_rt::test]
async fn transient_token_endpoint_failures_are_retried() {
    let fake = FakeGce::start().await;
    let gce = backend(&fake);
    fake.fail_next_tokens(&[503, 429, 500]);
    gce.list().await.unwrap();
    {
        let state = fake.state.lock().unwrap();
        assert_eq!((state.token_requests, state.tokens_issued), (4, 1));
    }

    // A refusal is not retried.
    fake.revoke_tokens();
    fake.fail_next_tokens(&[403]);
    let err = gce.list().await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    assert_eq!(fake.state.lock().unwrap().token_requests, 5);
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
    let err = Gce::new(&env(&fake, Some(bad)), config(), "m1", "small", None)
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
