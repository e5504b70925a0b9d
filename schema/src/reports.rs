//! Read-only reports over the job history (`planner report ...`).

use chrono::{DateTime, Utc};
use diesel::{
    pg::PgConnection,
    sql_query,
    sql_types::{BigInt, Double, Nullable, Text, Timestamptz},
    QueryResult, QueryableByName, RunQueryDsl,
};

/// One day's 80th percentile of queue waiting time (of a platform, or of a flavor).
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct DailyWaitingP80 {
    /// The UTC day the jobs started (`YYYY-MM-DD`).
    #[diesel(sql_type = Text)]
    pub day: String,
    #[diesel(sql_type = Text)]
    pub platform: String,
    /// The flavor, when the report is per flavor.
    #[diesel(sql_type = Nullable<Text>)]
    pub flavor: Option<String>,
    /// 80th percentile of `started_at - created_at`, in seconds, interpolated between the two
    /// nearest waits (`percentile_cont`).
    #[diesel(sql_type = Double)]
    pub p80_seconds: f64,
    #[diesel(sql_type = BigInt)]
    pub sample_count: i64,
}

/// The daily P80 of queue waiting time of the jobs that started in `[from, to)`, per UTC day of
/// their start and platform (and flavor when `per_flavor`), oldest day first.
///
/// As Canonical's `waiting-p80-report` counts them: only jobs with a flavor (runners we manage),
/// only started ones, and a negative wait (clock skew between GitHub's timestamps) counts as 0
/// rather than being left out. Days without started jobs have no row.
pub fn daily_waiting_p80(
    conn: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    per_flavor: bool,
) -> QueryResult<Vec<DailyWaitingP80>> {
    let flavor = if per_flavor {
        "assigned_flavor"
    } else {
        "NULL::text"
    };
    sql_query(format!(
        "SELECT to_char(date_trunc('day', started_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD') AS day, \
                platform, {flavor} AS flavor, \
                percentile_cont(0.8) WITHIN GROUP \
                  (ORDER BY GREATEST(EXTRACT(EPOCH FROM started_at - created_at), 0)) \
                  AS p80_seconds, \
                count(*) AS sample_count \
         FROM job \
         WHERE started_at IS NOT NULL AND assigned_flavor IS NOT NULL \
           AND started_at >= $1 AND started_at < $2 \
         GROUP BY 1, 2, 3 \
         ORDER BY 1, 2, 3"
    ))
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
}
