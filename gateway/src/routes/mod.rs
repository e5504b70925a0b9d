//! HTTP routes.

mod health;
mod webhook;

use actix_web::web;

use crate::error::GatewayError;

pub use health::{health, ready};
pub use webhook::receive;

/// The fallback of a resource: 405 naming the methods it allows.
fn method_not_allowed(allow: &'static str) -> actix_web::Route {
    web::to(move || async move {
        Err::<actix_web::HttpResponse, _>(GatewayError::MethodNotAllowed { allow })
    })
}

/// Registers every route on an actix-web app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/webhook")
            .route(web::post().to(receive))
            .default_service(method_not_allowed("POST")),
    )
    .service(
        web::resource("/health")
            .route(web::get().to(health))
            .default_service(method_not_allowed("GET")),
    )
    .service(
        web::resource("/ready")
            .route(web::get().to(ready))
            .default_service(method_not_allowed("GET")),
    )
    .default_service(web::to(|| async {
        Err::<actix_web::HttpResponse, _>(GatewayError::NotFound)
    }));
}
