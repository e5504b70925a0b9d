//! The planner in this process, on port 0 with its own database and AMQP names:
//! [`TestPlanner::builder`] (or [`spawn_planner`] for the defaults), and its REST API as the
//! tests call it. The planner binary is [`crate::process::PlannerProcess`].

use std::{net::SocketAddr, time::Duration};

use actors::amqp::Topology;
use planner::{
    config::Config,
    domain::{
        job::JobEvent,
        labels::IgnoredLabels,
        webhook::{classify, Classified, Headers},
    },
    startup::Application,
    store::{apply_batch, PgPool},
};
use serde_json::Value;

use crate::amqp::{unique_topology, TopologyGuard};
use crate::db::TestDb;
use crate::env::{rabbitmq_url_via, with_address};
use crate::eventually;
use crate::fixtures::job_payload;

/// The admin token of every test planner.
pub const ADMIN_TOKEN: &str = "planner_v0_testtesttesttesttest";

/// A planner running in this process.
pub struct TestPlanner {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// `http://127.0.0.1:<metrics port>/metrics`.
    pub metrics_url: String,
    pub topology: Topology,
    /// Its metrics: what the consumer and the reconciler did.
    pub metrics: planner::metrics::Metrics,
    pub pool: PgPool,
    pub http: reqwest::Client,
    /// The database, when this planner made it up.
    pub db: Option<TestDb>,
    /// The queues and exchanges, when this planner made them up.
    pub queues: Option<TopologyGuard>,
    /// Its pressure broadcaster.
    pub broadcaster: actix::Addr<actors::broadcast::Broadcaster>,
}

/// The configuration of a test planner on `database_url` and `topology`: the test broker
/// (`TEST_RABBITMQ_URL`), [`ADMIN_TOKEN`], port 0 and short retry delays.
pub fn test_config(database_url: &str, topology: Topology) -> Config {
    Config::for_tests(database_url, &rabbitmq_url_via(None), ADMIN_TOKEN, topology)
}

/// A change to a test planner's configuration.
type Tune = Box<dyn FnOnce(&mut Config)>;

/// How to start a [`TestPlanner`]: by default on a database and AMQP names of its own (both
/// deleted when it is dropped), connected straight to the test servers.
#[derive(Default)]
#[must_use]
pub struct PlannerBuilder {
    database: Option<String>,
    topology: Option<Topology>,
    database_via: Option<SocketAddr>,
    broker_via: Option<SocketAddr>,
    tune: Vec<Tune>,
}

impl PlannerBuilder {
    /// Uses the database at `url` (the caller's, e.g. shared by several planners).
    pub fn database(mut self, url: &str) -> Self {
        self.database = Some(url.to_owned());
        self
    }

    /// Consumes `topology` (the caller's, who holds its [`TopologyGuard`]).
    pub fn topology(mut self, topology: &Topology) -> Self {
        self.topology = Some(topology.clone());
        self
    }

    /// Reaches the database through `proxy` (a [`crate::proxy::TcpProxy`]'s address).
    pub fn database_via(mut self, proxy: SocketAddr) -> Self {
        self.database_via = Some(proxy);
        self
    }

    /// Reaches the broker through `proxy`.
    pub fn broker_via(mut self, proxy: SocketAddr) -> Self {
        self.broker_via = Some(proxy);
        self
    }

    /// Changes the [`test_config`] before the planner starts.
    pub fn tune(mut self, tune: impl FnOnce(&mut Config) + 'static) -> Self {
        self.tune.push(Box::new(tune));
        self
    }

    /// Starts the planner; returns once its consumer is registered with the broker.
    pub async fn start(self) -> TestPlanner {
        let db = self.database.is_none().then(TestDb::new);
        let queues = self
            .topology
            .is_none()
            .then(|| TopologyGuard(unique_topology()));
        let database = match (&self.database, &db) {
            (Some(url), _) => url.clone(),
            (None, Some(db)) => db.url().to_owned(),
            (None, None) => unreachable!("a database is made up when none is given"),
        };
        let topology = match (self.topology, &queues) {
            (Some(topology), _) => topology,
            (None, Some(queues)) => queues.topology().clone(),
            (None, None) => unreachable!("a topology is made up when none is given"),
        };
        let database = match self.database_via {
            Some(proxy) => with_address(&database, proxy),
            None => database,
        };
        let broker = rabbitmq_url_via(self.broker_via);
        let mut config = Config::for_tests(&database, &broker, ADMIN_TOKEN, topology);
        for tune in self.tune {
            tune(&mut config);
        }
        let mut planner = TestPlanner::start_with(config).await;
        planner.db = db;
        planner.queues = queues;
        planner
    }
}

/// A planner with its own database and its own queues: `TestPlanner::builder().start()`.
pub async fn spawn_planner() -> TestPlanner {
    TestPlanner::builder().start().await
}

