//! The planner's REST API against a real PostgreSQL: every route's success and error codes, the
//! auth matrix, flavor re-matching, the match endpoint and the OpenAPI document.

use std::collections::BTreeSet;

use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};
use tests::fixtures::job_payload;
use tests::planner::{
    api_routes, prepare_routes, spawn_planner, Access, ApiRoute, TestPlanner, ADMIN_TOKEN,
};

async fn call(
    planner: &TestPlanner,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = planner.request(method, path, token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).expect("JSON body")
    };
    (status, body)
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().expect("error body")
}

#[actix_web::test]
async fn health_needs_no_token() {
    let planner = spawn_planner().await;
    let (status, body) = call(&planner, Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok"}));
    let (status, body) = call(
        &planner,
        Method::GET,
        "/api/v1/nothing",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"error": "route not found"}));
    // A path that exists, with a method it does not have: 405 naming those it has.
    let response = planner
        .request(Method::PUT, "/api/v1/flavors/x", Some(ADMIN_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        response.headers()[header::ALLOW],
        "GET, POST, PATCH, DELETE"
    );
    let body: Value = response.json().await.unwrap();
    assert!(error_of(&body).contains("method not allowed"), "{body}");
}

/// What a credential is, for the auth matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// No, a malformed, an unknown or a revoked token: 401.
    Refused,
    General,
    Admin,
}

/// The answer `route` owes a caller of `standing`.
fn expected(route: &ApiRoute, standing: Standing) -> StatusCode {
    match (route.access, standing) {
        (Access::Public, _) => route.success,
        (_, Standing::Refused) => StatusCode::UNAUTHORIZED,
        (Access::Admin, Standing::General) => StatusCode::FORBIDDEN,
        (Access::Token, Standing::General) | (_, Standing::Admin) => route.success,
    }
}

/// Every route of the API (`tests::planner::api_routes`, checked here against the OpenAPI
/// document) with every kind of credential: none, malformed (wrong scheme, empty, the scheme
/// alone, two words), unknown, revoked (a general token deleted through the API, refused on
/// every route at once), general and admin.
#[actix_web::test]
async fn auth_matrix() {
    let planner = spawn_planner().await;
    let general = planner.create_token("general").await;
    let revoked = planner.create_token("revoked").await;
    let (status, _) = call(
        &planner,
        Method::DELETE,
        "/api/v1/auth/token/revoked",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    prepare_routes(&planner, &["general", "admin"]).await;

    let credentials: Vec<(&str, Option<String>, Standing)> = vec![
        ("none", None, Standing::Refused),
        (
            "basic",
            Some(format!("Basic {ADMIN_TOKEN}")),
            Standing::Refused,
        ),
        ("empty", Some(String::new()), Standing::Refused),
        ("scheme-only", Some("Bearer".into()), Standing::Refused),
        (
            "two-words",
            Some(format!("Bearer {ADMIN_TOKEN} x")),
            Standing::Refused,
        ),
        (
            "unknown",
            Some("Bearer planner_v0_unknownunknownunkn".into()),
            Standing::Refused,
        ),
        (
            "revoked",
            Some(format!("Bearer {revoked}")),
            Standing::Refused,
        ),
        (
            "general",
            Some(format!("Bearer {general}")),
            Standing::General,
        ),
        (
            "admin",
            Some(format!("Bearer {ADMIN_TOKEN}")),
            Standing::Admin,
        ),
    ];
    let routes = api_routes();
    let mut failures = Vec::new();
    for route in &routes {
        for (who, authorization, standing) in &credentials {
            let response = route
                .request(
                    &planner.address,
                    &planner.http,
                    who,
                    authorization.as_deref(),
                )
                .send()
                .await
                .expect("request");
            let status = response.status();
            let want = expected(route, *standing);
            let what = format!("{} {} as {who}", route.method, route.path_for(who));
            if status != want {
                failures.push(format!("{what}: {status}, expected {want}"));
                continue;
            }
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(
                    response
                        .headers()
                        .get(header::WWW_AUTHENTICATE)
                        .map(|v| v.to_str().unwrap()),
                    Some("Bearer"),
                    "{what}"
                );
            }
            if status.is_client_error() {
                let body: Value = response.json().await.expect("JSON error body");
                let error = error_of(&body);
                let explains = match status {
                    StatusCode::FORBIDDEN => error.contains("admin"),
                    _ => error.contains("token") || error.contains("Authorization"),
                };
                assert!(explains, "{what}: {body}");
            }
        }
    }
    assert!(
        failures.is_empty(),
        "wrong answers:\n{}",
        failures.join("\n")
    );

    // The matrix covers every operation the API documents, and nothing else.
    let (_, doc) = call(&planner, Method::GET, "/api/v1/openapi.json", None, None).await;
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let covered: BTreeSet<(String, String)> = routes
        .iter()
        .map(|route| (route.method.to_string(), route.pattern.to_owned()))
        .collect();
    assert_eq!(covered, documented);
}

