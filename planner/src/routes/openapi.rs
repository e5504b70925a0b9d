//! `GET /api/v1/openapi.json`: the OpenAPI document of this API, generated from the handlers'
//! own annotations so that it describes what the server does.

use actix_web::{get, HttpResponse};
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use super::{flavors, health, jobs, matching, tokens};
use crate::error::ErrorBody;

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "runner planner", description = "Jobs, runner flavors and tokens of the GitHub runner planner."),
    paths(
        health::health,
        openapi_json,
        flavors::list,
        flavors::create,
        flavors::get,
        flavors::update,
        flavors::delete,
        tokens::create,
        tokens::list,
        tokens::delete,
        jobs::list,
        jobs::get,
        matching::explain,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document. Needs no token.
#[utoipa::path(responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
#[get("/api/v1/openapi.json")]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
