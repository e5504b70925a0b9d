//! The `planner` binary: sub-commands, start-up errors that name the variable at fault without
//! echoing secrets, and `planner migrate` against a real PostgreSQL.

use std::process::ExitStatus;
use std::time::Duration;

use diesel::RunQueryDsl;
use tests::db::TestDb;

const ADMIN: &str = "planner_v0_abcdefghij0123456789";

/// What a run of the planner binary left: its exit status and its log.
struct Output {
    status: ExitStatus,
    stderr: String,
}

async fn planner(args: &[&str], env: &[(&str, &str)]) -> Output {
    let (status, stderr) = tests::process::run("planner", args, env, Duration::from_secs(30)).await;
    Output { status, stderr }
}

fn stderr(output: &Output) -> String {
    output.stderr.clone()
}

#[actix_rt::test]
async fn unknown_sub_commands_print_usage() {
    for args in [&[][..], &["serve", "--bogus"][..], &["frobnicate"][..]] {
        let output = planner(args, &[]).await;
        assert!(!output.status.success(), "{args:?}");
        assert!(
            stderr(&output).contains("usage: planner serve"),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[actix_rt::test]
async fn start_up_stops_naming_the_bad_variable_without_echoing_it() {
    let good = [
        (
            "POSTGRESQL_DB_CONNECT_STRING",
            "postgres://u:secretpw@127.0.0.1:1/x",
        ),
        (
            "RABBITMQ_CONNECT_STRING",
            "amqp://guest:guest@127.0.0.1:1/%2f",
        ),
        ("APP_ADMIN_TOKEN_VALUE", ADMIN),
    ];
    for missing in 0..good.len() {
        let env: Vec<_> = good
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != missing)
            .map(|(_, v)| *v)
            .collect();
        let output = planner(&["serve"], &env).await;
        assert!(!output.status.success());
        assert!(
            stderr(&output).contains(good[missing].0),
            "{}",
            stderr(&output)
        );
    }
    let mut env = good.to_vec();
    env[2] = ("APP_ADMIN_TOKEN_VALUE", "planner_v0_tooshortsecret");
    let output = planner(&["serve"], &env).await;
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("APP_ADMIN_TOKEN_VALUE"), "{text}");
    assert!(
        !text.contains("tooshortsecret"),
        "secrets never appear: {text}"
    );
    let mut env = good.to_vec();
    env.push(("APP_PORT", "eighty"));
    let output = planner(&["serve"], &env).await;
    assert!(stderr(&output).contains("APP_PORT"));
}

#[actix_rt::test]
async fn migrate_applies_the_schema_and_is_idempotent() {
    let db = TestDb::empty();
    let url = db.url().to_owned();

    for _ in 0..2 {
        let output = planner(&["migrate"], &[("POSTGRESQL_DB_CONNECT_STRING", &url)]).await;
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let mut conn = db.connect();
    let tables = diesel::sql_query(
        "SELECT 1 FROM information_schema.tables WHERE table_name IN ('flavor', 'job', 'auth', 'delivery')",
    )
    .execute(&mut conn)
    .unwrap();
    assert_eq!(tables, 4);
    drop(conn);
    drop(db);

    let output = planner(&["migrate"], &[]).await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("POSTGRESQL_DB_CONNECT_STRING"));
}
