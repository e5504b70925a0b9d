//! The status API: `GET /api/v1/runners` (bearer token: the planner token or
//! `APP_MANAGER_ADMIN_TOKEN_VALUE`), `GET /health` and `GET /ready`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use actix::Recipient;
use actix_web::{get, http::header, web, HttpRequest, HttpResponse};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::Error;
use crate::messages::{GetRunners, RunnerView};

/// What `/ready` reports: set by whoever talks to each dependency.
#[derive(Debug, Default)]
pub struct Readiness {
    planner: AtomicBool,
    github: AtomicBool,
    backend: AtomicBool,
    /// Flavors whose last create found no capacity anywhere.
    out_of_capacity: Mutex<BTreeSet<String>>,
}

impl Readiness {
    /// All unknown (not ready) until first heard from; GitHub counts as reachable until a call
    /// fails (it is only called when there is something to do).
    pub fn new() -> Self {
        Self {
            planner: AtomicBool::new(false),
            github: AtomicBool::new(true),
            backend: AtomicBool::new(false),
            out_of_capacity: Mutex::new(BTreeSet::new()),
        }
    }

    /// Whether the pressure stream is connected.
    pub fn set_planner(&self, up: bool) {
        self.planner.store(up, Ordering::SeqCst);
    }

    /// Whether GitHub answered the last call.
    pub fn set_github(&self, up: bool) {
        self.github.store(up, Ordering::SeqCst);
    }

    /// Whether the backends answered the last listing.
    pub fn set_backend(&self, up: bool) {
        self.backend.store(up, Ordering::SeqCst);
    }

    /// Whether the last create of `flavor` found capacity (`false`: none in any zone or
    /// template; its creates back off).
    pub fn set_capacity(&self, flavor: &str, found: bool) {
        let mut out = self.out_of_capacity.lock().expect("readiness");
        if found {
            out.remove(flavor);
        } else {
            out.insert(flavor.to_owned());
        }
    }

    /// The names of what fails: `planner stream`, `github`, `backend`, and `capacity:<flavor>`
    /// for each flavor out of capacity.
    pub fn failing(&self) -> Vec<String> {
        let mut failing = Vec::new();
        if !self.planner.load(Ordering::SeqCst) {
            failing.push("planner stream".to_owned());
        }
        if !self.github.load(Ordering::SeqCst) {
            failing.push("github".to_owned());
        }
        if !self.backend.load(Ordering::SeqCst) {
            failing.push("backend".to_owned());
        }
        let out = self.out_of_capacity.lock().expect("readiness");
        failing.extend(out.iter().map(|flavor| format!("capacity:{flavor}")));
        failing
    }
}

/// State of the handlers.
pub struct StatusState {
    /// SHA-256 of the tokens the API accepts.
    pub token_hashes: Vec<[u8; 32]>,
    /// Every reconciler.
    pub reconcilers: Vec<Recipient<GetRunners>>,
    /// The dependencies' state.
    pub readiness: std::sync::Arc<Readiness>,
}

/// SHA-256 of a token.
pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl StatusState {
    /// Checks `Authorization: Bearer <token>` in constant time against every accepted token.
    fn authenticate(&self, req: &HttpRequest) -> Result<(), Error> {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && !token.is_empty())
            .map(|(_, token)| token.trim())
            .ok_or(Error::MissingToken)?;
        let digest = token_sha256(token);
        let mut matched = subtle::Choice::from(0);
        for hash in &self.token_hashes {
            matched |= digest.ct_eq(hash);
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(Error::InvalidToken)
        }
    }
}

#[derive(Serialize)]
struct Status {
    status: &'static str,
}

#[derive(Serialize)]
struct NotReady {
    error: String,
    failing: Vec<String>,
}

/// 200 while the process serves HTTP.
#[get("/health")]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Status { status: "ok" })
}

