//! `planner report waiting-p80`: the daily P80 of queue waiting time as CSV, read from the
//! planner's database (the same report, columns and options as Canonical's
//! `waiting-p80-report`, so scripts and cron lines written for it keep working).
//!
//! Columns: `day,platform,p80_seconds,sample_count` (with `--per-flavor`:
//! `day,platform,flavor,p80_seconds,sample_count`). What is counted: see
//! [`schema::reports::daily_waiting_p80`].

use std::{io::Write, path::PathBuf};

use chrono::{NaiveDate, TimeZone, Utc};
use diesel::PgConnection;
use schema::reports::{daily_waiting_p80, DailyWaitingP80};

/// Usage of `planner report waiting-p80`.
pub const USAGE: &str = "usage: planner report waiting-p80 --from YYYY-MM-DD [--to YYYY-MM-DD] \
[-o PATH] [--no-header] [--per-flavor] [-v]  (the database: POSTGRESQL_DB_CONNECT_STRING)";

/// Options of `planner report waiting-p80`. Flags are written `--name value`, `--name=value`,
/// or with one dash as Canonical's tool takes them (`-from 2026-05-01`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingP80Options {
    /// `--from`: first day (UTC), included. Required.
    pub from: NaiveDate,
    /// `--to`: last day (UTC), included; default today (UTC).
    pub to: NaiveDate,
    /// `-o`/`--output`: where to write the CSV; default standard output.
    pub output: Option<PathBuf>,
    /// Without `--no-header`, the first line names the columns.
    pub header: bool,
    /// `--per-flavor`: one row per day, platform and flavor (a `flavor` column after
    /// `platform`) instead of per day and platform.
    pub per_flavor: bool,
    /// `-v`/`--verbose`: the number of rows on standard error.
    pub verbose: bool,
}

/// A bad command line: what is wrong, naming the option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}\n{USAGE}")]
pub struct UsageError(pub String);

impl WaitingP80Options {
    /// Parses the arguments after `waiting-p80`; `today` is the default of `--to`.
    pub fn parse(args: &[&str], today: NaiveDate) -> Result<Self, UsageError> {
        let mut from = None;
        let mut to = None;
        let mut options = Self {
            from: today,
            to: today,
            output: None,
            header: true,
            per_flavor: false,
            verbose: false,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let flag = arg
                .strip_prefix("--")
                .or_else(|| arg.strip_prefix('-'))
                .ok_or_else(|| UsageError(format!("unexpected argument {arg:?}")))?;
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (flag, None),
            };
            let mut value = |name: &str| -> Result<String, UsageError> {
                match inline {
                    Some(value) => Ok(value.to_owned()),
                    None => args
                        .next()
                        .map(|value| (*value).to_owned())
                        .ok_or_else(|| UsageError(format!("--{name} needs a value"))),
                }
            };
            let no_value = |name: &str| match inline {
                Some(_) => Err(UsageError(format!("--{name} takes no value"))),
                None => Ok(()),
            };
            match name {
                "from" => from = Some(date("from", &value("from")?)?),
                "to" => to = Some(date("to", &value("to")?)?),
                "o" | "output" => options.output = Some(PathBuf::from(value(name)?)),
                "no-header" => {
                    no_value(name)?;
                    options.header = false;
                }
                "per-flavor" => {
                    no_value(name)?;
                    options.per_flavor = true;
                }
                "v" | "verbose" => {
                    no_value(name)?;
                    options.verbose = true;
                }
                "dsn" => {
                    return Err(UsageError(
                        "--dsn is not taken: a connection string holds a password, and command \
                         lines are visible to every user of the host; set \
                         POSTGRESQL_DB_CONNECT_STRING instead"
                            .into(),
                    ))
                }
                _ => return Err(UsageError(format!("unknown option {arg:?}"))),
            }
        }
        options.from = from.ok_or_else(|| UsageError("--from (YYYY-MM-DD) is required".into()))?;
        options.to = to.unwrap_or(today);
        if options.to < options.from {
            return Err(UsageError(format!(
                "--to ({}) is before --from ({})",
                options.to, options.from
            )));
        }
        Ok(options)
    }
}

fn date(name: &str, value: &str) -> Result<NaiveDate, UsageError> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| UsageError(format!("--{name} {value:?} is not a date YYYY-MM-DD")))
}

/// The report's rows: the jobs that started from `from` 00:00 UTC to the end of `to`.
pub fn rows(
    conn: &mut PgConnection,
    options: &WaitingP80Options,
) -> diesel::QueryResult<Vec<DailyWaitingP80>> {
    let start = |day: NaiveDate| Utc.from_utc_datetime(&day.and_time(chrono::NaiveTime::MIN));
    let end = options
        .to
        .succ_opt()
        .map_or(chrono::DateTime::<Utc>::MAX_UTC, start);
    daily_waiting_p80(conn, start(options.from), end, options.per_flavor)
}

