//! Classification of one AMQP delivery from the gateway: a job event to apply, something to
//! acknowledge and discard, or a poison message for the dead-letter queue.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{
    job::{JobEvent, Status},
    labels::normalize,
};

/// The platform of every job that comes through GitHub webhooks.
pub const GITHUB: &str = "github";

/// The label a job must have for the planner to care about it.
pub const SELF_HOSTED: &str = "self-hosted";

/// The AMQP headers the gateway copies from the webhook request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// `X-GitHub-Event`.
    pub event: Option<String>,
    /// `X-GitHub-Delivery`.
    pub delivery: Option<String>,
}

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
pub fn classify(headers: &Headers, body: &[u8]) -> Result<Classified, Poison> {
    let event_name = headers.event.as_deref().ok_or(Poison::MissingEvent)?;
    let body: Value =
        serde_json::from_slice(body).map_err(|err| Poison::InvalidJson(err.to_string()))?;
    if event_name != "workflow_job" {
        return Ok(Classified::Discard("not a workflow_job event"));
    }
    let Some(action) = body
        .get("action")
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

    let job = body
        .get("workflow_job")
        .filter(|job| job.is_object())
        .ok_or(Poison::MissingField("workflow_job"))?;
    let id = job
        .get("id")
        .ok_or(Poison::MissingField("id"))?
        .as_i64()
        .ok_or(Poison::InvalidField("id"))?;
    let created_at = timestamp(job, "created_at")?.ok_or(Poison::MissingField("created_at"))?;
    let repository = body
        .get("repository")
        .and_then(|repository| repository.get("full_name"))
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .ok_or(Poison::MissingField("repository"))?
        .to_owned();
    let labels = match job.get("labels") {
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
    // PostgreSQL's jsonb cannot hold U+0000; such a body could never be stored.
    if contains_nul(&body) {
        return Err(Poison::InvalidField("payload (contains U+0000)"));
    }

    let started = action.rank() >= Status::InProgress.rank();
    let completed = action == Status::Completed;
    let event = JobEvent {
        platform: GITHUB.to_owned(),
        id,
        action,
        labels,
        repository,
        run_id: job.get("run_id").and_then(Value::as_i64),
        run_attempt: job.get("run_attempt").and_then(Value::as_i64),
        workflow_name: string(job, "workflow_name"),
        job_name: string(job, "name"),
        runner_name: string(job, "runner_name").filter(|_| started),
        conclusion: string(job, "conclusion").filter(|_| completed),
        created_at,
        started_at: if started {
            timestamp(job, "started_at")?
        } else {
            None
        },
        completed_at: if completed {
            timestamp(job, "completed_at")?
        } else {
            None
        },
        payload: body,
    };
    Ok(Classified::Apply {
        delivery,
        event: Box::new(event),
    })
}

fn string(object: &Value, field: &str) -> Option<String> {
    object.get(field).and_then(Value::as_str).map(str::to_owned)
}

fn timestamp(object: &Value, field: &'static str) -> Result<Option<DateTime<Utc>>, Poison> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(text)
            .map(|at| Some(at.with_timezone(&Utc)))
            .map_err(|_| Poison::InvalidField(field)),
        Some(_) => Err(Poison::InvalidField(field)),
    }
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(fields) => fields
            .iter()
            .any(|(key, value)| key.contains('\0') || contains_nul(value)),
        _ => false,
    }
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
        assert_eq!(event.id, 289_782_451);
        assert_eq!(event.action, Status::Completed);
        assert_eq!(event.labels, ["self-hosted", "linux", "x64"]);
        assert_eq!(event.repository, "Codertocat/Hello-World");
        assert_eq!(event.conclusion.as_deref(), Some("failure"));
        assert!(event.completed_at.is_some() && event.started_at.is_some());
        assert_eq!(event.payload, body);
    }

    #[test]
    fn waiting_fixture_is_self_hosted_already() {
        let Ok(Classified::Apply { event, .. }) = classify_value(&fixture("waiting.0")) else {
            panic!("not applied");
        };
        assert_eq!(event.action, Status::Waiting);
        assert_eq!(event.labels, ["self-hosted", "k8s"]);
        assert_eq!(event.started_at, None);
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
}