/// 200 when the pressure stream is connected, GitHub answers, the backends list and every
/// flavor's last create found capacity; else 503 naming each that fails.
#[get("/ready")]
pub async fn ready(state: web::Data<StatusState>) -> HttpResponse {
    let failing = state.readiness.failing();
    if failing.is_empty() {
        return HttpResponse::Ok().json(Status { status: "ready" });
    }
    HttpResponse::ServiceUnavailable().json(NotReady {
        error: format!("not ready: {} failing", failing.join(", ")),
        failing,
    })
}

/// Every runner of every flavor: name, flavor, state, created_at, online_at, backend id.
#[get("/api/v1/runners")]
pub async fn runners(
    req: HttpRequest,
    state: web::Data<StatusState>,
) -> Result<HttpResponse, Error> {
    state.authenticate(&req)?;
    let answers = futures::future::join_all(
        state
            .reconcilers
            .iter()
            .map(|reconciler| reconciler.send(GetRunners)),
    )
    .await;
    let mut all: Vec<RunnerView> = Vec::new();
    for answer in answers {
        all.extend(answer.map_err(|_| Error::ShuttingDown)?);
    }
    all.sort_by(|a, b| (&a.flavor, a.created_at).cmp(&(&b.flavor, b.created_at)));
    Ok(HttpResponse::Ok().json(all))
}

/// The routes.
pub fn configure(config: &mut web::ServiceConfig) {
    config.service(health).service(ready).service(runners);
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test, App};

    #[actix_rt::test]
    async fn tokens_are_checked_and_readiness_names_what_fails() {
        let readiness = std::sync::Arc::new(Readiness::new());
        let state = web::Data::new(StatusState {
            token_hashes: vec![
                token_sha256("planner-token"),
                token_sha256("admin-token-xyz"),
            ],
            reconcilers: vec![],
            readiness: readiness.clone(),
        });
        let app = test::init_service(App::new().app_data(state.clone()).configure(configure)).await;
        let get = |path: &str, token: Option<&str>| {
            let mut req = test::TestRequest::get().uri(path);
            if let Some(token) = token {
                req = req.insert_header((header::AUTHORIZATION, format!("Bearer {token}")));
            }
            req.to_request()
        };
        for (token, status) in [
            (None, 401),
            (Some("wrong"), 401),
            (Some("planner-token"), 200),
            (Some("admin-token-xyz"), 200),
        ] {
            let response = test::call_service(&app, get("/api/v1/runners", token)).await;
            assert_eq!(response.status().as_u16(), status, "{token:?}");
        }
        let response = test::call_service(&app, get("/health", None)).await;
        assert_eq!(response.status().as_u16(), 200);

        let response = test::call_service(&app, get("/ready", None)).await;
        assert_eq!(response.status().as_u16(), 503);
        let body: serde_json::Value = test::read_body_json(response).await;
        assert_eq!(
            body["failing"],
            serde_json::json!(["planner stream", "backend"])
        );
        readiness.set_planner(true);
        readiness.set_backend(true);
        readiness.set_github(false);
        let body: serde_json::Value =
            test::read_body_json(test::call_service(&app, get("/ready", None)).await).await;
        assert_eq!(body["failing"], serde_json::json!(["github"]));
        readiness.set_github(true);
        let response = test::call_service(&app, get("/ready", None)).await;
        assert_eq!(response.status().as_u16(), 200);
        // A flavor out of capacity is named until a create finds some.
        readiness.set_capacity("large", false);
        readiness.set_capacity("small", false);
        readiness.set_capacity("small", true);
        let response = test::call_service(&app, get("/ready", None)).await;
        assert_eq!(response.status().as_u16(), 503);
        let body: serde_json::Value = test::read_body_json(response).await;
        assert_eq!(body["failing"], serde_json::json!(["capacity:large"]));
        assert_eq!(body["error"], "not ready: capacity:large failing", "{body}");
        readiness.set_capacity("large", true);
        let response = test::call_service(&app, get("/ready", None)).await;
        assert_eq!(response.status().as_u16(), 200);
    }
}
