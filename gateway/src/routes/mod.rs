//! HTTP routes.

mod health;
mod webhook;

use actix_web::web;

use crate::error::GatewayError;

pub use health::{health, ready};
pub use webhook::receive;

/// Registers every route on an actix-web app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/webhook")
            .route(web::post().to(receive))
            .default_service(web::to(|| async {
                Err::<actix_web::HttpResponse, _>(GatewayError::MethodNotAllowed { allow: "POST" })
            })),
    )
    .service(
        web::resource("/health")
            .route(web::get().to(health))
            .default_service(web::to(|| async {
                Err::<actix_web::HttpResponse, _>(GatewayError::MethodNotAllowed { allow: "GET" })
            })),
    )
    .service(
        web::resource("/ready")
            .route(web::get().to(ready))
            .default_service(web::to(|| async {
                Err::<actix_web::HttpResponse, _>(GatewayError::MethodNotAllowed { allow: "GET" })
            })),
    )
    .default_service(web::to(|| async {
        Err::<actix_web::HttpResponse, _>(GatewayError::NotFound)
    }));
}
