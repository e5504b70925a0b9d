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

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Never panics; the result is trimmed, lowercased, without empty labels or
            /// duplicates, keeps first-seen order, and holds every input label once normalised.
            #[test]
            fn normalised_labels_are_trimmed_lowercased_and_unique(
                labels in proptest::collection::vec("[ \t]?(\\PC|[A-Za-z]){0,10}[ \t]?", 0..12),
            ) {
                let out = normalize(&labels);
                let mut seen = BTreeSet::new();
                for label in &out {
                    prop_assert!(!label.is_empty());
                    prop_assert_eq!(label, &label.trim().to_lowercase());
                    prop_assert!(seen.insert(label.clone()), "duplicate {:?}", label);
                }
                let expected: Vec<String> = labels
                    .iter()
                    .map(|label| label.trim().to_lowercase())
                    .filter(|label| !label.is_empty())
                    .collect();
                for label in &expected {
                    prop_assert!(out.contains(label), "{:?} lost", label);
                }
                let mut first_seen = expected.clone();
                let mut kept = BTreeSet::new();
                first_seen.retain(|label| kept.insert(label.clone()));
                prop_assert_eq!(&out, &first_seen);
                prop_assert_eq!(normalize(&out), out, "normalising twice changes nothing");
            }

            #[test]
            fn lists_never_panic_and_split_on_every_comma(list in ".{0,64}") {
                let labels = parse_list(&list);
                prop_assert!(labels.iter().all(|label| !label.contains(',')));
                prop_assert!(labels.len() <= list.matches(',').count() + 1);
            }
        }
    }
}
