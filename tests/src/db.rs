//! An isolated PostgreSQL database per test.
//!
//! A template database is migrated once per version of the migrations (its name carries a hash
//! of `schema/migrations`); each test clones it with `CREATE DATABASE ... TEMPLATE` and drops its
//! clone on `Drop`. Test binaries run in parallel, so creating the template is guarded by a
//! PostgreSQL advisory lock. A test that cannot reach PostgreSQL (`TEST_DATABASE_URL`, see
//! [`crate::env`]) panics: it never skips.

use std::{fs, path::Path};

use diesel::{pg::PgConnection, Connection, RunQueryDsl};
use sha2::{Digest, Sha256};

use crate::env::{database_url, with_database};

fn admin_connection() -> PgConnection {
    let url = database_url();
    PgConnection::establish(&url).unwrap_or_else(|err| {
        panic!("cannot reach PostgreSQL at TEST_DATABASE_URL (or the default): {err}")
    })
}

fn migrations_fingerprint() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/migrations");
    let mut files = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(next) = stack.pop() {
        for entry in fs::read_dir(&next).expect("schema/migrations is readable") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut hash = Sha256::new();
    for file in files {
        hash.update(
            file.strip_prefix(&dir)
                .unwrap()
                .to_string_lossy()
                .as_bytes(),
        );
        hash.update(fs::read(&file).expect("migration is readable"));
    }
    hex::encode(&hash.finalize()[..8])
}

fn ensure_template(admin: &mut PgConnection) -> String {
    let template = format!("planner_template_{}", migrations_fingerprint());
    // Session-level lock: released below, or when the connection closes if we panic.
    diesel::sql_query("SELECT pg_advisory_lock(736465001)")
        .execute(admin)
        .expect("advisory lock");
    let exists = diesel::sql_query(format!(
        "SELECT 1 FROM pg_database WHERE datname = '{template}'"
    ))
    .execute(admin)
    .expect("look up template")
        == 1;
    if !exists {
        let building = format!("{template}_building");
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
            .execute(admin)
            .expect("drop half-built template");
        diesel::sql_query(format!("CREATE DATABASE {building}"))
            .execute(admin)
            .expect("create template");
        {
            let mut conn = PgConnection::establish(&with_database(&database_url(), &building))
                .expect("connect to template");
            schema::run_migrations(&mut conn).expect("migrate template");
        }
        diesel::sql_query(format!("ALTER DATABASE {building} RENAME TO {template}"))
            .execute(admin)
            .expect("publish template");
    }
    diesel::sql_query("SELECT pg_advisory_unlock(736465001)")
        .execute(admin)
        .expect("advisory unlock");
    template
}

/// A migrated database of its own, dropped on `Drop`.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: String,
    /// The server's administrative URL (its `postgres` database), to drop it.
    server: String,
}

impl TestDb {
    /// Clones the migrated template into a fresh database.
    pub fn new() -> Self {
        let mut admin = admin_connection();
        let template = ensure_template(&mut admin);
        Self::create(&mut admin, &format!("TEMPLATE {template}"))
    }

    /// A fresh database without any migration (to test the migrations themselves).
    pub fn empty() -> Self {
        Self::create(&mut admin_connection(), "")
    }

    /// A fresh database without any migration on another server than the shared one (its
    /// `postgres` database's URL: `server`), e.g. the pair of [`crate::cluster::PostgresPair`].
    pub fn empty_on(server: &str) -> Self {
        let mut admin = PgConnection::establish(server)
            .unwrap_or_else(|err| panic!("cannot reach the PostgreSQL server: {err}"));
        Self::create_on(&mut admin, server, "")
    }

    fn create(admin: &mut PgConnection, options: &str) -> Self {
        Self::create_on(admin, &database_url(), options)
    }

    fn create_on(admin: &mut PgConnection, server: &str, options: &str) -> Self {
        let name = format!("planner_test_{}", uuid::Uuid::new_v4().simple());
        diesel::sql_query(format!("CREATE DATABASE {name} {options}"))
            .execute(admin)
            .expect("create test database");
        let url = with_database(server, &name);
        Self {
            name,
            url,
            server: server.to_owned(),
        }
    }

    /// Connection string of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new connection to this database.
    pub fn connect(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("connect to test database")
    }
}

impl TestDb {
    /// Every row of the planner's tables (flavors, tokens, jobs, deliveries) as JSON, in a fixed
    /// order: two snapshots are equal exactly when nothing was changed in between.
    pub fn snapshot(&self) -> serde_json::Value {
        #[derive(diesel::QueryableByName)]
        struct Rows {
            #[diesel(sql_type = diesel::sql_types::Text)]
            rows: String,
        }
        let mut conn = self.connect();
        let mut snapshot = serde_json::Map::new();
        for table in ["flavor", "auth", "job", "delivery"] {
            let rows: Rows = diesel::sql_query(format!(
                "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY to_jsonb(t)::text), '[]')::text \
                 AS rows FROM {table} t"
            ))
            .get_result(&mut conn)
            .unwrap_or_else(|err| panic!("read table {table}: {err}"));
            snapshot.insert(
                table.to_owned(),
                serde_json::from_str(&rows.rows).expect("rows as JSON"),
            );
        }
        snapshot.into()
    }
}

impl Default for TestDb {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Ok(mut admin) = PgConnection::establish(&self.server) else {
            eprintln!(
                "could not reach the server to drop test database {}",
                self.name
            );
            return;
        };
        if let Err(err) = diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        {
            eprintln!("could not drop test database {}: {err}", self.name);
        }
    }
}

/// Runs one SQL statement, panicking with the statement and the error when it fails.
pub fn execute(conn: &mut diesel::PgConnection, sql: &str) {
    diesel::RunQueryDsl::execute(diesel::sql_query(sql), conn)
        .unwrap_or_else(|err| panic!("{sql}: {err}"));
}
