//! What the gateway checks before it forwards a delivery, as pure functions, and the
//! [`Validator`] actor that runs them off the HTTP workers for large bodies.
//!
//! Order (each step only runs when the previous one passed):
//! 1. the `X-Hub-Signature-256` header is `sha256=` + the hex HMAC-SHA256 of the raw body under
//!    the current or the previous secret, compared in constant time — nothing is parsed before;
//! 2. `X-GitHub-Event` is present; `ping` and events other than `workflow_job` are answered but
//!    not forwarded;
//! 3. a `workflow_job` body is a JSON object with a string `action` and a `workflow_job.id`
//!    the planner can store ([`actors::delivery::JobId`]: an integer within `bigint`).

use ::actors::delivery::{JobId, WORKFLOW_JOB};
use actix::prelude::*;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery is refused. Each maps to one HTTP status (see [`crate::error`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No `X-Hub-Signature-256` header.
    #[error("missing X-Hub-Signature-256 header")]
    MissingSignature,
    /// The header is not `sha256=<64 hex digits>`, or the HMAC does not match any secret.
    #[error("invalid signature")]
    BadSignature,
    /// No `X-GitHub-Event` header.
    #[error("missing X-GitHub-Event header")]
    MissingEvent,
    /// A `workflow_job` body that is not what GitHub sends.
    #[error("invalid workflow_job payload: {0}")]
    InvalidPayload(String),
}

/// What to do with a delivery that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A `workflow_job` delivery: publish it.
    Forward {
        /// `action` of the payload (queued, waiting, in_progress, completed, ...).
        action: String,
        /// `workflow_job.id`.
        job_id: JobId,
    },
    /// GitHub's `ping` on hook creation: answer 200, do not forward.
    Ping,
    /// Another event type: answer 202, do not forward.
    Ignored {
        /// The event's name.
        event: String,
    },
}

/// The HMAC keys the gateway accepts: the current secret and, while rotating, the previous one.
#[derive(Clone)]
pub struct Secrets {
    keys: Vec<HmacSha256>,
}

impl Secrets {
    /// Keys for `current` and, if given, `previous`.
    pub fn new(current: &SecretString, previous: Option<&SecretString>) -> Self {
        let keys = std::iter::once(current)
            .chain(previous)
            .map(|secret| {
                HmacSha256::new_from_slice(secret.expose_secret().as_bytes())
                    .expect("HMAC accepts keys of any length")
            })
            .collect();
        Self { keys }
    }

    /// Runs all checks on one delivery: the signature, then the event and payload.
    pub fn validate(
        &self,
        signature: &str,
        event: Option<&str>,
        body: &[u8],
    ) -> Result<Verdict, Rejection> {
        self.verify(signature, body)?;
        classify(event, body)
    }

    /// Checks `header` (the value of `X-Hub-Signature-256`) against `body`. The comparison is
    /// constant-time (`Mac::verify_slice`).
    pub fn verify(&self, header: &str, body: &[u8]) -> Result<(), Rejection> {
        let hex_digest = header
            .strip_prefix("sha256=")
            .ok_or(Rejection::BadSignature)?;
        let mut expected = [0u8; 32];
        hex::decode_to_slice(hex_digest, &mut expected).map_err(|_| Rejection::BadSignature)?;
        let matches = self.keys.iter().any(|key| {
            let mut mac = key.clone();
            mac.update(body);
            mac.verify_slice(&expected).is_ok()
        });
        if matches {
            Ok(())
        } else {
            Err(Rejection::BadSignature)
        }
    }
}

/// The parts of a `workflow_job` payload the gateway insists on; everything else passes
/// through untouched.
#[derive(Deserialize)]
struct WorkflowJobProbe {
    action: String,
    workflow_job: JobProbe,
}

#[derive(Deserialize)]
struct JobProbe {
    id: JobId,
}

/// Steps 2 and 3: what to do with a delivery whose signature is valid.
pub fn classify(event: Option<&str>, body: &[u8]) -> Result<Verdict, Rejection> {
    let event = event
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .ok_or(Rejection::MissingEvent)?;
    match event {
        "ping" => Ok(Verdict::Ping),
        WORKFLOW_JOB => {
            let probe: WorkflowJobProbe = serde_json::from_slice(body).map_err(|err| {
                // serde's message names the field and position, never the payload itself.
                Rejection::InvalidPayload(err.to_string())
            })?;
            Ok(Verdict::Forward {
                action: probe.action,
                job_id: probe.workflow_job.id,
            })
        }
        other => Ok(Verdict::Ignored {
            event: other.to_owned(),
        }),
    }
}

/// Validate one delivery (signature, event, payload shape).
#[derive(Message)]
#[rtype(result = "Result<Verdict, Rejection>")]
pub struct Validate {
    /// Value of `X-Hub-Signature-256`.
    pub signature: String,
    /// Value of `X-GitHub-Event`, if any.
    pub event: Option<String>,
    /// The raw body.
    pub body: actix_web::web::Bytes,
}

