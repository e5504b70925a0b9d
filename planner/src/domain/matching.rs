//! Flavor matching: an enabled flavor whose labels contain all of the job's (matching) labels;
//! highest priority wins; ties go to the flavor with less pressure, then to the first name.

use std::collections::BTreeSet;

/// What matching needs to know about a flavor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlavorSpec {
    pub name: String,
    pub labels: Vec<String>,
    pub priority: i32,
    pub is_disabled: bool,
    pub minimum_pressure: i32,
}

/// The job labels a flavor lacks, in the job's order (empty: the flavor can run the job).
pub fn missing_labels(job_labels: &[String], flavor_labels: &[String]) -> Vec<String> {
    let offered: BTreeSet<&str> = flavor_labels.iter().map(String::as_str).collect();
    job_labels
        .iter()
        .filter(|label| !offered.contains(label.as_str()))
        .cloned()
        .collect()
}

/// The enabled flavors that can run a job with `job_labels` and share the highest priority.
pub fn top_candidates<'a>(job_labels: &[String], flavors: &'a [FlavorSpec]) -> Vec<&'a FlavorSpec> {
    let eligible: Vec<&FlavorSpec> = flavors
        .iter()
        .filter(|flavor| {
            !flavor.is_disabled && missing_labels(job_labels, &flavor.labels).is_empty()
        })
        .collect();
    let Some(best) = eligible.iter().map(|flavor| flavor.priority).max() else {
        return Vec::new();
    };
    eligible
        .into_iter()
        .filter(|flavor| flavor.priority == best)
        .collect()
}

/// Picks the flavor for a job. `pressure` is asked only when several flavors tie on priority,
/// and only about those; it returns each one's current pressure (missing: 0).
pub fn select_flavor<E>(
    job_labels: &[String],
    flavors: &[FlavorSpec],
    pressure: impl FnOnce(&[&FlavorSpec]) -> Result<Vec<(String, i64)>, E>,
) -> Result<Option<String>, E> {
    let candidates = top_candidates(job_labels, flavors);
    match candidates.as_slice() {
        [] => Ok(None),
        [only] => Ok(Some(only.name.clone())),
        tied => {
            let pressures = pressure(tied)?;
            let pressure_of = |name: &str| {
                pressures
                    .iter()
                    .find(|(candidate, _)| candidate == name)
                    .map_or(0, |(_, value)| *value)
            };
            Ok(tied
                .iter()
                .min_by(|a, b| {
                    pressure_of(&a.name)
                        .cmp(&pressure_of(&b.name))
                        .then_with(|| a.name.cmp(&b.name))
                })
                .map(|flavor| flavor.name.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flavor(name: &str, labels: &[&str], priority: i32) -> FlavorSpec {
        FlavorSpec {
            name: name.to_owned(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            priority,
            is_disabled: false,
            minimum_pressure: 0,
        }
    }

    fn labels(labels: &[&str]) -> Vec<String> {
        labels.iter().map(|l| (*l).to_owned()).collect()
    }

    fn no_pressure(_: &[&FlavorSpec]) -> Result<Vec<(String, i64)>, ()> {
        Ok(Vec::new())
    }

    #[test]
    fn flavor_must_offer_every_label() {
        let flavors = [
            flavor("small", &["x64"], 1),
            flavor("large", &["x64", "large"], 1),
        ];
        assert_eq!(
            select_flavor(&labels(&["x64", "large"]), &flavors, no_pressure),
            Ok(Some("large".into()))
        );
        assert_eq!(
            select_flavor(&labels(&["arm64"]), &flavors, no_pressure),
            Ok(None)
        );
        assert_eq!(
            missing_labels(&labels(&["x64", "gpu", "arm"]), &flavors[0].labels),
            ["gpu", "arm"]
        );
    }

    #[test]
    fn highest_priority_wins_and_disabled_flavors_never_match() {
        let mut flavors = vec![flavor("low", &["x64"], 1), flavor("high", &["x64"], 5)];
        assert_eq!(
            select_flavor(&labels(&["x64"]), &flavors, no_pressure),
            Ok(Some("high".into()))
        );
        flavors[1].is_disabled = true;
        assert_eq!(
            select_flavor(&labels(&["x64"]), &flavors, no_pressure),
            Ok(Some("low".into()))
        );
    }

    #[test]
    fn ties_go_to_less_pressure_then_name() {
        let flavors = [
            flavor("b", &["x64"], 1),
            flavor("a", &["x64"], 1),
            flavor("c", &["x64"], 0),
        ];
        let asked = std::cell::RefCell::new(Vec::new());
        let chosen = select_flavor(&labels(&["x64"]), &flavors, |tied| {
            asked.replace(tied.iter().map(|f| f.name.clone()).collect());
            Ok::<_, ()>(vec![("a".into(), 3), ("b".into(), 1)])
        });
        assert_eq!(chosen, Ok(Some("b".into())));
        assert_eq!(asked.into_inner(), ["b", "a"]);
        assert_eq!(
            select_flavor(&labels(&["x64"]), &flavors, no_pressure),
            Ok(Some("a".into()))
        );
    }

    #[test]
    fn pressure_is_not_asked_without_a_tie() {
        let flavors = [flavor("only", &[], 1)];
        let chosen = select_flavor(&[], &flavors, |_| Err("asked"));
        assert_eq!(chosen, Ok(Some("only".into())));
    }
}
