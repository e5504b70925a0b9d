//! Logging for every service: `log` records with key-values, written to standard error by
//! `env_logger` (its `kv` feature), one line a record:
//!
//! ```text
//! [2026-12-01T09:30:41Z WARN  gateway::routes::webhook] webhook rejected event=webhook_rejected delivery.id=8a1c reason=bad_signature status=403
//! ```
//!
//! A call site names its fields, never formats them into the message:
//! `log::warn!(event = "webhook_rejected", "delivery.id" = id, status = 403; "webhook rejected")`
//! (a dotted key is a string literal). [`init`] renders each field as `key=value`, in the
//! order written, and quotes a value (Rust's string escaping) when it holds anything but
//! printable ASCII without `"`, `=` or `\`, so a value from outside cannot break a line or
//! forge a field. The field names are listed in `docs/logging.md`.

use std::io::{self, Write};

use log::kv::{Error, Key, Source, Value, VisitSource};

/// Installs `env_logger` as the process's logger, levels from `RUST_LOG`: by default `info`,
/// without lapin's internal span chatter.
pub fn init() {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,tracing::span=warn,lapin=warn"),
    )
    .format_key_values(|out, fields| write_fields(out, fields))
    .init();
}

/// Writes `fields` as ` key=value` pairs, quoting values as the module doc says.
fn write_fields(out: &mut dyn Write, fields: &dyn Source) -> io::Result<()> {
    struct Pairs<'a>(&'a mut dyn Write);

    impl<'kvs> VisitSource<'kvs> for Pairs<'_> {
        fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), Error> {
            let value = value.to_string();
            if needs_quotes(&value) {
                write!(self.0, " {key}={value:?}")?;
            } else {
                write!(self.0, " {key}={value}")?;
            }
            Ok(())
        }
    }

    fields
        .visit(&mut Pairs(out))
        .map_err(|err| io::Error::other(err.to_string()))
}

/// Whether `value` must be quoted to stay one word of one line.
fn needs_quotes(value: &str) -> bool {
    value.is_empty()
        || !value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'=' | b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(fields: &dyn Source) -> String {
        let mut out = Vec::new();
        write_fields(&mut out, fields).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn plain_values_are_written_as_they_are_in_the_order_given() {
        let fields = [
            ("event", Value::from("consumer_started")),
            ("job.id", Value::from(42_i64)),
            ("queue", Value::from("github-workflow-jobs")),
            ("path", Value::from("/repos/o/r/actions/jobs/1")),
        ];
        assert_eq!(
            render(&fields.as_slice()),
            " event=consumer_started job.id=42 queue=github-workflow-jobs \
             path=/repos/o/r/actions/jobs/1"
        );
    }

    #[test]
    fn values_that_could_break_a_line_or_forge_a_field_are_quoted() {
        let fields = [
            ("error", Value::from("connection refused")),
            ("delivery.id", Value::from("x event=forged\nnext line")),
            ("reason", Value::from("a\"b")),
            ("name", Value::from("")),
            ("problem", Value::from("naïve")),
            ("path", Value::from("C:\\dir")),
        ];
        assert_eq!(
            render(&fields.as_slice()),
            r#" error="connection refused" delivery.id="x event=forged\nnext line" reason="a\"b" name="" problem="naïve" path="C:\\dir""#
        );
    }

    #[test]
    fn displayed_and_debugged_values_are_quoted_by_the_same_rule() {
        let err = io::Error::other("broker gone");
        let wait = std::time::Duration::from_millis(1500);
        let fields = [
            ("error", Value::from_display(&err)),
            ("retry_in", Value::from_debug(&wait)),
        ];
        assert_eq!(
            render(&fields.as_slice()),
            r#" error="broker gone" retry_in=1.5s"#
        );
    }
}
