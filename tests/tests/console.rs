//! The planner's web console: in headless Chromium (login, live pressure from a webhook through
//! the real gateway, job filters, match, the GitHub App set-up against the fake GitHub, a
//! screenshot of each page), and over plain HTTP for what a browser hides (sessions, CSRF,
//! escaping, headers, the App's secrets kept out of logs and later pages).

use std::collections::BTreeSet;
use std::time::Duration;

use fantoccini::Locator;
use reqwest::Url;
use serde_json::{json, Value};
use tests::amqp::{unique_topology, Broker, TopologyGuard};
use tests::browser::Browser;
use tests::console::{location, table_rows, text_of, ConsoleClient};
use tests::db::TestDb;
use tests::eventually;
use tests::fake_github::FakeGitHub;
use tests::fixtures::job_payload;
use tests::gateway::{Options, TestGateway};
use tests::manager::{Flavor, ManagerDir, Scene, FLAVOR, WAIT};
use tests::planner::{TestPlanner, ADMIN_TOKEN};
use tests::process::PlannerProcess;

const LABELS: &[&str] = &["self-hosted", "linux", "console-large"];
const XSS: &str = "<script>window.pwned = 1</script>build";

/// Every page a session reaches.
const PAGES: &[&str] = &[
    "/console",
    "/console/jobs",
    "/console/jobs/github/1",
    "/console/match",
    "/console/match?labels=linux",
    "/console/deliveries",
    "/console/runners",
    "/console/setup",
    "/console/setup/callback?code=x&state=y",
];

/// Job `id`, named `name`, queued now (within the age limit of pressure).
fn queued(id: i64, name: &str) -> Value {
    let mut body = lived(id, "queued", chrono::Utc::now());
    body["workflow_job"]["name"] = json!(name);
    body
}

/// The console set up against `fake` (GitHub's web and API).
fn with_fake_github(config: &mut planner::config::Config, fake: &str, webhook_url: &str) {
    let url = Url::parse(fake).expect("fake URL");
    config.console.github_url = url.clone();
    config.console.github_api_url = url;
    config.console.webhook_url = Some(webhook_url.to_owned());
}

