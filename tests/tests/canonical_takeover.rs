//! Taking over a database written by Canonical's planner: built empty as its migrations build
//! it (`tests/fixtures/canonical/schema.sql`), filled the way its code writes rows (flavors with
//! their job assignment, tokens as hex SHA-256 of 32 random bytes, jobs whose `raw` maps each
//! action to its delivery's body), then `planner migrate` (the binary) or `planner serve`.

use std::time::Duration;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, Utc};
use diesel::{
    connection::SimpleConnection, sql_query, sql_types::Text, PgConnection, QueryableByName,
    RunQueryDsl,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tests::amqp::{Broker, TopologyGuard};
use tests::db::{execute, TestDb};
use tests::eventually;
use tests::fixtures::job_payload;
use tests::planner::ADMIN_TOKEN;
use tests::process::{PlannerProcess, Service};

/// How long `planner migrate` may take.
const MIGRATE: Duration = Duration::from_secs(60);

/// An empty database as Canonical's migrations leave it (golang-migrate version 2).
fn canonical_database() -> TestDb {
    let db = TestDb::empty();
    let schema = std::fs::read_to_string(tests::fixtures::fixture_path("canonical/schema.sql"))
        .expect("canonical schema fixture");
    db.connect()
        .batch_execute(&schema)
        .expect("build Canonical's schema");
    db
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn text_array(labels: &[&str]) -> String {
    format!(
        "ARRAY[{}]::text[]",
        labels
            .iter()
            .map(|l| quote(l))
            .collect::<Vec<_>>()
            .join(",")
    )
}

fn timestamp(at: Option<DateTime<Utc>>) -> String {
    at.map_or("NULL".into(), |at| {
        format!("{}::timestamptz", quote(&at.to_rfc3339()))
    })
}

/// Canonical's job assignment of open, unassigned jobs (run after every flavor change): the
/// enabled flavor of the platform whose labels contain the job's, highest priority first.
const ASSIGN: &str = "UPDATE job AS j SET assigned_flavor = (SELECT f.name FROM flavor AS f \
    WHERE f.is_disabled = FALSE AND f.platform = j.platform AND f.labels @> j.labels \
    ORDER BY f.priority DESC, random() LIMIT 1) \
    WHERE j.assigned_flavor IS NULL AND j.completed_at IS NULL";

/// A flavor as Canonical's planner adds one: labels lowercased, then open jobs re-assigned.
fn add_flavor(
    conn: &mut PgConnection,
    name: &str,
    labels: &[&str],
    priority: i32,
    disabled: bool,
    minimum: i32,
) {
    let lowered: Vec<String> = labels.iter().map(|l| l.to_lowercase()).collect();
    let lowered: Vec<&str> = lowered.iter().map(String::as_str).collect();
    execute(
        conn,
        &format!(
            "INSERT INTO flavor (platform, name, labels, priority, is_disabled, minimum_pressure) \
             VALUES ('github', {}, {}, {priority}, {disabled}, {minimum})",
            quote(name),
            text_array(&lowered)
        ),
    );
    execute(conn, ASSIGN);
}

/// A token as Canonical's planner makes one: 32 random bytes handed out in base64url without
/// padding, stored as the lowercase hex SHA-256 of the bytes.
fn create_token(conn: &mut PgConnection, name: &str) -> String {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    execute(
        conn,
        &format!(
            "INSERT INTO auth (name, token) VALUES ({}, '{}')",
            quote(name),
            hex::encode(Sha256::digest(bytes))
        ),
    );
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A delivery body of job `id` for `action`, with the job's times in it.
fn body(
    id: i64,
    action: &str,
    labels: &[&str],
    created: DateTime<Utc>,
    started: Option<DateTime<Utc>>,
    completed: Option<DateTime<Utc>>,
) -> Value {
    let mut body = job_payload("queued.0", id, action, labels);
    let job = &mut body["workflow_job"];
    job["created_at"] = created.to_rfc3339().into();
    job["started_at"] = started.map_or(created, |s| s).to_rfc3339().into();
    job["completed_at"] = completed.map(|c| c.to_rfc3339()).into();
    job["runner_name"] = started.map(|_| format!("runner-{id}")).into();
    job["conclusion"] = completed.map(|_| "success").into();
    job["run_id"] = (id * 10).into();
    job["name"] = format!("job {id}").into();
    body["repository"]["full_name"] = format!("octo/repo-{id}").into();
    body
}

/// A job as Canonical's consumer inserts it on its first delivery: labels lowercased without
/// `self-hosted` and `linux`, `raw` the action and its body, a flavor only when not completed.
fn add_job(conn: &mut PgConnection, action: &str, body: &Value) {
    let job = &body["workflow_job"];
    let labels: Vec<String> = job["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_lowercase())
        .filter(|l| l != "self-hosted" && l != "linux")
        .collect();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let time = |field: &str| {
        job[field]
            .as_str()
            .map(|t| DateTime::parse_from_rfc3339(t).unwrap().to_utc())
    };
    let started = (action != "queued").then(|| time("started_at")).flatten();
    let completed = (action == "completed")
        .then(|| time("completed_at"))
        .flatten();
    execute(
        conn,
        &format!(
            "INSERT INTO job (platform, id, labels, created_at, started_at, completed_at, raw, \
             assigned_flavor) \
             SELECT 'github', '{id}', {labels}, {created}, {started}, {completed}, {raw}::jsonb, \
             CASE WHEN {completed} IS NULL THEN (SELECT f.name FROM flavor f \
               WHERE NOT f.is_disabled AND f.platform = 'github' AND f.labels @> {labels} \
               ORDER BY f.priority DESC, random() LIMIT 1) END",
            id = job["id"],
            labels = text_array(&labels),
            created = timestamp(time("created_at")),
            started = timestamp(started),
            completed = timestamp(completed),
            raw = quote(&json!({ action: body }).to_string()),
        ),
    );
}

/// A later delivery as Canonical's consumer applies it: the time set, the body merged into `raw`.
fn update_job(conn: &mut PgConnection, action: &str, body: &Value) {
    let job = &body["workflow_job"];
    let column = if action == "completed" {
        "completed_at"
    } else {
        "started_at"
    };
    execute(
        conn,
        &format!(
            "UPDATE job SET {column} = {}::timestamptz, raw = COALESCE(raw, '{{}}') || {}::jsonb \
             WHERE platform = 'github' AND id = '{}'",
            quote(job[column].as_str().unwrap()),
            quote(&json!({ action: body }).to_string()),
            job["id"]
        ),
    );
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Pressure {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pressure: i64,
}

/// The pressure Canonical's planner reports for every flavor, by its own rule: the open jobs of
/// the flavor created in the last 5 days, at least the flavor's minimum.
fn canonical_pressure(conn: &mut PgConnection) -> Value {
    let rows: Vec<Pressure> = sql_query(
        "SELECT f.name, GREATEST(f.minimum_pressure, COUNT(j.pk))::bigint AS pressure \
         FROM flavor f LEFT JOIN job j ON f.platform = j.platform AND j.assigned_flavor = f.name \
           AND j.completed_at IS NULL AND j.created_at > NOW() - INTERVAL '5 days' \
         WHERE f.platform = 'github' GROUP BY f.name, f.minimum_pressure",
    )
    .load(conn)
    .unwrap();
    rows.into_iter()
        .map(|row| (row.name, json!(row.pressure)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The rows of Canonical's planner: three flavors (one disabled), a token, and jobs in every
/// state, reached each way its code reaches them. Returns the token.
fn fill(conn: &mut PgConnection) -> String {
    let now = Utc::now();
    let ago = |minutes: i64| now - chrono::Duration::minutes(minutes);
    add_flavor(conn, "small", &["X64", "small"], 1, false, 0);
    add_flavor(conn, "large", &["x64", "large"], 2, false, 3);
    add_flavor(conn, "retired", &["arm64"], 0, true, 1);
    let token = create_token(conn, "charm");
    let small = ["self-hosted", "Linux", "X64", "small"];
    let large = ["self-hosted", "x64", "large"];

    // 101 queued; 102 queued then started; 103 through all three actions.
    add_job(
        conn,
        "queued",
        &body(101, "queued", &small, ago(30), None, None),
    );
    add_job(
        conn,
        "queued",
        &body(102, "queued", &small, ago(20), None, None),
    );
    update_job(
        conn,
        "in_progress",
        &body(102, "in_progress", &small, ago(20), Some(ago(15)), None),
    );
    add_job(
        conn,
        "queued",
        &body(103, "queued", &large, ago(60), None, None),
    );
    update_job(
        conn,
        "in_progress",
        &body(103, "in_progress", &large, ago(60), Some(ago(50)), None),
    );
    update_job(
        conn,
        "completed",
        &body(
            103,
            "completed",
            &large,
            ago(60),
            Some(ago(50)),
            Some(ago(40)),
        ),
    );
    // 104 queued for large; 105 matches no flavor; 106 open but older than 5 days.
    add_job(
        conn,
        "queued",
        &body(104, "queued", &large, ago(10), None, None),
    );
    add_job(
        conn,
        "queued",
        &body(105, "queued", &["self-hosted", "gpu"], ago(10), None, None),
    );
    add_job(
        conn,
        "queued",
        &body(106, "queued", &small, ago(6 * 24 * 60), None, None),
    );
    // 107 first heard of when it started; 108 first heard of when it completed (no flavor).
    add_job(
        conn,
        "in_progress",
        &body(107, "in_progress", &large, ago(5), Some(ago(4)), None),
    );
    add_job(
        conn,
        "completed",
        &body(108, "completed", &small, ago(9), Some(ago(8)), Some(ago(7))),
    );
    // 109: completed through `PATCH /api/v1/jobs/github/109` (times only, no payload).
    add_job(
        conn,
        "queued",
        &body(109, "queued", &small, ago(3), None, None),
    );
    execute(
        conn,
        &format!(
            "UPDATE job SET started_at = {}, completed_at = {} WHERE id = '109'",
            timestamp(Some(ago(2))),
            timestamp(Some(ago(1)))
        ),
    );
    token
}

/// Runs `planner migrate` on `url`; its exit success and log.
async fn migrate(url: &str) -> (bool, String) {
    let service = Service::spawn(
        "planner",
        &["migrate"],
        &[("POSTGRESQL_DB_CONNECT_STRING", url)],
    );
    let (status, log) = service.finish(MIGRATE).await;
    (status.success(), log)
}

/// Every table, column and row of the database's `public` schema, as text: equal before and
/// after exactly when nothing was changed.
fn catalog(conn: &mut PgConnection) -> String {
    #[derive(QueryableByName)]
    struct Line {
        #[diesel(sql_type = Text)]
        line: String,
    }
    let tables: Vec<Line> = sql_query(
        "SELECT relname::text || ':' || relkind::text AS line FROM pg_class \
         WHERE relnamespace = 'public'::regnamespace ORDER BY 1",
    )
    .load(conn)
    .unwrap();
    let mut out: Vec<String> = tables.into_iter().map(|l| l.line).collect();
    let columns: Vec<Line> = sql_query(
        "SELECT table_name || '.' || column_name || ' ' || udt_name AS line \
         FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1",
    )
    .load(conn)
    .unwrap();
    out.extend(columns.into_iter().map(|l| l.line));
    let names: Vec<Line> = sql_query(
        "SELECT relname::text AS line FROM pg_class \
         WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' ORDER BY 1",
    )
    .load(conn)
    .unwrap();
    for table in names {
        let rows: Line = sql_query(format!(
            "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY to_jsonb(t)::text), '[]')::text \
             AS line FROM \"{}\" t",
            table.line
        ))
        .get_result(conn)
        .unwrap();
        out.push(format!("{}={}", table.line, rows.line));
    }
    out.join("\n")
}

/// `GET path` with `token`: the status and the JSON body (`null` when none).
async fn get(base: &str, path: &str, token: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// What a converted database must show through the API of a planner at `base`.
async fn check_converted(base: &str, token: &str, expected_pressure: &Value) {
    // The token Canonical's planner made is valid; an unknown one of the same shape is not.
    let (status, _) = get(base, "/api/v1/flavors/small", token).await;
    assert_eq!(status, 200, "Canonical's token works");
    let (status, _) = get(
        base,
        "/api/v1/flavors/small",
        &URL_SAFE_NO_PAD.encode([9u8; 32]),
    )
    .await;
    assert_eq!(status, 401);
    let (_, names) = get(base, "/api/v1/auth/token", ADMIN_TOKEN).await;
    assert!(
        names["names"].as_array().unwrap().contains(&json!("charm")),
        "{names}"
    );

    let (status, flavors) = get(base, "/api/v1/flavors", ADMIN_TOKEN).await;
    assert_eq!(status, 200);
    let mut flavors: Vec<(String, Value, i64, bool, i64)> = flavors
        .as_array()
        .expect("flavors")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_owned(),
                f["labels"].clone(),
                f["priority"].as_i64().unwrap(),
                f["is_disabled"].as_bool().unwrap(),
                f["minimum_pressure"].as_i64().unwrap(),
            )
        })
        .collect();
    flavors.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        flavors,
        [
            ("large".into(), json!(["x64", "large"]), 2, false, 3),
            ("retired".into(), json!(["arm64"]), 0, true, 1),
            ("small".into(), json!(["x64", "small"]), 1, false, 0),
        ]
    );

    // Jobs: status from the times, the flavor Canonical's planner assigned, every payload.
    let expected = [
        (101, "queued", Some("small"), &["queued"][..]),
        (
            102,
            "in_progress",
            Some("small"),
            &["in_progress", "queued"],
        ),
        (
            103,
            "completed",
            Some("large"),
            &["completed", "in_progress", "queued"],
        ),
        (104, "queued", Some("large"), &["queued"]),
        (105, "queued", None, &["queued"]),
        (106, "queued", Some("small"), &["queued"]),
        (107, "in_progress", Some("large"), &["in_progress"]),
        (108, "completed", None, &["completed"]),
        (109, "completed", Some("small"), &["queued"]),
    ];
    for (id, status, flavor, actions) in expected {
        let (code, job) = get(base, &format!("/api/v1/jobs/github/{id}"), token).await;
        assert_eq!(code, 200, "job {id}");
        assert_eq!(job["status"], status, "job {id}: {job}");
        assert_eq!(job["assigned_flavor"].as_str(), flavor, "job {id}");
        let payloads = job
            .get("raw")
            .or_else(|| job.get("payloads"))
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("job {id} has its payloads: {job}"));
        let mut keys: Vec<&str> = payloads.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, actions, "job {id}");
        for (action, payload) in payloads {
            assert_eq!(payload["action"], action.as_str(), "job {id}");
            assert_eq!(payload["workflow_job"]["id"], id, "job {id}");
        }
        assert_eq!(job["repository"], format!("octo/repo-{id}"), "job {id}");
        assert_eq!(job["run_id"], id * 10, "job {id}");
        assert_eq!(job["job_name"], format!("job {id}"), "job {id}");
    }
    let (_, job) = get(base, "/api/v1/jobs/github/103", token).await;
    assert_eq!(job["conclusion"], "success");
    assert_eq!(job["runner_name"], "runner-103");
    // Labels as ours are kept: lowercased, GitHub's implicit ones included.
    assert_eq!(job["labels"], json!(["self-hosted", "x64", "large"]));
    let (_, job) = get(base, "/api/v1/jobs/github/101", token).await;
    assert_eq!(
        job["labels"],
        json!(["self-hosted", "linux", "x64", "small"])
    );
    assert_eq!(job["runner_name"], Value::Null);

    let (status, pressure) = get(base, "/api/v1/flavors/_/pressure", token).await;
    assert_eq!(status, 200);
    assert_eq!(
        &pressure, expected_pressure,
        "pressure as Canonical's planner had it"
    );
}

#[actix_rt::test]
async fn planner_migrate_converts_canonicals_database_and_a_second_run_changes_nothing() {
    let db = canonical_database();
    let mut conn = db.connect();
    let token = fill(&mut conn);
    // A name Canonical's planner accepts and ours does not.
    let spaced = create_token(&mut conn, "Charm Two");
    let pressure = canonical_pressure(&mut conn);
    assert_eq!(pressure, json!({"small": 2, "large": 3, "retired": 1}));

    let (ok, log) = migrate(db.url()).await;
    assert!(ok, "planner migrate failed:\n{log}");
    assert!(
        log.contains(
            "event=canonical_database_converted canonical_version=2 flavors=3 tokens=2 jobs=9 \
             open_jobs=6 payloads=12"
        ),
        "{log}"
    );
    assert!(
        log.contains("event=canonical_name_not_addressable kind=token name=\"Charm Two\""),
        "{log}"
    );
    assert!(
        !log.contains(&token) && !log.contains(&spaced),
        "the log never holds a token"
    );
    assert!(!log.contains("Codertocat"), "the log never holds a payload");

    // The open-job counts behind pressure equal a recount.
    let corrections = schema::queries::recount_open_jobs(&mut conn).unwrap();
    assert!(corrections.is_empty(), "{corrections:?}");
    // Canonical's tables and golang-migrate's are gone; ours are at the latest version.
    let pending =
        diesel_migrations::MigrationHarness::pending_migrations(&mut conn, schema::MIGRATIONS)
            .unwrap();
    assert!(pending.is_empty());

    let before = catalog(&mut conn);
    let (ok, log) = migrate(db.url()).await;
    assert!(ok, "second planner migrate failed:\n{log}");
    assert!(!log.contains("canonical_database_converted"), "{log}");
    assert_eq!(catalog(&mut conn), before, "the second run changed nothing");

    let name = tests::unique("canonical");
    let _queues = TopologyGuard(actors::amqp::Topology::named(&name));
    let planner = PlannerProcess::new(db.url(), &name)
        .arg("--no-migrate")
        .start()
        .await;
    check_converted(&planner.url, &token, &pressure).await;
    let (status, _) = get(&planner.url, "/api/v1/flavors/small", &spaced).await;
    assert_eq!(
        status, 200,
        "a token of a name ours would refuse still works"
    );
}

#[actix_rt::test]
async fn planner_serve_converts_canonicals_database_and_tokens_work_both_ways() {
    let db = canonical_database();
    let mut conn = db.connect();
    let token = fill(&mut conn);
    let pressure = canonical_pressure(&mut conn);

    let name = tests::unique("canonical");
    let _queues = TopologyGuard(actors::amqp::Topology::named(&name));
    let mut planner = PlannerProcess::new(db.url(), &name).start().await;
    planner
        .service
        .wait_for_log("event=canonical_database_converted", MIGRATE)
        .await;
    check_converted(&planner.url, &token, &pressure).await;

    // A token made by our planner is stored as Canonical's planner looks it up: the hex
    // SHA-256 of its 32 decoded bytes.
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/auth/token/ours", planner.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let ours: Value = response.json().await.unwrap();
    let ours = ours["token"].as_str().unwrap().to_owned();
    let bytes = URL_SAFE_NO_PAD
        .decode(&ours)
        .expect("base64url without padding");
    assert_eq!(bytes.len(), 32);
    #[derive(QueryableByName)]
    struct Hash {
        #[diesel(sql_type = Text)]
        hash: String,
    }
    let stored: Hash =
        sql_query("SELECT encode(token_sha256, 'hex') AS hash FROM auth WHERE name = 'ours'")
            .get_result(&mut conn)
            .unwrap();
    assert_eq!(stored.hash, hex::encode(Sha256::digest(&bytes)));
    let (status, _) = get(&planner.url, "/api/v1/flavors/small", &ours).await;
    assert_eq!(status, 200);

    // A converted job carries on with the next delivery of its own: 101 completes.
    let publisher = Broker::connect(&actors::amqp::Topology::named(&name)).await;
    let now = Utc::now();
    let completed = body(
        101,
        "completed",
        &["self-hosted", "Linux", "X64", "small"],
        now - chrono::Duration::minutes(30),
        Some(now - chrono::Duration::minutes(2)),
        Some(now),
    );
    publisher.publish(&completed, "after-the-switch").await;
    let url = planner.url.clone();
    eventually(
        "job 101 completes and leaves small's pressure",
        Duration::from_secs(30),
        || {
            let (url, token) = (url.clone(), token.clone());
            async move {
                let (_, pressure) = get(&url, "/api/v1/flavors/_/pressure", &token).await;
                pressure["small"] == 1
            }
        },
    )
    .await;
    let (_, job) = get(&planner.url, "/api/v1/jobs/github/101", &token).await;
    assert_eq!(job["status"], "completed");
    let payloads = job.get("raw").or_else(|| job.get("payloads")).unwrap();
    assert_eq!(
        payloads["queued"]["action"], "queued",
        "Canonical's payload kept"
    );
    assert_eq!(payloads["completed"]["action"], "completed");
}

#[actix_rt::test]
async fn two_planners_migrating_a_version_1_database_at_once_convert_it_once() {
    let db = canonical_database();
    let mut conn = db.connect();
    fill(&mut conn);
    // Version 1 kept labels as given.
    execute(&mut conn, "UPDATE schema_migrations SET version = 1");
    execute(
        &mut conn,
        "UPDATE flavor SET labels = '{X64,Small,x64}' WHERE name = 'small'",
    );
    let (first, second) = tokio::join!(migrate(db.url()), migrate(db.url()));
    for (ok, log) in [&first, &second] {
        assert!(ok, "planner migrate failed:\n{log}");
    }
    let conversions = [&first.1, &second.1]
        .iter()
        .filter(|log| log.contains("event=canonical_database_converted canonical_version=1"))
        .count();
    assert_eq!(conversions, 1, "{}\n---\n{}", first.1, second.1);
    let small = schema::queries::get_flavor(&mut conn, "small")
        .unwrap()
        .unwrap();
    assert_eq!(
        small.labels,
        ["x64", "small"],
        "lowercased, duplicates dropped"
    );
    assert!(schema::queries::recount_open_jobs(&mut conn)
        .unwrap()
        .is_empty());
}

#[actix_rt::test]
async fn tokens_stored_by_earlier_versions_as_the_hash_of_their_text_still_work() {
    let db = TestDb::new();
    let mut conn = db.connect();
    let token = URL_SAFE_NO_PAD.encode([5u8; 32]);
    let odd = "an-older-token-of-any-shape";
    for (name, text) in [("old", token.as_str()), ("odd", odd)] {
        execute(
            &mut conn,
            &format!(
                "INSERT INTO auth (name, token_sha256) VALUES ('{name}', '\\x{}')",
                hex::encode(Sha256::digest(text.as_bytes()))
            ),
        );
    }
    let name = tests::unique("tokens");
    let _queues = TopologyGuard(actors::amqp::Topology::named(&name));
    let planner = PlannerProcess::new(db.url(), &name).start().await;
    for text in [token.as_str(), odd] {
        let (status, _) = get(&planner.url, "/api/v1/auth/token", text).await;
        assert_eq!(
            status, 403,
            "{text}: a valid general token, not the admin one"
        );
    }
    let (status, _) = get(&planner.url, "/api/v1/flavors/_/pressure", "not-a-token").await;
    assert_eq!(status, 401);
}

#[actix_rt::test]
async fn databases_of_other_shapes_are_refused_and_left_untouched() {
    let cases: [(&str, &str, &str); 7] = [
        (
            "a table that is neither Canonical's nor ours",
            "CREATE TABLE notes (id int)",
            "tables found: auth, flavor, job, notes, schema_migrations",
        ),
        (
            "a dirty golang-migrate version",
            "UPDATE schema_migrations SET dirty = true",
            "version 2 is dirty",
        ),
        (
            "an unknown golang-migrate version",
            "UPDATE schema_migrations SET version = 3",
            "at version 3",
        ),
        (
            "our tables half there",
            "CREATE TABLE job_payload (platform text)",
            "tables found: auth, flavor, job, job_payload, schema_migrations",
        ),
        (
            "a column Canonical's tables do not have",
            "ALTER TABLE job ADD COLUMN extra text",
            "table job does not have the columns",
        ),
        (
            "a job id that is not a number",
            "INSERT INTO job (platform, id, created_at) VALUES ('github', 'abc', now())",
            "job ids that are not numbers (GitHub's job ids are): abc",
        ),
        (
            "golang-migrate's table beside ours",
            "DROP TABLE job, flavor, auth; CREATE TABLE __diesel_schema_migrations (version text)",
            "both our __diesel_schema_migrations and golang-migrate's schema_migrations",
        ),
    ];
    for (what, change, message) in cases {
        let db = canonical_database();
        let mut conn = db.connect();
        fill(&mut conn);
        conn.batch_execute(change).expect(change);
        let before = catalog(&mut conn);
        let (ok, log) = migrate(db.url()).await;
        assert!(!ok, "{what}: planner migrate succeeded:\n{log}");
        assert!(
            log.contains("refusing to migrate this database"),
            "{what}: {log}"
        );
        assert!(log.contains(message), "{what}: {log}");
        assert_eq!(
            catalog(&mut conn),
            before,
            "{what}: the database was changed"
        );
    }
}

#[actix_rt::test]
async fn canonicals_exclusive_consumer_holds_ours_off_until_it_stops() {
    let db = TestDb::new();
    let name = tests::unique("exclusive");
    let topology = actors::amqp::Topology::named(&name);
    let _queues = TopologyGuard(topology.clone());
    // Canonical's planner consumes the queue with `exclusive: true`.
    let broker = tests::env::rabbitmq_url();
    let canonical = actors::amqp::connect(&broker, "canonical-planner", Duration::from_secs(10))
        .await
        .expect("connect to the broker");
    let channel = canonical.create_channel().await.expect("channel");
    topology
        .declare(&channel)
        .await
        .expect("declare the topology");
    // Held: dropping the consumer would cancel it.
    let _consumer = channel
        .basic_consume(
            topology.queue.as_str().into(),
            "canonical-planner".into(),
            lapin::options::BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("exclusive consumer");

    let mut ours = Service::spawn(
        "planner",
        &["serve"],
        &[
            ("POSTGRESQL_DB_CONNECT_STRING", db.url()),
            ("RABBITMQ_CONNECT_STRING", broker.as_str()),
            ("APP_ADMIN_TOKEN_VALUE", ADMIN_TOKEN),
            ("APP_AMQP_NAME", name.as_str()),
            ("APP_PORT", "0"),
            ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
            ("OTEL_EXPORTER_PROMETHEUS_PORT", "0"),
        ],
    );
    let refused = ours
        .wait_for_log("event=consumer_failed", Duration::from_secs(30))
        .await;
    assert!(refused.contains("in exclusive use"), "{refused}");
    assert!(
        !ours.log().contains("event=consumer_started"),
        "{}",
        ours.log()
    );

    // Canonical's planner stops: ours consumes.
    canonical.close(200, "stopped".into()).await.expect("close");
    ours.wait_for_log("event=consumer_started", Duration::from_secs(30))
        .await;
}
