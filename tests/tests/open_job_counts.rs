//! The open-job counts behind pressure (`job_open_delta`, kept by statement triggers on `job`)
//! against the real PostgreSQL: whatever happens to jobs (inserts, status changes, flavor moves,
//! deletes, truncation, rolled-back transactions, compaction, planners writing at the same
//! time), the pressure the calculator reads equals a recount from scratch of the `job` table.

use std::time::Duration;

use actors::pressure::PressureMap;
use diesel::{sql_query, Connection, PgConnection, QueryableByName, RunQueryDsl};
use proptest::prelude::*;
use schema::queries;
use tests::db::{execute, TestDb};

const FLAVORS: [&str; 3] = ["a", "b", "c"];
/// The age limit of these tests: 1 hour, so jobs can be made older than it.
const MAX_AGE: Duration = Duration::from_secs(3600);

/// Pressure recounted from the `job` table, by the definition: a disabled flavor reports its
/// minimum; otherwise the larger of its minimum and its `queued`/`in_progress` jobs created
/// within the age limit.
fn recount(conn: &mut PgConnection) -> PressureMap {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        pressure: i64,
    }
    let rows: Vec<Row> = sql_query(
        "SELECT f.name, CASE WHEN f.is_disabled THEN f.minimum_pressure::bigint \
                ELSE greatest(f.minimum_pressure::bigint, ( \
                    SELECT count(*) FROM job j WHERE j.assigned_flavor = f.name \
                    AND j.status IN ('queued', 'in_progress') \
                    AND j.created_at > now() - interval '1 hour')) END AS pressure \
         FROM flavor f",
    )
    .load(conn)
    .expect("recount");
    rows.into_iter()
        .map(|row| (row.name, u64::try_from(row.pressure).unwrap()))
        .collect()
}

fn flavors(conn: &mut PgConnection) {
    execute(
        conn,
        "INSERT INTO flavor (name, platform, labels, priority, is_disabled, minimum_pressure) \
         VALUES ('a', 'github', '{a}', 0, false, 0), ('b', 'github', '{b}', 0, false, 2), \
                ('c', 'github', '{c}', 0, true, 1)",
    );
}

/// One change to the `job` table, as SQL.
#[derive(Debug, Clone)]
enum Change {
    /// New jobs `from..from+count` with a status, a flavor (or none) and an age in minutes.
    Insert {
        from: i64,
        count: i64,
        status: &'static str,
        flavor: Option<&'static str>,
        age_minutes: i64,
    },
    /// Jobs `from..from+count` inserted, or for those that exist, given `status` and `flavor`
    /// (the job store writes jobs this way).
    Upsert {
        from: i64,
        count: i64,
        status: &'static str,
        flavor: Option<&'static str>,
    },
    /// Every job whose id is `residue` modulo `modulus` gets `status`.
    SetStatus {
        modulus: i64,
        residue: i64,
        status: &'static str,
    },
    /// Every job whose id is `residue` modulo `modulus` moves to `flavor` (or none).
    Move {
        modulus: i64,
        residue: i64,
        flavor: Option<&'static str>,
    },
    /// Every job whose id is `residue` modulo `modulus` is deleted.
    Delete { modulus: i64, residue: i64 },
    /// `TRUNCATE job` (its trigger empties the payloads too).
    Truncate,
    /// What the calculator does when the counts have grown.
    Compact,
}

