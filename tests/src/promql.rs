//! The PromQL in dashboards and alert rules, for the tests that check every metric they use is
//! one the services export: the metric names of an expression, the `expr:` values of a rule
//! file, and every expression of the dashboards and rule files under some directories.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Prometheus functions, aggregations and keywords: words of a PromQL expression that are not
/// metric names.
const PROMQL_WORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "atan2",
    // Aggregations, which may be followed by `by (...)` rather than `(`.
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
];

/// Series Prometheus makes itself for every target; dashboards may use them.
pub const PROMETHEUS_SERIES: &[&str] = &["up", "scrape_duration_seconds", "ALERTS"];

/// The metric names a PromQL expression uses: identifiers that are not inside a label
/// matcher `{...}`, a range `[...]` or a string, not followed by `(` (functions and
/// aggregations), not after `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` (label
/// lists), not keywords, and not Grafana variables (`$name`).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut label_list = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    if chars[i] == '"' || chars[i] == '\'' || chars[i] == '`' {
                        let quote = chars[i];
                        i += 1;
                        while i < chars.len() && chars[i] != quote {
                            i += if chars[i] == '\\' { 2 } else { 1 };
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '$' => {
                // A Grafana variable: `$name`, `${name}`, `$__rate_interval`.
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_{}:".contains(chars[i]))
                {
                    i += 1;
                }
            }
            '(' => {
                i += 1;
                if label_list {
                    while i < chars.len() && chars[i] != ')' {
                        i += 1;
                    }
                    i += 1;
                    label_list = false;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // Numbers and durations (`0.95`, `1e3`, `5m`).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i]))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let called = next < chars.len() && chars[next] == '(';
                let lower = word.to_ascii_lowercase();
                if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&lower.as_str())
                {
                    label_list = true;
                } else if !called && !PROMQL_WORDS.contains(&lower.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The `expr:` values of a Prometheus rule file: inline, or a `>`/`|` block of the lines
/// indented deeper than the key.
pub fn rule_expressions(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if !value.starts_with('>') && !value.starts_with('|') {
            out.push(value.trim_matches(|c| c == '"' || c == '\'').to_owned());
            continue;
        }
        let indent = line.len() - trimmed.len();
        let block: Vec<&str> = lines[index + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .map(|l| l.trim())
            .collect();
        out.push(block.join(" "));
    }
    out
}

/// What [`Expressions::under`] found.
pub struct Expressions {
    /// Grafana dashboards read.
    pub dashboards: usize,
    /// Rule files read.
    pub rule_files: usize,
    /// Every expression, with the file it comes from.
    pub expressions: Vec<(String, String)>,
}

impl Expressions {
    /// The expressions of every `grafana_dashboards/*.json` (panel targets, rows' panels,
    /// templating queries) and `prometheus_alert_rules/*` under each of `dirs`.
    pub fn under(dirs: &[PathBuf]) -> Self {
        let mut found = Self {
            dashboards: 0,
            rule_files: 0,
            expressions: Vec::new(),
        };
        for dir in dirs {
            found.read(dir);
        }
        found
    }

    fn read(&mut self, dir: &Path) {
        for entry in std::fs::read_dir(dir.join("grafana_dashboards"))
            .into_iter()
            .flatten()
        {
            let path = entry.expect("entry").path();
            let dashboard: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            self.dashboards += 1;
            walk(
                &dashboard,
                &path.display().to_string(),
                &mut self.expressions,
            );
        }
        for entry in std::fs::read_dir(dir.join("prometheus_alert_rules"))
            .into_iter()
            .flatten()
        {
            let path = entry.expect("entry").path();
            self.rule_files += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            let rules = rule_expressions(&text);
            let alerts = text.matches("- alert:").count() + text.matches("- record:").count();
            assert_eq!(
                rules.len(),
                alerts,
                "{}: an expr was not read",
                path.display()
            );
            self.expressions
                .extend(rules.into_iter().map(|e| (path.display().to_string(), e)));
        }
    }
}

fn walk(value: &Value, from: &str, out: &mut Vec<(String, String)>) {
    match value {
        // A data source variable's `query` is the data source's type, not PromQL.
        Value::Object(map) if map.get("type") == Some(&Value::from("datasource")) => {}
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => out.push((from.to_owned(), expr.clone())),
                    // Templating: `label_values(selector, label)` or PromQL.
                    ("query", Value::String(query)) => {
                        if let Some(selector) = label_values_selector(query) {
                            out.extend(selector.map(|s| (from.to_owned(), s.to_owned())));
                        } else {
                            out.push((from.to_owned(), query.clone()));
                        }
                    }
                    _ => walk(value, from, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| walk(v, from, out)),
        _ => {}
    }
}

/// Grafana's `label_values(selector, label)`: `Some(Some(selector))`; `label_values(label)`:
/// `Some(None)` (no metric); anything else: `None`.
fn label_values_selector(query: &str) -> Option<Option<&str>> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    Some(inner.rsplit_once(',').map(|(selector, _)| selector.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promql_metric_names_leave_out_functions_labels_and_variables() {
        let names = metric_names(
            r#"histogram_quantile(0.95, sum by (le, flavor) (rate(a_bucket{flavor=~"x|y", b="}"}[$__rate_interval])))
               / on() group_left(reason) sum without (instance) (b_total offset 5m) > bool 3
               or absent(c) and sum(d{x="1"}) by (job) unless up"#,
        );
        let expected: BTreeSet<String> = ["a_bucket", "b_total", "c", "d", "up"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn label_values_give_their_selector_only() {
        assert_eq!(
            label_values_selector("label_values(a_total{x=\"1\"}, flavor)"),
            Some(Some("a_total{x=\"1\"}"))
        );
        assert_eq!(label_values_selector("label_values(flavor)"), Some(None));
        assert_eq!(label_values_selector("sum(a_total)"), None);
    }
}
