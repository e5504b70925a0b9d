//! `planner report waiting-p80` (the binary) against a database of known jobs: the exact CSV.

use std::time::Duration;

use tests::db::{execute, TestDb};
use tests::process::Service;

/// Jobs of both flavors around three days, with the waits (seconds) the report must see:
/// 2026-05-01 small: 0 (a negative wait, clamped), 10, 20, 30, 40, 300; 2026-05-02 small: 60,
/// large: 100 to 140 (P80 132: between the 4th and 5th); 2026-05-03 small: 7 (started on the stroke of midnight). Not counted: a
/// job without a flavor, one not started, and ones that started just outside the days.
fn fill(db: &TestDb) {
    let mut conn = db.connect();
    let mut id = 0;
    let mut job = |started: &str, wait: i64, flavor: Option<&str>| {
        id += 1;
        let started = if started.is_empty() {
            "NULL".to_owned()
        } else {
            format!("'{started}'::timestamptz")
        };
        let created = if started == "NULL" {
            "'2026-05-01T10:00:00Z'::timestamptz".to_owned()
        } else {
            format!("{started} - interval '{wait} seconds'")
        };
        let flavor = flavor.map_or("NULL".to_owned(), |f| format!("'{f}'"));
        execute(
            &mut conn,
            &format!(
                "INSERT INTO job (platform, id, labels, status, repository, created_at, \
                 started_at, assigned_flavor) \
                 VALUES ('github', {id}, '{{x64}}', 'in_progress', 'o/r', {created}, {started}, \
                 {flavor})"
            ),
        );
    };
    let day1 = "2026-05-01T12:00:00Z";
    for wait in [10, 20, 30, 40, 300, -10] {
        job(day1, wait, Some("small"));
    }
    job(day1, 50, None);
    job("", 0, Some("small"));
    job("2026-05-02T01:00:00Z", 60, Some("small"));
    for wait in [100, 110, 120, 130, 140] {
        job("2026-05-02T23:59:59Z", wait, Some("large"));
    }
    job("2026-05-03T00:00:00Z", 7, Some("small"));
    job("2026-04-30T23:59:59Z", 1, Some("small"));
    job("2026-05-04T00:00:00Z", 1, Some("small"));
}

/// Runs the report with `args` (and `-o` a file of its own); the CSV it wrote.
async fn report(db: &TestDb, args: &[&str]) -> String {
    let path = std::env::temp_dir().join(format!("{}.csv", tests::unique("waiting-p80")));
    let path_text = path.to_str().expect("UTF-8 temporary path").to_owned();
    let args = [&["report", "waiting-p80"][..], args, &["-o", &path_text]].concat();
    let service = Service::spawn(
        "planner",
        &args,
        &[("POSTGRESQL_DB_CONNECT_STRING", db.url())],
    );
    let (status, log) = service.finish(Duration::from_secs(60)).await;
    assert!(status.success(), "planner report failed:\n{log}");
    let csv = std::fs::read_to_string(&path).expect("the report file");
    std::fs::remove_file(&path).expect("remove the report file");
    csv
}

#[actix_rt::test]
async fn waiting_p80_is_the_daily_p80_of_owned_started_jobs_as_canonicals_csv() {
    let db = TestDb::new();
    fill(&db);
    assert_eq!(
        report(&db, &["-from", "2026-05-01", "-to", "2026-05-03"]).await,
        "day,platform,p80_seconds,sample_count\n\
         2026-05-01,github,40,6\n\
         2026-05-02,github,130,6\n\
         2026-05-03,github,7,1\n"
    );
    assert_eq!(
        report(
            &db,
            &["--from", "2026-05-02", "--to", "2026-05-03", "--per-flavor"]
        )
        .await,
        "day,platform,flavor,p80_seconds,sample_count\n\
         2026-05-02,github,large,132,5\n\
         2026-05-02,github,small,60,1\n\
         2026-05-03,github,small,7,1\n"
    );
    assert_eq!(
        report(
            &db,
            &["--from", "2026-06-01", "--to", "2026-06-02", "--no-header"]
        )
        .await,
        "",
        "days without started jobs have no row"
    );
}
