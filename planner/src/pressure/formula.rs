//! The pressure formula, written once.
//!
//! pressure(flavor) = `minimum_pressure` for a disabled flavor, otherwise
//! max(`minimum_pressure`, open jobs assigned to it), where an open job is `queued` or
//! `in_progress` (waiting jobs do not count).
//!
//! Three readers use it, with one deliberate difference in what counts as an open job:
//! - the stream and the REST API ([`super::fold`]): open jobs created within `APP_JOB_MAX_AGE`
//!   (default [`DEFAULT_MAX_AGE`], Canonical's 5 days), so a job GitHub never reported as done
//!   stops asking for a runner;
//! - matching's tie-break between flavors of equal priority ([`crate::store::pressures`]): every
//!   open job, from the trigger-kept counts alone. It runs for each new job inside the
//!   consumer's transaction, where it must stay one read of a few rows; subtracting the jobs
//!   past the age limit costs two index scans per flavor. The tie-break is a preference, not a
//!   count: a flavor with old stuck jobs merely looks busier, which steers new jobs away from
//!   it. Disabled flavors never reach the tie-break (they never match), so the disabled rule
//!   cannot differ there;
//! - the tests' recount ([`from_scratch`]), which counts the `job` table itself and must agree
//!   with the stream.

use std::time::Duration;

use ::actors::pressure::PressureMap;
use diesel::{PgConnection, QueryResult};
use schema::queries;

/// Default of `APP_JOB_MAX_AGE`: jobs created longer ago than this no longer count towards
/// pressure (Canonical's planner uses the same 5 days).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(5 * 24 * 3600);

/// The pressure of one flavor with `open_jobs` open jobs counted.
pub fn pressure(minimum_pressure: i32, is_disabled: bool, open_jobs: i64) -> u64 {
    let minimum = u64::try_from(minimum_pressure).unwrap_or(0);
    if is_disabled {
        minimum
    } else {
        minimum.max(u64::try_from(open_jobs).unwrap_or(0))
    }
}

/// Every flavor's pressure computed from the `job` table directly (no trigger-kept counts),
/// with `max_age` as the age limit: the reference the calculator's result must equal.
pub fn from_scratch(conn: &mut PgConnection, max_age: Duration) -> QueryResult<PressureMap> {
    let open = queries::open_jobs_from_scratch(conn, max_age.as_secs_f64())?;
    Ok(queries::list_flavors(conn)?
        .into_iter()
        .map(|flavor| {
            let jobs = open
                .iter()
                .find(|(name, _)| *name == flavor.name)
                .map_or(0, |(_, n)| *n);
            let value = pressure(flavor.minimum_pressure, flavor.is_disabled, jobs);
            (flavor.name, value)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_floor_and_disabled_flavors() {
        assert_eq!(pressure(0, false, 3), 3);
        assert_eq!(pressure(5, false, 3), 5);
        assert_eq!(pressure(2, true, 9), 2);
        assert_eq!(pressure(0, true, 9), 0);
        // Counts below zero (never expected) and negative minimums read as zero.
        assert_eq!(pressure(-1, false, -4), 0);
    }
}
