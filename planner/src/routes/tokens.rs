//! `/api/v1/auth/token`: general tokens, managed with the admin token.

use actix_web::{delete, get, post, web, HttpResponse};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use schema::queries;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::path_name;
use crate::{
    auth::{token_sha256, Admin},
    error::{ApiError, ErrorBody},
    state::AppState,
};

/// A new token: shown once, stored only as its SHA-256.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub name: String,
    /// 32 random bytes, base64url without padding.
    pub token: String,
}

/// Every token name.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenNames {
    pub names: Vec<String>,
}

/// Creates a general token.
#[utoipa::path(
    params(("name" = String, Path, description = "1-63 of a-z 0-9 - _ . (not `_`)")),
    responses(
        (status = 201, description = "Created; the token is shown only now", body = CreatedToken),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 403, description = "Not the admin token", body = ErrorBody),
        (status = 409, description = "A token of that name exists", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/api/v1/auth/token/{name}")]
pub async fn create(
    _: Admin,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path_name(name)?;
    let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let digest = token_sha256(&token);
    let lookup = name.clone();
    let inserted = state
        .db(move |conn| Ok(queries::insert_token(conn, &lookup, &digest)?))
        .await?;
    if !inserted {
        return Err(ApiError::Conflict(format!("token {name}")));
    }
    log::info!(event = "token_created", "token.name" = name; "token created");
    Ok(HttpResponse::Created().json(CreatedToken { name, token }))
}

/// Every token name, sorted.
#[utoipa::path(
    responses(
        (status = 200, description = "Token names", body = TokenNames),
        (status = 403, description = "Not the admin token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/api/v1/auth/token")]
pub async fn list(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let names = state
        .db(|conn| Ok(queries::list_token_names(conn)?))
        .await?;
    Ok(HttpResponse::Ok().json(TokenNames { names }))
}

/// Deletes a general token; it stops working at once. Deleting a token that does not exist is
/// not an error (204, as Canonical's planner answers either way).
#[utoipa::path(
    params(("name" = String, Path)),
    responses(
        (status = 204, description = "Deleted, or there was no such token"),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 403, description = "Not the admin token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/api/v1/auth/token/{name}")]
pub async fn delete(
    _: Admin,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path_name(name)?;
    let lookup = name.clone();
    let deleted = state
        .db(move |conn| Ok(queries::delete_token(conn, &lookup)?))
        .await?;
    if deleted {
        log::info!(event = "token_deleted", "token.name" = name; "token deleted");
    }
    Ok(HttpResponse::NoContent().finish())
}
