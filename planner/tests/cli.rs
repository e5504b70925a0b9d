//! The `planner` binary: sub-commands, start-up errors that name the variable at fault without
//! echoing secrets, and `planner migrate` against a real PostgreSQL.

use std::process::{Command, Output};

use diesel::{Connection, PgConnection, RunQueryDsl};

const ADMIN: &str = "planner_v0_abcdefghij0123456789";

fn planner(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_planner"));
    command.args(args).env_clear().env("RUST_LOG", "info");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run planner")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn unknown_sub_commands_print_usage() {
    for args in [&[][..], &["serve", "--bogus"][..], &["frobnicate"][..]] {
        let output = planner(args, &[]);
        assert!(!output.status.success(), "{args:?}");
        assert!(
            stderr(&output).contains("usage: planner serve"),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn start_up_stops_naming_the_bad_variable_without_echoing_it() {
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
        let output = planner(&["serve"], &env);
        assert!(!output.status.success());
        assert!(
            stderr(&output).contains(good[missing].0),
            "{}",
            stderr(&output)
        );
    }
    let mut env = good.to_vec();
    env[2] = ("APP_ADMIN_TOKEN_VALUE", "planner_v0_tooshortsecret");
    let output = planner(&["serve"], &env);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("APP_ADMIN_TOKEN_VALUE"), "{text}");
    assert!(
        !text.contains("tooshortsecret"),
        "secrets never appear: {text}"
    );
    let mut env = good.to_vec();
    env.push(("APP_PORT", "eighty"));
    let output = planner(&["serve"], &env);
    assert!(stderr(&output).contains("APP_PORT"));
}

#[test]
fn migrate_applies_the_schema_and_is_idempotent() {
    let admin_url = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned());
    let mut admin =
        PgConnection::establish(&admin_url).expect("PostgreSQL reachable at TEST_DATABASE_URL");
    let name = format!("planner_cli_{}", std::process::id());
    diesel::sql_query(format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut admin)
        .unwrap();
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .unwrap();
    let url = format!("{}/{name}", &admin_url[..admin_url.rfind('/').unwrap()]);

    for _ in 0..2 {
        let output = planner(&["migrate"], &[("POSTGRESQL_DB_CONNECT_STRING", &url)]);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let mut conn = PgConnection::establish(&url).unwrap();
    let tables = diesel::sql_query(
        "SELECT 1 FROM information_schema.tables WHERE table_name IN ('flavor', 'job', 'auth', 'delivery')",
    )
    .execute(&mut conn)
    .unwrap();
    assert_eq!(tables, 4);
    drop(conn);
    diesel::sql_query(format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .unwrap();

    let output = planner(&["migrate"], &[]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("POSTGRESQL_DB_CONNECT_STRING"));
}