impl Change {
    fn apply(&self, conn: &mut PgConnection) {
        let flavor = |f: &Option<&str>| f.map_or("NULL".to_owned(), |f| format!("'{f}'"));
        match self {
            Self::Insert {
                from,
                count,
                status,
                flavor: f,
                age_minutes,
            } => execute(
                conn,
                &format!(
                    "INSERT INTO job (platform, id, labels, status, repository, created_at, \
                     assigned_flavor) \
                     SELECT 'github', g, '{{x}}', '{status}', 'o/r', \
                            now() - interval '{age_minutes} minutes', {} \
                     FROM generate_series({from}, {}) g ON CONFLICT DO NOTHING",
                    flavor(f),
                    from + count - 1
                ),
            ),
            Self::SetStatus {
                modulus,
                residue,
                status,
            } => execute(
                conn,
                &format!("UPDATE job SET status = '{status}' WHERE id % {modulus} = {residue}"),
            ),
            Self::Move {
                modulus,
                residue,
                flavor: f,
            } => execute(
                conn,
                &format!(
                    "UPDATE job SET assigned_flavor = {} WHERE id % {modulus} = {residue}",
                    flavor(f)
                ),
            ),
            Self::Delete { modulus, residue } => execute(
                conn,
                &format!("DELETE FROM job WHERE id % {modulus} = {residue}"),
            ),
            Self::Upsert {
                from,
                count,
                status,
                flavor: f,
            } => execute(
                conn,
                &format!(
                    "INSERT INTO job (platform, id, labels, status, repository, created_at, \
                     assigned_flavor) \
                     SELECT 'github', g, '{{x}}', '{status}', 'o/r', now(), {} \
                     FROM generate_series({from}, {}) g \
                     ON CONFLICT (platform, id) DO UPDATE \
                     SET status = excluded.status, assigned_flavor = excluded.assigned_flavor",
                    flavor(f),
                    from + count - 1
                ),
            ),
            Self::Truncate => execute(conn, "TRUNCATE job"),
            Self::Compact => {
                queries::compact_open_job_deltas(conn).expect("compact");
            }
        }
    }
}

fn status() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["queued", "waiting", "in_progress", "completed"])
}

fn flavor() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::weighted(0.85, prop::sample::select(FLAVORS.to_vec()))
}

