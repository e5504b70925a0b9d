//! `minimal-webhook`: the benchmarks' floor under the gateway's CPU per webhook. An actix-web
//! server whose `POST /webhook` only checks `X-Hub-Signature-256` against the body (the
//! gateway's own `Secrets::verify`, with the tests' secret) and answers `200`: nothing is
//! parsed, published, counted or logged per request. It listens on a free port of 127.0.0.1
//! and says which with `event=minimal_webhook_listening port=N`.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use gateway::webhook::Secrets;
use secrecy::SecretString;

/// The gateway's default `APP_MAX_BODY_BYTES`.
const MAX_BODY_BYTES: usize = gateway::config::DEFAULT_MAX_BODY_BYTES;

async fn webhook(
    request: HttpRequest,
    body: web::Bytes,
    secrets: web::Data<Secrets>,
) -> HttpResponse {
    let signature = request
        .headers()
        .get("X-Hub-Signature-256")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    match secrets.verify(signature, &body) {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(_) => HttpResponse::Unauthorized().finish(),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    actors::logging::init();
    let secret = SecretString::from(tests::gateway::SECRET);
    let secrets = web::Data::new(Secrets::new(&secret, None));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(secrets.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .route("/webhook", web::post().to(webhook))
    })
    .bind(("127.0.0.1", 0))?;
    let port = server.addrs()[0].port();
    log::info!(event = "minimal_webhook_listening", port; "minimal webhook handler listening");
    server.run().await
}
