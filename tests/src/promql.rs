//! The PromQL in dashboards and alert rules, for the tests that check every metric and label
//! they use is one the services export: the selectors (metric names and label matchers) and
//! `by (...)` groupings of an expression, the `expr:` values of a rule file, and every
//! expression of the dashboards and rule files under some directories.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Keywords followed by a list of labels in parentheses: `by (job)`, `on (instance)`.
const LABEL_LIST_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Prometheus functions, aggregations and keywords other than [`LABEL_LIST_WORDS`]: words of a
/// PromQL expression that are not metric names.
const PROMQL_WORDS: &[&str] = &[
    "and",
    "or",
    "unless",
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

/// A label matcher of a selector: `label op "value"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub label: String,
    /// `=`, `!=`, `=~` or `!~`.
    pub op: String,
    pub value: String,
}

/// A metric selector: `name{matchers}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<Matcher>,
}

/// An aggregation's `by (labels)` and the metrics it aggregates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouping {
    pub labels: Vec<String>,
    pub metrics: BTreeSet<String>,
}

/// What a dashboard check needs of one expression.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expr {
    pub selectors: Vec<Selector>,
    pub groupings: Vec<Grouping>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// An identifier, and whether `(` follows it (a function call).
    Word(String, bool),
    Open,
    Close,
    /// The inside of `{...}`.
    Braces(String),
    Other,
}

/// Skips a quoted string starting at `chars[i]`; returns the index after it.
fn skip_string(chars: &[char], mut i: usize) -> usize {
    let quote = chars[i];
    i += 1;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

fn tokens(expr: &str) -> Vec<Token> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => {
                let start = i + 1;
                while i < chars.len() && chars[i] != '}' {
                    if "\"'`".contains(chars[i]) {
                        i = skip_string(&chars, i);
                    } else {
                        i += 1;
                    }
                }
                out.push(Token::Braces(
                    chars[start..i.min(chars.len())].iter().collect(),
                ));
                i += 1;
            }
            '[' => {
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
                i += 1;
                out.push(Token::Other);
            }
            '"' | '\'' | '`' => {
                i = skip_string(&chars, i);
                out.push(Token::Other);
            }
            '$' => {
                // A Grafana variable: `$name`, `${name}`, `$__rate_interval`.
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_{}:".contains(chars[i]))
                {
                    i += 1;
                }
                out.push(Token::Other);
            }
            '(' => {
                out.push(Token::Open);
                i += 1;
            }
            ')' => {
                out.push(Token::Close);
                i += 1;
            }
            c if c.is_ascii_digit() || c == '.' => {
                // Numbers and durations (`0.95`, `1e3`, `5m`).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                out.push(Token::Other);
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i]))
                {
                    i += 1;
                }
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let called = next < chars.len() && chars[next] == '(';
                out.push(Token::Word(chars[start..i].iter().collect(), called));
            }
            c if c.is_whitespace() => i += 1,
            _ => {
                out.push(Token::Other);
                i += 1;
            }
        }
    }
    out
}

