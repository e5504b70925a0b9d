//! Hostile requests to every route of the planner's REST API, against a real PostgreSQL: wrong
//! methods, oversized, truncated, stalled and deeply nested bodies, invalid UTF-8 in bodies,
//! paths and query strings, huge label lists, SQL-like strings, header injection, bad
//! `Content-Type`s, bodies on GET, bad job ids, limits and cursors. Each gets a deliberate
//! answer, and none changes anything. Then: no answer and no log line of the planner ever
//! repeats a token or a request body.

use std::time::Duration;

use planner::routes::ALLOWED_METHODS;
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};
use tests::{
    fixtures::job_payload,
    planner::{api_routes, prepare_routes, spawn_planner, TestPlanner, ADMIN_TOKEN},
    process::{PlannerProcess, Running},
    raw_http::{self, RawResponse, Then},
    telemetry::Scrape,
    unique,
};

/// `APP_REQUEST_TIMEOUT` of the hostile-table planner: a stalled body waits this long.
const BODY_TIMEOUT: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(30);
/// The repository of the job the table's planner holds.
const REPOSITORY: &str = "lineville/elastic-machines-testing";

/// How a case is sent.
enum Send {
    /// Through reqwest.
    Http(Box<reqwest::RequestBuilder>),
    /// As raw bytes, for what reqwest refuses to send.
    Raw(Vec<u8>, Then),
}

fn http(request: reqwest::RequestBuilder) -> Send {
    Send::Http(Box::new(request))
}

/// What the answer must look like, besides its status.
enum Check {
    /// A JSON `{"error": ...}` containing this.
    Error(&'static str),
    /// A 405 JSON error with this `Allow` header.
    Allow(String),
    /// A successful JSON answer with `value` at the JSON pointer.
    Field(&'static str, Value),
    /// Refused by the HTTP parser before any route: an empty body, the connection closed.
    Unparsed,
    /// An answer with an empty body.
    Empty,
}

struct Case {
    name: String,
    send: Send,
    status: StatusCode,
    check: Check,
}

fn case(name: impl Into<String>, send: Send, status: StatusCode, check: Check) -> Case {
    Case {
        name: name.into(),
        send,
        status,
        check,
    }
}

/// A request line and headers (with `authorization` as given), then `body` as it is.
fn raw(request_line: &[u8], headers: &[&[u8]], body: &[u8]) -> Vec<u8> {
    let mut bytes = request_line.to_vec();
    bytes.extend_from_slice(b" HTTP/1.1\r\nHost: planner\r\n");
    for header in headers {
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body);
    bytes
}

/// [`raw`], sent on a connection kept open until the answer.
fn wire(request_line: &[u8], headers: &[&[u8]], body: &[u8]) -> Send {
    Send::Raw(raw(request_line, headers, body), Then::Wait)
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Authorization: Bearer {token}").into_bytes()
}

/// The answer to any case, as status, headers and body.
async fn answer(planner: &TestPlanner, send: Send) -> RawResponse {
    match send {
        Send::Http(request) => {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = response.bytes().await.expect("body").to_vec();
            RawResponse {
                status,
                headers,
                body,
            }
        }
        Send::Raw(bytes, then) => {
            let address = planner.address.trim_start_matches("http://");
            raw_http::send(address, &bytes, then, WAIT).await
        }
    }
}

/// A concrete path for a route pattern of the API.
fn concrete(pattern: &str) -> String {
    pattern
        .replace("{name}", "small")
        .replace("{platform}", "github")
        .replace("{id}", "7")
}

/// `count` labels of `length` digits each.
fn labels_of(count: usize, length: usize) -> Value {
    (0..count)
        .map(|i| format!("{i:0length$}"))
        .collect::<Vec<_>>()
        .into()
}

#[actix_web::test]
async fn hostile_requests_get_their_code_and_change_nothing() {
    let planner = TestPlanner::builder()
        .tune(|config| config.request_timeout = BODY_TIMEOUT)
        .start()
        .await;
    let general = planner.create_token("general").await;
    planner.create_flavor("small", &["x64"], 1).await;
    planner.seed(
        &job_payload("queued.1", 7, "queued", &["self-hosted", "x64"]),
        "d7",
    );
    let db = planner.db.as_ref().expect("own database");
    let before = db.snapshot();
    assert_eq!(before["job"].as_array().unwrap().len(), 1);

    let admin = Some(ADMIN_TOKEN);
    let get = |path: &str| http(planner.request(Method::GET, path, admin));
    // A body sent as JSON as it is (valid JSON or not).
    let with_json = |method: Method, path: &str, body: Vec<u8>| {
        http(
            planner
                .request(method, path, admin)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body),
        )
    };
    let post_json = |path: &str, body: Vec<u8>| with_json(Method::POST, path, body);
    let patch_json = |path: &str, body: Vec<u8>| with_json(Method::PATCH, path, body);
    let flavor = |labels: Value| json!({"platform": "github", "labels": labels}).to_string();
    let sql = "'; DROP TABLE flavor; --";
    let sql_path = "x'%3B%20DROP%20TABLE%20flavor%3B--";
    let sql_query = "%27%3B%20DROP%20TABLE%20flavor%3B%20--";
    let cursor_of = |text: &str| {
        use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
        format!(
            "/api/v1/jobs/github?cursor={}",
            URL_SAFE_NO_PAD.encode(text)
        )
    };
    let no_jobs = || Check::Field("", json!([]));
    use Check::{Empty, Error, Field, Unparsed};
    use StatusCode as S;

    let mut cases = Vec::new();

    // Wrong methods on every route path: 405 naming the methods the path has. A method that is
    // not one of HTTP's own gets the same answer.
    for (pattern, allow) in ALLOWED_METHODS.iter() {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "BREW"] {
            if allow.split(", ").any(|allowed| allowed == method) {
                continue;
            }
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            cases.push(case(
                format!("{method} {pattern}"),
                http(planner.request(method, &concrete(pattern), admin)),
                S::METHOD_NOT_ALLOWED,
                Check::Allow(allow.clone()),
            ));
        }
    }
    cases.extend([
        case(
            "unknown path",
            get("/api/v1/flavor"),
            S::NOT_FOUND,
            Error("route not found"),
        ),
        case(
            "unknown version",
            get("/api/v2/flavors"),
            S::NOT_FOUND,
            Error("route not found"),
        ),
        case(
            "path below a route",
            get("/api/v1/flavors/small/pressure/extra"),
            S::NOT_FOUND,
            Error("route not found"),
        ),
        case(
            "dot segments are not resolved",
            wire(b"GET /api/v1/../health", &[], b""),
            S::NOT_FOUND,
            Error("route not found"),
        ),
    ]);

