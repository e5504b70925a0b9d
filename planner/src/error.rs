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
            ApiError::Unavailable(_) | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Unavailable(err) => {
                log::error!("event=request_failed status=503 error=\"{err}\"")
            }
            ApiError::Internal(err) => {
                log::error!("event=request_failed status=500 error=\"{err}\"")
            }
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code());
        if self.status_code() == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(ErrorBody {
            error: self.to_string(),
        })
    }
}

/// Turns a query string error into a 400.
pub fn query_error(err: actix_web::error::QueryPayloadError) -> ApiError {
    ApiError::field("query", err)
}

/// Turns a path error into a 400.
pub fn path_error(err: actix_web::error::PathError) -> ApiError {
    ApiError::field("path", err)
}
