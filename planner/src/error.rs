//! The one error type of the REST API and its mapping to HTTP.
//!
//! Every error body is `{"error": "..."}`. 4xx messages say what is wrong (for a 400, which
//! field); 5xx bodies are opaque and the cause is logged once, here.

use actix_web::{
    http::{header, StatusCode},
    HttpResponse, ResponseError,
};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No `Authorization: Bearer <token>` header, or not of that form.
    #[error("missing or malformed Authorization header, expected `Bearer <token>`")]
    MissingToken,
    /// A bearer token that is neither the admin token nor a known general token.
    #[error("invalid token")]
    InvalidToken,
    /// A general token on an admin-only route.
    #[error("this route needs the admin token")]
    AdminOnly,
    /// Bad input; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A request body over the limit.
    #[error("body: larger than {0} bytes")]
    TooLarge(usize),
    /// A request body that is not `application/json`.
    #[error("content-type: must be application/json")]
    UnsupportedMediaType,
    /// A request body that did not arrive in time (`APP_REQUEST_TIMEOUT`).
    #[error("body: not received within {} ms", .0.as_millis())]
    BodyTimeout(std::time::Duration),
    /// A method the route does not have; `allow` lists those it has.
    #[error("method not allowed; this route allows {allow}")]
    MethodNotAllowed {
        /// Value of the `Allow` header, e.g. `GET, POST`.
        allow: String,
    },
    /// The named thing exists already.
    #[error("{0} already exists")]
    Conflict(String),
    /// PostgreSQL cannot be reached (no connection within the pool timeout).
    #[error("database unavailable")]
    Unavailable(#[source] diesel::r2d2::PoolError),
    /// The service is shutting down (the pressure broadcaster has closed).
    #[error("shutting down")]
    ShuttingDown,
    /// Anything else on the server side.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A 400 naming `field`.
    pub fn field(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::BadRequest(format!("{field}: {problem}"))
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(err: diesel::result::Error) -> Self {
        Self::Internal(format!("database: {err}"))
    }
}

impl From<diesel::r2d2::PoolError> for ApiError {
    fn from(err: diesel::r2d2::PoolError) -> Self {
        Self::Unavailable(err)
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(err: actix_web::error::BlockingError) -> Self {
        Self::Internal(format!("blocking pool: {err}"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MissingToken | ApiError::InvalidToken => StatusCode::UNAUTHORIZED,
            ApiError::AdminOnly => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Unavailable(err) => {
                log::error!(event = "request_failed", status = 503, error:% = err; "request failed")
            }
            ApiError::Internal(err) => {
                log::error!(event = "request_failed", status = 500, error:% = err; "request failed")
            }
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::MissingToken | ApiError::InvalidToken => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, allow.as_str()));
            }
            _ => {}
        }
        response.json(ErrorBody {
            error: self.to_string(),
        })
    }
}

/// Turns a path error into a 400 that does not repeat what was sent.
pub fn path_error(err: actix_web::error::PathError) -> ApiError {
    let message = match &err {
        actix_web::error::PathError::Deserialize(err) => err.to_string(),
        other => other.to_string(),
    };
    ApiError::field("path", without_input(&message))
}

/// A serde error message without the client's input in it: serde quotes the value it got
/// (`invalid type: string "...", expected a boolean`) and an unknown key (``unknown field `...`,
/// expected one of ...``). Both are dropped; what was expected, which comes from our own types,
/// stays. An error body must never hand back what a request carried (a token pasted into the
/// wrong field, a payload).
pub fn without_input(message: &str) -> String {
    const QUOTING: [(&str, &str); 4] = [
        ("invalid type: ", "invalid type"),
        ("invalid value: ", "invalid value"),
        ("unknown field `", "unknown field"),
        ("unknown variant `", "unknown variant"),
    ];
    for (prefix, kind) in QUOTING {
        if message.starts_with(prefix) {
            // What serde expected comes last: `, expected ...` or `, there are no ...`. The
            // client's value comes before it and may contain either text, hence the last one.
            let rest = [", expected ", ", there are no "]
                .into_iter()
                .filter_map(|separator| message.rfind(separator))
                .max()
                .map(|at| &message[at..])
                .unwrap_or_default();
            return format!("{kind}{rest}");
        }
    }
    message.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_lose_the_input_and_keep_the_expectation() {
        for (message, expected) in [
            (
                r#"invalid type: string "SECRET, expected x", expected a boolean at line 1 column 9"#,
                "invalid type, expected a boolean at line 1 column 9",
            ),
            (
                "invalid value: integer `-1`, expected u32",
                "invalid value, expected u32",
            ),
            (
                "unknown field `SECRET`, expected one of `status`, `limit`",
                "unknown field, expected one of `status`, `limit`",
            ),
            (
                "unknown field `SECRET, expected SECRET`, there are no fields",
                "unknown field, there are no fields",
            ),
            (
                "unknown variant `SECRET`, expected `a` or `b`",
                "unknown variant, expected `a` or `b`",
            ),
            ("missing field `labels`", "missing field `labels`"),
            (
                "EOF while parsing a value at line 1 column 0",
                "EOF while parsing a value at line 1 column 0",
            ),
        ] {
            assert_eq!(without_input(message), expected, "{message}");
        }
    }
}
