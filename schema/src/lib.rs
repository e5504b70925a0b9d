//! The planner's PostgreSQL schema: embedded diesel migrations, the generated [`schema`] module,
//! row types ([`models`]) and queries as plain functions over a `&mut PgConnection`; [`jsonb`]
//! finds in JSON text what a `jsonb` column cannot hold.
//!
//! Policy: query functions return [`diesel::QueryResult`]; turning a result into an HTTP status
//! or a consumer decision is the caller's business.

pub mod canonical;
pub mod jsonb;
pub mod models;
pub mod queries;
pub mod reports;
pub mod schema;

use diesel::pg::PgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// The migrations in `schema/migrations`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Runs every pending migration; returns the versions applied (empty when up to date).
pub fn run_migrations(
    connection: &mut PgConnection,
) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
    let applied = connection.run_pending_migrations(MIGRATIONS)?;
    Ok(applied.iter().map(ToString::to_string).collect())
}
