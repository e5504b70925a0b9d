//! The runner manager with `kind = "gce"` end to end, with the real binaries: gateway ->
//! RabbitMQ -> planner -> pressure stream -> manager -> the fake Compute Engine API, whose VMs
//! run a stand-in runner with the JIT configuration from their metadata (it registers with the
//! fake GitHub, goes busy when the fake assigns it a job, and powers its VM off when it exits),
//! as the startup script does on a real VM.

use std::time::Duration;

use serde_json::{json, Value};
use tests::eventually;
use tests::fake_gce::FakeGce;
use tests::manager::{names, Flavor, Manager, ManagerDir, Scene, FLAVOR, WAIT};

const ZONES: [&str; 2] = ["europe-west1-b", "europe-west1-c"];
const TEMPLATES: [&str; 2] = ["runner-c4-8", "runner-e2-8"];

/// A gce flavor over [`ZONES`] and [`TEMPLATES`].
fn gce_flavor(min: u32, max: u32, spot: bool) -> Flavor {
    let mut flavor = Flavor::new(FLAVOR, min, max);
    let list = |items: &[&str]| {
        items
            .iter()
            .map(|item| format!("{item:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    flavor.backend = Some(format!(
        "kind = \"gce\"\nproject = \"test-project\"\nzones = [{}]\ntemplates = [{}]\nspot = {spot}\n",
        list(&ZONES),
        list(&TEMPLATES)
    ));
    flavor
}

/// The system, the fake GitHub and a fake Compute Engine whose VMs run their runners.
struct GceScene {
    scene: Scene,
    gce: FakeGce,
    dir: ManagerDir,
}

impl GceScene {
    async fn start() -> Self {
        let scene = Scene::start().await;
        let gce = FakeGce::start().await;
        gce.run_runners();
        Self {
            scene,
            gce,
            dir: ManagerDir::new(),
        }
    }

    /// Manager `m1` with `flavor`, its token from the fake metadata server unless `extra` says
    /// otherwise.
    async fn manager(&self, flavor: Flavor, extra: &[(&str, &str)]) -> Manager {
        let mut vars = vec![
            ("APP_GCE_API_URL", self.gce.url.as_str()),
            ("APP_GCE_METADATA_URL", self.gce.url.as_str()),
            ("APP_GCE_OPERATION_TIMEOUT", "5s"),
        ];
        vars.extend_from_slice(extra);
        self.scene.manager("m1", &[flavor], &self.dir, &vars).await
    }

    /// The names of the VMs in the fake, sorted.
    fn vm_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.gce.vms().into_iter().map(|(_, name)| name).collect();
        names.sort();
        names
    }

    /// Waits until the fake holds exactly `count` VMs whose runners are online; their names.
    async fn online_vms(&self, count: usize) -> Vec<String> {
        let online = self.scene.online("m1-small-", count).await;
        eventually(&format!("{count} VMs"), WAIT, || async {
            self.gce.vms().len() == count
        })
        .await;
        let mut names: Vec<String> = online.into_iter().map(|runner| runner.name).collect();
        names.sort();
        assert_eq!(names, self.vm_names(), "VMs and online runners agree");
        names
    }
}

/// Waits until a runner has been removed as ended.
async fn ended_removal(manager: &Manager) {
    eventually("a removal as ended", WAIT, || async {
        manager
            .metric("github_runner_manager_removed_total{flavor=\"small\",reason=\"ended\"}")
            .await
            >= 1.0
    })
    .await;
}

/// `/ready`: status and body.
async fn ready(scene: &Scene, manager: &Manager) -> (u16, Value) {
    let response = scene
        .http
        .get(format!("{}/ready", manager.url))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("GET /ready");
    let status = response.status().as_u16();
    (status, response.json().await.expect("ready JSON"))
}