fn change() -> impl Strategy<Value = Change> {
    let selector = (2i64..6).prop_flat_map(|modulus| (Just(modulus), 0..modulus));
    prop_oneof![
        4 => (0i64..60, 1i64..40, status(), flavor(), 0i64..120).prop_map(
            |(from, count, status, flavor, age_minutes)| Change::Insert {
                from,
                count,
                status,
                flavor,
                age_minutes,
            }
        ),
        3 => (0i64..60, 1i64..40, status(), flavor()).prop_map(
            |(from, count, status, flavor)| Change::Upsert {
                from,
                count,
                status,
                flavor,
            }
        ),
        3 => (selector.clone(), status()).prop_map(|((modulus, residue), status)| {
            Change::SetStatus {
                modulus,
                residue,
                status,
            }
        }),
        2 => (selector.clone(), flavor()).prop_map(|((modulus, residue), flavor)| {
            Change::Move {
                modulus,
                residue,
                flavor,
            }
        }),
        1 => selector.prop_map(|(modulus, residue)| Change::Delete { modulus, residue }),
        1 => Just(Change::Truncate),
        1 => Just(Change::Compact),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any sequence of changes, each its own statement, some inside transactions that roll back:
    /// the calculator's pressure equals the recount after every step.
    #[test]
    fn pressure_from_the_counts_equals_a_recount_after_any_changes(
        steps in prop::collection::vec((change(), prop::bool::weighted(0.2)), 1..12),
    ) {
        // One database for every case (cloning one per case would be slow); each case starts
        // from no jobs through the TRUNCATE trigger.
        thread_local! {
            static DB: TestDb = {
                let db = TestDb::new();
                flavors(&mut db.connect());
                db
            };
        }
        DB.with(|db| -> Result<(), TestCaseError> {
            let mut conn = db.connect();
            Change::Truncate.apply(&mut conn);
            for (step, rolled_back) in &steps {
                if *rolled_back {
                    let result = conn.transaction::<(), diesel::result::Error, _>(|conn| {
                        step.apply(conn);
                        Err(diesel::result::Error::RollbackTransaction)
                    });
                    prop_assert!(result.is_err());
                } else {
                    step.apply(&mut conn);
                }
                let (computed, _) = planner::pressure::compute(&mut conn, MAX_AGE).unwrap();
                prop_assert_eq!(&computed, &recount(&mut conn), "after {:?}", step);
            }
            Ok(())
        })?;
    }
}

/// Writers on several connections at once (as several planners are), each committing or
/// rolling back transactions of many statements, while another connection compacts the counts
/// over and over and a third rebuilds them (`planner recount`): no recount ever finds a count
/// to correct, nothing deadlocks, and at the end the counts equal the recount.
#[test]
fn concurrent_writers_compaction_and_recounts_keep_the_counts_exact() {
    let db = TestDb::new();
    flavors(&mut db.connect());
    let writers: Vec<_> = (0..3i64)
        .map(|writer| {
            let url = db.url().to_owned();
            std::thread::spawn(move || {
                let mut conn = PgConnection::establish(&url).unwrap();
                for round in 0..40i64 {
                    let base = writer * 1_000_000 + round * 100;
                    let flavor = FLAVORS[usize::try_from((writer + round) % 3).unwrap()];
                    let other = FLAVORS[usize::try_from((writer + round + 1) % 3).unwrap()];
                    let rolled_back = round % 5 == 4;
                    let _ = conn.transaction::<(), diesel::result::Error, _>(|conn| {
                        Change::Insert {
                            from: base,
                            count: 50,
                            status: "queued",
                            flavor: Some(flavor),
                            age_minutes: round % 90,
                        }
                        .apply(conn);
                        // Each writer only touches its own jobs, as planners applying different
                        // deliveries do; several statements per transaction.
                        let mine = format!(
                            "id BETWEEN {} AND {}",
                            writer * 1_000_000,
                            writer * 1_000_000 + 999_999
                        );
                        for sql in [
                            format!(
                                "UPDATE job SET status = 'in_progress' \
                                 WHERE {mine} AND id % 3 = {}",
                                round % 3
                            ),
                            format!(
                                "UPDATE job SET assigned_flavor = '{other}' \
                                 WHERE {mine} AND id % 7 = {} AND status <> 'completed'",
                                round % 7
                            ),
                            format!(
                                "UPDATE job SET status = 'completed' WHERE {mine} AND id % 4 = {}",
                                round % 4
                            ),
                            format!(
                                "DELETE FROM job WHERE {mine} AND id % 50 = {}",
                                (round * 7 + 3) % 50
                            ),
                        ] {
                            execute(conn, &sql);
                        }
                        if rolled_back {
                            Err(diesel::result::Error::RollbackTransaction)
                        } else {
                            Ok(())
                        }
                    });
                }
            })
        })
        .collect();
    let compactor = {
        let url = db.url().to_owned();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        let handle = std::thread::spawn(move || {
            let mut conn = PgConnection::establish(&url).unwrap();
            let mut compactions = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                queries::compact_open_job_deltas(&mut conn).unwrap();
                compactions += 1;
            }
            compactions
        });
        (done, handle)
    };
    let recounter = {
        let url = db.url().to_owned();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        let handle = std::thread::spawn(move || {
            let mut conn = PgConnection::establish(&url).unwrap();
            let mut recounts = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let corrections = queries::recount_open_jobs(&mut conn).unwrap();
                assert_eq!(corrections, vec![], "the counts were wrong");
                recounts += 1;
            }
            recounts
        });
        (done, handle)
    };
    for writer in writers {
        writer.join().expect("writer");
    }
    for (stop, _) in [&compactor, &recounter] {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let compactions = compactor.1.join().expect("compactor");
    assert!(compactions > 0);
    let recounts = recounter.1.join().expect("recounter");
    assert!(recounts > 0);

    let mut conn = db.connect();
    let (computed, _) = planner::pressure::compute(&mut conn, MAX_AGE).unwrap();
    let expected = recount(&mut conn);
    assert!(
        expected.values().sum::<u64>() > 3,
        "the writers should leave open jobs: {expected:?}"
    );
    assert_eq!(computed, expected);
    // After a last compaction there is at most one row per flavor.
    queries::compact_open_job_deltas(&mut conn).unwrap();
    assert!(queries::open_job_delta_rows(&mut conn).unwrap() <= 3);
    assert_eq!(
        planner::pressure::compute(&mut conn, MAX_AGE).unwrap().0,
        expected
    );
}

/// A job's event, as the consumer hands it to the store.
fn event(id: i64, action: &str, delivery: &str) -> (String, planner::domain::job::JobEvent) {
    let fixture = if action == "queued" {
        "queued.1"
    } else {
        "in_progress.1"
    };
    let body = tests::fixtures::job_payload(fixture, id, action, &["self-hosted", "a"]);
    tests::planner::job_event(&body, delivery)
}