#[actix_web::test]
async fn a_person_uses_the_console_in_a_browser() {
    let fake = FakeGitHub::start().await;
    let gateway = TestGateway::spawn(Options::default()).await;
    let (fake_url, webhook_url) = (fake.url.clone(), format!("{}/webhook", gateway.url));
    let planner = TestPlanner::builder()
        .topology(&gateway.topology)
        .tune(move |config| with_fake_github(config, &fake_url, &webhook_url))
        .start()
        .await;
    planner.create_flavor("console-large", LABELS, 5).await;
    planner
        .create_flavor("console-small", &["self-hosted", "linux", "small"], 1)
        .await;
    let browser = Browser::start().await;
    let console = format!("{}/console", planner.address);

    // No session: the login page.
    browser.client.goto(&console).await.expect("open");
    assert_eq!(browser.path().await, "/console/login");
    browser.screenshot("login").await;
    browser.fill("#token", ADMIN_TOKEN).await;
    browser.click_to_load("button[type=submit]").await;
    assert_eq!(browser.path().await, "/console");

    // The overview follows the pressure stream: a webhook through the gateway moves it, with
    // no reload (a value set in the page survives).
    let cell = "[data-pressure-flavor=\"console-large\"]";
    browser
        .wait_for_text("#live-status", "Pressure: live.", Duration::from_secs(10))
        .await;
    assert_eq!(browser.text(cell).await, "0");
    browser
        .client
        .execute("window.consoleMarker = 42;", vec![])
        .await
        .expect("script");
    let id = 8_100_000_000 + i64::from(rand_id());
    deliver(
        &gateway,
        &queued(id, XSS),
        &tests::unique("console-delivery"),
    )
    .await;
    browser
        .wait_for_text(cell, "1", Duration::from_secs(15))
        .await;
    let marker = browser
        .client
        .execute("return window.consoleMarker;", vec![])
        .await
        .expect("script");
    assert_eq!(marker, json!(42), "the page was reloaded");
    browser.screenshot("overview").await;

    // Jobs, filtered through the form; the job's name is text, its script never runs.
    browser
        .client
        .goto(&format!("{console}/jobs"))
        .await
        .expect("jobs");
    browser
        .client
        .find(Locator::Css("#status"))
        .await
        .expect("status filter")
        .select_by_value("queued")
        .await
        .expect("select");
    browser.fill("#flavor", "console-large").await;
    browser.click_to_load("#filter").await;
    let url = browser.client.current_url().await.expect("url");
    let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert!(query.contains(&("status".into(), "queued".into())), "{url}");
    assert!(
        query.contains(&("flavor".into(), "console-large".into())),
        "{url}"
    );
    assert_eq!(browser.text("#jobs tbody .job-name").await, XSS);
    let pwned = browser
        .client
        .execute("return typeof window.pwned;", vec![])
        .await
        .expect("script");
    assert_eq!(pwned, json!("undefined"));
    browser.screenshot("jobs").await;
    browser.click_to_load("#jobs tbody th a").await;
    assert_eq!(browser.path().await, format!("/console/jobs/github/{id}"));
    assert_eq!(browser.text("#given-flavor").await, "console-large");
    assert_eq!(browser.text("#chosen-flavor").await, "console-large");
    browser.screenshot("job").await;

    // A filter the API refuses is named, with a 400.
    browser
        .client
        .goto(&format!("{console}/jobs?status=lost"))
        .await
        .expect("jobs");
    assert!(browser.text(".error").await.starts_with("status"));

    // Match.
    browser
        .client
        .goto(&format!("{console}/match"))
        .await
        .expect("match");
    browser.fill("#labels", "self-hosted, linux, small").await;
    browser.click_to_load("#match").await;
    assert_eq!(browser.text("#chosen-flavor").await, "console-small");
    browser.screenshot("match").await;

    browser
        .client
        .goto(&format!("{console}/deliveries"))
        .await
        .expect("deliveries");
    assert_eq!(browser.text("#deliveries-recorded").await, "1");
    browser.screenshot("deliveries").await;
    browser
        .client
        .goto(&format!("{console}/runners"))
        .await
        .expect("runners");
    browser.screenshot("runners").await;

    // Set-up: the manifest goes to the fake GitHub, which sends the browser back with a code;
    // the credentials are shown once.
    browser
        .client
        .goto(&format!("{console}/setup"))
        .await
        .expect("setup");
    browser.screenshot("setup").await;
    browser.fill("#name", "console-test-app").await;
    browser.click_to_load("#prepare").await;
    browser.screenshot("setup-confirm").await;
    browser.click("#create-app").await;
    browser
        .wait_for_path("/console/setup/callback", Duration::from_secs(10))
        .await;
    let app = fake.state().manifest_apps[0].clone();
    assert_eq!(app.manifest["name"], "console-test-app");
    assert_eq!(
        app.manifest["hook_attributes"]["url"],
        format!("{}/webhook", gateway.url)
    );
    assert_eq!(browser.text("#app-id").await, app.id.to_string());
    assert_eq!(browser.text("#webhook-secret").await, app.webhook_secret);
    assert!(browser
        .text("#private-key")
        .await
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    browser.screenshot("setup-done").await;
    // Again: the code is spent, nothing is shown.
    browser.client.refresh().await.expect("reload");
    let source = browser.client.source().await.expect("source");
    assert!(!source.contains("PRIVATE KEY"));
    assert!(!source.contains(&app.webhook_secret));

    // On a phone: no page scrolls sideways (a wide table scrolls in its own region).
    browser
        .client
        .set_window_size(390, 844)
        .await
        .expect("resize");
    for (name, path) in [
        ("overview", String::new()),
        ("jobs", "/jobs".to_owned()),
        ("job", format!("/jobs/github/{id}")),
        (
            "match",
            "/match?labels=self-hosted%2C+linux%2C+small".to_owned(),
        ),
        ("deliveries", "/deliveries".to_owned()),
        ("runners", "/runners".to_owned()),
        ("setup", "/setup".to_owned()),
        ("login", "/login".to_owned()),
    ] {
        browser
            .client
            .goto(&format!("{console}{path}"))
            .await
            .expect("page");
        browser.screenshot(&format!("{name}-phone")).await;
        let fits = browser
            .client
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth;",
                vec![],
            )
            .await
            .expect("script");
        assert_eq!(
            fits,
            json!(true),
            "{console}{path} scrolls sideways on a phone"
        );
    }

    browser.close().await;
    fake.stop().await;
}

