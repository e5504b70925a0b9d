//! The REST API. Paths and JSON shapes follow Canonical's `github-runner-planner`.

pub mod flavors;
pub mod health;
pub mod jobs;
pub mod matching;
pub mod openapi;
pub mod pressure;
pub mod tokens;

use actix_web::web;
use diesel::PgConnection;

use crate::{
    domain::names::validate_name,
    error::{self, ApiError},
    extract::MAX_BODY,
    store::PgPool,
};

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(MAX_BODY))
        .app_data(
            web::QueryConfig::default().error_handler(|err, _| error::query_error(err).into()),
        )
        .app_data(web::PathConfig::default().error_handler(|err, _| error::path_error(err).into()))
        .service(health::health)
        .service(health::ready)
        .service(openapi::openapi_json)
        .service(flavors::list)
        .service(flavors::create)
        .service(flavors::get)
        .service(flavors::update)
        .service(flavors::delete)
        .service(tokens::create)
        .service(tokens::list)
        .service(tokens::delete)
        .service(jobs::list)
        .service(jobs::get)
        .service(matching::explain)
        .service(pressure::pressure)
        .default_service(web::to(not_found));
}

/// Anything that is not a route: a JSON 404 like every other error.
async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound("route".to_owned()))
}

/// Validates a name taken from the path; a 400 names the path parameter.
fn path_name(name: &str) -> Result<(), ApiError> {
    validate_name(name).map_err(|problem| ApiError::field("name", problem))
}

/// Runs blocking database work on a pooled connection, off the async workers.
async fn with_conn<T, F>(pool: PgPool, work: F) -> Result<T, ApiError>
where
    F: FnOnce(&mut PgConnection) -> Result<T, ApiError> + Send + 'static,
    T: Send + 'static,
{
    web::block(move || {
        let mut conn = pool.get()?;
        work(&mut conn)
    })
    .await?
}
