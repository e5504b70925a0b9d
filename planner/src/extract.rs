//! Request extractors whose errors are deliberate: a JSON body ([`JsonBody`]) and a query string
//! ([`QueryParams`]). A 400 names the field at fault and never repeats what the client sent.
//!
//! Both defer their errors to the handler, which asks for them once the credentials have been
//! checked. actix-web resolves a handler's extractors concurrently, and the token check waits
//! for PostgreSQL, so an extractor that failed at once would answer before it: a caller without
//! a valid token would get a 400 or 415 instead of the 401, and would have its body read. With
//! these, credentials come first, always, and an unauthenticated body is never read.

use std::{
    collections::HashSet,
    marker::PhantomData,
    sync::{LazyLock, Mutex},
    time::Duration,
};

use actix_web::{body, dev::Payload, http::header, web, FromRequest, HttpRequest};
use futures::future::{ready, Ready};
use serde::de::DeserializeOwned;
use serde_path_to_error::{Path, Segment};

use crate::{
    error::{without_input, ApiError},
    state::AppState,
};

/// Largest JSON body accepted, in bytes.
pub const MAX_BODY: usize = 16 * 1024;

/// A JSON body, read by [`JsonBody::read`] (in the handler, after the credentials). Unlike
/// `web::Json`, every failure has its own answer: a `Content-Type` other than `application/json`
/// is a 415, a body over [`MAX_BODY`] a 413, a body that does not arrive within
/// `APP_REQUEST_TIMEOUT` a 408, an incomplete one a 400, and a deserialisation error a 400 saying
/// which field (`labels[2]: invalid type, expected a string ...`).
pub struct JsonBody<T> {
    is_json: bool,
    declared: Option<usize>,
    timeout: Option<Duration>,
    payload: Payload,
    body: PhantomData<T>,
}

impl<T> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<usize>().ok());
        let timeout = req
            .app_data::<web::Data<AppState>>()
            .map(|state| state.request_timeout);
        ready(Ok(Self {
            is_json,
            declared,
            timeout,
            payload: payload.take(),
            body: PhantomData,
        }))
    }
}

impl<T: DeserializeOwned> JsonBody<T> {
    /// Reads and deserialises the body.
    pub async fn read(self) -> Result<T, ApiError> {
        if !self.is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        if self.declared.is_some_and(|length| length > MAX_BODY) {
            return Err(ApiError::TooLarge(MAX_BODY));
        }
        let timeout = self
            .timeout
            .ok_or_else(|| ApiError::Internal("no application state".into()))?;
        let read = body::to_bytes_limited(body::BodyStream::new(self.payload), MAX_BODY);
        let bytes = tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| ApiError::BodyTimeout(timeout))?
            // Over the limit while reading (a chunked body has no length to check first).
            .map_err(|_| ApiError::TooLarge(MAX_BODY))?
            // The connection ended (or broke) before the whole body arrived.
            .map_err(|_| ApiError::field("body", "incomplete or unreadable"))?;
        from_json(&bytes)
    }
}

/// Deserialises a JSON body; an error names the field at fault, without the client's input.
/// Fields the body's type does not have are ignored, as Canonical's planner (Go's JSON decoder)
/// ignores them, and each such field name is logged the first time it is seen
/// ([`IGNORED_FIELDS`]). A type with `#[serde(deny_unknown_fields)]` refuses them instead.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every body of this API is an object; serde would also read an array into a struct, field
    // by field, which Canonical's planner (Go's decoder) refuses.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let message = match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Err(err) => without_input(&err.to_string()),
            Ok(_) => "invalid type, expected a JSON object".to_owned(),
        };
        return Err(ApiError::field("body", message));
    }
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let mut ignored: Vec<String> = Vec::new();
    let mut note = |path: serde_ignored::Path<'_>| ignored.push(path.to_string());
    let deserializer = serde_ignored::Deserializer::new(&mut json, &mut note);
    let value = serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let message = without_input(&err.inner().to_string());
        ApiError::field(
            &field_name(err.path(), message.starts_with("unknown field")),
            message,
        )
    })?;
    json.end().map_err(|err| ApiError::field("body", err))?;
    log_ignored::<T>(Ignored::BodyField, ignored);
    Ok(value)
}

/// What a client sent that a route does not have.
#[derive(Debug, Clone, Copy)]
enum Ignored {
    BodyField,
    QueryParameter,
}

