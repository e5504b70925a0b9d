//! A JSON body extractor whose errors name the field at fault.

use actix_web::{dev::Payload, http::header, web::Bytes, FromRequest, HttpRequest};
use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest JSON body accepted, in bytes.
pub const MAX_BODY: usize = 16 * 1024;

/// Like `web::Json`, but a deserialisation error becomes a 400 saying which field (`labels[2]:
/// invalid type ...`), and a body over [`MAX_BODY`] a 413.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

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
        let body = Bytes::from_request(req, payload);
        Box::pin(async move {
            if !is_json {
                return Err(ApiError::field("content-type", "must be application/json"));
            }
            if declared.is_some_and(|length| length > MAX_BODY) {
                return Err(ApiError::TooLarge(MAX_BODY));
            }
            let bytes = body.await.map_err(|_| ApiError::TooLarge(MAX_BODY))?;
            let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
            let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
                let path = err.path().to_string();
                // `.` is the whole body; `?` an unknown place (a syntax error).
                let field = if path == "." || path.starts_with('?') {
                    "body".to_owned()
                } else {
                    path
                };
                ApiError::field(&field, err.into_inner())
            })?;
            deserializer
                .end()
                .map_err(|err| ApiError::field("body", err))?;
            Ok(JsonBody(value))
        })
    }
}