impl TestPlanner {
    /// How to start one; see [`PlannerBuilder`].
    pub fn builder() -> PlannerBuilder {
        PlannerBuilder::default()
    }

    /// A planner from a whole configuration (from [`test_config`]), on the caller's database and
    /// topology; returns once its consumer is registered with the broker.
    pub async fn start_with(config: Config) -> TestPlanner {
        let topology = config.topology.clone();
        let app = Application::build(config).await.expect("planner builds");
        let planner = TestPlanner {
            address: format!("http://127.0.0.1:{}", app.port()),
            metrics_url: format!(
                "http://127.0.0.1:{}/metrics",
                app.metrics_port().expect("a Prometheus listener")
            ),
            topology,
            metrics: app.metrics(),
            pool: app.pool(),
            http: crate::http_client(),
            db: None,
            queues: None,
            broadcaster: app.broadcaster(),
        };
        actix_web::rt::spawn(app.run_until_stopped());
        let metrics = planner.metrics.clone();
        eventually(
            "the consumer registers with the broker",
            Duration::from_secs(20),
            || {
                let metrics = metrics.clone();
                async move { metrics.consuming() }
            },
        )
        .await;
        planner
    }

    /// `GET`/`POST`/... `path` with an optional bearer token.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.address));
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// [`TestPlanner::request`] with the admin token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.request(method, path, Some(ADMIN_TOKEN))
    }

    /// Creates a general token through the API.
    pub async fn create_token(&self, name: &str) -> String {
        let response = self
            .admin(reqwest::Method::POST, &format!("/api/v1/auth/token/{name}"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.expect("json");
        body["token"].as_str().expect("token").to_owned()
    }

    /// Creates a flavor through the API.
    pub async fn create_flavor(&self, name: &str, labels: &[&str], priority: i64) {
        let response = self
            .admin(reqwest::Method::POST, &format!("/api/v1/flavors/{name}"))
            .json(
                &serde_json::json!({"platform": "github", "labels": labels, "priority": priority}),
            )
            .send()
            .await
            .expect("request");
        assert_eq!(
            response.status(),
            201,
            "{}",
            response.text().await.unwrap_or_default()
        );
    }

    /// A job as the API shows it (`None`: 404).
    pub async fn job(&self, id: i64) -> Option<Value> {
        let response = self
            .admin(reqwest::Method::GET, &format!("/api/v1/jobs/github/{id}"))
            .send()
            .await
            .expect("request");
        match response.status().as_u16() {
            200 => Some(response.json().await.expect("json")),
            404 => None,
            other => panic!("GET job {id}: {other}"),
        }
    }

    /// Applies a webhook body straight through the job store (no queue), for API tests.
    pub fn seed(&self, body: &Value, delivery: &str) {
        seed(&self.pool, body, delivery);
    }

    /// Waits until the consumer has settled at least `count` deliveries.
    pub async fn settled(&self, count: u64) {
        let metrics = self.metrics.clone();
        eventually(
            &format!("{count} deliveries settled"),
            Duration::from_secs(30),
            || {
                let metrics = metrics.clone();
                async move { metrics.settled() >= count }
            },
        )
        .await;
    }
}

/// Applies a webhook body delivered as `delivery` straight through the job store of the
/// database behind `pool` (no queue, no planner needed).
pub fn seed(pool: &PgPool, body: &Value, delivery: &str) {
    let mut conn = pool.get().expect("database connection");
    apply_batch(
        &mut conn,
        &IgnoredLabels::default(),
        &[job_event(body, delivery)],
    )
    .expect("apply");
}

/// A webhook body delivered as `delivery`, as the consumer hands it to the job store; panics
/// unless it is a self-hosted job event.
pub fn job_event(body: &Value, delivery: &str) -> (String, JobEvent) {
    let headers = Headers {
        event: Some("workflow_job".into()),
        delivery: Some(delivery.into()),
    };
    match classify(&headers, &serde_json::to_vec(body).unwrap()) {
        Ok(Classified::Apply { delivery, event }) => (delivery, *event),
        other => panic!("not a self-hosted job event: {other:?}"),
    }
}

/// Who may call a route of the REST API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token (`/health`, `/ready`, `/api/v1/openapi.json`).
    Public,
    /// Any valid token, general or admin.
    Token,
    /// The admin token only.
    Admin,
}

/// One operation of the REST API as a client calls it successfully, once [`prepare_routes`]
/// has made what it needs. Every test that goes over "every route" takes them from
/// [`api_routes`], which a test checks against the OpenAPI document.
#[derive(Debug, Clone)]
pub struct ApiRoute {
    pub method: reqwest::Method,
    /// The path pattern, as the OpenAPI document names it (`/api/v1/flavors/{name}`).
    pub pattern: &'static str,
    /// The path to call; `{who}` stands for a caller's name, so that calls with side effects
    /// (creating, deleting) by different callers do not meet.
    pub path: &'static str,
    pub access: Access,
    /// The JSON body, for routes that take one.
    pub body: Option<Value>,
    /// The answer to a call with the right credential.
    pub success: reqwest::StatusCode,
}