#[actix_web::test]
async fn tokens_lifecycle() {
    let planner = spawn_planner().await;
    let (status, body) = call(
        &planner,
        Method::POST,
        "/api/v1/auth/token/ci-runner",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["name"], "ci-runner");
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 43, "32 bytes, base64url without padding");
    assert!(token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));

    // Only the hash is stored.
    let mut conn = planner.db.as_ref().unwrap().connect();
    let stored: Vec<u8> = {
        use diesel::prelude::*;
        use schema::schema::auth;
        auth::table
            .select(auth::token_sha256)
            .first(&mut conn)
            .unwrap()
    };
    assert_eq!(stored, planner::auth::token_sha256(&token));

    let (status, _) = call(
        &planner,
        Method::POST,
        "/api/v1/auth/token/ci-runner",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    planner.create_token("another").await;
    let (status, body) = call(
        &planner,
        Method::GET,
        "/api/v1/auth/token",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"names": ["another", "ci-runner"]}));

    let (status, _) = call(
        &planner,
        Method::GET,
        "/api/v1/jobs/github",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &planner,
        Method::DELETE,
        "/api/v1/auth/token/ci-runner",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(
        &planner,
        Method::GET,
        "/api/v1/jobs/github",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a deleted token stops working"
    );
    // Deleting a token that does not exist is no error (Canonical's planner answers 204 too).
    for name in ["ci-runner", "never-made"] {
        let (status, body) = call(
            &planner,
            Method::DELETE,
            &format!("/api/v1/auth/token/{name}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
        assert_eq!(
            (status, body),
            (StatusCode::NO_CONTENT, Value::Null),
            "{name}"
        );
    }
    let (_, body) = call(
        &planner,
        Method::GET,
        "/api/v1/auth/token",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(body, json!({"names": ["another"]}));

    for bad in ["_", "UPPER", "a%20b", &"a".repeat(64)] {
        let (status, body) = call(
            &planner,
            Method::POST,
            &format!("/api/v1/auth/token/{bad}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(error_of(&body).starts_with("name:"), "{body}");
    }
}

#[actix_web::test]
async fn flavors_crud_and_validation() {
    let planner = spawn_planner().await;
    let t = Some(ADMIN_TOKEN);
    let body = json!({"platform": "github", "labels": ["X64", "Large"], "priority": 50, "is_disabled": false, "minimum_pressure": 2});
    let (status, created) = call(
        &planner,
        Method::POST,
        "/api/v1/flavors/large",
        t,
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let expected = json!({"platform": "github", "name": "large", "labels": ["x64", "large"], "priority": 50, "is_disabled": false, "minimum_pressure": 2});
    assert_eq!(created, expected);
    let (status, _) = call(
        &planner,
        Method::POST,
        "/api/v1/flavors/large",
        t,
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Defaults for the optional fields.
    let (status, small) = call(
        &planner,
        Method::POST,
        "/api/v1/flavors/small",
        t,
        Some(json!({"platform": "github", "labels": []})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(small["priority"], 0);
    assert_eq!(small["minimum_pressure"], 0);

    let (status, got) = call(&planner, Method::GET, "/api/v1/flavors/large", t, None).await;
    assert_eq!((status, &got), (StatusCode::OK, &expected));
    let (status, list) = call(&planner, Method::GET, "/api/v1/flavors", t, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        list.as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["large", "small"]
    );
    let (status, _) = call(&planner, Method::GET, "/api/v1/flavors/missing", t, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = call(
        &planner,
        Method::PATCH,
        "/api/v1/flavors/large",
        t,
        Some(json!({"is_disabled": true})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, got) = call(&planner, Method::GET, "/api/v1/flavors/large", t, None).await;
    assert_eq!(got["is_disabled"], true);
    let (status, _) = call(
        &planner,
        Method::PATCH,
        "/api/v1/flavors/large",
        t,
        Some(json!({"labels": ["ARM64"], "priority": 3, "minimum_pressure": 0})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, got) = call(&planner, Method::GET, "/api/v1/flavors/large", t, None).await;
    assert_eq!(
        (got["labels"].clone(), got["priority"].clone()),
        (json!(["arm64"]), json!(3))
    );
    let (status, _) = call(
        &planner,
        Method::PATCH,
        "/api/v1/flavors/missing",
        t,
        Some(json!({"is_disabled": true})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // 200 with an empty body, and the same for a flavor that does not exist (as Canonical's
    // planner answers).
    let (status, body) = call(&planner, Method::DELETE, "/api/v1/flavors/large", t, None).await;
    assert_eq!((status, body), (StatusCode::OK, Value::Null));
    let (status, _) = call(&planner, Method::GET, "/api/v1/flavors/large", t, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "deleted");
    let (status, body) = call(&planner, Method::DELETE, "/api/v1/flavors/large", t, None).await;
    assert_eq!((status, body), (StatusCode::OK, Value::Null));

    // Fields the body does not have are ignored, as Canonical's planner ignores them; `null` is
    // the default of an optional field, as there.
    let (status, created) = call(
        &planner,
        Method::POST,
        "/api/v1/flavors/lenient",
        t,
        Some(
            json!({"platform": "github", "labels": ["x64"], "colour": "red", "size": {"cpu": 4},
            "priority": null, "is_disabled": null, "minimum_pressure": null}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        created,
        json!({"platform": "github", "name": "lenient", "labels": ["x64"], "priority": 0, "is_disabled": false, "minimum_pressure": 0})
    );
    let (status, _) = call(
        &planner,
        Method::PATCH,
        "/api/v1/flavors/lenient",
        t,
        Some(json!({"is_disabled": true, "colour": "blue"})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, got) = call(&planner, Method::GET, "/api/v1/flavors/lenient", t, None).await;
    assert_eq!(got["is_disabled"], true);

    // 400s name the field at fault.
    let cases = [
        (
            "/api/v1/flavors/_",
            json!({"platform": "github", "labels": []}),
            "name",
        ),
        (
            "/api/v1/flavors/Big",
            json!({"platform": "github", "labels": []}),
            "name",
        ),
        (
            "/api/v1/flavors/x",
            json!({"platform": "github", "labels": [], "priority": -1}),
            "priority",
        ),
        (
            "/api/v1/flavors/x",
            json!({"platform": "github", "labels": [], "minimum_pressure": -5}),
            "minimum_pressure",
        ),
        (
            "/api/v1/flavors/x",
            json!({"platform": "github", "labels": [], "priority": 1e20}),
            "priority",
        ),
        ("/api/v1/flavors/x", json!({"labels": []}), "platform"),
        (
            "/api/v1/flavors/x",
            json!({"platform": "github", "labels": "x64"}),
            "labels",
        ),
        (
            "/api/v1/flavors/x",
            json!({"platform": "github", "labels": ["ok", 3]}),
            "labels[1]",
        ),
        (
            "/api/v1/flavors/x",
            json!({"platform": "github", "labels": ["ok", " "]}),
            "labels[1]",
        ),
        (
            "/api/v1/flavors/x",
            json!({"platform": "", "labels": []}),
            "platform",
        ),
        (
            "/api/v1/flavors/x",
            json!({"platform": "github", "labels": [], "is_disabled": "yes"}),
            "is_disabled",
        ),
    ];
    for (path, body, field) in cases {
        let (status, error) = call(&planner, Method::POST, path, t, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}");
        assert!(
            error_of(&error).contains(field),
            "{body}: {error} should name {field}"
        );
    }
    planner.create_flavor("x", &["a"], 1).await;
    for (body, field) in [
        (json!({}), "body"),
        (json!({"is_disabled": "no"}), "is_disabled"),
        (json!({"priority": -1}), "priority"),
        // Only fields it does not have: there is nothing to change.
        (
            json!({"platform": "other"}),
            "body: expected at least one of",
        ),
        (
            json!({"is_disabled": null}),
            "body: expected at least one of",
        ),
    ] {
        let (status, error) = call(
            &planner,
            Method::PATCH,
            "/api/v1/flavors/x",
            t,
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(error_of(&error).contains(field), "{body}: {error}");
    }
    let raw = |method: Method, body: &'static str, content_type: &'static str| {
        planner
            .request(method, "/api/v1/flavors/y", t)
            .header(header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
    };
    let response = raw(Method::POST, "{not json", "application/json")
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error = response.json::<Value>().await.unwrap();
    assert!(error_of(&error).starts_with("body"), "{error}");
    let response = raw(
        Method::POST,
        r#"{"platform":"github","labels":[]}"#,
        "text/plain",
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(error_of(&response.json().await.unwrap()).contains("content-type"));
    let huge = json!({"platform": "github", "labels": vec!["x".repeat(100); 200]});
    let (status, _) = call(
        &planner,
        Method::POST,
        "/api/v1/flavors/huge",
        t,
        Some(huge),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[actix_web::test]
async fn flavor_changes_rematch_jobs_that_have_not_started() {
    let planner = spawn_planner().await;
    planner.create_flavor("small", &["x64"], 1).await;
    let labels = ["self-hosted", "linux", "X64"];
    planner.seed(&job_payload("queued.1", 1, "queued", &labels), "d1");
    planner.seed(&job_payload("waiting.0", 2, "waiting", &labels), "d2");
    planner.seed(
        &job_payload("in_progress.1", 3, "in_progress", &labels),
        "d3",
    );
    planner.seed(&job_payload("completed.0", 4, "completed", &labels), "d4");
    planner.seed(
        &job_payload("queued.1", 5, "queued", &["self-hosted", "gpu"]),
        "d5",
    );
    let flavor_of = |id| {
        let planner = &planner;
        async move { planner.job(id).await.unwrap()["assigned_flavor"].clone() }
    };
    for id in 1..=4 {
        assert_eq!(flavor_of(id).await, "small", "job {id}");
    }
    assert_eq!(flavor_of(5).await, Value::Null);

    planner.create_flavor("big", &["x64", "gpu"], 10).await;
    assert_eq!(flavor_of(1).await, "big");
    assert_eq!(flavor_of(2).await, "big");
    assert_eq!(
        flavor_of(3).await,
        "small",
        "started jobs keep their flavor"
    );
    assert_eq!(flavor_of(4).await, "small");
    assert_eq!(flavor_of(5).await, "big");

    let (status, _) = call(
        &planner,
        Method::PATCH,
        "/api/v1/flavors/big",
        Some(ADMIN_TOKEN),
        Some(json!({"is_disabled": true})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(flavor_of(1).await, "small");
    assert_eq!(flavor_of(5).await, Value::Null);
    let (status, _) = call(
        &planner,
        Method::PATCH,
        "/api/v1/flavors/big",
        Some(ADMIN_TOKEN),
        Some(json!({"is_disabled": false})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(flavor_of(1).await, "big");

    let (status, _) = call(
        &planner,
        Method::DELETE,
        "/api/v1/flavors/small",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        flavor_of(4).await,
        "small",
        "deleting a flavor keeps the history of its jobs"
    );
    assert_eq!(flavor_of(3).await, "small");
}

/// A page of `GET /api/v1/jobs/...`: status, body, and the address of the next page from the
/// `Link` header (`<...>; rel="next"`), if any.
async fn jobs_page(planner: &TestPlanner, path: &str) -> (StatusCode, Value, Option<String>) {
    let response = planner
        .request(Method::GET, path, Some(ADMIN_TOKEN))
        .send()
        .await
        .expect("request");
    let status = response.status();
    let next = response.headers().get(header::LINK).map(|link| {
        let link = link.to_str().expect("ASCII Link header");
        let address = link
            .strip_prefix('<')
            .and_then(|rest| rest.strip_suffix(">; rel=\"next\""))
            .unwrap_or_else(|| panic!("Link of one next page: {link}"));
        address.to_owned()
    });
    (status, response.json().await.expect("JSON"), next)
}

#[actix_web::test]
async fn jobs_listing_filters_and_pages() {
    let planner = spawn_planner().await;
    planner.create_flavor("small", &["x64"], 1).await;
    for id in 1..=25i64 {
        let mut body = job_payload(
            "queued.1",
            id,
            if id % 2 == 0 { "queued" } else { "completed" },
            &["self-hosted", "x64"],
        );
        body["workflow_job"]["created_at"] = format!("2024-01-01T00:00:{:02}Z", id % 5).into();
        if id > 20 {
            body["repository"]["full_name"] = "octo/other".into();
        }
        planner.seed(&body, &format!("d{id}"));
    }
    let t = Some(ADMIN_TOKEN);
    // Canonical's shape: a bare array, oldest first, `id` a string, `raw` every payload.
    let (status, jobs, next) = jobs_page(&planner, "/api/v1/jobs/github").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(next, None, "one page");
    let jobs = jobs.as_array().expect("a bare array");
    assert_eq!(jobs.len(), 25);
    let keys: Vec<(String, i64)> = jobs
        .iter()
        .map(|j| {
            let id = j["id"].as_str().expect("id as a string");
            (
                j["created_at"].as_str().unwrap().to_owned(),
                id.parse().unwrap(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "oldest first, then by id");
    let queued = jobs.iter().find(|j| j["id"] == "2").unwrap();
    assert_eq!(queued["raw"]["queued"]["workflow_job"]["id"], 2);
    assert_eq!(queued["raw"].as_object().unwrap().len(), 1);
    for absent in ["started_at", "completed_at"] {
        assert!(
            queued.get(absent).is_none(),
            "{absent} absent when unset: {queued}"
        );
    }
    let completed = jobs.iter().find(|j| j["id"] == "1").unwrap();
    assert_eq!(completed["status"], "completed");
    assert!(completed["started_at"].is_string(), "{completed}");
    assert!(completed["raw"]["completed"].is_object(), "{completed}");

    // Pages of 7 visit every job exactly once, in order; the next page is in the Link header,
    // with the query kept.
    let mut seen = Vec::new();
    let mut path = Some("/api/v1/jobs/github?limit=7&raw=false".to_owned());
    let mut pages = 0;
    while let Some(current) = path.take() {
        let (status, page, next) = jobs_page(&planner, &current).await;
        assert_eq!(status, StatusCode::OK, "{current}");
        let page = page.as_array().unwrap();
        assert!(page.iter().all(|j| j.get("raw").is_none()), "raw=false");
        seen.extend(
            page.iter()
                .map(|j| j["id"].as_str().unwrap().parse::<i64>().unwrap()),
        );
        if let Some(next) = &next {
            assert!(
                next.starts_with("/api/v1/jobs/github?limit=7&raw=false&cursor="),
                "{next}"
            );
        }
        path = next;
        pages += 1;
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, keys.iter().map(|(_, id)| *id).collect::<Vec<_>>());
    // The last page that is exactly full has no next.
    let (_, page, next) = jobs_page(&planner, "/api/v1/jobs/github?limit=25").await;
    assert_eq!((page.as_array().unwrap().len(), next), (25, None));

    let count = |path: &'static str| {
        let planner = &planner;
        async move {
            let (status, page) = call(planner, Method::GET, path, t, None).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            page.as_array().unwrap().len()
        }
    };
    assert_eq!(count("/api/v1/jobs/github?status=queued").await, 12);
    // A parameter the route does not have is ignored, as Canonical's planner ignores it.
    assert_eq!(
        count("/api/v1/jobs/github?status=queued&colour=red").await,
        12
    );
    assert_eq!(
        count("/api/v1/jobs/github?status=completed&repository=octo/other").await,
        3
    );
    assert_eq!(count("/api/v1/jobs/github?flavor=small").await, 25);
    assert_eq!(count("/api/v1/jobs/github?flavor=none").await, 0);
    assert_eq!(count("/api/v1/jobs/gitlab").await, 0);
    // Filters stay across pages.
    let (_, page, next) = jobs_page(&planner, "/api/v1/jobs/github?status=queued&limit=10").await;
    assert_eq!(page.as_array().unwrap().len(), 10);
    let next = next.expect("a second page");
    assert!(
        next.starts_with("/api/v1/jobs/github?status=queued&limit=10&cursor="),
        "{next}"
    );
    let (_, page, last) = jobs_page(&planner, &next).await;
    assert_eq!((page.as_array().unwrap().len(), last), (2, None));
    assert!(page
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["status"] == "queued"));

    for (path, field) in [
        ("/api/v1/jobs/github?status=running", "status"),
        ("/api/v1/jobs/github?limit=0", "limit"),
        ("/api/v1/jobs/github?limit=1001", "limit"),
        ("/api/v1/jobs/github?limit=ten", "limit"),
        ("/api/v1/jobs/github?cursor=garbage", "cursor"),
        ("/api/v1/jobs/github?raw=no", "raw"),
        ("/api/v1/jobs/github/abc", "id"),
        ("/api/v1/jobs/GitHub", "platform"),
    ] {
        let (status, body) = call(&planner, Method::GET, path, t, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(error_of(&body).contains(field), "{path}: {body}");
    }
    let (status, job) = call(&planner, Method::GET, "/api/v1/jobs/github/2", t, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["id"], "2");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["assigned_flavor"], "small");
    assert_eq!(job["repository"], "lineville/elastic-machines-testing");
    assert_eq!(job["raw"]["queued"]["workflow_job"]["id"], 2);
    assert_eq!(&job, queued, "the same job as in the list");
    let (status, _) = call(&planner, Method::GET, "/api/v1/jobs/github/999", t, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// `PATCH /api/v1/jobs/{platform}/{id}`: each time is set once (400 after), 204, the status
/// follows, the pressure follows at once, the payloads stay as they were.
#[actix_web::test]
async fn job_times_are_set_once_and_pressure_follows() {
    let planner = spawn_planner().await;
    planner.create_flavor("small", &["x64"], 1).await;
    for id in 1..=2 {
        let mut body = job_payload("queued.1", id, "queued", &["self-hosted", "x64"]);
        // Recent enough to count towards pressure.
        body["workflow_job"]["created_at"] = chrono::Utc::now().to_rfc3339().into();
        planner.seed(&body, &format!("p{id}"));
    }
    let t = Some(ADMIN_TOKEN);
    let pressure = || async {
        let (status, body) = call(
            &planner,
            Method::GET,
            "/api/v1/flavors/small/pressure",
            t,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        body["small"].as_i64().unwrap()
    };
    tests::eventually(
        "both jobs count",
        std::time::Duration::from_secs(10),
        || async { pressure().await == 2 },
    )
    .await;
    let patch = |id: &str, body: Value| {
        let planner = &planner;
        let path = format!("/api/v1/jobs/github/{id}");
        async move { call(planner, Method::PATCH, &path, t, Some(body)).await }
    };

    let started = "2025-01-15T10:31:00Z";
    assert_eq!(
        patch("1", json!({"started_at": started})).await,
        (StatusCode::NO_CONTENT, Value::Null)
    );
    let job = planner.job(1).await.unwrap();
    assert_eq!(job["started_at"], started);
    assert_eq!(job["status"], "in_progress");
    assert!(job.get("completed_at").is_none());
    assert_eq!(
        job["assigned_flavor"], "small",
        "a started job keeps its flavor"
    );
    assert_eq!(
        job["raw"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["queued"]
    );
    let (status, body) = patch("1", json!({"started_at": "2025-01-15T10:32:00Z"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error_of(&body).starts_with("started_at: is already set"),
        "{body}"
    );
    // All or nothing: with started_at set, neither time of this request is written.
    let (status, body) = patch(
        "1",
        json!({"started_at": started, "completed_at": "2025-01-15T10:45:00Z"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(planner.job(1).await.unwrap().get("completed_at").is_none());

    // A completion completes the job, and the pressure drops at once.
    let completed = "2025-01-15T10:45:00.250+02:00";
    assert_eq!(
        patch("1", json!({"completed_at": completed, "colour": "ignored"}))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let job = planner.job(1).await.unwrap();
    assert_eq!(job["completed_at"], "2025-01-15T08:45:00.250Z");
    assert_eq!(job["status"], "completed");
    tests::eventually(
        "the completed job stops counting",
        std::time::Duration::from_secs(5),
        || async { pressure().await == 1 },
    )
    .await;
    let (status, body) = patch("1", json!({"completed_at": completed})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error_of(&body).starts_with("completed_at: is already set"),
        "{body}"
    );
    // Both at once on a job that has neither.
    assert_eq!(
        patch(
            "2",
            json!({"started_at": started, "completed_at": completed})
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(planner.job(2).await.unwrap()["status"], "completed");
    tests::eventually(
        "no job counts",
        std::time::Duration::from_secs(5),
        || async { pressure().await == 0 },
    )
    .await;

    // Nothing to set is no error (as Canonical's planner answers); no such job is a 404, bad
    // times, ids and bodies are 400s naming the field.
    assert_eq!(patch("2", json!({})).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        patch("2", json!({"started_at": null})).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(patch("3", json!({})).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        patch("3", json!({"started_at": started})).await.0,
        StatusCode::NOT_FOUND
    );
    for (id, body, field) in [
        (
            "2",
            json!({"started_at": "2025-01-15 10:31:00Z"}),
            "started_at: must be an RFC 3339",
        ),
        (
            "2",
            json!({"completed_at": 1736937900}),
            "completed_at: invalid type",
        ),
        ("2", json!([]), "body: invalid type, expected a JSON object"),
        ("abc", json!({}), "id: must be an integer"),
    ] {
        let (status, error) = patch(id, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(error_of(&error).starts_with(field), "{body}: {error}");
    }
}

#[actix_web::test]
async fn match_explains_the_choice() {
    let planner = spawn_planner().await;
    planner.create_flavor("small", &["x64"], 1).await;
    planner.create_flavor("gpu", &["x64", "gpu"], 5).await;
    let t = Some(ADMIN_TOKEN);
    let (status, body) = call(
        &planner,
        Method::GET,
        "/api/v1/match?labels=self-hosted,Linux,x64,gpu",
        t,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["flavor"], "gpu");
    assert_eq!(
        body["labels"],
        json!(["self-hosted", "linux", "x64", "gpu"])
    );
    assert_eq!(body["matching_labels"], json!(["x64", "gpu"]));
    let small = body["flavors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "small")
        .unwrap();
    assert_eq!(small["missing_labels"], json!(["gpu"]));
    assert_eq!(small["eligible"], false);

    let (_, body) = call(&planner, Method::GET, "/api/v1/match?labels=x64", t, None).await;
    assert_eq!(body["flavor"], "gpu", "highest priority wins");
    let (_, body) = call(&planner, Method::GET, "/api/v1/match?labels=arm64", t, None).await;
    assert_eq!(body["flavor"], Value::Null);
    let (status, body) = call(&planner, Method::GET, "/api/v1/match", t, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("labels"), "{body}");
}

#[actix_web::test]
async fn openapi_document_lists_every_route() {
    let planner = spawn_planner().await;
    let (status, doc) = call(&planner, Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let expected = [
        ("/health", "get"),
        ("/ready", "get"),
        ("/api/v1/openapi.json", "get"),
        ("/api/v1/flavors", "get"),
        ("/api/v1/flavors/{name}", "post"),
        ("/api/v1/flavors/{name}", "get"),
        ("/api/v1/flavors/{name}", "patch"),
        ("/api/v1/flavors/{name}", "delete"),
        ("/api/v1/auth/token/{name}", "post"),
        ("/api/v1/auth/token", "get"),
        ("/api/v1/auth/token/{name}", "delete"),
        ("/api/v1/jobs/{platform}", "get"),
        ("/api/v1/jobs/{platform}/{id}", "get"),
        ("/api/v1/jobs/{platform}/{id}", "patch"),
        ("/api/v1/match", "get"),
        ("/api/v1/flavors/{name}/pressure", "get"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        documented,
        expected.len(),
        "no undocumented or phantom operations"
    );
    for (path, method) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} documented"
        );
    }
    // Every documented response code of a token route includes 401.
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            if operation.get("security").is_some() {
                assert!(
                    operation["responses"].get("401").is_some(),
                    "{method} {path} documents 401"
                );
            }
        }
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

/// Job and flavor changes `NOTIFY planner_changes` (the pressure engine listens to it).
#[actix_web::test]
async fn job_and_flavor_changes_are_notified() {
    use diesel::RunQueryDsl;
    let planner = spawn_planner().await;
    let mut listener = planner.db.as_ref().unwrap().connect();
    diesel::sql_query("LISTEN planner_changes")
        .execute(&mut listener)
        .unwrap();
    let received = |listener: &mut diesel::PgConnection| {
        // Notifications are read with the next result.
        diesel::sql_query("SELECT 1").execute(listener).unwrap();
        listener
            .notifications_iter()
            .map(|n| n.unwrap().payload)
            .collect::<Vec<_>>()
    };
    assert!(received(&mut listener).is_empty());
    planner.create_flavor("small", &["x64"], 1).await;
    assert!(received(&mut listener).contains(&"flavor".to_owned()));
    planner.seed(
        &job_payload("queued.1", 1, "queued", &["self-hosted", "x64"]),
        "d1",
    );
    assert_eq!(received(&mut listener), ["job"]);
}

/// Equal priority: the flavor with less pressure gets the job, then the first name.
#[actix_web::test]
async fn ties_go_to_the_flavor_with_less_pressure() {
    let planner = spawn_planner().await;
    planner.create_flavor("b", &["x64"], 1).await;
    planner.create_flavor("a", &["x64"], 1).await;
    let labels = ["self-hosted", "x64"];
    planner.seed(&job_payload("queued.1", 1, "queued", &labels), "d1");
    planner.seed(&job_payload("queued.1", 2, "queued", &labels), "d2");
    planner.seed(&job_payload("queued.1", 3, "queued", &labels), "d3");
    let mut assigned = Vec::new();
    for id in 1..=3 {
        assigned.push(
            planner.job(id).await.unwrap()["assigned_flavor"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(assigned, ["a", "b", "a"]);
    let (_, body) = call(
        &planner,
        Method::GET,
        "/api/v1/match?labels=x64",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(body["flavor"], "b", "a has 2 open jobs, b has 1");
}