/// The matchers inside `{...}`.
fn matchers(inside: &str) -> Vec<Matcher> {
    let chars: Vec<char> = inside.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        if start == i {
            return out;
        }
        let label: String = chars[start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let op_start = i;
        while i < chars.len() && "=!~".contains(chars[i]) {
            i += 1;
        }
        let op: String = chars[op_start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() || !"\"'`".contains(chars[i]) {
            return out;
        }
        let end = skip_string(&chars, i);
        let value: String = chars[i + 1..end.saturating_sub(1).max(i + 1)]
            .iter()
            .collect();
        i = end;
        out.push(Matcher { label, op, value });
    }
}

/// The index of the token that closes the group opened at `open`.
fn closing(tokens: &[Token], open: usize) -> usize {
    partner(tokens, open..tokens.len(), &Token::Open).unwrap_or(tokens.len())
}

/// The index of the token that opens the group closed at `close`.
fn opening(tokens: &[Token], close: usize) -> usize {
    partner(tokens, (0..=close).rev(), &Token::Close).unwrap_or(0)
}

/// Walking `indexes` from a parenthesis `deeper` (`Open` forwards, `Close` backwards), the
/// index of the parenthesis that balances it.
fn partner(
    tokens: &[Token],
    indexes: impl Iterator<Item = usize>,
    deeper: &Token,
) -> Option<usize> {
    let mut depth = 0;
    for index in indexes {
        match &tokens[index] {
            token @ (Token::Open | Token::Close) if token == deeper => depth += 1,
            Token::Open | Token::Close => {
                depth -= 1;
                if depth == 0 {
                    return Some(index);
                }
            }
            _ => {}
        }
    }
    None
}

/// The selectors and `by` groupings of `expr`. Identifiers inside label matchers, ranges and
/// strings, function and aggregation names, keywords, label lists and Grafana variables are
/// not metrics.
pub fn parse(expr: &str) -> Expr {
    let tokens = tokens(expr);
    // Token index of each selector, to find the ones an aggregation reads.
    let mut found: Vec<(usize, Selector)> = Vec::new();
    let mut groupings: Vec<(Vec<String>, usize, usize)> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Word(word, called) => {
                let lower = word.to_ascii_lowercase();
                if LABEL_LIST_WORDS.contains(&lower.as_str()) {
                    let Some(Token::Open) = tokens.get(i + 1) else {
                        i += 1;
                        continue;
                    };
                    let close = closing(&tokens, i + 1);
                    let labels: Vec<String> = tokens[i + 1..close]
                        .iter()
                        .filter_map(|t| match t {
                            Token::Word(label, _) => Some(label.clone()),
                            _ => None,
                        })
                        .collect();
                    if lower == "by" {
                        // `sum by (l) (body)`, or `sum (body) by (l)`.
                        let scope = if let Some(Token::Open) = tokens.get(close + 1) {
                            Some((close + 1, closing(&tokens, close + 1)))
                        } else if i > 0 && tokens[i - 1] == Token::Close {
                            Some((opening(&tokens, i - 1), i - 1))
                        } else {
                            None
                        };
                        if let Some((from, to)) = scope {
                            groupings.push((labels, from, to));
                        }
                    }
                    i = close + 1;
                    continue;
                }
                if !called && !PROMQL_WORDS.contains(&lower.as_str()) {
                    let matchers = match tokens.get(i + 1) {
                        Some(Token::Braces(inside)) => matchers(inside),
                        _ => Vec::new(),
                    };
                    found.push((
                        i,
                        Selector {
                            metric: word.clone(),
                            matchers,
                        },
                    ));
                }
            }
            Token::Braces(_) | Token::Open | Token::Close | Token::Other => {}
        }
        i += 1;
    }
    Expr {
        groupings: groupings
            .into_iter()
            .map(|(labels, from, to)| Grouping {
                labels,
                metrics: found
                    .iter()
                    .filter(|(at, _)| (from..=to).contains(at))
                    .map(|(_, selector)| selector.metric.clone())
                    .collect(),
            })
            .collect(),
        selectors: found.into_iter().map(|(_, selector)| selector).collect(),
    }
}

/// The metric names `expr` uses.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    parse(expr)
        .selectors
        .into_iter()
        .map(|selector| selector.metric)
        .collect()
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

/// Every expression of the one dashboard at `path`, with the file it comes from.
pub fn dashboard(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let dashboard: Value = serde_json::from_str(&text).expect("a dashboard is JSON");
    let mut out = Vec::new();
    walk(&dashboard, &path.display().to_string(), &mut out);
    out
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

    #[test]
    fn selectors_and_groupings_are_read() {
        let expr = parse(
            r#"histogram_quantile(0.95, sum by(le, http_route) (rate(h_bucket{http_route!="",code!~"2..", j=~"$x"}[5m])))
               or sum(increase(c_total{repo="a/b"}[1h])) by (repo) / sum(other)"#,
        );
        assert_eq!(
            expr.selectors[0].matchers,
            vec![
                Matcher {
                    label: "http_route".into(),
                    op: "!=".into(),
                    value: "".into()
                },
                Matcher {
                    label: "code".into(),
                    op: "!~".into(),
                    value: "2..".into()
                },
                Matcher {
                    label: "j".into(),
                    op: "=~".into(),
                    value: "$x".into()
                },
            ]
        );
        assert_eq!(
            expr.groupings,
            vec![
                Grouping {
                    labels: vec!["le".into(), "http_route".into()],
                    metrics: ["h_bucket".to_owned()].into(),
                },
                Grouping {
                    labels: vec!["repo".into()],
                    metrics: ["c_total".to_owned()].into(),
                },
            ]
        );
    }
}
