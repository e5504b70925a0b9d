//! The manager's one error type: what start-up and the status API can fail with.

use actix_web::{http::StatusCode, HttpResponse, ResponseError};
use serde::Serialize;

use crate::backend::BackendError;
use crate::config::Invalid;
use crate::planner::PlannerError;

/// Everything the manager reports as an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] Invalid),
    /// A listener could not be bound, or another start-up I/O failure.
    #[error("start-up: {0}")]
    Io(#[from] std::io::Error),
    /// A backend could not be set up.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The GitHub client could not be built.
    #[error("GitHub client: {0}")]
    GitHub(#[from] actors::github::GitHubError),
    /// The planner client could not be built.
    #[error(transparent)]
    Planner(#[from] PlannerError),
    /// No `Authorization: Bearer <token>` header.
    #[error("missing bearer token")]
    MissingToken,
    /// A token the manager does not accept.
    #[error("invalid token")]
    InvalidToken,
    /// The actors are stopping.
    #[error("shutting down")]
    ShuttingDown,
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let error = if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            log::error!(event = "request_failed", error:% = self; "request failed");
            "internal error".to_owned()
        } else {
            self.to_string()
        };
        let mut response = HttpResponse::build(status);
        if status == StatusCode::UNAUTHORIZED {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        response.json(ErrorBody { error })
    }
}
