//! The planner's PostgreSQL schema: embedded diesel migrations, the generated [`schema`] module,
//! row types ([`models`]) and queries as plain functions over a `&mut PgConnection`.
//!
//! Policy: query functions return [`diesel::QueryResult`]; turning a result into an HTTP status
//! or a consumer decision is the caller's business.

pub mod canonical;
pub mod models;
pub mod queries;
pub mod reports;
pub mod schema;

use diesel::pg::PgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// The migrations in `schema/migrations`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Session advisory lock that serialises planners migrating one database at once.
const MIGRATION_LOCK: i64 = 0x706c_616e_6d69_6772;

/// Runs every pending migration, one planner at a time (a session advisory lock: two planners
/// starting together would otherwise both run the same migration); returns the versions
/// applied (empty when up to date).
pub fn run_migrations(
    connection: &mut PgConnection,
) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
    use diesel::{sql_types::BigInt, RunQueryDsl};
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK)
        .execute(connection)?;
    let applied: Result<Vec<String>, _> = connection
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(ToString::to_string).collect());
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK)
        .execute(connection)?;
    applied
}
