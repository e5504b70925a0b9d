//! Bearer-token authentication.
//!
//! The admin token comes from the configuration; general tokens are created through the API and
//! stored only as SHA-256 hashes. A presented token is hashed once; the admin hash is compared
//! in constant time, and general tokens are looked up by hash (a timing difference there could
//! only reveal bits of a hash, never of a token).

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use futures::future::LocalBoxFuture;
use schema::queries;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{error::ApiError, state::AppState};

/// SHA-256 of a token.
pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The admin token.
    Admin,
    /// A general token, by name.
    Token(String),
}

/// Extractor: any valid token (admin or general), else 401.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Caller);

/// Extractor: the admin token, else 401 (no or unknown token) or 403 (a general token).
#[derive(Debug, Clone)]
pub struct Admin;

fn bearer(req: &HttpRequest) -> Result<String, ApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .ok_or(ApiError::MissingToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::MissingToken)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(ApiError::MissingToken);
    }
    Ok(token.to_owned())
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = bearer(req);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let token = token?;
            let state = state.ok_or_else(|| ApiError::Internal("no application state".into()))?;
            let digest = token_sha256(&token);
            if bool::from(digest.ct_eq(&state.admin_token_sha256)) {
                return Ok(Authenticated(Caller::Admin));
            }
            let pool = state.pool.clone();
            let name = web::block(move || -> Result<Option<String>, ApiError> {
                let mut conn = pool.get()?;
                Ok(queries::token_name_by_hash(&mut conn, &digest)?)
            })
            .await??;
            name.map(|name| Authenticated(Caller::Token(name)))
                .ok_or(ApiError::InvalidToken)
        })
    }
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let authenticated = Authenticated::from_request(req, payload);
        Box::pin(async move {
            match authenticated.await? {
                Authenticated(Caller::Admin) => Ok(Admin),
                Authenticated(Caller::Token(_)) => Err(ApiError::AdminOnly),
            }
        })
    }
}
