//! Label normalisation: GitHub labels are case-insensitive, so every label is stored lowercased.

use std::collections::BTreeSet;

/// Trims and lowercases labels, drops empty ones and later duplicates, keeps the first order.
pub fn normalize<I, S>(labels: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut seen = BTreeSet::new();
    labels
        .into_iter()
        .map(|label| label.as_ref().trim().to_lowercase())
        .filter(|label| !label.is_empty() && seen.insert(label.clone()))
        .collect()
}

/// Splits a comma-separated list (`APP_IGNORED_LABELS`, `?labels=`) and normalises it.
pub fn parse_list(list: &str) -> Vec<String> {
    normalize(list.split(','))
}

/// Labels that never take part in matching (`APP_IGNORED_LABELS`, default `self-hosted,linux`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredLabels(BTreeSet<String>);

impl IgnoredLabels {
    /// From any labels; they are normalised.
    pub fn new<I, S>(labels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self(normalize(labels).into_iter().collect())
    }

    /// The labels of `labels` (already normalised) that take part in matching.
    pub fn matching_labels(&self, labels: &[String]) -> Vec<String> {
        labels
            .iter()
            .filter(|label| !self.0.contains(label.as_str()))
            .cloned()
            .collect()
    }

    /// The ignored labels, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

impl Default for IgnoredLabels {
    fn default() -> Self {
        Self::new(["self-hosted", "linux"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_lowercases_trims_and_dedupes_in_order() {
        assert_eq!(
            normalize(["Self-Hosted", " X64 ", "", "x64", "GPU"]),
            ["self-hosted", "x64", "gpu"]
        );
    }

    #[test]
    fn parse_list_splits_on_commas() {
        assert_eq!(parse_list("a, B,,c"), ["a", "b", "c"]);
        assert!(parse_list("").is_empty());
    }

    #[test]
    fn ignored_labels_are_removed_from_matching() {
        let ignored = IgnoredLabels::default();
        let labels = normalize(["self-hosted", "Linux", "large"]);
        assert_eq!(ignored.matching_labels(&labels), ["large"]);
        assert_eq!(ignored.iter().collect::<Vec<_>>(), ["linux", "self-hosted"]);
    }
}
