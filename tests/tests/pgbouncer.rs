//! The planner behind PgBouncer in transaction pooling mode (`APP_DB_PGBOUNCER=true`), with its
//! `LISTEN` on a direct connection (`POSTGRESQL_DB_LISTEN_CONNECT_STRING`), and the `LISTEN`
//! connection's TLS as `sslmode` asks (against a PgBouncer that offers no TLS and one that
//! requires it).

use std::time::Duration;

use diesel::{sql_query, RunQueryDsl};
use planner::{
    pgtls::{with_causes, ListenTarget},
    store::build_pool_via,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tests::{
    amqp::Broker,
    db::TestDb,
    eventually,
    fixtures::job_payload,
    pgbouncer::{PgBouncer, Tls},
    planner::TestPlanner,
};

const WAIT: Duration = Duration::from_secs(20);

/// With one server connection behind two clients, diesel's named statements meet on it and the
/// second is refused; with `APP_DB_PGBOUNCER`'s pool (no statement cache), none is named.
#[actix_web::test]
async fn named_statements_break_behind_a_transaction_pooler_and_the_pool_makes_none() {
    let (bouncer, _) = PgBouncer::start(1, Tls::Off).await;
    let db = TestDb::new();
    let url = bouncer.url_for(db.url());
    // Two clients, each running the same statements in turn (a cached statement is prepared
    // under the same name on each connection).
    let run = move |pgbouncer: bool| {
        let url = url.clone();
        actix_web::web::block(move || -> Result<(), String> {
            let pool = build_pool_via(&url, 2, Duration::from_secs(5), pgbouncer);
            let mut first = pool.get().map_err(|err| err.to_string())?;
            let mut second = pool.get().map_err(|err| err.to_string())?;
            for _ in 0..3 {
                for conn in [&mut first, &mut second] {
                    schema::queries::list_flavors(conn).map_err(|err| err.to_string())?;
                }
            }
            Ok(())
        })
    };
    let refused = run(false).await.unwrap().unwrap_err();
    assert!(
        refused.contains("prepared statement"),
        "the control: named statements collide behind the pooler: {refused}"
    );
    let outcome = run(true).await.unwrap();
    assert_eq!(outcome, Ok(()), "no named statement\n{}", bouncer.log());
}

/// The whole planner through PgBouncer: migrations, the consumer's batches, the API (flavors,
/// jobs, job times) under concurrent requests, and pressure that follows both its own commits and
/// a change made by another client (the `NOTIFY` it hears on its direct `LISTEN` connection).
#[actix_web::test]
async fn the_planner_runs_through_pgbouncer_and_listens_directly() {
    let (bouncer, _) = PgBouncer::start(2, Tls::Off).await;
    let db = TestDb::new();
    let direct = db.url().to_owned();
    let planner = TestPlanner::builder()
        .database(&bouncer.url_for(db.url()))
        .tune(move |config| {
            config.db_pgbouncer = true;
            config.listen_database_url = direct.into();
            config.migrate_on_start = true;
        })
        .start()
        .await;
    planner.create_flavor("small", &["x64"], 1).await;
    let publisher = Broker::connect(&planner.topology).await;
    let jobs = 30;
    for id in 1..=jobs {
        let mut body = job_payload("queued.1", id, "queued", &["self-hosted", "x64"]);
        body["workflow_job"]["created_at"] = chrono::Utc::now().to_rfc3339().into();
        publisher.publish(&body, &format!("d{id}")).await;
    }
    planner.settled(jobs as u64).await;
    let pressure = || async {
        let response = planner
            .admin(Method::GET, "/api/v1/flavors/small/pressure")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json::<Value>().await.unwrap()["small"]
            .as_i64()
            .unwrap()
    };
    eventually("every job counts", WAIT, || async {
        pressure().await == jobs
    })
    .await;

    // Another client changes the flavor: only the NOTIFY on the direct connection tells.
    let mut other = db.connect();
    sql_query("UPDATE flavor SET minimum_pressure = 100 WHERE name = 'small'")
        .execute(&mut other)
        .unwrap();
    eventually("the LISTEN connection hears the change", WAIT, || async {
        pressure().await == 100
    })
    .await;

    // Concurrent requests share the two server connections.
    let requests = (0..40).map(|n| {
        let path = if n % 2 == 0 {
            "/api/v1/jobs/github?limit=5".to_owned()
        } else {
            format!("/api/v1/jobs/github/{}", n % jobs + 1)
        };
        planner.admin(Method::GET, &path).send()
    });
    for response in futures::future::join_all(requests).await {
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    let response = planner
        .admin(Method::PATCH, "/api/v1/flavors/small")
        .json(&json!({"minimum_pressure": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = planner
        .admin(Method::PATCH, "/api/v1/jobs/github/1")
        .json(&json!({"completed_at": "2025-01-15T10:45:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    eventually("the completed job stops counting", WAIT, || async {
        pressure().await == jobs - 1
    })
    .await;
    let response = planner
        .admin(Method::GET, "/api/v1/jobs/github")
        .send()
        .await
        .unwrap();
    let listed: Value = response.json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), jobs as usize);
}

/// Connects the way the pressure calculator does and says whether the session is usable.
async fn listen_with(url: &str) -> Result<(), String> {
    let target = ListenTarget::parse(url).map_err(|err| err.to_string())?;
    let (client, connection) = target
        .connect(Duration::from_secs(5))
        .await
        .map_err(|err| with_causes(&err))?;
    let driver = actix_web::rt::spawn(connection);
    let listened = client
        .batch_execute("LISTEN planner_changes")
        .await
        .map_err(|err| with_causes(&err));
    drop(client);
    let _ = driver.await;
    listened
}

/// `sslmode` on the `LISTEN` connection: against a server without TLS, `require` fails naming
/// the reason and `disable`/`prefer` connect; against a server that requires TLS, `disable`
/// fails and the others connect, checking the certificate as `verify-ca`/`verify-full` say.
#[actix_web::test]
async fn the_listen_connection_honours_sslmode() {
    let db = TestDb::new();
    let (plain, _) = PgBouncer::start(1, Tls::Off).await;
    let (secure, ca) = PgBouncer::start(1, Tls::Required).await;
    let ca = ca.unwrap();
    let plain_url = plain.url_for(db.url());
    let with = |url: &str, query: &str| {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}{query}")
    };

    for mode in ["disable", "allow", "prefer"] {
        let outcome = listen_with(&with(&plain_url, &format!("sslmode={mode}"))).await;
        assert_eq!(outcome, Ok(()), "sslmode={mode} without TLS");
    }
    let refused = listen_with(&with(&plain_url, "sslmode=require"))
        .await
        .unwrap_err();
    assert!(refused.contains("server does not support TLS"), "{refused}");

    let by_ip = secure.url_for(db.url());
    let by_name = by_ip.replace("127.0.0.1", "localhost");
    let root = |path: &std::path::Path| format!("sslrootcert={}", path.display());
    let refused = listen_with(&with(&by_ip, "sslmode=disable"))
        .await
        .unwrap_err();
    assert!(
        refused.to_lowercase().contains("ssl"),
        "TLS is required there: {refused}"
    );
    for query in [
        "sslmode=prefer".to_owned(),
        "sslmode=require".to_owned(),
        format!("sslmode=require&{}", root(&ca.ca)),
        format!("sslmode=verify-ca&{}", root(&ca.ca)),
    ] {
        assert_eq!(listen_with(&with(&by_ip, &query)).await, Ok(()), "{query}");
    }
    let full = format!("sslmode=verify-full&{}", root(&ca.ca));
    assert_eq!(
        listen_with(&with(&by_name, &full)).await,
        Ok(()),
        "{full} by name"
    );
    for (url, query, reason) in [
        (&by_ip, full.clone(), "certificate not valid for name"),
        (
            &by_name,
            format!("sslmode=verify-full&{}", root(&ca.other_ca)),
            "issuer",
        ),
        (
            &by_ip,
            format!("sslmode=verify-ca&{}", root(&ca.other_ca)),
            "issuer",
        ),
        (
            &by_ip,
            format!("sslmode=require&{}", root(&ca.other_ca)),
            "issuer",
        ),
    ] {
        let refused = listen_with(&with(url, &query)).await.unwrap_err();
        assert!(
            refused.to_lowercase().contains(reason),
            "{query}: {refused}"
        );
    }
}
