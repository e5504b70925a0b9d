//! Validation of names used in paths (flavors, tokens) and of platforms.

/// Longest name accepted.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a flavor or token name: 1 to 63 characters of `a-z`, `0-9`, `-`, `_`, `.`, and not `_`
/// alone (which the pressure API reserves for "every flavor").
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("must be at most 63 characters");
    }
    if name == "_" {
        return Err("`_` is reserved");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may only contain a-z, 0-9, '-', '_' and '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_usual_names() {
        for name in ["small", "x64-large_2.0", "a", &"a".repeat(63)] {
            assert_eq!(validate_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        for name in ["", "_", &"a".repeat(64), "Upper", "sp ace", "slash/", "ünï"] {
            assert!(validate_name(name).is_err(), "{name}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Never panics; accepts exactly 1-63 of `a-z 0-9 - _ .`, not `_` alone.
            #[test]
            fn accepts_exactly_the_documented_names(name in ".{0,80}") {
                let expected = !name.is_empty()
                    && name.len() <= MAX_NAME_LEN
                    && name != "_"
                    && name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.'));
                prop_assert_eq!(validate_name(&name).is_ok(), expected, "{:?}", name);
            }

            #[test]
            fn every_name_of_the_alphabet_is_accepted(name in "[a-z0-9._-]{1,63}") {
                prop_assume!(name != "_");
                prop_assert_eq!(validate_name(&name), Ok(()));
            }
        }
    }
}