/// The validator actor: HMAC and JSON checks are CPU work, so they run on a [`SyncArbiter`]
/// pool instead of the HTTP workers' event loops.
pub struct Validator {
    secrets: Secrets,
}

impl Validator {
    /// Starts `threads` validator threads sharing one mailbox.
    pub fn start(secrets: Secrets, threads: usize) -> Addr<Self> {
        SyncArbiter::start(threads.max(1), move || Validator {
            secrets: secrets.clone(),
        })
    }
}

impl Actor for Validator {
    type Context = SyncContext<Self>;
}

impl Handler<Validate> for Validator {
    type Result = Result<Verdict, Rejection>;

    fn handle(&mut self, msg: Validate, _: &mut Self::Context) -> Self::Result {
        self.secrets
            .validate(&msg.signature, msg.event.as_deref(), &msg.body)
    }
}

/// `sha256=<hex>` signature of `body` under `secret`, as GitHub computes it. Used by tests,
/// benchmarks and the demo script.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BODY: &[u8] = br#"{"action":"queued","workflow_job":{"id":42,"labels":["self-hosted"]}}"#;

    fn secrets() -> Secrets {
        Secrets::new(&"current".into(), Some(&"previous".into()))
    }

    #[test]
    fn signature_under_either_secret_is_accepted() {
        assert_eq!(secrets().verify(&sign("current", BODY), BODY), Ok(()));
        assert_eq!(secrets().verify(&sign("previous", BODY), BODY), Ok(()));
    }

    #[test]
    fn wrong_secret_altered_body_or_malformed_header_is_refused() {
        let good = sign("current", BODY);
        let cases = [
            sign("other", BODY),
            sign("current", b"{}"),
            good.replace("sha256=", "sha1="),
            good.trim_start_matches("sha256=").to_owned(),
            good[..good.len() - 2].to_owned(),
            format!("{good}00"),
            good.to_uppercase().replace("SHA256=", "sha256=zz"),
            String::new(),
        ];
        for header in cases {
            assert_eq!(
                secrets().verify(&header, BODY),
                Err(Rejection::BadSignature),
                "{header}"
            );
        }
    }

    #[test]
    fn without_previous_secret_only_current_is_accepted() {
        let only = Secrets::new(&"current".into(), None);
        assert_eq!(only.verify(&sign("current", BODY), BODY), Ok(()));
        assert_eq!(
            only.verify(&sign("previous", BODY), BODY),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn events_are_classified() {
        assert_eq!(classify(Some("ping"), b"not json"), Ok(Verdict::Ping));
        assert_eq!(
            classify(Some("push"), b"{}"),
            Ok(Verdict::Ignored {
                event: "push".into()
            })
        );
        assert_eq!(classify(None, BODY), Err(Rejection::MissingEvent));
        assert_eq!(classify(Some(" "), BODY), Err(Rejection::MissingEvent));
        assert_eq!(
            classify(Some("workflow_job"), BODY),
            Ok(Verdict::Forward {
                action: "queued".into(),
                job_id: JobId(42)
            })
        );
    }

    #[test]
    fn malformed_workflow_job_payloads_are_refused() {
        let bodies: [&[u8]; 10] = [
            b"",
            b"[]",
            b"not json",
            br#"{"workflow_job":{"id":1}}"#,
            br#"{"action":"queued"}"#,
            br#"{"action":"queued","workflow_job":{}}"#,
            br#"{"action":"queued","workflow_job":{"id":"one"}}"#,
            // Beyond bigint, the planner's column: refused here rather than dead-lettered there.
            br#"{"action":"queued","workflow_job":{"id":9223372036854775808}}"#,
            br#"{"action":"queued","workflow_job":{"id":1.5}}"#,
            br#"{"action":"queued","workflow_job":{"id":1e3}}"#,
        ];
        for body in bodies {
            assert!(
                matches!(
                    classify(Some("workflow_job"), body),
                    Err(Rejection::InvalidPayload(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn fixtures_are_accepted() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/workflow_job"
        );
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let body = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(matches!(
                classify(Some("workflow_job"), &body),
                Ok(Verdict::Forward { .. })
            ));
            seen += 1;
        }
        assert!(seen >= 4);
    }

    proptest! {
        #[test]
        fn checks_never_panic(
            header in ".*",
            event in proptest::option::of(".*"),
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let _ = secrets().validate(&header, event.as_deref(), &body);
        }

        #[test]
        fn only_the_exact_signature_passes(body in proptest::collection::vec(any::<u8>(), 0..256), flip in 0usize..64) {
            let good = sign("current", &body);
            prop_assert!(secrets().verify(&good, &body).is_ok());
            let mut digits: Vec<char> = good["sha256=".len()..].chars().collect();
            digits[flip] = if digits[flip] == '0' { '1' } else { '0' };
            let bad = format!("sha256={}", digits.into_iter().collect::<String>());
            prop_assert_eq!(secrets().verify(&bad, &body), Err(Rejection::BadSignature));
        }
    }
}
