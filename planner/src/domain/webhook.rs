//! Classification of one AMQP delivery from the gateway: a job event to apply, something to
//! acknowledge and discard, or a poison message for the dead-letter queue.

use actors::delivery::{JobId, WORKFLOW_JOB};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{
    job::{JobEvent, JobState, Status},
    labels::normalize,
};

/// The platform of every job that comes through GitHub webhooks.
pub const GITHUB: &str = "github";

/// The label a job must have for the planner to care about it.
pub const SELF_HOSTED: &str = "self-hosted";

/// The AMQP headers the gateway copies from the webhook request (the shared message contract).
pub use actors::delivery::Headers;

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Classified {
    /// A `workflow_job` event of a self-hosted job: apply it, then acknowledge.
    Apply {
        delivery: String,
        event: Box<JobEvent>,
    },
    /// Not for the planner: acknowledge and count.
    Discard(&'static str),
}

/// Why a delivery is poison (rejected without requeue, so it lands in the dead-letter queue).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Poison {
    #[error("missing X-GitHub-Event header")]
    MissingEvent,
    #[error("missing X-GitHub-Delivery header")]
    MissingDelivery,
    #[error("body is not JSON: {0}")]
    InvalidJson(String),
    #[error("workflow_job without {0}")]
    MissingField(&'static str),
    #[error("workflow_job with an invalid {0}")]
    InvalidField(&'static str),
}

/// Classifies one delivery. Never panics, whatever the bytes.
///
/// Only the fields the planner keeps are read ([`Outline`]); the rest of the body (most of its
/// 8 to 13 KB: the repository's URLs, the sender, ...) is checked to be JSON and skipped
/// without being built, and the body itself is kept as it came.
pub fn classify(headers: &Headers, body: &[u8]) -> Result<Classified, Poison> {
    let event_name = headers.event.as_deref().ok_or(Poison::MissingEvent)?;
    let outline = match serde_json::from_slice::<FromObject<Outline>>(body) {
        Ok(FromObject(outline)) => {
            // The outline skipped what it does not read without looking into it (escapes,
            // numbers, nesting): read all of it as the general case would, without building
            // it, so that what the general case refuses (a lone surrogate, a number out of
            // f64's range, nesting deeper than 128) is refused here too. What serde_json reads
            // but PostgreSQL's text cannot hold (U+0000) is poison when the event is built.
            serde_json::from_slice::<Checked>(body)
                .map_err(|err| Poison::InvalidJson(err.to_string()))?;
            outline
        }
        // Not JSON, or not the usual shape (a body that is not an object, a `workflow_job`
        // that is not one, a key given twice): read it as any JSON value, the general case.
        Err(_) => Outline::general(body)?,
    };
    decide(event_name, headers, body, outline)
}

/// What to do with a delivery of `event_name` whose body (`body`) reads as `outline`.
fn decide(
    event_name: &str,
    headers: &Headers,
    body: &[u8],
    outline: Outline,
) -> Result<Classified, Poison> {
    if event_name != WORKFLOW_JOB {
        return Ok(Classified::Discard("not a workflow_job event"));
    }
    let Some(action) = outline
        .action
        .as_ref()
        .and_then(Value::as_str)
        .and_then(|action| action.parse::<Status>().ok())
    else {
        return Ok(Classified::Discard("workflow_job action not handled"));
    };
    let delivery = headers
        .delivery
        .clone()
        .filter(|delivery| !delivery.is_empty())
        .ok_or(Poison::MissingDelivery)?;

    let FromObject(job) = outline
        .workflow_job
        .ok_or(Poison::MissingField("workflow_job"))?;
    let JobId(id) = job
        .id
        .as_ref()
        .ok_or(Poison::MissingField("id"))
        .and_then(|id| JobId::from_json(id).ok_or(Poison::InvalidField("id")))?;
    let created_at = timestamp(job.created_at.as_ref(), "created_at")?
        .ok_or(Poison::MissingField("created_at"))?;
    let repository = outline
        .repository
        .and_then(|FromObject(repository)| repository.full_name)
        .and_then(|name| match name {
            Value::String(name) if !name.is_empty() => Some(name),
            _ => None,
        })
        .ok_or(Poison::MissingField("repository"))?;
    let labels = match &job.labels {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(labels)) => normalize(
            labels
                .iter()
                .map(|label| label.as_str().ok_or(Poison::InvalidField("labels")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(Poison::InvalidField("labels")),
    };
    if !labels.iter().any(|label| label == SELF_HOSTED) {
        return Ok(Classified::Discard("not a self-hosted job"));
    }
    // PostgreSQL's text cannot hold U+0000: the job's fields could not be stored. (GitHub
    // does not send it; the whole body is refused, whichever field holds it.)
    if escapes_nul(body) {
        return Err(Poison::InvalidField("payload (contains U+0000)"));
    }

    let started = action.rank() >= Status::InProgress.rank();
    let completed = action == Status::Completed;
    let event = JobEvent {
        job: JobState {
            platform: GITHUB.to_owned(),
            id,
            status: action,
            labels,
            repository,
            run_id: job.run_id.as_ref().and_then(Value::as_i64),
            run_attempt: job.run_attempt.as_ref().and_then(Value::as_i64),
            workflow_name: string(job.workflow_name),
            job_name: string(job.name),
            runner_name: string(job.runner_name).filter(|_| started),
            conclusion: string(job.conclusion).filter(|_| completed),
            created_at,
            started_at: if started {
                timestamp(job.started_at.as_ref(), "started_at")?
            } else {
                None
            },
            completed_at: if completed {
                timestamp(job.completed_at.as_ref(), "completed_at")?
            } else {
                None
            },
        },
        payload: stored_payload(body)?,
    };
    Ok(Classified::Apply {
        delivery,
        event: Box::new(event),
    })
}

/// The fields of a webhook body the planner reads. A field absent from the body is `None`; one
/// present holds its value, `null` included (`Some(Value::Null)`), so "missing" and "invalid"
/// stay apart.
#[derive(Debug, Default, serde::Deserialize)]
struct Outline {
    #[serde(default, deserialize_with = "present")]
    action: Option<Value>,
    #[serde(default)]
    workflow_job: Option<FromObject<JobOutline>>,
    #[serde(default)]
    repository: Option<FromObject<RepositoryOutline>>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct JobOutline {
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    created_at: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    labels: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    run_id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    run_attempt: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    workflow_name: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    name: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    runner_name: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    conclusion: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    started_at: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    completed_at: Option<Value>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct RepositoryOutline {
    #[serde(default, deserialize_with = "present")]
    full_name: Option<Value>,
}

/// `T` read only from a JSON object: a derived struct would also read an array, field by field,
/// where the general case finds no fields at all.
#[derive(Debug)]
struct FromObject<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for FromObject<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(Object(std::marker::PhantomData))
            .map(FromObject)
    }
}

/// Any JSON value, read in full and dropped: strings (escapes and UTF-8), numbers and nesting
/// are checked exactly as reading a `serde_json::Value` checks them (the same parser, the same
/// recursion limit), but nothing is built.
struct Checked;

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Checked)
    }
}

impl<'de> serde::de::Visitor<'de> for Checked {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// A field that is present: its value, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    <Value as serde::Deserialize>::deserialize(deserializer).map(Some)
}

impl Outline {
    /// The outline of any JSON text, read as a whole value first (the general case).
    fn general(body: &[u8]) -> Result<Self, Poison> {
        serde_json::from_slice::<Value>(body)
            .map(|value| Self::of(&value))
            .map_err(|err| Poison::InvalidJson(err.to_string()))
    }

    /// The outline of any JSON value: what [`classify`] reads of bodies of unusual shape. A
    /// `workflow_job` or `repository` that is not an object counts as absent; with a key given
    /// twice, the last one counts (as everywhere in `serde_json`).
    fn of(body: &Value) -> Self {
        let field = |object: &Value, name: &str| object.get(name).cloned();
        Self {
            action: field(body, "action"),
            workflow_job: body
                .get("workflow_job")
                .filter(|job| job.is_object())
                .map(|job| {
                    FromObject(JobOutline {
                        id: field(job, "id"),
                        created_at: field(job, "created_at"),
                        labels: field(job, "labels"),
                        run_id: field(job, "run_id"),
                        run_attempt: field(job, "run_attempt"),
                        workflow_name: field(job, "workflow_name"),
                        name: field(job, "name"),
                        runner_name: field(job, "runner_name"),
                        conclusion: field(job, "conclusion"),
                        started_at: field(job, "started_at"),
                        completed_at: field(job, "completed_at"),
                    })
                }),
            repository: body
                .get("repository")
                .filter(|repository| repository.is_object())
                .map(|repository| {
                    FromObject(RepositoryOutline {
                        full_name: field(repository, "full_name"),
                    })
                }),
        }
    }
}

fn string(value: Option<Value>) -> Option<String> {
    match value {
        Some(Value::String(text)) => Some(text),
        _ => None,
    }
}

fn timestamp(value: Option<&Value>, field: &'static str) -> Result<Option<DateTime<Utc>>, Poison> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(text)
            .map(|at| Some(at.with_timezone(&Utc)))
            .map_err(|_| Poison::InvalidField(field)),
        Some(_) => Err(Poison::InvalidField(field)),
    }
}

