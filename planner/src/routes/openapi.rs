//! `GET /api/v1/openapi.json`: the OpenAPI document of this API, generated from the handlers'
//! own annotations so that it describes what the server does.

use actix_web::{get, HttpResponse};
use utoipa::{
    openapi::{
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
        ContentBuilder, Ref, ResponseBuilder,
    },
    Modify, OpenApi,
};

use super::{flavors, health, jobs, matching, pressure, tokens};
use crate::error::ErrorBody;

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "runner planner", description = "Jobs, runner flavors and tokens of the GitHub runner planner."),
    paths(
        health::health,
        health::ready,
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
        jobs::update,
        matching::explain,
        pressure::pressure,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Declares the bearer scheme, and documents the answers every route of a kind can give: on
/// every route that needs a token (all of them read PostgreSQL) 401 without a known token, 503
/// when PostgreSQL cannot be reached, 500 otherwise; on every route that reads a JSON body 408,
/// 413 and 415 when the body is late, too large or not JSON.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let mut answers = Vec::new();
                if operation.security.is_some() {
                    answers.extend([
                        ("401", "No or unknown token"),
                        ("503", "PostgreSQL cannot be reached"),
                        ("500", "Internal error"),
                    ]);
                }
                if operation.request_body.is_some() {
                    answers.extend([
                        ("408", "Body not received within APP_REQUEST_TIMEOUT"),
                        ("413", "Body too large"),
                        ("415", "Content-Type is not application/json"),
                    ]);
                }
                for (status, description) in answers {
                    let responses = &mut operation.responses.responses;
                    responses.insert(status.to_owned(), error(description).into());
                }
            }
        }
    }
}

/// This document. Needs no token.
#[utoipa::path(responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
#[get("/api/v1/openapi.json")]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
