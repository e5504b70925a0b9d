//! The fake's GitHub App manifest flow: the web page a person confirms the App on
//! (`POST /settings/apps/new` or `/organizations/{org}/settings/apps/new` with the `manifest`
//! form field; the fake confirms at once and redirects to the manifest's `redirect_url` with a
//! code and the `state` it was given) and the conversion of that code into the App's
//! credentials (`POST /app-manifests/{code}/conversions`: 201 once, 404 after, as GitHub
//! answers a code used or unknown). The App's private key is the test-only key.

use actix_web::{http::header, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::{answer, query, State, PRIVATE_KEY};

/// An App created from a manifest.
#[derive(Debug, Clone)]
pub struct ManifestApp {
    /// Its id.
    pub id: u64,
    /// The code GitHub handed back.
    pub code: String,
    /// The manifest it was created from.
    pub manifest: Value,
    /// The organization that owns it (`None`: the user).
    pub organization: Option<String>,
    /// The webhook secret GitHub made up.
    pub webhook_secret: String,
    /// Whether its code has been converted.
    pub converted: bool,
}

/// Answers the manifest routes (none else: `None`): the web pages at the root only, the
/// conversion also under GitHub Enterprise Server's API prefix (`enterprise_api`).
pub(super) fn route(
    request: &HttpRequest,
    body: &[u8],
    state: &mut State,
    method: &str,
    segments: &[&str],
    enterprise_api: bool,
) -> Option<HttpResponse> {
    match (segments, method, enterprise_api) {
        (["settings", "apps", "new"], "POST", false) => Some(create(request, body, state, None)),
        (["organizations", org, "settings", "apps", "new"], "POST", false) => {
            Some(create(request, body, state, Some((*org).to_owned())))
        }
        (["app-manifests", code, "conversions"], "POST", _) => Some(convert(state, code)),
        _ => None,
    }
}

fn create(
    request: &HttpRequest,
    body: &[u8],
    state: &mut State,
    organization: Option<String>,
) -> HttpResponse {
    let form: std::collections::HashMap<String, String> = match serde_urlencoded_form(body) {
        Some(form) => form,
        None => return HttpResponse::BadRequest().body("not a form"),
    };
    let Some(manifest) = form
        .get("manifest")
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
    else {
        return HttpResponse::UnprocessableEntity().body("no manifest");
    };
    let Some(redirect) = manifest["redirect_url"].as_str().map(str::to_owned) else {
        return HttpResponse::UnprocessableEntity().body("no redirect_url");
    };
    let code = uuid::Uuid::new_v4().simple().to_string();
    let id = 90_000 + state.manifest_apps.len() as u64;
    state.manifest_apps.push(ManifestApp {
        id,
        code: code.clone(),
        manifest,
        organization,
        webhook_secret: format!("whsec-{}", uuid::Uuid::new_v4().simple()),
        converted: false,
    });
    let given = query(request).get("state").cloned().unwrap_or_default();
    HttpResponse::Found()
        .insert_header((
            header::LOCATION,
            format!("{redirect}?code={code}&state={given}"),
        ))
        .finish()
}

fn serde_urlencoded_form(body: &[u8]) -> Option<std::collections::HashMap<String, String>> {
    let text = std::str::from_utf8(body).ok()?;
    actix_web::web::Query::<std::collections::HashMap<String, String>>::from_query(text)
        .ok()
        .map(|form| form.into_inner())
}

fn convert(state: &mut State, code: &str) -> HttpResponse {
    let Some(app) = state
        .manifest_apps
        .iter_mut()
        .find(|app| app.code == code && !app.converted)
    else {
        return answer(404, json!({"message": "Not Found"}));
    };
    app.converted = true;
    let name = app.manifest["name"].as_str().unwrap_or_default().to_owned();
    let slug = name.to_lowercase().replace(' ', "-");
    let owner = app
        .organization
        .clone()
        .unwrap_or_else(|| "octocat".to_owned());
    answer(
        201,
        json!({
            "id": app.id,
            "slug": slug,
            "node_id": format!("A_{}", app.id),
            "name": name,
            "owner": {"login": owner},
            "html_url": format!("https://github.com/apps/{slug}"),
            "client_id": format!("Iv1.{}", app.id),
            "client_secret": "client-secret-of-the-fake",
            "webhook_secret": app.webhook_secret,
            "pem": PRIVATE_KEY,
            "permissions": app.manifest["default_permissions"],
            "events": app.manifest["default_events"],
        }),
    )
}
