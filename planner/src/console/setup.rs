//! The set-up page: creating the GitHub App from a manifest (admin only).
//!
//! 1. `GET /console/setup`: the App's name, the gateway's webhook URL and, optionally, the
//!    organization that will own it.
//! 2. `POST /console/setup`: the manifest (permissions the gateway, planner and manager need,
//!    the `workflow_job` event, the redirect back here) in a form the person sends to GitHub
//!    (`APP_CONSOLE_GITHUB_URL`: github.com or a GitHub Enterprise Server), with a `state`
//!    bound to the session.
//! 3. GitHub creates the App and redirects to `GET /console/setup/callback?code=...&state=...`;
//!    the planner converts the code (`POST /app-manifests/{code}/conversions` against the
//!    REST API) and shows the App's id, webhook secret and private key once, for the operator to
//!    store. Nothing of it is stored by the planner, nor logged; the page is `no-store`, and the
//!    code cannot be converted twice.

use actix_web::{get, http::header, post, web, HttpRequest, HttpResponse};
use askama::Template;
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::{html, Console, ConsoleError, Nav, Viewer, CONTENT_SECURITY_POLICY};

/// The permissions the App asks for, with who needs each.
pub const PERMISSIONS: [(&str, &str, &str); 5] = [
    (
        "actions",
        "read",
        "planner: reconciles jobs with no news (GET a workflow job)",
    ),
    (
        "organization_hooks",
        "write",
        "gateway: lists and redelivers failed deliveries of an organization webhook",
    ),
    (
        "repository_hooks",
        "write",
        "gateway: the same for a repository webhook",
    ),
    (
        "organization_self_hosted_runners",
        "write",
        "manager: registers and removes an organization's runners",
    ),
    (
        "administration",
        "write",
        "manager: registers and removes a repository's runners",
    ),
];

/// Longest App name GitHub takes.
const MAX_NAME: usize = 34;

#[derive(Template)]
#[template(path = "console/setup.html")]
struct SetupPage {
    nav: Nav,
    github_url: String,
    name: String,
    webhook_url: String,
    organization: String,
    permissions: &'static [(&'static str, &'static str, &'static str)],
    error: Option<String>,
}

/// The form that starts the App's creation.
#[get("/setup")]
pub async fn setup_page(
    viewer: Viewer,
    console: web::Data<Console>,
) -> Result<HttpResponse, ConsoleError> {
    viewer.require_admin()?;
    html(&SetupPage {
        nav: viewer.nav("setup"),
        github_url: console.config.github_url.to_string(),
        name: "runner-planner".to_owned(),
        webhook_url: console.config.webhook_url.clone().unwrap_or_default(),
        organization: String::new(),
        permissions: &PERMISSIONS,
        error: None,
    })
}

/// The set-up form's fields.
#[derive(Deserialize)]
pub struct SetupForm {
    csrf: String,
    name: String,
    webhook_url: String,
    #[serde(default)]
    organization: String,
}

#[derive(Template)]
#[template(path = "console/setup-confirm.html")]
struct ConfirmPage {
    nav: Nav,
    action: String,
    manifest: String,
    name: String,
    webhook_url: String,
    owner: String,
}

