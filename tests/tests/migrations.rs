//! The migrations against the real PostgreSQL, one at a time from an empty database: data
//! written under an earlier schema survives the later migrations (open-job counts are
//! backfilled, payloads move to `job_payload`), and every migration reverts.

use diesel::{sql_query, Connection, PgConnection, QueryableByName, RunQueryDsl};
use diesel_migrations::MigrationHarness;
use tests::db::{execute, TestDb};

/// Runs pending migrations until `version` has been applied.
fn migrate_through(conn: &mut PgConnection, version: &str) {
    loop {
        let applied = conn
            .run_next_migration(schema::MIGRATIONS)
            .expect("run the next migration")
            .to_string();
        if applied == version {
            return;
        }
    }
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    sql_query(sql).get_result::<Count>(conn).expect(sql).n
}

#[test]
fn jobs_written_before_the_pressure_counts_and_payload_tables_survive_them() {
    let db = TestDb::empty();
    let mut conn = PgConnection::establish(db.url()).unwrap();
    migrate_through(&mut conn, "20261122000009");
    execute(
        &mut conn,
        "INSERT INTO flavor (name, platform, labels, priority) VALUES ('x64', 'github', '{x64}', 1)",
    );
    // Two open jobs of x64 and a completed one, each with the payloads of its actions.
    execute(
        &mut conn,
        r#"INSERT INTO job (platform, id, labels, status, repository, created_at, assigned_flavor, payloads)
           VALUES ('github', 1, '{x64}', 'queued', 'o/r', now(), 'x64', '{"queued": {"n": 1}}'),
                  ('github', 2, '{x64}', 'in_progress', 'o/r', now(), 'x64',
                   '{"queued": {"n": 2}, "in_progress": {"n": 2}}'),
                  ('github', 3, '{x64}', 'completed', 'o/r', now(), 'x64',
                   '{"queued": {"n": 3}, "in_progress": {"n": 3}, "completed": {"n": 3}}')"#,
    );
    conn.run_pending_migrations(schema::MIGRATIONS)
        .expect("the later migrations");

    assert_eq!(
        count(
            &mut conn,
            "SELECT sum(delta)::bigint AS n FROM job_open_delta WHERE flavor = 'x64'"
        ),
        2,
        "the open jobs written before the counts existed are counted"
    );
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM job_payload"), 6);
    let payloads = schema::queries::job_payloads(&mut conn, "github", 3).unwrap();
    assert_eq!(
        payloads,
        ["completed", "in_progress", "queued"]
            .map(|action| (action.to_owned(), r#"{"n": 3}"#.to_owned()))
            .to_vec(),
        "jsonb payloads are kept as their JSON text"
    );
    let (map, _) =
        planner::pressure::compute(&mut conn, std::time::Duration::from_secs(3600)).unwrap();
    assert_eq!(map.get("x64"), Some(&2));

    // Every migration reverts, data included, and applies again.
    conn.revert_all_migrations(schema::MIGRATIONS)
        .expect("revert every migration");
    conn.run_pending_migrations(schema::MIGRATIONS)
        .expect("migrate again");
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM job"), 0);
}

/// The migration that moved payloads into `job_payload`.
const PAYLOAD_TABLE_MIGRATION: &str = "20261123000011";

#[test]
fn reverting_the_payload_table_puts_the_payloads_back_into_the_job_rows() {
    let db = TestDb::empty();
    let mut conn = PgConnection::establish(db.url()).unwrap();
    conn.run_pending_migrations(schema::MIGRATIONS).unwrap();
    execute(
        &mut conn,
        r#"INSERT INTO job (platform, id, labels, status, repository, created_at)
           VALUES ('github', 1, '{x64}', 'in_progress', 'o/r', now())"#,
    );
    execute(
        &mut conn,
        r#"INSERT INTO job_payload (platform, job_id, action, payload)
           VALUES ('github', 1, 'queued', '{"n": 1}'), ('github', 1, 'in_progress', '{"n": 2}')"#,
    );
    // Reverted down to (and with) the payload table's migration.
    while conn
        .revert_last_migration(schema::MIGRATIONS)
        .unwrap()
        .to_string()
        != PAYLOAD_TABLE_MIGRATION
    {}
    #[derive(QueryableByName)]
    struct Payloads {
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        payloads: serde_json::Value,
    }
    let row: Payloads = sql_query("SELECT payloads FROM job WHERE id = 1")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(
        row.payloads,
        serde_json::json!({"queued": {"n": 1}, "in_progress": {"n": 2}})
    );
}

#[test]
fn deleting_or_truncating_jobs_deletes_their_payloads() {
    let db = TestDb::new();
    let mut conn = db.connect();
    execute(
        &mut conn,
        r#"INSERT INTO job (platform, id, labels, status, repository, created_at)
           VALUES ('github', 1, '{x64}', 'queued', 'o/r', now()),
                  ('github', 2, '{x64}', 'queued', 'o/r', now())"#,
    );
    execute(
        &mut conn,
        r#"INSERT INTO job_payload (platform, job_id, action, payload)
           VALUES ('github', 1, 'queued', '{}'), ('github', 1, 'completed', '{}'),
                  ('github', 2, 'queued', '{}')"#,
    );
    execute(&mut conn, "DELETE FROM job WHERE id = 1");
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM job_payload WHERE job_id = 1"
        ),
        0
    );
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM job_payload"), 1);
    execute(&mut conn, "TRUNCATE job");
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM job_payload"), 0);
}