/// Writes `rows` as CSV (with the header line when `header`). The P80 is written in the
/// shortest decimal form that reads back as the same number (`92`, `210.5`), as Canonical's.
pub fn write_csv<W: Write>(
    out: W,
    rows: &[DailyWaitingP80],
    header: bool,
    per_flavor: bool,
) -> csv::Result<()> {
    let mut writer = csv::Writer::from_writer(out);
    if header {
        if per_flavor {
            writer.write_record(["day", "platform", "flavor", "p80_seconds", "sample_count"])?;
        } else {
            writer.write_record(["day", "platform", "p80_seconds", "sample_count"])?;
        }
    }
    for row in rows {
        let p80 = row.p80_seconds.to_string();
        let count = row.sample_count.to_string();
        if per_flavor {
            let flavor = row.flavor.as_deref().unwrap_or_default();
            writer.write_record([&row.day, &row.platform, flavor, &p80, &count])?;
        } else {
            writer.write_record([&row.day, &row.platform, &p80, &count])?;
        }
    }
    writer.flush()?;
    Ok(())
}

/// Runs the report through `pool` and writes it where `options` say.
pub fn run(pool: &crate::store::PgPool, options: &WaitingP80Options) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut conn = pool.get()?;
    let rows = rows(&mut conn, options).context("reading the jobs for the waiting-p80 report")?;
    if options.verbose {
        eprintln!("retrieved {} rows", rows.len());
    }
    match &options.output {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create the output file {}", path.display()))?;
            write_csv(file, &rows, options.header, options.per_flavor)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        None => write_csv(
            std::io::stdout().lock(),
            &rows,
            options.header,
            options.per_flavor,
        )
        .context("writing the report to standard output")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn options_as_canonical_spells_them_and_ours() {
        let today = day("2026-06-30");
        let canonical = WaitingP80Options::parse(
            &[
                "-from",
                "2026-05-01",
                "-to",
                "2026-05-31",
                "-o",
                "p80.csv",
                "-no-header",
            ],
            today,
        )
        .unwrap();
        let ours = WaitingP80Options::parse(
            &[
                "--from=2026-05-01",
                "--to",
                "2026-05-31",
                "--output=p80.csv",
                "--no-header",
            ],
            today,
        )
        .unwrap();
        assert_eq!(canonical, ours);
        assert_eq!(canonical.from, day("2026-05-01"));
        assert_eq!(canonical.to, day("2026-05-31"));
        assert_eq!(canonical.output, Some(PathBuf::from("p80.csv")));
        assert!(!canonical.header && !canonical.per_flavor);

        let defaults = WaitingP80Options::parse(&["--from", "2026-06-01"], today).unwrap();
        assert_eq!(defaults.to, today);
        assert!(defaults.header && defaults.output.is_none());
        // One day: `--to` equal to `--from`.
        assert!(WaitingP80Options::parse(&["--from", "2026-06-30"], today).is_ok());
    }

    #[test]
    fn bad_options_name_the_option() {
        let today = day("2026-06-30");
        for (args, needle) in [
            (&[][..], "--from (YYYY-MM-DD) is required"),
            (&["--from", "2026-13-01"][..], "--from \"2026-13-01\""),
            (&["--from"][..], "--from needs a value"),
            (
                &["--from", "2026-06-02", "--to", "2026-06-01"][..],
                "--to (2026-06-01) is before",
            ),
            (&["--from", "2026-06-01", "--to", "x"][..], "--to \"x\""),
            (
                &["--from", "2026-06-01", "--bogus"][..],
                "unknown option \"--bogus\"",
            ),
            (
                &["--from", "2026-06-01", "stray"][..],
                "unexpected argument \"stray\"",
            ),
            (
                &["--no-header=yes", "--from", "2026-06-01"][..],
                "--no-header takes no value",
            ),
            (
                &["-dsn", "postgres://u:secret@h/db"][..],
                "POSTGRESQL_DB_CONNECT_STRING",
            ),
        ] {
            let err = WaitingP80Options::parse(args, today)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }

    fn row(day: &str, flavor: &str, p80: f64, count: i64) -> DailyWaitingP80 {
        DailyWaitingP80 {
            day: day.into(),
            platform: "github".into(),
            flavor: Some(flavor.into()),
            p80_seconds: p80,
            sample_count: count,
        }
    }

    #[test]
    fn csv_as_canonical_writes_it() {
        let rows = [
            row("2026-05-01", "small", 210.5, 42),
            row("2026-05-02", "small", 0.0, 1),
            row("2026-05-03", "a,b", 92.0, 5),
        ];
        let mut out = Vec::new();
        write_csv(&mut out, &rows, true, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "day,platform,p80_seconds,sample_count\n2026-05-01,github,210.5,42\n\
             2026-05-02,github,0,1\n2026-05-03,github,92,5\n"
        );
        let mut out = Vec::new();
        write_csv(&mut out, &rows[2..], false, true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-05-03,github,\"a,b\",92,5\n"
        );
        let mut out = Vec::new();
        write_csv(&mut out, &[], true, true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "day,platform,flavor,p80_seconds,sample_count\n"
        );
    }
}