fn rand_id() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32 >> 4
}

#[actix_web::test]
async fn no_page_without_a_session_and_no_form_without_its_csrf_token() {
    let planner = TestPlanner::builder().start().await;
    let anonymous = ConsoleClient::new(&planner.address);
    for page in PAGES {
        let response = anonymous.get(page).await;
        assert_eq!(response.status(), 303, "{page}");
        assert_eq!(location(&response), "/console/login", "{page}");
    }
    // The pressure stream: a 401, which ends an EventSource (a redirect would loop).
    assert_eq!(anonymous.get("/console/stream").await.status(), 401);
    // A forged cookie is no session.
    anonymous.set_cookie("planner_console", Some("v1.9999999999.admin.-.x.y"));
    assert_eq!(anonymous.get("/console").await.status(), 303);
    anonymous.set_cookie("planner_console", None);

    // Login: the form's token must come with the cookie it is bound to.
    let form = anonymous.get("/console/login").await;
    let csp = form.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(form.headers()["cache-control"], "no-store");
    let csrf = tests::console::csrf_of(&form.text().await.unwrap());
    let response = anonymous
        .post_form(
            "/console/login",
            &[("token", ADMIN_TOKEN), ("csrf", "forged")],
        )
        .await;
    assert_eq!(response.status(), 403);
    let stranger = ConsoleClient::new(&planner.address);
    let response = stranger
        .post_form("/console/login", &[("token", ADMIN_TOKEN), ("csrf", &csrf)])
        .await;
    assert_eq!(response.status(), 403, "a CSRF token without its cookie");
    let response = anonymous
        .post_form(
            "/console/login",
            &[
                ("token", "planner_v0_wrongwrongwrongwrong"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(response.status(), 401);
    // The form comes again, bound to a new login cookie.
    let csrf = tests::console::csrf_of(&response.text().await.unwrap());

    // The session cookie: flags, no token in it; Secure behind a TLS proxy.
    let response = anonymous
        .post_form("/console/login", &[("token", ADMIN_TOKEN), ("csrf", &csrf)])
        .await;
    assert_eq!(response.status(), 303);
    let set = session_cookie_line(&response);
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    assert!(
        !set.contains("testtest"),
        "the token is in the cookie: {set}"
    );
    let mut proxied = ConsoleClient::new(&planner.address);
    proxied
        .headers
        .push(("X-Forwarded-Proto", "https".to_owned()));
    let response = proxied.login(ADMIN_TOKEN).await;
    assert!(session_cookie_line(&response).contains("Secure"));

    // Forms of a session need its token.
    let admin = anonymous;
    for page in PAGES {
        let status = admin.get(page).await.status();
        assert_ne!(status, 303, "{page}");
    }
    let stream = admin.get("/console/stream").await;
    assert_eq!(stream.status(), 200, "the pressure stream with a session");
    drop(stream);
    let setup = admin.page("/console/setup").await;
    let csrf = tests::console::csrf_of(&setup);
    let fields = |csrf: &'static str| {
        [
            ("csrf", csrf),
            ("name", "app"),
            ("webhook_url", "https://gw.example.com/webhook"),
        ]
    };
    assert_eq!(
        admin
            .post_form("/console/setup", &fields("forged"))
            .await
            .status(),
        403
    );
    let other = ConsoleClient::signed_in(&planner.address, ADMIN_TOKEN).await;
    let other_csrf = tests::console::csrf_of(&other.page("/console/setup").await);
    assert_ne!(other_csrf, csrf, "two sessions, one CSRF token");
    let response = admin
        .post_form(
            "/console/setup",
            &[
                ("csrf", other_csrf.as_str()),
                ("name", "app"),
                ("webhook_url", "https://gw.example.com/webhook"),
            ],
        )
        .await;
    assert_eq!(response.status(), 403, "another session's CSRF token");
    assert_eq!(
        admin
            .post_form("/console/logout", &[("csrf", "forged")])
            .await
            .status(),
        403
    );
    assert_eq!(admin.post_form("/console/logout", &[]).await.status(), 400);
    let response = admin.post_form("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(response.status(), 303);
    assert_eq!(admin.cookie("planner_console"), None);
    assert_eq!(admin.get("/console").await.status(), 303);

    // A general token: the read-only pages, as long as the token exists.
    let token = planner.create_token("console-reader").await;
    let reader = ConsoleClient::signed_in(&planner.address, &token).await;
    assert_eq!(reader.get("/console").await.status(), 200);
    assert_eq!(reader.get("/console/setup").await.status(), 403);
    let deleted = planner
        .admin(reqwest::Method::DELETE, "/api/v1/auth/token/console-reader")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(reader.get("/console").await.status(), 303);
}

fn session_cookie_line(response: &reqwest::Response) -> String {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .find(|line| line.starts_with("planner_console="))
        .expect("a session cookie")
}

#[actix_web::test]
async fn every_value_is_escaped_and_a_script_in_a_job_name_stays_text() {
    let planner = TestPlanner::builder().start().await;
    planner.create_flavor("console-large", LABELS, 1).await;
    planner.seed(&queued(77, "<script>alert(1)</script>\"'&"), "console-xss");
    let admin = ConsoleClient::signed_in(&planner.address, ADMIN_TOKEN).await;
    for page in [
        "/console/jobs",
        "/console/jobs/github/77",
        "/console/jobs?repository=%3Cscript%3Ealert(2)%3C/script%3E",
        "/console/match?labels=%3Cscript%3Ealert(3)%3C%2Fscript%3E",
    ] {
        let response = admin.get(page).await;
        let body = response.text().await.unwrap();
        assert!(!body.contains("<script>alert"), "{page}: {body}");
    }
    let jobs = admin.page("/console/jobs").await;
    assert!(
        jobs.contains("&#60;script&#62;alert(1)&#60;/script&#62;&#34;&#39;&#38;"),
        "{jobs}"
    );
    let matched = admin
        .page("/console/match?labels=%3Cscript%3Ealert(3)%3C%2Fscript%3E")
        .await;
    assert!(matched.contains("&#60;script&#62;alert(3)&#60;/script&#62;"));
}

#[actix_web::test]
async fn the_app_credentials_are_shown_once_and_never_logged() {
    let fake = FakeGitHub::start().await;
    let db = TestDb::new();
    let queues = TopologyGuard(unique_topology());
    let mut planner = PlannerProcess::new(db.url(), &queues.topology().queue)
        .env("APP_CONSOLE_GITHUB_URL", &fake.url)
        .env("APP_GITHUB_API_URL", &fake.url)
        .env("RUST_LOG", "debug")
        .start()
        .await;
    let admin = ConsoleClient::signed_in(&planner.url, ADMIN_TOKEN).await;
    let created = admin.create_app("process-app", Some("my-org")).await;
    assert!(
        created
            .csp
            .contains(&format!("form-action 'self' {}", fake.url)),
        "{}",
        created.csp
    );
    assert!(
        created.action.starts_with(&format!(
            "{}/organizations/my-org/settings/apps/new?state=",
            fake.url
        )),
        "{}",
        created.action
    );
    let callback = created.callback;
    assert!(callback.starts_with(&format!("{}/console/setup/callback?code=", planner.url)));
    // Another session cannot use the code (its state is not theirs).
    let other = ConsoleClient::signed_in(&planner.url, ADMIN_TOKEN).await;
    assert_eq!(other.get(&callback).await.status(), 403);

    // GitHub's redirect is a navigation from another site: the browser sends the set-up
    // cookie (`SameSite=Lax`), not the session's (`Strict`).
    let session = admin.cookie("planner_console").expect("a session");
    admin.set_cookie("planner_console", None);
    let done = admin.get(&callback).await;
    admin.set_cookie("planner_console", Some(&session));
    assert_eq!(done.status(), 200);
    assert_eq!(
        admin.cookie("planner_console_setup"),
        None,
        "the set-up cookie stays"
    );
    assert_eq!(done.headers()["cache-control"], "no-store");
    let done = done.text().await.unwrap();
    let app = fake.state().manifest_apps[0].clone();
    assert!(done.contains(&app.webhook_secret));
    let key_line = tests::fake_github::PRIVATE_KEY
        .lines()
        .nth(3)
        .expect("a line of the key");
    assert!(done.contains(key_line), "the private key is shown");

    // Never again: not on the same URL (the code is spent), nor on any page.
    let again = admin.get(&callback).await;
    assert_eq!(again.status(), 502);
    let mut pages = vec![again.text().await.unwrap()];
    for page in [
        "/console",
        "/console/setup",
        "/console/deliveries",
        "/console/jobs",
    ] {
        pages.push(admin.page(page).await);
    }
    for page in &pages {
        assert!(!page.contains(key_line) && !page.contains(&app.webhook_secret));
    }
    // Nor in the planner's log (which does say the App was made).
    planner
        .service
        .wait_for_log("event=console_github_app_created", Duration::from_secs(5))
        .await;
    let log = planner.service.log();
    assert!(!log.contains(key_line), "the private key is logged");
    assert!(
        !log.contains(&app.webhook_secret),
        "the webhook secret is logged"
    );
    assert!(!log.contains("client-secret-of-the-fake"));
    fake.stop().await;
}

/// A GitHub Enterprise Server is configured by its web address alone: the App is created on
/// its pages, and the code converted through the REST API the console derives (`/api/v3`).
#[actix_web::test]
async fn the_app_is_created_on_github_enterprise_server_from_its_url_alone() {
    let fake = FakeGitHub::start().await;
    let db = TestDb::new();
    let queues = TopologyGuard(unique_topology());
    let planner = PlannerProcess::new(db.url(), &queues.topology().queue)
        .env("APP_CONSOLE_GITHUB_URL", &fake.url)
        .start()
        .await;
    let admin = ConsoleClient::signed_in(&planner.url, ADMIN_TOKEN).await;
    let created = admin.create_app("enterprise-app", None).await;
    assert!(
        created
            .action
            .starts_with(&format!("{}/settings/apps/new?state=", fake.url)),
        "{}",
        created.action
    );
    let done = admin.page(&created.callback).await;
    let app = fake.state().manifest_apps[0].clone();
    assert_eq!(app.manifest["name"], "enterprise-app");
    assert_eq!(text_of(&done, "id=\"app-id\""), app.id.to_string());
    assert_eq!(text_of(&done, "id=\"webhook-secret\""), app.webhook_secret);
    let conversions = fake.state().requests("/api/v3/app-manifests/");
    assert_eq!(conversions.len(), 1, "{conversions:?}");
    assert_eq!(conversions[0].method, "POST");
    assert_eq!(conversions[0].status, 201);
    assert!(
        fake.state().requests("/app-manifests/").is_empty(),
        "converted at github.com's API address"
    );
    fake.stop().await;
}

/// The console reads the manager's status API with a type of its own: every runner the manager
/// can show, in every state, reads back field for field, in a state the console knows.
#[test]
fn the_console_reads_every_runner_the_manager_can_show() {
    use manager::{decide::RunnerState, messages::RunnerView};
    use planner::console::managers::{Runner, STATES};

    assert_eq!(STATES.len(), RunnerState::ALL.len());
    let created_at = chrono::Utc::now() - chrono::Duration::minutes(5);
    for state in RunnerState::ALL {
        let shown = RunnerView {
            name: "m1-small-0001".to_owned(),
            flavor: "small".to_owned(),
            state,
            created_at,
            online_at: Some(created_at + chrono::Duration::seconds(30)),
            backend_id: Some("4242".to_owned()),
        };
        let json = serde_json::to_value(&shown).expect("the manager's JSON");
        let read: Runner = serde_json::from_value(json.clone())
            .unwrap_or_else(|err| panic!("the console cannot read {json}: {err}"));
        assert_eq!(read.name, shown.name);
        assert_eq!(read.flavor, shown.flavor);
        assert_eq!(read.state, state.as_str(), "{json}");
        assert!(STATES.contains(&read.state.as_str()), "{json}");
        assert_eq!(read.created_at, shown.created_at);
        assert_eq!(read.online_at, shown.online_at, "{json}");
        assert_eq!(read.backend_id, shown.backend_id, "{json}");
    }
}

/// A real manager (exec backend, fake runners registered with the fake GitHub) with one busy
/// and one idle runner, and a manager that cannot be reached: the overview counts the first's
/// runners by state and says the second is not shown; the runners page lists each runner.
#[actix_web::test]
async fn the_console_shows_the_runners_each_manager_reports() {
    let scene = Scene::start().await;
    let dir = ManagerDir::new();
    let manager = scene
        .manager("m1", &[Flavor::new(FLAVOR, 2, 3)], &dir, &[])
        .await;
    let online = scene.online("m1-small-", 2).await;
    assert!(scene.fake.assign_job(&online[0].name), "a job for a runner");
    eventually("one busy and one idle runner", WAIT, || async {
        let mut states: Vec<String> = manager
            .runners()
            .await
            .iter()
            .map(|runner| runner["state"].as_str().unwrap_or_default().to_owned())
            .collect();
        states.sort();
        states == ["busy", "idle"]
    })
    .await;

    let reachable = Url::parse(&manager.url).expect("manager URL");
    let gone = Url::parse(&format!("http://127.0.0.1:{}", tests::free_port())).unwrap();
    let token = scene.token.clone();
    let managers = vec![reachable.clone(), gone.clone()];
    let planner = TestPlanner::builder()
        .tune(move |config| {
            config.console.managers = managers;
            config.console.manager_token = Some(token.into());
        })
        .start()
        .await;
    let console = ConsoleClient::signed_in(&planner.address, ADMIN_TOKEN).await;

    let overview = console.page("/console").await;
    let summary = text_of(&overview, &format!("data-manager=\"{reachable}\""));
    assert!(summary.contains("2 runners: 1 idle, 1 busy."), "{summary}");
    let down = text_of(&overview, &format!("data-manager=\"{gone}\""));
    assert!(
        down.contains("Not shown: unreachable or too slow."),
        "{down}"
    );

    let page = console.page("/console/runners").await;
    let rows = table_rows(&page, &format!("aria-label=\"Runners of {reachable}\""));
    let shown: BTreeSet<(String, String, String)> = rows
        .iter()
        .map(|row| {
            (
                row["Runner"].clone(),
                row["Flavor"].clone(),
                row["State"].clone(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String, String)> = manager
        .runners()
        .await
        .iter()
        .map(|runner| {
            let field = |name: &str| runner[name].as_str().unwrap_or_default().to_owned();
            (field("name"), field("flavor"), field("state"))
        })
        .collect();
    assert_eq!(shown, expected);
    let states: BTreeSet<&str> = rows.iter().map(|row| row["State"].as_str()).collect();
    assert_eq!(states, BTreeSet::from(["busy", "idle"]));
    for row in &rows {
        assert_eq!(row["Flavor"], FLAVOR);
        assert!(!row["Online since"].is_empty(), "{row:?}");
        assert!(!row["Backend id"].is_empty(), "{row:?}");
    }
    let down = text_of(&page, &format!("data-manager=\"{gone}\""));
    assert!(
        down.contains("Not shown: unreachable or too slow."),
        "{down}"
    );
}

/// Sends `body` through the gateway as delivery `delivery`.
async fn deliver(gateway: &TestGateway, body: &Value, delivery: &str) {
    tests::gateway::deliver(&tests::http_client(), &gateway.url, body, delivery).await;
}

/// Job `id`'s `action` webhook, with GitHub's times: created at `created`, started 42 s and
/// completed 142 s later (when the action says so).
fn lived(id: i64, action: &str, created: chrono::DateTime<chrono::Utc>) -> Value {
    let fixture = match action {
        "queued" => "queued.0",
        "in_progress" => "in_progress.1",
        _ => "completed.0",
    };
    let mut body = job_payload(fixture, id, action, LABELS);
    let job = &mut body["workflow_job"];
    job["created_at"] = json!(created.to_rfc3339());
    job["started_at"] = json!((created + chrono::Duration::seconds(42)).to_rfc3339());
    job["completed_at"] = match action {
        "completed" => json!((created + chrono::Duration::seconds(142)).to_rfc3339()),
        _ => Value::Null,
    };
    if action == "completed" {
        job["conclusion"] = json!("success");
    }
    body
}

/// What the pages show after webhooks through the real gateway: the overview's open jobs of a
/// flavor, a job's timeline, the job list's paging with its filters, duplicates and a dead
/// letter on the deliveries page, and the match page's reasons.
#[actix_web::test]
async fn the_pages_show_what_the_webhooks_said() {
    let gateway = TestGateway::spawn(Options::default()).await;
    let planner = TestPlanner::builder()
        .topology(&gateway.topology)
        .start()
        .await;
    planner.create_flavor("console-large", LABELS, 5).await;
    planner
        .create_flavor("console-small", &["self-hosted", "linux", "small"], 1)
        .await;
    // It would win every job of console-large, were it enabled.
    let disabled = planner
        .admin(reqwest::Method::POST, "/api/v1/flavors/console-off")
        .json(&json!({"platform": "github", "labels": LABELS, "priority": 9, "is_disabled": true}))
        .send()
        .await
        .expect("create flavor");
    assert_eq!(disabled.status(), 201);

    let base = 8_200_000_000 + i64::from(rand_id());
    let (oldest, newest, done, running) = (base + 1, base + 2, base + 3, base + 4);
    let now = chrono::Utc::now();
    let epoch = "2024-01-01T00:00:00Z".parse().expect("a time");
    let repeated = tests::unique("console-repeated");
    deliver(
        &gateway,
        &lived(oldest, "queued", now - chrono::Duration::days(3)),
        &tests::unique("q"),
    )
    .await;
    deliver(&gateway, &lived(newest, "queued", now), &repeated).await;
    deliver(&gateway, &lived(newest, "queued", now), &repeated).await;
    for action in ["queued", "in_progress", "completed"] {
        deliver(
            &gateway,
            &lived(done, action, epoch),
            &tests::unique(action),
        )
        .await;
    }
    for action in ["queued", "in_progress"] {
        deliver(
            &gateway,
            &lived(running, action, now),
            &tests::unique(action),
        )
        .await;
    }
    planner.settled(8).await;
    let console = ConsoleClient::signed_in(&planner.address, ADMIN_TOKEN).await;

    // The overview: two queued (the oldest three days old), one running.
    let overview = console.page("/console").await;
    let rows = table_rows(&overview, "id=\"flavors\"");
    let large = rows
        .iter()
        .find(|row| row["Flavor"] == "console-large")
        .expect("console-large on the overview");
    assert_eq!(large["Queued"], "2", "{large:?}");
    assert_eq!(large["Running"], "1", "{large:?}");
    assert_eq!(large["Oldest queued"], "3d 0h", "{large:?}");
    let off = rows
        .iter()
        .find(|row| row["Flavor"] == "console-off")
        .unwrap();
    assert_eq!(off["Enabled"], "no");
    assert_eq!(off["Queued"], "0");

    // A job's timeline, with GitHub's times.
    let job = console.page(&format!("/console/jobs/github/{done}")).await;
    assert_eq!(
        tests::console::list_items(&job, "id=\"timeline\""),
        [
            "queued: 2024-01-01 00:00:00 UTC",
            "waiting (first heard of): –",
            "in progress: 2024-01-01 00:00:42 UTC",
            "completed: 2024-01-01 00:02:22 UTC",
        ]
    );

    // The job list, one per page: the next page keeps the filters.
    let first = console
        .page("/console/jobs?status=queued&flavor=console-large&limit=1")
        .await;
    let ids = |page: &str| -> Vec<String> {
        table_rows(page, "id=\"jobs\"")
            .into_iter()
            .map(|row| row["Job"].clone())
            .collect()
    };
    assert_eq!(ids(&first), [oldest.to_string()]);
    let next = tests::console::link_to(&first, "Next page");
    let next_url = Url::parse(&format!("{}{next}", planner.address)).expect("next page URL");
    let query: Vec<(String, String)> = next_url.query_pairs().into_owned().collect();
    for pair in [
        ("status", "queued"),
        ("flavor", "console-large"),
        ("limit", "1"),
    ] {
        assert!(query.contains(&(pair.0.into(), pair.1.into())), "{next}");
    }
    assert!(query.iter().any(|(key, _)| key == "cursor"), "{next}");
    let second = console.page(&next).await;
    assert_eq!(ids(&second), [newest.to_string()]);
    assert!(!second.contains("Next page"), "only two queued jobs");

    // Deliveries: seven ids, one of them twice.
    let deliveries = console.page("/console/deliveries").await;
    assert_eq!(text_of(&deliveries, "id=\"deliveries-recorded\""), "7");
    assert_eq!(text_of(&deliveries, "id=\"deliveries-duplicated\""), "1");
    assert_eq!(text_of(&deliveries, "id=\"duplicates-counted\""), "1");
    let recent = table_rows(&deliveries, "aria-label=\"Recent deliveries\"");
    let row = recent
        .iter()
        .find(|row| row["Delivery"] == repeated)
        .expect("the repeated delivery");
    assert_eq!(row["Duplicates"], "1");
    assert_eq!(row["Job"], format!("github/{newest}"));

    // A poison message: dead-lettered, then counted in the dead-letter queue.
    Broker::connect(&planner.topology)
        .await
        .publish_raw(b"not json", Some("workflow_job"), Some("console-poison"))
        .await;
    eventually(
        "the dead letter on the deliveries page",
        Duration::from_secs(15),
        || async {
            let page = console.page("/console/deliveries").await;
            text_of(&page, "id=\"dead-letter-queue\"") == "1"
                && text_of(&page, "id=\"dead-lettered-invalid\"") == "1"
        },
    )
    .await;

    // Match: what the others lack, and the disabled flavor not eligible.
    let matched = console
        .page("/console/match?labels=self-hosted%2C+linux%2C+console-large")
        .await;
    assert_eq!(text_of(&matched, "id=\"chosen-flavor\""), "console-large");
    let verdicts = table_rows(&matched, "aria-label=\"Every flavor\"");
    let verdict = |name: &str| {
        verdicts
            .iter()
            .find(|row| row["Flavor"] == name)
            .unwrap_or_else(|| panic!("no row for {name}: {verdicts:?}"))
            .clone()
    };
    assert_eq!(verdict("console-large")["Verdict"], "chosen");
    let small = verdict("console-small");
    assert_eq!(small["Lacks"], "console-large");
    assert_eq!(small["Verdict"], "lacks labels");
    let off = verdict("console-off");
    assert_eq!(off["Enabled"], "no");
    assert_eq!(off["Lacks"], "");
    assert_eq!(off["Verdict"], "disabled");
}