impl ApiRoute {
    /// The path for caller `who`.
    pub fn path_for(&self, who: &str) -> String {
        self.path.replace("{who}", who)
    }

    /// The request for caller `who`, with `authorization` as the raw `Authorization` value.
    pub fn request(
        &self,
        planner_url: &str,
        client: &reqwest::Client,
        who: &str,
        authorization: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut request = client.request(
            self.method.clone(),
            format!("{planner_url}{}", self.path_for(who)),
        );
        if let Some(value) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        if let Some(body) = &self.body {
            request = request.json(body);
        }
        request
    }
}

/// A line of [`ROUTES`]: method, pattern, path (`{who}`: the caller's name), who may call it,
/// JSON body, and the answer.
type RouteLine = (
    &'static str,
    &'static str,
    &'static str,
    Access,
    Option<&'static str>,
    u16,
);

/// Every route of the REST API, with a call that succeeds.
#[rustfmt::skip]
const ROUTES: &[RouteLine] = &[
    ("GET",    "/health",                         "/health",                                    Access::Public, None,                                          200),
    ("GET",    "/ready",                          "/ready",                                     Access::Public, None,                                          200),
    ("GET",    "/api/v1/openapi.json",            "/api/v1/openapi.json",                       Access::Public, None,                                          200),
    ("GET",    "/api/v1/flavors",                 "/api/v1/flavors",                            Access::Admin,  None,                                          200),
    ("POST",   "/api/v1/flavors/{name}",          "/api/v1/flavors/new-{who}",                  Access::Token,  Some(r#"{"platform":"github","labels":["x64"]}"#), 201),
    ("GET",    "/api/v1/flavors/{name}",          "/api/v1/flavors/small",                      Access::Token,  None,                                          200),
    ("PATCH",  "/api/v1/flavors/{name}",          "/api/v1/flavors/small",                      Access::Token,  Some(r#"{"minimum_pressure":1}"#),             204),
    ("DELETE", "/api/v1/flavors/{name}",          "/api/v1/flavors/old-{who}",                  Access::Token,  None,                                          200),
    ("GET",    "/api/v1/flavors/{name}/pressure", "/api/v1/flavors/small/pressure",             Access::Token,  None,                                          200),
    ("GET",    "/api/v1/flavors/{name}/pressure", "/api/v1/flavors/_/pressure?stream=true",     Access::Token,  None,                                          200),
    ("POST",   "/api/v1/auth/token/{name}",       "/api/v1/auth/token/new-{who}",               Access::Admin,  None,                                          201),
    ("GET",    "/api/v1/auth/token",              "/api/v1/auth/token",                         Access::Admin,  None,                                          200),
    ("DELETE", "/api/v1/auth/token/{name}",       "/api/v1/auth/token/old-{who}",               Access::Admin,  None,                                          204),
    ("GET",    "/api/v1/jobs/{platform}",         "/api/v1/jobs/github?status=queued&limit=10", Access::Token,  None,                                          200),
    ("GET",    "/api/v1/jobs/{platform}/{id}",    "/api/v1/jobs/github/4242",                   Access::Token,  None,                                          200),
    ("PATCH",  "/api/v1/jobs/{platform}/{id}",    "/api/v1/jobs/github/4242",                   Access::Token,  Some("{}"),                                    204),
    ("GET",    "/api/v1/match",                   "/api/v1/match?labels=self-hosted,x64",       Access::Token,  None,                                          200),
];

/// Every route of the REST API ([`ROUTES`]), with a call that succeeds.
pub fn api_routes() -> Vec<ApiRoute> {
    ROUTES
        .iter()
        .map(|&(method, pattern, path, access, body, success)| ApiRoute {
            method: method.parse().expect("method"),
            pattern,
            path,
            access,
            body: body.map(|text| serde_json::from_str(text).expect("route body")),
            success: reqwest::StatusCode::from_u16(success).expect("status"),
        })
        .collect()
}

/// Makes what [`api_routes`]' successful calls need, for each caller in `callers`: the flavor
/// `small`, the job 4242, and a flavor and a token `old-<caller>` to delete.
pub async fn prepare_routes(planner: &TestPlanner, callers: &[&str]) {
    planner.create_flavor("small", &["x64"], 1).await;
    planner.seed(
        &job_payload("queued.1", 4242, "queued", &["self-hosted", "x64"]),
        "route-job",
    );
    for caller in callers {
        planner
            .create_flavor(&format!("old-{caller}"), &["x64"], 1)
            .await;
        planner.create_token(&format!("old-{caller}")).await;
    }
}
