//! The gateway's one error type, mapped to HTTP. Every error answer is `{"error": "..."}`.

use actix_web::{http::StatusCode, HttpResponse, ResponseError};
use serde_json::json;

use crate::webhook::Rejection;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The delivery failed a check (signature, event, payload).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The body is larger than `APP_MAX_BODY_BYTES`.
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The body could not be read (the client went away or sent a broken stream).
    #[error("could not read request body")]
    BodyUnreadable,
    /// The broker did not confirm the message in time, refused it, or is unreachable.
    #[error("the message broker did not accept the delivery; retry later")]
    Unavailable {
        /// Seconds for `Retry-After`.
        retry_after_secs: u64,
    },
    /// `APP_MAX_IN_FLIGHT` publishes are already waiting for the broker: answered at once.
    #[error("too many deliveries in flight; retry later")]
    Overloaded {
        /// Seconds for `Retry-After`.
        retry_after_secs: u64,
    },
    /// The client did not send its body within `APP_REQUEST_TIMEOUT`.
    #[error("request body not received in time")]
    BodyTimeout,
    /// The method is not allowed on this route.
    #[error("method not allowed; use {allow}")]
    MethodNotAllowed {
        /// Value of the `Allow` header.
        allow: &'static str,
    },
    /// No such route.
    #[error("not found")]
    NotFound,
    /// A bug or a dead internal actor; details are logged, not returned.
    #[error("internal error")]
    Internal,
}

impl ResponseError for GatewayError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Rejected(Rejection::MissingSignature | Rejection::BadSignature) => {
                StatusCode::FORBIDDEN
            }
            Self::Rejected(Rejection::MissingEvent | Rejection::InvalidPayload(_)) => {
                StatusCode::BAD_REQUEST
            }
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyUnreadable => StatusCode::BAD_REQUEST,
            Self::Unavailable { .. } | Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::Unavailable { retry_after_secs } | Self::Overloaded { retry_after_secs } => {
                response.insert_header(("Retry-After", retry_after_secs.to_string()));
            }
            Self::MethodNotAllowed { allow } => {
                response.insert_header(("Allow", *allow));
            }
            _ => {}
        }
        response.json(json!({ "error": self.to_string() }))
    }
}

impl GatewayError {
    /// A short machine-readable reason, for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Rejected(Rejection::MissingSignature) => "missing_signature",
            Self::Rejected(Rejection::BadSignature) => "bad_signature",
            Self::Rejected(Rejection::MissingEvent) => "missing_event",
            Self::Rejected(Rejection::InvalidPayload(_)) => "invalid_payload",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyUnreadable => "body_unreadable",
            Self::Unavailable { .. } => "broker_unavailable",
            Self::Overloaded { .. } => "overloaded",
            Self::BodyTimeout => "body_timeout",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::NotFound => "not_found",
            Self::Internal => "internal",
        }
    }
}
