//! The console's stylesheet and script, compiled into the binary (no files to deploy, no
//! Node build step) and served at `/console/assets/{name}`.

use actix_web::{get, http::header, web, HttpResponse};

use super::ConsoleError;

/// Every asset: name, content type, bytes.
const ASSETS: [(&str, &str, &str); 2] = [
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    ),
];

/// An asset, cacheable for an hour (they change only with the binary).
#[get("/assets/{name}")]
pub async fn asset(name: web::Path<String>) -> Result<HttpResponse, ConsoleError> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(asset, _, _)| *asset == name.as_str())
        .ok_or_else(|| ConsoleError::NotFound("asset".to_owned()))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, *content_type))
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(*body))
}