/// Logs each name in `ignored` the first time this process sees it ([`IGNORED_FIELDS`]), with
/// the request type `T` it was sent for.
fn log_ignored<T>(kind: Ignored, ignored: Vec<String>) {
    for field in ignored {
        let field = IgnoredFields::printable(&field);
        if !IGNORED_FIELDS.first_time(field) {
            continue;
        }
        let body = std::any::type_name::<T>()
            .rsplit("::")
            .next()
            .unwrap_or("request");
        match kind {
            Ignored::BodyField => log::warn!(
                event = "body_field_ignored",
                field,
                body;
                "a request body field the route does not have is ignored"
            ),
            Ignored::QueryParameter => log::warn!(
                event = "query_parameter_ignored",
                field,
                query = body;
                "a query parameter the route does not have is ignored"
            ),
        }
    }
}

/// The names of ignored body fields logged so far in this process: each is logged once, not per
/// request.
pub static IGNORED_FIELDS: LazyLock<IgnoredFields> = LazyLock::new(IgnoredFields::default);

/// A bounded set of ignored field names: a client sending a new name with every request makes
/// at most [`IgnoredFields::CAPACITY`] log lines, then none.
#[derive(Debug, Default)]
pub struct IgnoredFields(Mutex<HashSet<String>>);

impl IgnoredFields {
    /// Most names remembered (and logged).
    pub const CAPACITY: usize = 64;

    /// What to log for a field name the client chose: the name when it reads as the names of
    /// this API do (1 to 32 of `[a-z0-9_.]`, `.` between the keys of nested objects), else a
    /// placeholder. A log line never carries a body (`docs/logging.md`): a name of another
    /// shape is the client's data (a token pasted as a key, a marker), not a misspelt field,
    /// and so is one that starts like an admin token.
    pub fn printable(field: &str) -> &str {
        let plain = (1..=32).contains(&field.len())
            && !field.starts_with("planner_v")
            && field
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
        if plain {
            field
        } else {
            "(not a plain name)"
        }
    }

    /// Whether `field` is seen for the first time (and there is room to remember it).
    pub fn first_time(&self, field: &str) -> bool {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.contains(field) || seen.len() >= Self::CAPACITY {
            return false;
        }
        seen.insert(field.to_owned())
    }
}

/// The field a deserialisation error is about, as `labels[2]`; `body` for the whole body or an
/// unknown place (a syntax error). For an unknown field the path ends with the client's key,
/// which is left out: the error is about the object that has it.
fn field_name(path: &Path, unknown_field: bool) -> String {
    let mut segments: Vec<&Segment> = path.iter().collect();
    if unknown_field {
        segments.pop();
    }
    let mut name = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => name.push_str(&format!("[{index}]")),
            Segment::Map { key } => push_key(&mut name, key),
            Segment::Enum { variant } => push_key(&mut name, variant),
            Segment::Unknown => return "body".to_owned(),
        }
    }
    if name.is_empty() {
        "body".to_owned()
    } else {
        name
    }
}

fn push_key(name: &mut String, key: &str) {
    if !name.is_empty() {
        name.push('.');
    }
    name.push_str(key);
}

/// The query string, parsed; [`QueryParams::get`] (in the handler, after the credentials) gives
/// it or the error. Unlike `web::Query`, a query string that is not UTF-8 once percent-decoded is
/// a 400 (rather than decoded with replacement characters), and errors do not repeat what was
/// sent.
#[derive(Debug)]
pub struct QueryParams<T>(Result<T, ApiError>);

impl<T> QueryParams<T> {
    /// The parameters, or the 400.
    pub fn get(self) -> Result<T, ApiError> {
        self.0
    }
}

impl<T: DeserializeOwned> FromRequest for QueryParams<T> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(QueryParams(parse_query(req.query_string()))))
    }
}

/// Parses a query string (`a=1&b=2`). Parameters the type does not have are ignored, as
/// Canonical's planner ignores every query parameter, and each name is logged once (as a body's
/// unknown fields are); a type with `#[serde(deny_unknown_fields)]` refuses them instead.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    if !percent_decodes_to_utf8(query) {
        return Err(ApiError::field("query", "not UTF-8 once percent-decoded"));
    }
    let mut ignored: Vec<String> = Vec::new();
    let parameters = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    let value = serde_ignored::deserialize(parameters, |path| ignored.push(path.to_string()))
        .map_err(|err| ApiError::field("query", without_input(&err.to_string())))?;
    log_ignored::<T>(Ignored::QueryParameter, ignored);
    Ok(value)
}

