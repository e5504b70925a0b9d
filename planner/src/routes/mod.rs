//! The REST API. Paths and JSON shapes follow Canonical's `github-runner-planner`.

pub mod flavors;
pub mod health;
pub mod jobs;
pub mod matching;
pub mod openapi;
pub mod pressure;
pub mod tokens;

use std::{collections::BTreeMap, sync::LazyLock};

use actix_web::web;
use diesel::PgConnection;
use utoipa::OpenApi;

use crate::{
    domain::names::validate_name,
    error::{self, ApiError},
    extract::MAX_BODY,
    store::PgPool,
};

/// Registers every route, then for each route path a fallback answering any other method 405.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(MAX_BODY))
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
        .service(jobs::update)
        .service(matching::explain)
        .service(pressure::pressure);
    for (path, allow) in ALLOWED_METHODS.iter() {
        let allow = allow.clone();
        cfg.service(web::resource(path.as_str()).default_service(web::to(move || {
            let allow = allow.clone();
            async move { Err::<actix_web::HttpResponse, _>(ApiError::MethodNotAllowed { allow }) }
        })));
    }
    cfg.default_service(web::to(not_found));
}

/// Each route path and the methods it has (`GET, POST`), from the OpenAPI document, which is
/// generated from the handlers themselves: a new handler cannot be left out.
pub static ALLOWED_METHODS: LazyLock<BTreeMap<String, String>> = LazyLock::new(|| {
    openapi::ApiDoc::openapi()
        .paths
        .paths
        .into_iter()
        .map(|(path, item)| {
            let methods = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
            ];
            let allow: Vec<&str> = methods
                .into_iter()
                .filter_map(|(method, present)| present.then_some(method))
                .collect();
            (path, allow.join(", "))
        })
        .collect()
});

/// Any path that is not a route: a JSON 404 like every other error.
async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound("route".to_owned()))
}

/// Validates a name taken from the path; a 400 names the path parameter.
fn valid_name(name: &str) -> Result<(), ApiError> {
    validate_name(name).map_err(|problem| ApiError::field("name", problem))
}

/// The `{name}` of a route's path, validated.
fn path_name(name: web::Path<String>) -> Result<String, ApiError> {
    let name = name.into_inner();
    valid_name(&name)?;
    Ok(name)
}

/// The `{platform}/{id}` of a job's path, validated; a 400 names the part at fault.
pub(crate) fn job_path(path: web::Path<(String, String)>) -> Result<(String, i64), ApiError> {
    let (platform, id) = path.into_inner();
    validate_name(&platform).map_err(|problem| ApiError::field("platform", problem))?;
    let id = id
        .parse()
        .map_err(|_| ApiError::field("id", "must be an integer"))?;
    Ok((platform, id))
}

/// Runs blocking database work on a pooled connection, off the async workers.
pub(crate) async fn with_conn<T, F>(pool: PgPool, work: F) -> Result<T, ApiError>
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_path_lists_its_methods() {
        let allowed = &*ALLOWED_METHODS;
        assert_eq!(allowed["/api/v1/flavors"], "GET");
        assert_eq!(
            allowed["/api/v1/flavors/{name}"],
            "GET, POST, PATCH, DELETE"
        );
        assert_eq!(allowed["/api/v1/auth/token/{name}"], "POST, DELETE");
        assert_eq!(allowed["/api/v1/jobs/{platform}/{id}"], "GET, PATCH");
        assert_eq!(allowed["/health"], "GET");
        assert!(allowed.values().all(|allow| !allow.is_empty()));
    }
}
