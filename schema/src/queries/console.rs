//! What the planner's web console reads and the REST API does not: open jobs by flavor and
//! status with the oldest of each, and the deliveries recorded. Read-only.

use chrono::{DateTime, Utc};
use diesel::{
    pg::PgConnection,
    prelude::*,
    sql_types::{BigInt, Nullable, Text, Timestamptz},
};

use crate::schema::delivery;

/// Open jobs (`queued`, `waiting` or `in_progress`) of one flavor (`None`: matched to no
/// flavor) in one status.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct OpenJobs {
    #[diesel(sql_type = Nullable<Text>)]
    pub flavor: Option<String>,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = BigInt)]
    pub jobs: i64,
    /// When the oldest of them was created.
    #[diesel(sql_type = Timestamptz)]
    pub oldest: DateTime<Utc>,
}

/// Every flavor's open jobs by status, whatever their age (the console shows what is waiting,
/// not what pressure counts). One pass over the partial index of jobs that are not completed.
pub fn open_jobs_by_flavor(conn: &mut PgConnection) -> QueryResult<Vec<OpenJobs>> {
    diesel::sql_query(
        "SELECT assigned_flavor AS flavor, status, count(*) AS jobs, min(created_at) AS oldest \
         FROM job WHERE status <> 'completed' \
         GROUP BY assigned_flavor, status ORDER BY assigned_flavor, status",
    )
    .load(conn)
}

/// One recorded `X-GitHub-Delivery`.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = delivery, check_for_backend(diesel::pg::Pg))]
pub struct Delivery {
    pub id: String,
    pub job_platform: String,
    pub job_id: i64,
    pub action: String,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// Times it came again after the first.
    pub duplicates: i32,
}

/// The `limit` deliveries seen last, most recent first (a scan of `delivery_last_seen`).
pub fn recent_deliveries(conn: &mut PgConnection, limit: i64) -> QueryResult<Vec<Delivery>> {
    delivery::table
        .select(Delivery::as_select())
        .order((delivery::last_seen_at.desc(), delivery::id.desc()))
        .limit(limit)
        .load(conn)
}

/// A job's deliveries in the order they first arrived: its timeline as the planner received it.
pub fn job_deliveries(
    conn: &mut PgConnection,
    platform: &str,
    job_id: i64,
) -> QueryResult<Vec<Delivery>> {
    delivery::table
        .filter(delivery::job_platform.eq(platform))
        .filter(delivery::job_id.eq(job_id))
        .select(Delivery::as_select())
        .order((delivery::first_seen_at.asc(), delivery::id.asc()))
        .load(conn)
}

/// Every delivery recorded, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct DeliveryTotals {
    /// Distinct delivery ids.
    #[diesel(sql_type = BigInt)]
    pub deliveries: i64,
    /// Ids that came more than once.
    #[diesel(sql_type = BigInt)]
    pub duplicated: i64,
    /// Repeats in all.
    #[diesel(sql_type = BigInt)]
    pub duplicates: i64,
}

/// Counts of the deliveries recorded.
pub fn delivery_totals(conn: &mut PgConnection) -> QueryResult<DeliveryTotals> {
    diesel::sql_query(
        "SELECT count(*) AS deliveries, count(*) FILTER (WHERE duplicates > 0) AS duplicated, \
                coalesce(sum(duplicates), 0)::bigint AS duplicates \
         FROM delivery",
    )
    .get_result(conn)
}