    // Oversized, truncated, stalled, nested and non-UTF-8 bodies.
    let chunked = {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..20).map(|_| Ok(vec![b' '; 1024])).collect();
        reqwest::Body::wrap_stream(futures::stream::iter(chunks))
    };
    let truncated_head = [
        bearer(ADMIN_TOKEN),
        b"Content-Type: application/json".to_vec(),
        b"Content-Length: 100".to_vec(),
    ];
    let truncated_head: Vec<&[u8]> = truncated_head.iter().map(Vec::as_slice).collect();
    cases.extend([
        case(
            "body over 16 KiB with Content-Length",
            post_json(
                "/api/v1/flavors/big",
                flavor(labels_of(170, 100)).into_bytes(),
            ),
            S::PAYLOAD_TOO_LARGE,
            Error("larger than 16384 bytes"),
        ),
        case(
            "body over 16 KiB, chunked",
            http(
                planner
                    .request(Method::POST, "/api/v1/flavors/big", admin)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(chunked),
            ),
            S::PAYLOAD_TOO_LARGE,
            Error("larger than 16384 bytes"),
        ),
        case(
            "thousands of labels",
            post_json(
                "/api/v1/flavors/many",
                flavor(labels_of(5000, 4)).into_bytes(),
            ),
            S::PAYLOAD_TOO_LARGE,
            Error("larger than 16384 bytes"),
        ),
        case(
            "one label of 20,000 characters",
            patch_json(
                "/api/v1/flavors/small",
                json!({"labels": ["x".repeat(20_000)]})
                    .to_string()
                    .into_bytes(),
            ),
            S::PAYLOAD_TOO_LARGE,
            Error("larger than 16384 bytes"),
        ),
        case(
            "truncated JSON",
            post_json(
                "/api/v1/flavors/cut",
                br#"{"platform": "github", "labels": ["x"#.to_vec(),
            ),
            S::BAD_REQUEST,
            Error("labels[0]: EOF while parsing a string"),
        ),
        case(
            "body shorter than its Content-Length, connection closed",
            Send::Raw(
                raw(
                    b"POST /api/v1/flavors/cut",
                    &truncated_head,
                    br#"{"platform":"#,
                ),
                Then::CloseWrite,
            ),
            S::BAD_REQUEST,
            Error("body: incomplete or unreadable"),
        ),
        case(
            "body shorter than its Content-Length, connection kept open",
            wire(
                b"POST /api/v1/flavors/cut",
                &truncated_head,
                br#"{"platform":"#,
            ),
            S::REQUEST_TIMEOUT,
            Error("body: not received within 1000 ms"),
        ),
        case(
            "10,000 nested arrays",
            post_json("/api/v1/flavors/deep", vec![b'['; 10_000]),
            S::BAD_REQUEST,
            Error("body: EOF while parsing a list"),
        ),
        case(
            "10,000 nested arrays as labels",
            patch_json("/api/v1/flavors/small", {
                let mut body = br#"{"labels": "#.to_vec();
                body.extend(vec![b'['; 10_000]);
                body
            }),
            S::BAD_REQUEST,
            Error("labels[0]: invalid type"),
        ),
        case(
            "3,000 nested objects",
            post_json("/api/v1/flavors/deep", {
                let mut body = br#"{"platform": "github", "labels": [], "priority": "#.to_vec();
                body.extend(b"{\"a\":".repeat(3_000));
                body
            }),
            S::BAD_REQUEST,
            Error("priority: invalid type"),
        ),
        case(
            "invalid UTF-8 in a label",
            post_json(
                "/api/v1/flavors/utf",
                b"{\"platform\":\"github\",\"labels\":[\"\xff\"]}".to_vec(),
            ),
            S::BAD_REQUEST,
            Error("labels[0]: invalid unicode code point"),
        ),
        case(
            "a body of invalid UTF-8",
            post_json("/api/v1/flavors/utf", b"\xff\xfe\xfd".to_vec()),
            S::BAD_REQUEST,
            Error("body: expected value"),
        ),
        case(
            "U+0000 in a label",
            post_json(
                "/api/v1/flavors/nul",
                flavor(json!(["a\u{0}b"])).into_bytes(),
            ),
            S::BAD_REQUEST,
            Error("labels[0]: must not contain U+0000"),
        ),
        case(
            "JSON null",
            patch_json("/api/v1/flavors/small", b"null".to_vec()),
            S::BAD_REQUEST,
            Error("body: invalid type, expected a JSON object"),
        ),
    ]);

    // Invalid UTF-8 and hostile names in paths and query strings.
    cases.extend([
        case(
            "%FF as a flavor name",
            get("/api/v1/flavors/%FF"),
            S::BAD_REQUEST,
            Error("name:"),
        ),
        case(
            "%C3%28 as a token name",
            http(planner.request(Method::POST, "/api/v1/auth/token/%C3%28", admin)),
            S::BAD_REQUEST,
            Error("name:"),
        ),
        case(
            "%FF as a platform",
            get("/api/v1/jobs/%FF"),
            S::BAD_REQUEST,
            Error("platform:"),
        ),
        case(
            "%FF as a job id",
            get("/api/v1/jobs/github/%FF"),
            S::BAD_REQUEST,
            Error("id:"),
        ),
        case(
            "byte 0xFF in the path",
            wire(b"GET /api/v1/flavors/\xff", &[&bearer(ADMIN_TOKEN)], b""),
            S::BAD_REQUEST,
            Unparsed,
        ),
        case(
            "%FF in a query value",
            get("/api/v1/jobs/github?repository=%FF"),
            S::BAD_REQUEST,
            Error("query: not UTF-8"),
        ),
        case(
            "%FF in match labels",
            get("/api/v1/match?labels=x64,%FF"),
            S::BAD_REQUEST,
            Error("query: not UTF-8"),
        ),
        case(
            "byte 0xFF in the query",
            wire(
                b"GET /api/v1/match?labels=\xff",
                &[&bearer(ADMIN_TOKEN)],
                b"",
            ),
            S::BAD_REQUEST,
            Unparsed,
        ),
        case(
            "SQL in a flavor name",
            http(
                planner
                    .request(Method::POST, &format!("/api/v1/flavors/{sql_path}"), admin)
                    .json(&json!({"platform": "github", "labels": []})),
            ),
            S::BAD_REQUEST,
            Error("name: may only contain"),
        ),
        case(
            "SQL in a token name",
            http(planner.request(
                Method::POST,
                &format!("/api/v1/auth/token/{sql_path}"),
                admin,
            )),
            S::BAD_REQUEST,
            Error("name: may only contain"),
        ),
        case(
            "% as a flavor name",
            http(planner.request(Method::DELETE, "/api/v1/flavors/%25", admin)),
            S::BAD_REQUEST,
            Error("name:"),
        ),
        case(
            "_ as a token name",
            http(planner.request(Method::DELETE, "/api/v1/auth/token/_", admin)),
            S::BAD_REQUEST,
            Error("name: `_` is reserved"),
        ),
        case(
            "\\ as a flavor name",
            get("/api/v1/flavors/%5C/pressure"),
            S::BAD_REQUEST,
            Error("name:"),
        ),
        case(
            "SQL as a platform",
            http(
                planner
                    .request(Method::POST, "/api/v1/flavors/sql", admin)
                    .json(&json!({"platform": sql, "labels": []})),
            ),
            S::BAD_REQUEST,
            Error("platform: may only contain"),
        ),
        case(
            "SQL in the repository filter matches nothing",
            get(&format!("/api/v1/jobs/github?repository={sql_query}")),
            S::OK,
            no_jobs(),
        ),
        case(
            "tautology in the repository filter matches nothing",
            get("/api/v1/jobs/github?repository=%27%20OR%20%271%27%3D%271"),
            S::OK,
            no_jobs(),
        ),
        case(
            "% is no wildcard",
            get("/api/v1/jobs/github?repository=%25"),
            S::OK,
            no_jobs(),
        ),
        case(
            "_ is no wildcard",
            get(&format!(
                "/api/v1/jobs/github?repository={}",
                REPOSITORY.replace('e', "_")
            )),
            S::OK,
            no_jobs(),
        ),
        case(
            "\\ is no escape",
            get("/api/v1/jobs/github?repository=lineville%5C%2Felastic-machines-testing"),
            S::OK,
            no_jobs(),
        ),
        case(
            "U+0000 in the repository filter",
            get("/api/v1/jobs/github?repository=a%00b"),
            S::BAD_REQUEST,
            Error("repository:"),
        ),
        case(
            "SQL in the flavor filter",
            get(&format!("/api/v1/jobs/github?flavor={sql_query}")),
            S::BAD_REQUEST,
            Error("flavor: may only contain"),
        ),
        case(
            "% in the flavor filter",
            get("/api/v1/jobs/github?flavor=%25"),
            S::BAD_REQUEST,
            Error("flavor:"),
        ),
        case(
            "SQL in the status filter",
            get("/api/v1/jobs/github?status=queued%27%20OR%201%3D1"),
            S::BAD_REQUEST,
            Error("status: not one of"),
        ),
        case(
            "SQL in the labels of match",
            get(&format!("/api/v1/match?labels={sql_query},%25,_,%5C")),
            S::OK,
            Field("/flavor", Value::Null),
        ),
        case(
            "SQL in the platform of match",
            get(&format!("/api/v1/match?labels=x64&platform={sql_query}")),
            S::BAD_REQUEST,
            Error("platform:"),
        ),
        case(
            "thousands of labels in match",
            get(&format!(
                "/api/v1/match?labels={}",
                (0..3000)
                    .map(|i| format!("l{i}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            S::OK,
            Field("/flavor", Value::Null),
        ),
        case(
            "a request head over actix's limit (120 KB of labels)",
            wire(
                &[
                    b"GET /api/v1/match?labels=".as_slice(),
                    &b"a,".repeat(60_000),
                ]
                .concat(),
                &[&bearer(ADMIN_TOKEN)],
                b"",
            ),
            S::BAD_REQUEST,
            Unparsed,
        ),
        case(
            "unknown query parameter is ignored, as Canonical's planner ignores it",
            get("/api/v1/jobs/github?labels=nothing-matches"),
            S::OK,
            Field("/0/id", json!("7")),
        ),
        case(
            "unknown query parameter of match is ignored",
            get("/api/v1/match?labels=x64&colour=red"),
            S::OK,
            Field("/flavor", json!("small")),
        ),
        case(
            "query parameter twice",
            get("/api/v1/jobs/github?limit=10&limit=20"),
            S::BAD_REQUEST,
            Error("query: duplicate field `limit`"),
        ),
        case(
            "match without labels",
            get("/api/v1/match"),
            S::BAD_REQUEST,
            Error("labels"),
        ),
    ]);

    // Job ids, limits and cursors.
    for (path, status, check) in [
        (
            "/api/v1/jobs/github/abc",
            S::BAD_REQUEST,
            Error("id: must be an integer"),
        ),
        (
            "/api/v1/jobs/github/1e3",
            S::BAD_REQUEST,
            Error("id: must be an integer"),
        ),
        (
            "/api/v1/jobs/github/7.0",
            S::BAD_REQUEST,
            Error("id: must be an integer"),
        ),
        (
            "/api/v1/jobs/github/99999999999999999999",
            S::BAD_REQUEST,
            Error("id: must be an integer"),
        ),
        (
            "/api/v1/jobs/github/9223372036854775807",
            S::NOT_FOUND,
            Error("not found"),
        ),
        ("/api/v1/jobs/github/-7", S::NOT_FOUND, Error("not found")),
        (
            "/api/v1/jobs/github?limit=-1",
            S::BAD_REQUEST,
            Error("limit: must be an integer from 1 to 1000"),
        ),
        (
            "/api/v1/jobs/github?limit=0",
            S::BAD_REQUEST,
            Error("limit:"),
        ),
        (
            "/api/v1/jobs/github?limit=1001",
            S::BAD_REQUEST,
            Error("limit:"),
        ),
        (
            "/api/v1/jobs/github?limit=99999999999999999999",
            S::BAD_REQUEST,
            Error("limit:"),
        ),
        (
            "/api/v1/jobs/github?limit=1.5",
            S::BAD_REQUEST,
            Error("limit:"),
        ),
        (
            "/api/v1/jobs/github?limit=",
            S::BAD_REQUEST,
            Error("limit:"),
        ),
        (
            "/api/v1/jobs/github?cursor=garbage",
            S::BAD_REQUEST,
            Error("cursor: not a cursor"),
        ),
        (
            "/api/v1/jobs/github?cursor=",
            S::BAD_REQUEST,
            Error("cursor:"),
        ),
    ] {
        cases.push(case(path, get(path), status, check));
    }
    for text in [
        "1:2:3",
        "99999999999999999999:1",
        "-9223372036854775808:1",
        "1:",
        sql,
        &"9".repeat(5000),
    ] {
        let path = cursor_of(text);
        cases.push(case(
            format!("cursor of {:.40}", text),
            get(&path),
            S::BAD_REQUEST,
            Error("cursor: not a cursor"),
        ));
    }
    cases.push(case(
        "SQL as a cursor",
        get(&format!("/api/v1/jobs/github?cursor={sql_query}")),
        S::BAD_REQUEST,
        Error("cursor: not a cursor"),
    ));

    // Header injection, smuggling and odd credentials.
    cases.extend([
        case(
            "bare CR in the Authorization value",
            wire(
                b"GET /api/v1/auth/token",
                &[format!("Authorization: Bearer {general}\rX-Injected: 1").as_bytes()],
                b"",
            ),
            S::BAD_REQUEST,
            Unparsed,
        ),
        case(
            "a second Authorization after a bare LF does not replace the first",
            wire(
                b"GET /api/v1/auth/token",
                &[
                    format!("Authorization: Bearer {general}\nAuthorization: Bearer {ADMIN_TOKEN}")
                        .as_bytes(),
                ],
                b"",
            ),
            S::FORBIDDEN,
            Error("needs the admin token"),
        ),
        case(
            "a folded (obs-fold) Authorization header",
            wire(
                b"GET /api/v1/flavors",
                &[format!("Authorization: Bearer\r\n {ADMIN_TOKEN}").as_bytes()],
                b"",
            ),
            S::BAD_REQUEST,
            Unparsed,
        ),
        case(
            "NUL in the Authorization value",
            wire(
                b"GET /api/v1/flavors",
                &[format!("Authorization: Bearer {ADMIN_TOKEN}\0").as_bytes()],
                b"",
            ),
            S::BAD_REQUEST,
            Unparsed,
        ),
        case(
            "byte 0xFF in the Authorization value",
            wire(
                b"GET /api/v1/flavors",
                &[&[
                    b"Authorization: Bearer \xff".as_slice(),
                    ADMIN_TOKEN.as_bytes(),
                ]
                .concat()],
                b"",
            ),
            S::UNAUTHORIZED,
            Error("malformed Authorization header"),
        ),
        case(
            "CR LF in the request line",
            wire(b"GET /api/v1/flavors/a\r\nX-Injected: 1", &[], b""),
            S::BAD_REQUEST,
            Unparsed,
        ),
        case(
            "encoded CR LF in a flavor name",
            get("/api/v1/flavors/a%0D%0AX-Injected:%201"),
            S::BAD_REQUEST,
            Error("name:"),
        ),
        case(
            "encoded CR LF in a filter",
            get("/api/v1/jobs/github?repository=a%0D%0ASet-Cookie:%20x%3D1"),
            S::OK,
            no_jobs(),
        ),
        case(
            "Content-Length and Transfer-Encoding both",
            wire(
                b"POST /api/v1/flavors/smuggled",
                &[
                    &bearer(ADMIN_TOKEN),
                    b"Content-Type: application/json",
                    b"Content-Length: 4",
                    b"Transfer-Encoding: chunked",
                ],
                b"0\r\n\r\n",
            ),
            S::BAD_REQUEST,
            Unparsed,
        ),
        case(
            "two different Content-Lengths",
            wire(
                b"POST /api/v1/flavors/smuggled",
                &[
                    &bearer(ADMIN_TOKEN),
                    b"Content-Type: application/json",
                    b"Content-Length: 2",
                    b"Content-Length: 40",
                ],
                b"{}",
            ),
            S::BAD_REQUEST,
            Unparsed,
        ),
        case(
            "an 8 KiB bearer token",
            http(planner.request(Method::GET, "/api/v1/flavors", Some(&"x".repeat(8192)))),
            S::UNAUTHORIZED,
            Error("invalid token"),
        ),
        case(
            "the admin token as Basic credentials",
            http(
                planner
                    .request(Method::GET, "/api/v1/flavors", None)
                    .header(header::AUTHORIZATION, format!("Basic {ADMIN_TOKEN}")),
            ),
            S::UNAUTHORIZED,
            Error("malformed Authorization header"),
        ),
    ]);

    // Content types and bodies where none is expected.
    let valid = flavor(json!(["x64"]));
    let typed = |content_type: Option<&str>, token: Option<&str>| {
        let mut request = planner.request(Method::POST, "/api/v1/flavors/typed", token);
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        http(request.body(valid.clone()))
    };
    cases.extend([
        case(
            "text/plain",
            typed(Some("text/plain"), admin),
            S::UNSUPPORTED_MEDIA_TYPE,
            Error("content-type"),
        ),
        case(
            "no Content-Type",
            typed(None, admin),
            S::UNSUPPORTED_MEDIA_TYPE,
            Error("content-type"),
        ),
        case(
            "form encoding",
            typed(Some("application/x-www-form-urlencoded"), admin),
            S::UNSUPPORTED_MEDIA_TYPE,
            Error("content-type"),
        ),
        case(
            "a JSON-like media type",
            typed(Some("application/json-patch+json"), admin),
            S::UNSUPPORTED_MEDIA_TYPE,
            Error("content-type"),
        ),
        case(
            "credentials come first: a bad media type with an unknown token",
            typed(Some("text/plain"), Some("planner_v0_unknownunknownunkn")),
            S::UNAUTHORIZED,
            Error("invalid token"),
        ),
        case(
            "credentials come first: a bad query with an unknown token",
            http(planner.request(
                Method::GET,
                "/api/v1/jobs/github?limit=-1",
                Some("planner_v0_unknownunknownunkn"),
            )),
            S::UNAUTHORIZED,
            Error("invalid token"),
        ),
        case(
            "a body on GET is ignored",
            http(
                planner
                    .request(Method::GET, "/api/v1/flavors/small", admin)
                    .json(&json!({"labels": ["changed"], "is_disabled": true})),
            ),
            S::OK,
            Field("/labels", json!(["x64"])),
        ),
        case(
            "a body on DELETE is ignored",
            http(
                planner
                    .request(Method::DELETE, "/api/v1/flavors/absent", admin)
                    .json(&json!({"name": "small"})),
            ),
            S::OK,
            Empty,
        ),
    ]);

    // Job times: bad times, ids and bodies; a failing part fails the whole request.
    let started = "2025-01-15T10:31:00Z";
    cases.extend([
        case(
            "a time that is not RFC 3339",
            patch_json(
                "/api/v1/jobs/github/7",
                br#"{"started_at": "15/01/2025"}"#.to_vec(),
            ),
            S::BAD_REQUEST,
            Error("started_at: must be an RFC 3339 time"),
        ),
        case(
            "a time without an offset",
            patch_json(
                "/api/v1/jobs/github/7",
                br#"{"completed_at": "2025-01-15T10:31:00"}"#.to_vec(),
            ),
            S::BAD_REQUEST,
            Error("completed_at: must be an RFC 3339 time"),
        ),
        case(
            "a number as a time",
            patch_json(
                "/api/v1/jobs/github/7",
                br#"{"started_at": 1736937060}"#.to_vec(),
            ),
            S::BAD_REQUEST,
            Error("started_at: invalid type"),
        ),
        case(
            "a good time beside a bad one",
            patch_json(
                "/api/v1/jobs/github/7",
                json!({"started_at": started, "completed_at": sql})
                    .to_string()
                    .into_bytes(),
            ),
            S::BAD_REQUEST,
            Error("completed_at: must be an RFC 3339 time"),
        ),
        case(
            "a year past 9999",
            patch_json(
                "/api/v1/jobs/github/7",
                br#"{"started_at": "10000-01-01T00:00:00Z"}"#.to_vec(),
            ),
            S::BAD_REQUEST,
            Error("started_at: must be an RFC 3339 time"),
        ),
        case(
            "job times of a job that does not exist",
            patch_json(
                "/api/v1/jobs/github/8",
                json!({"started_at": started}).to_string().into_bytes(),
            ),
            S::NOT_FOUND,
            Error("job github/8 not found"),
        ),
        case(
            "job times with SQL as the id",
            patch_json(&format!("/api/v1/jobs/github/{sql_path}"), b"{}".to_vec()),
            S::BAD_REQUEST,
            Error("id: must be an integer"),
        ),
        case(
            "job times as text/plain",
            http(
                planner
                    .request(Method::PATCH, "/api/v1/jobs/github/7", admin)
                    .header(header::CONTENT_TYPE, "text/plain")
                    .body(json!({"started_at": started}).to_string()),
            ),
            S::UNSUPPORTED_MEDIA_TYPE,
            Error("content-type"),
        ),
    ]);

    let mut failures = Vec::new();
    let count = cases.len();
    for case in cases {
        let response = answer(&planner, case.send).await;
        let name = &case.name;
        let body = String::from_utf8_lossy(&response.body).into_owned();
        if response.status != case.status.as_u16() {
            failures.push(format!(
                "{name}: {} {body}, expected {}",
                response.status, case.status
            ));
            continue;
        }
        // Nothing a request smuggled in shows up as a header of the answer.
        for injected in ["x-injected", "set-cookie"] {
            assert!(response.header(injected).is_none(), "{name}: {injected}");
        }
        let json = || -> Value {
            assert_eq!(
                response.header("content-type"),
                Some("application/json"),
                "{name}"
            );
            serde_json::from_slice(&response.body)
                .unwrap_or_else(|err| panic!("{name}: not JSON ({err}): {body}"))
        };
        match &case.check {
            Check::Error(needle) => {
                let error = json()["error"].as_str().map(str::to_owned);
                match error {
                    Some(error) if error.contains(needle) => {}
                    _ => failures.push(format!("{name}: {body} should say {needle:?}")),
                }
            }
            Check::Allow(allow) => {
                assert_eq!(response.header("allow"), Some(allow.as_str()), "{name}");
                assert!(json()["error"].as_str().unwrap().contains(allow), "{name}");
            }
            Check::Field(pointer, value) => {
                assert_eq!(json().pointer(pointer), Some(value), "{name}: {body}");
            }
            Check::Unparsed => {
                assert!(response.body.is_empty(), "{name}: {body}");
                assert_eq!(response.header("connection"), Some("close"), "{name}");
            }
            Check::Empty => assert!(response.body.is_empty(), "{name}: {body}"),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} cases answered wrongly:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // No side effect: flavors, tokens, jobs and deliveries are exactly as before.
    assert_eq!(db.snapshot(), before);
    // The planner still serves, and methods of its own making did not become metric labels.
    let response = planner
        .request(Method::GET, "/api/v1/flavors", admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let scrape = Scrape::get(&planner.metrics_url).await;
    assert!(
        scrape.0.keys().all(|series| !series.contains("BREW")),
        "a request's method became a label"
    );
    assert!(scrape
        .0
        .keys()
        .any(|series| series.contains("http_request_method=\"_OTHER\"")));
}

/// SQL-like strings, `%`, `_` and `\` are data: stored and matched as they are.
#[actix_web::test]
async fn sql_like_labels_are_stored_and_matched_as_they_are() {
    let planner = spawn_planner().await;
    let labels = ["'; drop table flavor; --", "%", "_", "\\", "x64"];
    planner.create_flavor("odd", &labels, 1).await;
    planner.create_flavor("plain", &["x64"], 0).await;
    let get = |path: String| {
        let request = planner
            .request(Method::GET, &path, Some(ADMIN_TOKEN))
            .send();
        async move {
            let response = request.await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            response.json::<Value>().await.unwrap()
        }
    };
    let odd = get("/api/v1/flavors/odd".into()).await;
    assert_eq!(odd["labels"], json!(labels));
    let flavors = get("/api/v1/flavors".into()).await;
    assert_eq!(
        flavors.as_array().unwrap().len(),
        2,
        "both flavors, table intact"
    );
    // Only the exact labels match; `%` and `_` match no other label.
    let matched =
        get("/api/v1/match?labels=%27%3B%20DROP%20TABLE%20flavor%3B%20--,x64".into()).await;
    assert_eq!(matched["flavor"], "odd");
    let matched = get("/api/v1/match?labels=%25,_,%5C".into()).await;
    assert_eq!(matched["flavor"], "odd");
    let matched = get("/api/v1/match?labels=x%25".into()).await;
    assert_eq!(matched["flavor"], Value::Null);
}

/// A bad token that looks like a real one, and request bodies carrying a marker, sent to every
/// route of the real planner binary: no answer and no log line (at `debug`) repeats the token,
/// the marker, or any real token.
#[actix_web::test]
async fn no_answer_or_log_line_repeats_a_token_or_a_body() {
    let planner = spawn_planner().await;
    let general = planner.create_token("general").await;
    prepare_routes(&planner, &["admin"]).await;
    let db_url = planner.db.as_ref().unwrap().url().to_owned();
    let Running {
        service: mut process,
        url,
        ..
    } = PlannerProcess::new(&db_url, &planner.topology.queue)
        .env("RUST_LOG", "debug")
        .start()
        .await;
    let client = reqwest::Client::new();

    let marker = unique("BODYMARKER");
    let query_marker = unique("QUERYMARKER");
    let bad_tokens = [
        format!(
            "planner_v0_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..20]
        ),
        format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        ),
    ];
    let marked =
        json!({"platform": marker, "labels": [marker], "priority": marker, marker.clone(): marker});
    // (what, request, whether it must be refused)
    let mut requests: Vec<(String, reqwest::RequestBuilder, bool)> = Vec::new();
    // Every route with the real tokens, so that the log has had the chance to show them.
    for route in api_routes() {
        for token in [&general, ADMIN_TOKEN] {
            let request = route.request(&url, &client, "real", Some(&format!("Bearer {token}")));
            requests.push((format!("{} {}", route.method, route.path), request, false));
        }
    }
    // Every route, with a bad token and a marked body.
    for route in api_routes() {
        for bad in &bad_tokens {
            let request = client
                .request(
                    route.method.clone(),
                    format!("{url}{}", route.path_for("bad")),
                )
                .bearer_auth(bad)
                .json(&marked);
            requests.push((
                format!("{} {} (bad token)", route.method, route.path),
                request,
                true,
            ));
        }
    }
    // With the admin token, bodies that are wrong in every place the marker can be.
    let as_admin = |method: &Method, path: &str| {
        client
            .request(method.clone(), format!("{url}{path}"))
            .bearer_auth(ADMIN_TOKEN)
    };
    // A field the body does not have is ignored (and its name logged only when it reads as a
    // field name, which the marker does not).
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/flavors/unknown-key",
            json!({"platform": "github", "labels": ["x64"], marker.clone(): 1}),
        ),
        (
            Method::PATCH,
            "/api/v1/flavors/small",
            json!({"minimum_pressure": 0, marker.clone(): marker}),
        ),
        (
            Method::PATCH,
            "/api/v1/jobs/github/4242",
            json!({marker.clone(): marker}),
        ),
    ] {
        let request = as_admin(&method, path).json(&body);
        requests.push((format!("{method} {path} {body}"), request, false));
    }
    for body in [
        json!({"started_at": marker}),
        json!({"completed_at": [marker]}),
        json!([marker]),
    ] {
        let request = as_admin(&Method::PATCH, "/api/v1/jobs/github/4242").json(&body);
        requests.push((format!("PATCH job {body}"), request, true));
    }
    let wrong_bodies = [
        json!({"platform": "github", "labels": ["x64"], "priority": marker}),
        json!({"platform": "github", "labels": marker}),
        json!({"platform": "github", "labels": [format!("{marker}\u{0}")]}),
        json!({"platform": "github", "labels": [{marker.clone(): marker}]}),
        json!({"is_disabled": marker}),
        json!([marker]),
    ];
    for (method, path) in [
        (Method::POST, "/api/v1/flavors/marked"),
        (Method::PATCH, "/api/v1/flavors/small"),
    ] {
        // A platform is only read on creation (a change ignores it).
        let wrong_platform =
            (method == Method::POST).then(|| json!({"platform": marker, "labels": []}));
        for body in wrong_bodies.iter().chain(&wrong_platform) {
            let request = as_admin(&method, path).json(body);
            requests.push((format!("{method} {path} {body}"), request, true));
        }
        for (content_type, body) in [
            ("application/json", format!(r#"{{"platform": "{marker}"#)),
            ("text/plain", marker.clone()),
        ] {
            let request = as_admin(&method, path)
                .header(header::CONTENT_TYPE, content_type)
                .body(body.clone());
            requests.push((format!("{method} {path} {body}"), request, true));
        }
    }
    // Query strings carrying a marker (the request line, query included, is logged on purpose:
    // this marker is only checked in the answers).
    // A parameter the route does not have is ignored (200); the others are refused.
    for (query, refused) in [
        (format!("status={query_marker}"), true),
        (format!("{query_marker}=1"), false),
        (format!("cursor={query_marker}"), true),
        (format!("flavor={query_marker}"), true),
        (format!("limit={query_marker}"), true),
    ] {
        let request = as_admin(&Method::GET, &format!("/api/v1/jobs/github?{query}"));
        requests.push((format!("GET ?{query}"), request, refused));
    }

    // (request, answer status, answer body, whether it must be refused)
    let mut answers = Vec::new();
    for (what, request, refused) in requests {
        let response = request.send().await.unwrap();
        let status = response.status();
        let streaming = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value == "application/x-ndjson");
        // A stream does not end; its first line is pressure figures, nothing sent.
        let body = if streaming {
            String::new()
        } else {
            response.text().await.unwrap()
        };
        answers.push((what, status, body, refused));
    }
    // Every wrong request was refused (the public routes answer anyone), and no answer holds
    // anything a request carried.
    let public = ["GET /health", "GET /ready", "GET /api/v1/openapi.json"];
    for (what, status, body, refused) in &answers {
        if *refused && !public.iter().any(|route| what.starts_with(route)) {
            assert!(status.is_client_error(), "{what}: {status}");
        }
        for token in [&general, ADMIN_TOKEN] {
            assert!(!body.contains(token), "{what} answered {status} {body}");
        }
        for secret in bad_tokens.iter().chain([&marker, &query_marker]) {
            assert!(
                !body.contains(secret.as_str()),
                "{what} answered {status} {body}"
            );
        }
    }
    assert!(answers.len() > 40, "{} requests", answers.len());

    // Wait until the planner has logged a last request, then read everything it logged.
    let sentinel = unique("sentinel");
    let response = client
        .get(format!("{url}/health?{sentinel}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    process.wait_for_log(&sentinel, WAIT).await;
    let log = process.log();
    assert!(
        log.lines()
            .filter(|line| line.contains("event=request "))
            .count()
            > answers.len(),
        "every request is logged:\n{log}"
    );
    for secret in bad_tokens
        .iter()
        .chain([&marker, &general, &ADMIN_TOKEN.to_owned()])
    {
        for line in log.lines() {
            assert!(!line.contains(secret.as_str()), "logged {secret:?}: {line}");
        }
    }
}