/// The payload to store for `body` (valid JSON): the body exactly as it came.
fn stored_payload(body: &[u8]) -> Result<std::sync::Arc<str>, Poison> {
    // Valid JSON is valid UTF-8.
    Ok(std::str::from_utf8(body)
        .map_err(|err| Poison::InvalidJson(err.to_string()))?
        .into())
}

/// Whether JSON text holds U+0000 in a string or a key. JSON can only write it as the escape
/// `\u0000` (a raw control character is not JSON), so the escapes are read in order: `\\`
/// followed by `u0000` is an escaped backslash, not U+0000.
fn escapes_nul(json: &[u8]) -> bool {
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

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/../tests/fixtures/workflow_job/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn self_hosted(mut body: Value) -> Value {
        body["workflow_job"]["labels"] = serde_json::json!(["self-hosted", "Linux", "X64"]);
        body
    }

    fn headers() -> Headers {
        Headers {
            event: Some("workflow_job".into()),
            delivery: Some("d-1".into()),
        }
    }

    fn classify_value(body: &Value) -> Result<Classified, Poison> {
        classify(&headers(), &serde_json::to_vec(body).unwrap())
    }

    #[test]
    fn completed_fixture_becomes_an_event() {
        let body = self_hosted(fixture("completed.0"));
        let Ok(Classified::Apply { delivery, event }) = classify_value(&body) else {
            panic!("not applied");
        };
        assert_eq!(delivery, "d-1");
        assert_eq!(event.job.id, 289_782_451);
        assert_eq!(event.action(), Status::Completed);
        assert_eq!(event.job.labels, ["self-hosted", "linux", "x64"]);
        assert_eq!(event.job.repository, "Codertocat/Hello-World");
        assert_eq!(event.job.conclusion.as_deref(), Some("failure"));
        assert!(event.job.completed_at.is_some() && event.job.started_at.is_some());
        assert_eq!(serde_json::from_str::<Value>(&event.payload).unwrap(), body);
    }

    #[test]
    fn waiting_fixture_is_self_hosted_already() {
        let Ok(Classified::Apply { event, .. }) = classify_value(&fixture("waiting.0")) else {
            panic!("not applied");
        };
        assert_eq!(event.action(), Status::Waiting);
        assert_eq!(event.job.labels, ["self-hosted", "k8s"]);
        assert_eq!(event.job.started_at, None);
    }

    #[test]
    fn github_hosted_jobs_and_other_events_are_discarded() {
        assert_eq!(
            classify_value(&fixture("queued.0")),
            Ok(Classified::Discard("not a self-hosted job"))
        );
        let ping = std::fs::read(format!(
            "{}/../tests/fixtures/ping.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let ping_headers = Headers {
            event: Some("ping".into()),
            delivery: Some("p".into()),
        };
        assert_eq!(
            classify(&ping_headers, &ping),
            Ok(Classified::Discard("not a workflow_job event"))
        );
        let mut body = self_hosted(fixture("queued.0"));
        body["action"] = "requested".into();
        assert_eq!(
            classify_value(&body),
            Ok(Classified::Discard("workflow_job action not handled"))
        );
    }

    #[test]
    fn the_body_is_stored_byte_for_byte_whatever_its_numbers() {
        let body = self_hosted(fixture("queued.1"));
        let mut text = serde_json::to_string(&body).unwrap();
        text.insert_str(1, r#""extra" :  [1e-20000, 12345678901234567890123], "#);
        let Ok(Classified::Apply { event, .. }) = classify(&headers(), text.as_bytes()) else {
            panic!("not applied");
        };
        assert_eq!(&*event.payload, text);
    }

    #[test]
    fn what_postgresql_would_refuse_in_a_field_not_read_is_poison_too() {
        let body = serde_json::to_string(&self_hosted(fixture("queued.0"))).unwrap();
        let with = |extra: &str| format!(r#"{{"extra":{extra},{}"#, &body[1..]).into_bytes();
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        // Not UTF-8: the byte 0xFF inside a string.
        let mut not_utf8 = with(r#""x""#);
        let x = not_utf8.iter().position(|&byte| byte == b'x').unwrap();
        not_utf8[x] = 0xff;
        let cases: [Vec<u8>; 5] = [
            with(r#""\ud800""#),
            with("1e400"),
            with(&deep),
            not_utf8,
            with(r#""\uZZZZ""#),
        ];
        for (n, case) in cases.iter().enumerate() {
            let outcome = classify(&headers(), case);
            assert!(
                matches!(outcome, Err(Poison::InvalidJson(_))),
                "case {n}: {outcome:?}"
            );
            let general =
                Outline::general(case).and_then(|o| decide("workflow_job", &headers(), case, o));
            assert_eq!(outcome, general, "case {n}");
        }
        // The same body without them is applied.
        assert!(matches!(
            classify(&headers(), &with("[1,2]")),
            Ok(Classified::Apply { .. })
        ));
    }

    #[test]
    fn unusual_shapes_are_read_as_whole_values() {
        // A key given twice: the last one counts.
        let mut body = serde_json::to_string(&self_hosted(fixture("queued.0"))).unwrap();
        body.insert_str(1, r#""action":"completed","#);
        let Ok(Classified::Apply { event, .. }) = classify(&headers(), body.as_bytes()) else {
            panic!("not applied");
        };
        assert_eq!(event.action(), Status::Queued);
        // A body that is not an object has no action, even when its items would make a job
        // read field by field.
        let array = br#"["queued",{"id":1,"created_at":"2024-01-01T00:00:00Z",
            "labels":["self-hosted"]},{"full_name":"o/r"}]"#;
        assert_eq!(
            classify(&headers(), array),
            Ok(Classified::Discard("workflow_job action not handled"))
        );
        // A workflow_job that is not an object is missing.
        assert_eq!(
            classify(
                &headers(),
                br#"{"action":"queued","workflow_job":[1,"2024-01-01T00:00:00Z"]}"#
            ),
            Err(Poison::MissingField("workflow_job"))
        );
        // null is a value: an id that is null is invalid, not missing.
        assert_eq!(
            classify(
                &headers(),
                br#"{"action":"queued","workflow_job":{"id":null}}"#
            ),
            Err(Poison::InvalidField("id"))
        );
    }

    /// The id rule is the shared contract's (`actors::delivery::JobId`): an id the gateway
    /// refuses with 400 is poison here, one it forwards is applied.
    #[test]
    fn job_ids_follow_the_shared_contract() {
        let body = fixture("queued.0");
        use serde_json::json;
        for id in [json!(i64::MAX), json!(-1), json!(0)] {
            let mut job = self_hosted(body.clone());
            job["workflow_job"]["id"] = id.clone();
            let expected = JobId::from_json(&id).unwrap().0;
            match classify_value(&job) {
                Ok(Classified::Apply { event, .. }) => assert_eq!(event.job.id, expected),
                other => panic!("{id}: {other:?}"),
            }
        }
        for id in [
            json!(i64::MAX as u64 + 1),
            json!(u64::MAX),
            json!(1.5),
            json!("1"),
        ] {
            assert!(JobId::from_json(&id).is_none(), "{id}");
            let mut job = self_hosted(body.clone());
            job["workflow_job"]["id"] = id.clone();
            assert_eq!(
                classify_value(&job),
                Err(Poison::InvalidField("id")),
                "{id}"
            );
        }
    }

    #[test]
    fn poison_messages() {
        let no_event = Headers {
            event: None,
            ..headers()
        };
        assert_eq!(classify(&no_event, b"{}"), Err(Poison::MissingEvent));
        assert!(matches!(
            classify(&headers(), b"{not json"),
            Err(Poison::InvalidJson(_))
        ));
        // The in_progress.0 fixture has no created_at.
        assert_eq!(
            classify_value(&self_hosted(fixture("in_progress.0"))),
            Err(Poison::MissingField("created_at"))
        );
        for (pointer, field) in [("id", "id"), ("created_at", "created_at")] {
            let mut body = self_hosted(fixture("queued.0"));
            body["workflow_job"]
                .as_object_mut()
                .unwrap()
                .remove(pointer);
            assert_eq!(classify_value(&body), Err(Poison::MissingField(field)));
        }
        let mut body = self_hosted(fixture("queued.0"));
        body.as_object_mut().unwrap().remove("repository");
        assert_eq!(
            classify_value(&body),
            Err(Poison::MissingField("repository"))
        );
        let no_delivery = Headers {
            delivery: None,
            ..headers()
        };
        let bytes = serde_json::to_vec(&self_hosted(fixture("queued.0"))).unwrap();
        assert_eq!(classify(&no_delivery, &bytes), Err(Poison::MissingDelivery));
        let mut body = self_hosted(fixture("queued.0"));
        body["workflow_job"]["name"] = "nul\u{0}".into();
        assert!(matches!(
            classify_value(&body),
            Err(Poison::InvalidField(_))
        ));
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

/// Property tests: `classify` never panics, whatever the headers and bytes, and what it accepts
/// is what the body says.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    /// Any JSON value: nulls, booleans, integers and floats of every size, strings of any
    /// characters (U+0000 included), nested arrays and objects.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,16}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// Objects with some of `keys`, each holding any JSON value, or a plausible one.
    fn object_of(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
        let value = prop_oneof![
            any_json(),
            Just(Value::from("2024-01-01T00:00:00Z")),
            Just(serde_json::json!(["self-hosted", "X64"])),
            Just(Value::from("o/r")),
        ];
        proptest::collection::btree_map(prop::sample::select(keys), value, 0..keys.len()).prop_map(
            |map| Value::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
        )
    }

    fn any_headers() -> impl Strategy<Value = Headers> {
        let event = prop_oneof![
            12 => Just(Some("workflow_job".to_owned())),
            1 => Just(None),
            1 => Just(Some("ping".to_owned())),
            1 => proptest::option::of(".{0,16}"),
        ];
        let delivery = prop_oneof![
            12 => "[0-9a-f-]{1,36}".prop_map(Some),
            1 => Just(None),
            1 => Just(Some(String::new())),
        ];
        (event, delivery).prop_map(|(event, delivery)| Headers { event, delivery })
    }

    /// A field of a generated body: its JSON text (`None`: the key is left out) and whether it
    /// is a valid value of that field.
    type Field = (Option<String>, bool);

    fn valid(text: impl Into<String>) -> Field {
        (Some(text.into()), true)
    }

    fn invalid(text: impl Into<String>) -> Field {
        (Some(text.into()), false)
    }

    fn json_text(value: Value) -> String {
        value.to_string()
    }

    fn action() -> impl Strategy<Value = Field> {
        prop_oneof![
            12 => prop::sample::select(&["queued", "waiting", "in_progress", "completed"][..])
                .prop_map(|action| valid(format!("\"{action}\""))),
            1 => prop::sample::select(&["requested", "QUEUED", "", "completed "][..])
                .prop_map(|action| invalid(format!("\"{action}\""))),
            1 => any_json().prop_map(|value| invalid(json_text(value))),
            1 => Just((None, false)),
        ]
    }

    /// Ids of every shape: any i64, integers past i64 and u64, floats, exponents (some out of
    /// f64's range, which is not JSON serde accepts), strings, anything.
    fn id() -> impl Strategy<Value = Field> {
        prop_oneof![
            12 => any::<i64>().prop_map(|id| valid(id.to_string())),
            1 => "[1-9][0-9]{19,40}".prop_map(invalid),
            1 => "-?[0-9]{1,5}\\.[0-9]{1,3}".prop_map(invalid),
            1 => "-?[1-9]e[0-9]{1,3}".prop_map(invalid),
            1 => "\"[0-9]{1,5}\"".prop_map(invalid),
            1 => any_json().prop_map(|value| {
                let ok = value.is_i64();
                (Some(json_text(value)), ok)
            }),
            1 => Just((None, false)),
        ]
    }

    /// Labels: mixed case, spaces around, duplicates, with or without `self-hosted`; or not a
    /// list of strings at all.
    fn labels() -> impl Strategy<Value = Field> {
        let label =
            "[ ]?(self-hosted|SELF-HOSTED|Self-Hosted|x64|X64|Linux|[a-zA-Z0-9 _.-]{0,12})[ ]?";
        prop_oneof![
            12 => proptest::collection::vec(label, 1..6).prop_map(|labels| {
                let ok = labels.iter().any(|l| l.trim().eq_ignore_ascii_case(SELF_HOSTED));
                (Some(json_text(labels.into())), ok)
            }),
            1 => any_json().prop_map(|value| invalid(json_text(value))),
            1 => Just((None, false)),
        ]
    }

    fn timestamp(required: bool) -> impl Strategy<Value = Field> {
        prop_oneof![
            12 => (0i64..4_000_000_000).prop_map(|at| {
                let at = DateTime::from_timestamp(at, 0).unwrap();
                valid(format!("\"{}\"", at.to_rfc3339()))
            }),
            1 => ".{0,24}".prop_map(|text| invalid(json_text(text.into()))),
            1 => any_json().prop_map(move |value| {
                let ok = value.is_null() && !required;
                (Some(json_text(value)), ok)
            }),
            1 => Just((None, !required)),
        ]
    }

    fn repository() -> impl Strategy<Value = Field> {
        prop_oneof![
            12 => "[a-zA-Z0-9-]{1,10}/[a-zA-Z0-9._-]{1,10}"
                .prop_map(|name| valid(json_text(serde_json::json!({"full_name": name})))),
            1 => any_json().prop_map(|value| {
                let ok = value["full_name"].as_str().is_some_and(|name| !name.is_empty());
                (Some(json_text(value)), ok)
            }),
            1 => Just((None, false)),
        ]
    }

    /// A `workflow_job` body built from fields of every shape, as text, and whether every field
    /// is valid (then, with a delivery id, `classify` must accept it).
    fn workflow_job() -> impl Strategy<Value = (String, bool)> {
        (
            action(),
            id(),
            labels(),
            timestamp(true),
            timestamp(false),
            repository(),
            any_json(),
        )
            .prop_map(
                |(action, id, labels, created, started, repository, extra)| {
                    let object = |fields: Vec<(&str, Option<String>)>| {
                        let fields: Vec<String> = fields
                            .into_iter()
                            .filter_map(|(key, text)| text.map(|text| format!("\"{key}\":{text}")))
                            .collect();
                        format!("{{{}}}", fields.join(","))
                    };
                    let all_valid =
                        action.1 && id.1 && labels.1 && created.1 && started.1 && repository.1;
                    let job = object(vec![
                        ("id", id.0),
                        ("labels", labels.0),
                        ("created_at", created.0),
                        ("started_at", started.0),
                        ("completed_at", Some("null".into())),
                        ("name", Some("\"build\"".into())),
                    ]);
                    let body = object(vec![
                        ("action", action.0),
                        ("workflow_job", Some(job)),
                        ("repository", repository.0),
                        ("extra", Some(json_text(extra))),
                    ]);
                    (body, all_valid)
                },
            )
    }

    /// What must hold of any classification of `body` under `headers`.
    fn check(headers: &Headers, body: &[u8]) -> Result<(), TestCaseError> {
        let outcome = classify(headers, body);
        // Reading only the outline decides exactly as reading the whole value would.
        if let Some(event) = headers.event.as_deref() {
            let general = Outline::general(body).and_then(|o| decide(event, headers, body, o));
            prop_assert_eq!(&outcome, &general);
        }
        let Some(event_name) = &headers.event else {
            prop_assert_eq!(outcome, Err(Poison::MissingEvent));
            return Ok(());
        };
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            prop_assert!(matches!(outcome, Err(Poison::InvalidJson(_))));
            return Ok(());
        };
        if event_name != WORKFLOW_JOB {
            prop_assert_eq!(outcome, Ok(Classified::Discard("not a workflow_job event")));
            return Ok(());
        }
        if let Ok(Classified::Apply { delivery, event }) = outcome {
            prop_assert_eq!(Some(&delivery), headers.delivery.as_ref());
            prop_assert!(!delivery.is_empty());
            let job = &value["workflow_job"];
            prop_assert_eq!(Some(event.job.id), job["id"].as_i64());
            prop_assert_eq!(Some(event.action().as_str()), value["action"].as_str());
            prop_assert_eq!(
                Some(event.job.repository.as_str()),
                value["repository"]["full_name"].as_str()
            );
            let sent: Vec<&str> = job["labels"]
                .as_array()
                .map(|labels| labels.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            prop_assert_eq!(&event.job.labels, &normalize(&sent));
            for label in &event.job.labels {
                prop_assert_eq!(label, &label.trim().to_lowercase());
            }
            prop_assert!(event.job.labels.iter().any(|label| label == SELF_HOSTED));
            let created = DateTime::parse_from_rfc3339(job["created_at"].as_str().unwrap_or(""))
                .map(|at| at.with_timezone(&Utc));
            prop_assert_eq!(Ok(event.job.created_at), created);
            // The body is kept exactly as it came.
            prop_assert_eq!(event.payload.as_bytes(), body);
            prop_assert_eq!(event.job.platform.as_str(), GITHUB);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_bytes_never_panic(
            headers in any_headers(),
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            escapes_nul(&body);
            check(&headers, &body)?;
        }

        #[test]
        fn random_json_never_panics(headers in any_headers(), value in any_json()) {
            check(&headers, value.to_string().as_bytes())?;
        }

        /// Bodies whose parts take any shape (a job that is an array, a repository that is
        /// null, fields of any type, keys given twice): `check` compares the outline read
        /// directly with the one read from the whole value.
        #[test]
        fn the_outline_decides_as_the_whole_value_would(
            headers in any_headers(),
            action in any_json(),
            job in prop_oneof![any_json(), object_of(&[
                "id", "created_at", "labels", "run_id", "run_attempt", "workflow_name", "name",
                "runner_name", "conclusion", "started_at", "completed_at",
            ])],
            repository in prop_oneof![any_json(), object_of(&["full_name"])],
            repeated in proptest::option::of((
                prop::sample::select(&["action", "workflow_job", "repository"][..]),
                any_json(),
            )),
        ) {
            let mut body = serde_json::json!({
                "action": action, "workflow_job": job, "repository": repository,
            })
            .to_string();
            if let Some((key, value)) = repeated {
                body.insert_str(1, &format!("{}:{value},", Value::from(key)));
            }
            check(&headers, body.as_bytes())?;
        }

        #[test]
        fn workflow_jobs_of_every_shape_are_classified_consistently(
            headers in any_headers(),
            (body, all_valid) in workflow_job(),
        ) {
            check(&headers, body.as_bytes())?;
            let delivered = headers.delivery.as_ref().is_some_and(|d| !d.is_empty());
            let workflow_job = headers.event.as_deref() == Some("workflow_job");
            // JSON text escapes U+0000 as \u0000: such a body is poison by design.
            if all_valid && delivered && workflow_job && !body.contains("\\u0000") {
                let outcome = classify(&headers, body.as_bytes());
                prop_assert!(
                    matches!(outcome, Ok(Classified::Apply { .. })),
                    "a valid self-hosted job was not applied: {:?}",
                    outcome
                );
            }
        }
    }
}