/// Whether `text` is UTF-8 after `%XX` decoding (a `%` not followed by two hex digits stays as
/// it is, as form decoding does; `+`, which form decoding turns into a space, cannot make it
/// invalid).
fn percent_decodes_to_utf8(text: &str) -> bool {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only deserialised")]
    struct Body {
        name: String,
        labels: Vec<String>,
    }

    fn error(json: &str) -> String {
        from_json::<Body>(json.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn json_errors_name_the_field_and_never_repeat_the_input() {
        let secret = "planner_v0_SECRETSECRETSECRET1";
        for (json, field) in [
            (format!(r#"{{"name": 1, "labels": ["{secret}"]}}"#), "name:"),
            (
                format!(r#"{{"name": "x", "labels": ["a", {{"{secret}": 1}}]}}"#),
                "labels[1]:",
            ),
            (
                format!(r#"{{"name": "x", "labels": [], "{secret}": 1}}"#),
                "body: unknown field",
            ),
            (
                format!(r#"{{"name": "x", "labels": "{secret}"}}"#),
                "labels:",
            ),
            (
                format!(r#"{{"name": "x", "labels": []}} "{secret}""#),
                "body:",
            ),
            (
                format!(r#"[{{"{secret}": 1}}]"#),
                "body: invalid type, expected a JSON object",
            ),
            (format!(r#"["{secret}"#), "body: EOF"),
            (format!(r#"{{"name": "{secret}""#), "body:"),
        ] {
            let message = error(&json);
            assert!(message.starts_with(field), "{json}: {message}");
            assert!(!message.contains("SECRET"), "{json}: {message}");
        }
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Lenient {
        name: String,
    }

    #[test]
    fn unknown_fields_are_ignored_unless_the_type_refuses_them() {
        let body: Lenient =
            from_json(br#"{"colour": "red", "name": "x", "size": {"a": 1}}"#).unwrap();
        assert_eq!(body, Lenient { name: "x".into() });
        // Values of the known fields are checked as before.
        let err = from_json::<Lenient>(br#"{"colour": "red", "name": 1}"#).unwrap_err();
        assert!(err.to_string().starts_with("name:"), "{err}");
        assert!(error(r#"{"name": "x", "labels": [], "colour": 1}"#).contains("unknown field"));
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Query {
        limit: Option<String>,
    }

    #[test]
    fn unknown_query_parameters_are_ignored_and_known_ones_checked() {
        let query: Query = parse_query("colour=red&limit=5&_=1").unwrap();
        assert_eq!(
            query,
            Query {
                limit: Some("5".into())
            }
        );
        let err = parse_query::<Query>("limit=1&limit=2").unwrap_err();
        assert!(err.to_string().contains("duplicate field `limit`"), "{err}");
        let err = parse_query::<Query>("limit=%FF").unwrap_err();
        assert!(err.to_string().starts_with("query: not UTF-8"), "{err}");
    }

    #[test]
    fn ignored_fields_are_remembered_once_and_boundedly() {
        let fields = IgnoredFields::default();
        assert!(fields.first_time("colour"));
        assert!(!fields.first_time("colour"), "logged once, not per request");
        for n in 1..IgnoredFields::CAPACITY {
            assert!(fields.first_time(&format!("f{n}")));
        }
        assert!(!fields.first_time("one-too-many"));
        assert_eq!(IgnoredFields::printable("colour"), "colour");
        assert_eq!(IgnoredFields::printable("size.max_1"), "size.max_1");
        for odd in [
            "",
            "a b",
            "x\nlevel=error",
            &"a".repeat(33),
            "é",
            "Colour",
            "BODYMARKER-0123",
            "labels[2]",
            "planner_v0_abcdefghij0123456789",
        ] {
            assert_eq!(IgnoredFields::printable(odd), "(not a plain name)", "{odd}");
        }
    }

    #[test]
    fn query_strings_must_decode_to_utf8() {
        let parsed: HashMap<String, String> = parse_query("a=%C3%A9t%C3%A9&b=x+y&c=100%").unwrap();
        assert_eq!(parsed["a"], "été");
        assert_eq!(parsed["b"], "x y");
        assert_eq!(parsed["c"], "100%");
        for bad in ["a=%FF", "a=%C3", "%FF=1", "a=1&b=%ed%a0%80"] {
            let err = parse_query::<HashMap<String, String>>(bad).unwrap_err();
            assert!(err.to_string().contains("UTF-8"), "{bad}: {err}");
        }
    }
}