/// Two transactions applying events of the same new jobs at the same moment (two planners, or
/// one planner's two batches in flight): each takes the job's turn, so the second reads what
/// the first wrote instead of overwriting it. Without turns, a `queued` applied to a job it
/// believes new would overwrite the `in_progress` the other just inserted.
#[test]
fn two_transactions_on_the_same_new_jobs_take_turns() {
    let db = TestDb::new();
    flavors(&mut db.connect());
    let ignored = planner::domain::labels::IgnoredLabels::default();
    for round in 0..10i64 {
        let ids: Vec<i64> = (0..50).map(|n| round * 100 + n).collect();
        let batch = |action: &'static str| -> Vec<_> {
            ids.iter()
                .map(|&id| event(id, action, &format!("{action}-{id}")))
                .collect()
        };
        let (started, queued) = (batch("in_progress"), batch("queued"));
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            for events in [&started, &queued] {
                let (url, barrier, ignored) = (db.url(), &barrier, &ignored);
                scope.spawn(move || {
                    let mut conn = PgConnection::establish(url).unwrap();
                    barrier.wait();
                    planner::store::apply_batch(&mut conn, ignored, events).unwrap();
                });
            }
        });
        let mut conn = db.connect();
        #[derive(QueryableByName)]
        struct Status {
            #[diesel(sql_type = diesel::sql_types::Text)]
            status: String,
        }
        let statuses: Vec<Status> = sql_query(format!(
            "SELECT status FROM job WHERE id BETWEEN {} AND {}",
            round * 100,
            round * 100 + 49
        ))
        .load(&mut conn)
        .unwrap();
        assert_eq!(statuses.len(), 50);
        assert!(
            statuses.iter().all(|row| row.status == "in_progress"),
            "round {round}: a started job went back to queued"
        );
        let (computed, _) = planner::pressure::compute(&mut conn, MAX_AGE).unwrap();
        assert_eq!(computed, recount(&mut conn));
    }
}

/// `TRUNCATE job` while a compaction of the counts is running: the truncate waits for it and
/// leaves no count behind (deleting the rows instead would miss the sums the compaction commits).
#[test]
fn truncating_jobs_during_a_compaction_leaves_no_count_behind() {
    let db = TestDb::new();
    let mut compacting = db.connect();
    flavors(&mut compacting);
    Change::Insert {
        from: 1,
        count: 30,
        status: "queued",
        flavor: Some("a"),
        age_minutes: 0,
    }
    .apply(&mut compacting);
    Change::Insert {
        from: 31,
        count: 30,
        status: "queued",
        flavor: Some("b"),
        age_minutes: 0,
    }
    .apply(&mut compacting);
    execute(&mut compacting, "BEGIN");
    assert!(queries::compact_open_job_deltas(&mut compacting).unwrap() >= 2);
    let truncating = std::thread::spawn({
        let url = db.url().to_owned();
        move || execute(&mut PgConnection::establish(&url).unwrap(), "TRUNCATE job")
    });
    // The truncate is waiting for the compaction's locks.
    let mut watcher = db.connect();
    let mut waiting = || -> bool {
        #[derive(QueryableByName)]
        struct Waiting {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            waiting: bool,
        }
        sql_query(
            "SELECT count(*) > 0 AS waiting FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
               AND query LIKE 'TRUNCATE job%'",
        )
        .get_result::<Waiting>(&mut watcher)
        .unwrap()
        .waiting
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !waiting() {
        assert!(
            std::time::Instant::now() < deadline,
            "the truncate never waited for the compaction"
        );
        std::thread::yield_now();
    }
    execute(&mut compacting, "COMMIT");
    truncating.join().expect("truncate");
    assert_eq!(queries::open_job_delta_rows(&mut compacting).unwrap(), 0);
    let (computed, _) = planner::pressure::compute(&mut compacting, MAX_AGE).unwrap();
    assert_eq!(computed, recount(&mut compacting));
}

/// The calculator compacts the counts by itself once they have grown: many single-job
/// statements leave a row each, and one recompute later there is one per flavor.
#[test]
fn a_recompute_compacts_counts_that_have_grown() {
    let db = TestDb::new();
    let mut conn = db.connect();
    flavors(&mut conn);
    let rows = planner::pressure::COMPACT_ABOVE + 10;
    for id in 0..rows {
        Change::Insert {
            from: id,
            count: 1,
            status: "queued",
            flavor: Some(FLAVORS[usize::try_from(id % 3).unwrap()]),
            age_minutes: 0,
        }
        .apply(&mut conn);
    }
    assert!(queries::open_job_delta_rows(&mut conn).unwrap() > planner::pressure::COMPACT_ABOVE);
    let (first, _) = planner::pressure::compute(&mut conn, MAX_AGE).unwrap();
    assert!(queries::open_job_delta_rows(&mut conn).unwrap() <= 3);
    let (second, _) = planner::pressure::compute(&mut conn, MAX_AGE).unwrap();
    assert_eq!(first, second);
    assert_eq!(second, recount(&mut conn));
}