#[actix_web::test]
async fn queued_jobs_get_vms_in_the_first_zone_with_capacity_and_ended_vms_are_deleted() {
    let s = GceScene::start().await;
    s.gce.no_capacity(ZONES[0], TEMPLATES[0]);
    // The service-account key flow: the metadata server is out of reach.
    let key = s.gce.key_file(s.dir.path());
    let key = key.to_string_lossy().into_owned();
    let manager = s
        .manager(
            gce_flavor(0, 3, false),
            &[
                ("APP_GCE_CREDENTIALS_FILE", key.as_str()),
                ("APP_GCE_METADATA_URL", "http://127.0.0.1:9"),
            ],
        )
        .await;
    s.scene.queue(1..=2).await;
    let vms = s.online_vms(2).await;
    for name in &vms {
        let vm = s.gce.vm(ZONES[1], name).expect("in the second zone");
        assert_eq!(vm["sourceInstanceTemplate"], TEMPLATES[0]);
        assert_eq!(vm["labels"]["zone"], ZONES[1]);
        assert_eq!(vm["labels"]["owner"], "acme");
        assert_eq!(vm["labels"]["manager-id"], "m1");
        assert!(vm["scheduling"].is_null(), "not a Spot VM: {vm}");
    }
    assert!(s.gce.state.lock().unwrap().tokens_issued >= 1);
    eventually("two idle runners in the status API", WAIT, || async {
        manager.runners_in("idle").await.len() == 2
    })
    .await;
    let misses = "github_runner_manager_capacity_misses_total{flavor=\"small\",template=\"runner-c4-8\",zone=\"europe-west1-b\"}";
    assert_eq!(manager.metric(misses).await, 2.0, "one miss per VM");
    assert_eq!(
        manager
            .metric("github_runner_manager_capacity_exhausted{flavor=\"small\"}")
            .await,
        0.0
    );
    // The JIT configurations went only into the VMs' metadata, never into the log.
    let jit_configs: Vec<String> = s
        .gce
        .state
        .lock()
        .unwrap()
        .inserts
        .iter()
        .flat_map(|body| {
            body["metadata"]["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|item| item["key"] == manager::backend::gce::JIT_CONFIG_KEY)
        .map(|item| item["value"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(jit_configs.len(), 4, "two misses and two VMs");
    let log = manager.service.log();
    assert!(jit_configs.iter().all(|jit| !log.contains(jit.as_str())));

    // One job runs and ends: its runner exits, its VM powers off and is deleted.
    let done = vms[0].clone();
    assert!(s.scene.fake.assign_job(&done));
    eventually("a busy runner in the status API", WAIT, || async {
        manager.runners_in("busy").await.len() == 1
    })
    .await;
    s.scene.job(1, "completed").await;
    assert!(s.scene.fake.finish_job(&done));
    eventually("the ended VM deleted", WAIT, || async {
        !s.vm_names().contains(&done)
    })
    .await;
    // Removed once its registration is deleted too (after the VM).
    ended_removal(&manager).await;
    // Pressure 1: one VM is left. Which one depends on timing: when the completed webhook
    // lowers the pressure before the ended VM is seen, the idle one is the excess and goes, and
    // a new one replaces the ended one.
    manager.wait_for_passes(3.0).await;
    let left = s.vm_names();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(!left.contains(&done), "{left:?}");
    assert_eq!(
        names(&manager.runners().await),
        left.iter().cloned().collect()
    );
    manager.service.terminate();
    let status = manager.service.wait(WAIT).await;
    assert_eq!(status.code(), Some(0));
}

#[actix_web::test]
async fn a_preempted_spot_vm_is_deleted_and_replaced() {
    let s = GceScene::start().await;
    let manager = s.manager(gce_flavor(1, 1, true), &[]).await;
    let first = s.online_vms(1).await.remove(0);
    let zone = s.gce.zone_of(&first).expect("a zone");
    let vm = s.gce.vm(&zone, &first).unwrap();
    assert_eq!(vm["scheduling"]["provisioningModel"], "SPOT");
    assert_eq!(vm["scheduling"]["instanceTerminationAction"], "STOP");
    s.gce.terminate(&zone, &first);
    eventually("a replacement online", WAIT, || async {
        let vms = s.vm_names();
        vms.len() == 1 && vms[0] != first && s.scene.fake.runner(&vms[0]).is_some_and(|r| r.online)
    })
    .await;
    ended_removal(&manager).await;
    assert!(
        s.scene.fake.runner(&first).is_none(),
        "the preempted runner was deregistered"
    );
}

#[actix_web::test]
async fn a_vm_whose_runner_never_registers_is_deleted_after_the_boot_timeout() {
    let s = GceScene::start().await;
    s.gce.never_boot(TEMPLATES[0]);
    let mut flavor = gce_flavor(1, 1, false);
    flavor.boot_timeout = "2s".into();
    let manager = s.manager(flavor, &[]).await;
    eventually("a VM", WAIT, || async { s.gce.vms().len() == 1 }).await;
    let first = s.vm_names().remove(0);
    eventually("a boot-timeout removal", WAIT, || async {
        manager
            .metric("github_runner_manager_removed_total{flavor=\"small\",reason=\"boot_timeout\"}")
            .await
            >= 1.0
    })
    .await;
    eventually("a replacement VM", WAIT, || async {
        let vms = s.vm_names();
        vms.len() == 1 && vms[0] != first
    })
    .await;
    assert!(
        s.scene.fake.runner(&first).is_none(),
        "the silent runner's registration was deleted"
    );
    assert!(s.gce.state.lock().unwrap().guest_exits.is_empty());
}

#[actix_web::test]
async fn scale_down_deletes_idle_vms_only() {
    let s = GceScene::start().await;
    let manager = s.manager(gce_flavor(0, 5, false), &[]).await;
    s.scene.queue(1..=3).await;
    let vms = s.online_vms(3).await;
    let busy = vms[..2].to_vec();
    for name in &busy {
        assert!(s.scene.fake.assign_job(name), "assign a job to {name}");
    }
    eventually("two busy runners in the status API", WAIT, || async {
        manager.runners_in("busy").await.len() == 2
    })
    .await;
    // Two jobs done: desired 1, three VMs, two of them busy.
    s.scene.job(2, "completed").await;
    s.scene.job(3, "completed").await;
    eventually("the idle VM deleted", WAIT, || async {
        s.vm_names() == busy
    })
    .await;
    manager.wait_for_passes(3.0).await;
    assert_eq!(s.vm_names(), busy, "the busy VMs stay");
    for name in &busy {
        let zone = s.gce.zone_of(name).unwrap();
        assert_eq!(s.gce.vm(&zone, name).unwrap()["status"], "RUNNING");
        let runner = s.scene.fake.runner(name).expect("still registered");
        assert!(runner.busy && runner.online, "{runner:?}");
    }
    assert!(s.scene.fake.runner(&vms[2]).is_none());
    assert_eq!(
        manager
            .metric("github_runner_manager_removed_total{flavor=\"small\",reason=\"scale_down\"}")
            .await,
        1.0
    );
}

#[actix_web::test]
async fn a_restarted_manager_adopts_its_vms_and_creates_no_duplicates() {
    let s = GceScene::start().await;
    // Another manager's VM and a VM without labels: never this manager's to touch.
    s.gce.seed(
        ZONES[0],
        "m2-small-0000beef",
        json!({"manager-id": "m2", "flavor": "small"}),
    );
    s.gce.seed(ZONES[1], "hand-made-vm", json!({}));
    let flavor = gce_flavor(0, 5, false);
    let manager = s.manager(flavor.clone(), &[]).await;
    s.scene.queue(1..=2).await;
    s.scene.online("m1-small-", 2).await;
    eventually("two idle runners in the status API", WAIT, || async {
        manager.runners_in("idle").await.len() == 2
    })
    .await;
    let ours: Vec<String> = s
        .vm_names()
        .into_iter()
        .filter(|name| name.starts_with("m1-"))
        .collect();
    assert_eq!(ours.len(), 2);
    manager.service.kill();
    let _ = manager.service.wait(WAIT).await;

    let restarted = s.manager(flavor, &[]).await;
    eventually("the VMs adopted", WAIT, || async {
        names(&restarted.runners_in("idle").await) == ours.iter().cloned().collect()
    })
    .await;
    restarted.wait_for_passes(3.0).await;
    assert_eq!(
        s.gce.state.lock().unwrap().inserts.len(),
        2,
        "no new insert"
    );
    let mut all = ours.clone();
    all.extend(["hand-made-vm".to_owned(), "m2-small-0000beef".to_owned()]);
    all.sort();
    assert_eq!(s.vm_names(), all, "nothing deleted, nothing added");
    assert_eq!(s.scene.registered("m1-small-").len(), 2);
    assert!(
        s.gce.requests_starting("DELETE").is_empty(),
        "no delete: {:?}",
        s.gce.requests_starting("DELETE")
    );
}

#[actix_web::test]
async fn a_flavor_out_of_capacity_backs_off_and_says_so_in_ready() {
    let s = GceScene::start().await;
    for zone in ZONES {
        for template in TEMPLATES {
            s.gce.no_capacity(zone, template);
        }
    }
    let manager = s.manager(gce_flavor(1, 1, false), &[]).await;
    let exhausted = "github_runner_manager_capacity_exhausted{flavor=\"small\"}";
    eventually("the flavor out of capacity", WAIT, || async {
        manager.metric(exhausted).await == 1.0
    })
    .await;
    let (status, body) = ready(&s.scene, &manager).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["failing"], json!(["capacity:small"]), "{body}");
    assert!(
        manager
            .metric("github_runner_manager_failures_total{flavor=\"small\",reason=\"no_capacity\"}")
            .await
            >= 1.0
    );
    for zone in ZONES {
        for template in TEMPLATES {
            let series = format!("github_runner_manager_capacity_misses_total{{flavor=\"small\",template=\"{template}\",zone=\"{zone}\"}}");
            assert!(manager.metric(&series).await >= 1.0, "{series}");
        }
    }
    // Backing off: the second round of four inserts waits out a pause, passes run meanwhile.
    eventually("a second round of inserts", WAIT, || async {
        s.gce.state.lock().unwrap().insert_times.len() >= 8
    })
    .await;
    let times = s.gce.state.lock().unwrap().insert_times.clone();
    // The pause after the first failure is 1 s.
    let pause = times[4] - times[3];
    assert!(pause >= Duration::from_millis(950), "{pause:?}");
    // Every JIT registration of a failed create was deleted again.
    eventually("no registration left", WAIT, || async {
        s.scene.registered("m1-small-").is_empty()
    })
    .await;

    // Capacity comes back in the last zone for the last template: a VM there, and ready.
    s.gce.restore_capacity(ZONES[1], TEMPLATES[1]);
    let vm = s.online_vms(1).await.remove(0);
    assert_eq!(
        s.gce.vm(ZONES[1], &vm).unwrap()["sourceInstanceTemplate"],
        TEMPLATES[1]
    );
    eventually("the flavor has capacity again", WAIT, || async {
        manager.metric(exhausted).await == 0.0
    })
    .await;
    eventually("ready", WAIT, || async {
        ready(&s.scene, &manager).await.0 == 200
    })
    .await;
}