fn valid_organization(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 39
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The manifest and the form that sends it to GitHub.
#[post("/setup")]
pub async fn setup_start(
    req: HttpRequest,
    viewer: Viewer,
    console: web::Data<Console>,
    form: web::Form<SetupForm>,
) -> Result<HttpResponse, ConsoleError> {
    viewer.require_admin()?;
    viewer.check_csrf(&form.csrf)?;
    let form = form.into_inner();
    let (name, webhook_url, organization) = (
        form.name.trim().to_owned(),
        form.webhook_url.trim().to_owned(),
        form.organization.trim().to_owned(),
    );
    let problem = if name.is_empty() || name.chars().count() > MAX_NAME {
        Some(format!(
            "The App's name must be 1 to {MAX_NAME} characters."
        ))
    } else if actors::github::parse_api_url(&webhook_url).is_err() {
        Some("The webhook URL must be an http:// or https:// URL (the gateway's /webhook).".into())
    } else if !organization.is_empty() && !valid_organization(&organization) {
        Some("The organization must be a GitHub login (letters, digits, -).".into())
    } else {
        None
    };
    if let Some(problem) = problem {
        let page = SetupPage {
            nav: viewer.nav("setup"),
            github_url: console.config.github_url.to_string(),
            name,
            webhook_url,
            organization,
            permissions: &PERMISSIONS,
            error: Some(problem),
        };
        return super::html_with(actix_web::http::StatusCode::BAD_REQUEST, &page);
    }
    let info = req.connection_info();
    let console_url = format!("{}://{}/console", info.scheme(), info.host());
    drop(info);
    let manifest = manifest(&name, &webhook_url, &console_url);
    let github = &console.config.github_url;
    let base = github.as_str().trim_end_matches('/');
    let state = console.keys.setup_state(&viewer.session);
    let action = if organization.is_empty() {
        format!("{base}/settings/apps/new?state={state}")
    } else {
        format!("{base}/organizations/{organization}/settings/apps/new?state={state}")
    };
    let page = ConfirmPage {
        nav: viewer.nav("setup"),
        action,
        manifest: manifest.to_string(),
        name,
        webhook_url,
        owner: if organization.is_empty() {
            "your user account".to_owned()
        } else {
            format!("the organization {organization}")
        },
    };
    let mut response = html(&page)?;
    response
        .add_cookie(&super::session::setup_cookie(
            &req,
            viewer.session.cookie_value().to_owned(),
        ))
        .map_err(|_| ConsoleError::BadForm)?;
    // This one form posts to GitHub.
    let policy = CONTENT_SECURITY_POLICY.replace(
        "form-action 'self'",
        &format!("form-action 'self' {}", origin(github)),
    );
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_str(&policy).map_err(|_| ConsoleError::BadForm)?,
    );
    Ok(response)
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// The App manifest: a private App receiving `workflow_job` at the gateway, with
/// [`PERMISSIONS`], redirecting back to this console.
pub fn manifest(name: &str, webhook_url: &str, console_url: &str) -> serde_json::Value {
    let permissions: serde_json::Map<String, serde_json::Value> = PERMISSIONS
        .iter()
        .map(|(permission, access, _)| ((*permission).to_owned(), json!(access)))
        .collect();
    json!({
        "name": name,
        "url": console_url,
        "hook_attributes": {"url": webhook_url, "active": true},
        "redirect_url": format!("{console_url}/setup/callback"),
        "public": false,
        "default_permissions": permissions,
        "default_events": ["workflow_job"],
    })
}

/// What GitHub redirects back with.
#[derive(Deserialize)]
pub struct Callback {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
}

/// The conversion's answer (the fields shown). Not `Debug`: it holds the App's secrets.
#[derive(Deserialize)]
struct Conversion {
    id: u64,
    slug: String,
    html_url: String,
    #[serde(default)]
    client_id: String,
    webhook_secret: Option<String>,
    pem: String,
}

#[derive(Template)]
#[template(path = "console/setup-done.html")]
struct DonePage {
    nav: Nav,
    id: u64,
    slug: String,
    html_url: String,
    install_url: String,
    client_id: String,
    webhook_secret: String,
    pem: String,
}

fn valid_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 100
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// GitHub's redirect: the code converted into the App's credentials, shown once.
#[get("/setup/callback")]
pub async fn setup_callback(
    req: HttpRequest,
    console: web::Data<Console>,
    query: web::Query<Callback>,
) -> Result<HttpResponse, ConsoleError> {
    // Coming from GitHub, the browser sends the set-up cookie only; from the console itself
    // (a reload), the session cookie too.
    let viewer = match Viewer::from_cookie(&req, super::session::SESSION_COOKIE).await {
        Ok(viewer) => viewer,
        Err(_) => Viewer::from_cookie(&req, super::session::SETUP_COOKIE).await?,
    };
    viewer.require_admin()?;
    if !super::session::same(&query.state, &console.keys.setup_state(&viewer.session)) {
        return Err(ConsoleError::Csrf);
    }
    if !valid_code(&query.code) {
        return Err(crate::error::ApiError::field("code", "not a code GitHub sends").into());
    }
    let conversion = convert(&console, &query.code).await?;
    log::info!(
        "event=console_github_app_created app_id={} slug={}",
        conversion.id,
        conversion.slug
    );
    let webhook_secret = SecretString::from(conversion.webhook_secret.unwrap_or_default());
    let pem = SecretString::from(conversion.pem);
    let mut response = html(&DonePage {
        nav: viewer.nav("setup"),
        id: conversion.id,
        install_url: format!("{}/installations/new", conversion.html_url),
        html_url: conversion.html_url,
        slug: conversion.slug,
        client_id: conversion.client_id,
        webhook_secret: webhook_secret.expose_secret().to_owned(),
        pem: pem.expose_secret().to_owned(),
    })?;
    response
        .add_cookie(&super::session::removal(&req, super::session::SETUP_COOKIE))
        .map_err(|_| ConsoleError::BadForm)?;
    Ok(response)
}

/// `POST /app-manifests/{code}/conversions` (no credentials: the code is one).
async fn convert(console: &Console, code: &str) -> Result<Conversion, ConsoleError> {
    let api = console.config.github_api_url.as_str().trim_end_matches('/');
    let response = console
        .http
        .post(format!("{api}/app-manifests/{code}/conversions"))
        .header(header::ACCEPT.as_str(), "application/vnd.github+json")
        .header("X-GitHub-Api-Version", actors::github::API_VERSION)
        .send()
        .await
        .map_err(|_| ConsoleError::GitHub("GitHub could not be reached in time.".to_owned()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(ConsoleError::GitHub(format!(
            "GitHub refused the code with status {}: a code works once and for an hour; \
             start again from the set-up page.",
            status.as_u16()
        )));
    }
    response.json().await.map_err(|_| {
        ConsoleError::GitHub("GitHub's answer is not an App's credentials.".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_asks_for_what_the_services_need() {
        let manifest = manifest(
            "planner",
            "https://gw.example.com/webhook",
            "https://planner.example.com/console",
        );
        assert_eq!(
            manifest["hook_attributes"]["url"],
            "https://gw.example.com/webhook"
        );
        assert_eq!(manifest["default_events"], json!(["workflow_job"]));
        assert_eq!(
            manifest["redirect_url"],
            "https://planner.example.com/console/setup/callback"
        );
        assert_eq!(manifest["public"], false);
        assert_eq!(manifest["default_permissions"]["actions"], "read");
        assert_eq!(
            manifest["default_permissions"]["organization_self_hosted_runners"],
            "write"
        );
    }

    #[test]
    fn codes_and_organizations_are_checked() {
        assert!(valid_code("a1b2-c3_d4"));
        for bad in ["", "a/b", "a?b", &"x".repeat(101)] {
            assert!(!valid_code(bad), "{bad}");
        }
        assert!(valid_organization("my-org"));
        assert!(!valid_organization("my org"));
    }
}
