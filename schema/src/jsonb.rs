//! What PostgreSQL's `jsonb` cannot hold, found in JSON text before it reaches the database:
//! U+0000 in a string or key ([`escapes_nul`]) and numbers beyond `numeric`'s scale
//! ([`overflows_numeric_scale`]). The planner's classifier uses them to dead-letter or to
//! rewrite a payload rather than have the database refuse a whole batch.

/// The most digits after the decimal point of PostgreSQL's `numeric`, which holds the numbers
/// of `jsonb`.
pub const NUMERIC_MAX_SCALE: u64 = 16_383;

/// Whether valid JSON text holds a number with more digits after the decimal point than
/// PostgreSQL's `numeric` keeps: `1e-16384`, `1.5e-16383`, or 16,384 written digits of
/// fraction. serde_json reads such a number (as 0 or the nearest float); `jsonb` refuses it
/// ("value overflows numeric format"). The scale is counted as PostgreSQL does: the fraction's
/// digits as written (trailing zeros included) minus the exponent.
pub fn overflows_numeric_scale(json: &[u8]) -> bool {
    // Such a number has a negative exponent or is longer than the limit: most bodies have
    // neither, and are not read further.
    let negative_exponent = [b"e-", b"E-"]
        .iter()
        .any(|needle| memchr::memmem::find(json, *needle).is_some());
    if !negative_exponent && json.len() <= NUMERIC_MAX_SCALE as usize {
        return false;
    }
    let digits = |from: usize| {
        json[from.min(json.len())..]
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count()
    };
    let mut at = 0;
    while at < json.len() {
        match json[at] {
            b'"' => {
                // A string (valid JSON: it ends): skip it, escapes included.
                at += 1;
                while at < json.len() && json[at] != b'"' {
                    at += if json[at] == b'\\' { 2 } else { 1 };
                }
                at += 1;
            }
            b'-' | b'0'..=b'9' => {
                at += usize::from(json[at] == b'-');
                at += digits(at);
                let mut fraction = 0u64;
                if json.get(at) == Some(&b'.') {
                    let count = digits(at + 1);
                    fraction = count as u64;
                    at += 1 + count;
                }
                let mut exponent = 0i64;
                if matches!(json.get(at), Some(b'e' | b'E')) {
                    at += 1;
                    let negative = json.get(at) == Some(&b'-');
                    at += usize::from(matches!(json.get(at), Some(b'-' | b'+')));
                    let count = digits(at);
                    exponent = json[at..at + count].iter().fold(0i64, |value, digit| {
                        value
                            .saturating_mul(10)
                            .saturating_add(i64::from(digit - b'0'))
                    });
                    if negative {
                        exponent = -exponent;
                    }
                    at += count;
                }
                let scale = i64::try_from(fraction)
                    .unwrap_or(i64::MAX)
                    .saturating_sub(exponent);
                if scale > NUMERIC_MAX_SCALE as i64 {
                    return true;
                }
            }
            _ => at += 1,
        }
    }
    false
}

/// Whether JSON text holds U+0000 in a string or a key. JSON can only write it as the escape
/// `\u0000` (a raw control character is not JSON), so the escapes are read in order: `\\`
/// followed by `u0000` is an escaped backslash, not U+0000.
pub fn escapes_nul(json: &[u8]) -> bool {
    let mut rest = json;
    while let Some(at) = rest.iter().position(|&byte| byte == b'\\') {
        let escape = &rest[at + 1..];
        if escape.starts_with(b"u0000") {
            return true;
        }
        // Skip the escaped character: `\\`, `\"`, `u` of `\uXXXX` (its digits are not `\\`).
        rest = escape.get(1..).unwrap_or_default();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limits as PostgreSQL 15 applies them (`'<number>'::jsonb`, checked by hand and by
    /// the consumer test `numbers_jsonb_cannot_hold_are_stored_as_read`).
    #[test]
    fn a_scale_beyond_numeric_s_is_found_outside_strings_only() {
        for (json, overflows) in [
            ("1e-16383", false),
            ("1e-16384", true),
            ("-1E-16384", true),
            ("1.5e-16382", false),
            ("1.5e-16383", true),
            ("1.0e-16383", true),
            ("100e-16385", true),
            ("1e-0016384", true),
            ("1e-99999999999999999999999999", true),
            ("1e+16384", false),
            ("[0.5, 1e-400, {\"a\": 2.5e-3}]", false),
            ("{\"note\": \"1e-16384\", \"x\": 1}", false),
            ("{\"a\\\"1e-99999\": 1}", false),
            ("{\"a\": [true, 1e-16384]}", true),
        ] {
            assert_eq!(
                overflows_numeric_scale(json.as_bytes()),
                overflows,
                "{json}"
            );
        }
        let digits = |count| format!("[0.{}]", "1".repeat(count));
        assert!(!overflows_numeric_scale(digits(16_383).as_bytes()));
        assert!(overflows_numeric_scale(digits(16_384).as_bytes()));
        let long_string = format!("{{\"a\": \"{}\", \"b\": 0.5}}", "e".repeat(20_000));
        assert!(!overflows_numeric_scale(long_string.as_bytes()));
    }

    #[test]
    fn only_an_escape_that_is_not_itself_escaped_is_u0000() {
        assert!(escapes_nul(br#"{"a":"x\u0000"}"#));
        assert!(escapes_nul(br#"{"\u0000":1}"#));
        assert!(escapes_nul(br#"{"a":"\\\u0000"}"#));
        assert!(!escapes_nul(br#"{"a":"\\u0000"}"#));
        assert!(!escapes_nul(br#"{"a":"\u0001","b":"\"u0000"}"#));
        assert!(!escapes_nul(br#"{"a":"u0000 \u0001"}"#));
        // A backslash at the very end (not JSON, but never a panic).
        assert!(!escapes_nul(b"\\"));
        assert!(escapes_nul(b"\\u0000"));
    }
}
