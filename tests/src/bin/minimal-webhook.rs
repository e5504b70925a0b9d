//! `minimal-webhook`: the benchmarks' floor under the gateway's CPU per webhook. An actix-web
//! server whose `POST /webhook` only checks `X-Hub-Signature-256` against the body (the
//! gateway's own `Secrets::verify`, with the tests' secret) and answers `200`: nothing is
//! parsed, counted or logged per request. It listens on a free port of 127.0.0.1 and says
//! which with `event=minimal_webhook_listening port=N`.
//!
//! With `MINIMAL_WEBHOOK_AMQP_URL` (one AMQP URI, or several separated by commas: the first
//! that answers, as the services connect), `MINIMAL_WEBHOOK_EXCHANGE` and
//! `MINIMAL_WEBHOOK_ROUTING_KEY` set, it also publishes each checked body there as a persistent,
//! mandatory message on one confirmed channel and answers `200` only after the broker's
//! confirm: the least a gateway that loses nothing does with lapin, and no more (no headers,
//! no retries, no reconnects).

use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use gateway::webhook::Secrets;
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    BasicProperties, Channel, Confirmation, Connection,
};
use secrecy::SecretString;

/// The gateway's default `APP_MAX_BODY_BYTES`.
const MAX_BODY_BYTES: usize = gateway::config::DEFAULT_MAX_BODY_BYTES;

/// Where checked bodies are published, when they are.
struct Target {
    /// Kept open as long as the process runs.
    _connection: Connection,
    channel: Channel,
    exchange: String,
    routing_key: String,
}

async fn webhook(
    request: HttpRequest,
    body: web::Bytes,
    secrets: web::Data<Secrets>,
    target: web::Data<Option<Target>>,
) -> HttpResponse {
    let signature = request
        .headers()
        .get("X-Hub-Signature-256")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if secrets.verify(signature, &body).is_err() {
        return HttpResponse::Unauthorized().finish();
    }
    let Some(target) = target.as_ref() else {
        return HttpResponse::Ok().finish();
    };
    let confirm = async {
        target
            .channel
            .basic_publish(
                target.exchange.as_str().into(),
                target.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await
    };
    match confirm.await {
        Ok(Confirmation::Ack(None)) => HttpResponse::Ok().finish(),
        _ => HttpResponse::ServiceUnavailable().finish(),
    }
}

fn broker(err: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("broker: {err}"))
}

/// The publishing target from the environment, when `MINIMAL_WEBHOOK_AMQP_URL` is set.
async fn target() -> std::io::Result<Option<Target>> {
    let Ok(url) = std::env::var("MINIMAL_WEBHOOK_AMQP_URL") else {
        return Ok(None);
    };
    let var = |name: &str| {
        std::env::var(name)
            .map_err(|_| std::io::Error::other(format!("{name} is required with the AMQP URL")))
    };
    let (exchange, routing_key) = (
        var("MINIMAL_WEBHOOK_EXCHANGE")?,
        var("MINIMAL_WEBHOOK_ROUTING_KEY")?,
    );
    let connection = actors::amqp::Brokers::new(&url)
        .connect("minimal-webhook", Duration::from_secs(10))
        .await
        .map_err(broker)?;
    let channel = connection.create_channel().await.map_err(broker)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(broker)?;
    Ok(Some(Target {
        _connection: connection,
        channel,
        exchange,
        routing_key,
    }))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    actors::logging::init();
    let secret = SecretString::from(tests::gateway::SECRET);
    let secrets = web::Data::new(Secrets::new(&secret, None));
    let target = web::Data::new(target().await?);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(secrets.clone())
            .app_data(target.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .route("/webhook", web::post().to(webhook))
    })
    .bind(("127.0.0.1", 0))?;
    let port = server.addrs()[0].port();
    log::info!(event = "minimal_webhook_listening", port; "minimal webhook handler listening");
    server.run().await
}
