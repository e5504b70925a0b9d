//! Bearer-token authentication.
//!
//! The admin token comes from the configuration; general tokens are created through the API and
//! stored only as SHA-256 hashes. The admin hash is compared in constant time, and general
//! tokens are looked up by hash (a timing difference there could only reveal bits of a hash,
//! never of a token).
//!
//! Hashes, as Canonical's planner keeps them, so a token made by either planner works with the
//! other and a database of Canonical's keeps its tokens ([`token_sha256`]): a general token is
//! 32 random bytes in base64url without padding (43 characters), and its stored hash is the
//! SHA-256 of those 32 decoded bytes. A presented token that does not decode to 32 bytes is
//! hashed as text; so is the admin token, whatever its format (it is compared as configured,
//! never decoded). Tokens stored by earlier versions of this planner hold the SHA-256 of the
//! token's text ([`text_sha256`]): a general token is looked up under both hashes, so they keep
//! working (only with this planner: Canonical's looks up the decoded form alone).

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use futures::future::LocalBoxFuture;
use schema::queries;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{error::ApiError, state::AppState};

/// The stored hash of a general token: the SHA-256 of its 32 bytes when it is base64url
/// without padding of 32 bytes (every token this planner and Canonical's create), else
/// [`text_sha256`].
pub fn token_sha256(token: &str) -> [u8; 32] {
    match URL_SAFE_NO_PAD.decode(token) {
        Ok(bytes) if bytes.len() == 32 => Sha256::digest(&bytes).into(),
        _ => text_sha256(token),
    }
}

/// SHA-256 of a token's text: the admin token's hash, and the hash earlier versions of this
/// planner stored for general tokens.
pub fn text_sha256(token: &str) -> [u8; 32] {
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
            let text = text_sha256(&token);
            if bool::from(text.ct_eq(&state.admin_token_sha256)) {
                return Ok(Authenticated(Caller::Admin));
            }
            let stored = token_sha256(&token);
            let pool = state.pool.clone();
            let name = web::block(move || -> Result<Option<String>, ApiError> {
                let mut conn = pool.get()?;
                Ok(queries::token_name_by_any_hash(
                    &mut conn,
                    &[&stored, &text],
                )?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_of_32_bytes_is_hashed_as_its_bytes() {
        let bytes = [7u8; 32];
        let token = URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(token.len(), 43);
        // Canonical's planner stores the hex SHA-256 of the 32 decoded bytes.
        let expected: [u8; 32] = Sha256::digest(bytes).into();
        assert_eq!(token_sha256(&token), expected);
        assert_ne!(token_sha256(&token), text_sha256(&token));
    }

    #[test]
    fn other_tokens_are_hashed_as_text() {
        for token in [
            "planner_v0_testtesttesttesttest",
            // 31 and 33 bytes, padded base64, standard alphabet.
            &URL_SAFE_NO_PAD.encode([1u8; 31]),
            &URL_SAFE_NO_PAD.encode([1u8; 33]),
            "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
            "+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/8",
        ] {
            assert_eq!(token_sha256(token), text_sha256(token), "{token}");
        }
    }
}
