//! The web console under `/console`: server-rendered pages for a person in a browser, protected
//! like the API.
//!
//! - [`session`]: login with the admin token (every page) or a general token (the read-only
//!   pages), kept in a signed cookie that holds no token, and CSRF tokens for every form.
//! - [`pages`]: the overview (flavors with live pressure, open jobs, runners), jobs, one job's
//!   timeline, match, deliveries and runners pages, and the cookie-authenticated pressure stream
//!   the overview's script follows with `EventSource`.
//! - [`setup`]: creating the GitHub App from a manifest, the result shown once.
//! - [`managers`]: the runners each configured manager reports.
//! - [`assets`]: the stylesheet and the script, compiled into the binary.
//!
//! Templates are askama's (`planner/templates/console/`): compiled and type-checked with the
//! planner, inside its binary, every value HTML-escaped unless marked otherwise (nothing is).
//! Every answer carries a strict `Content-Security-Policy` (scripts and styles from the console
//! itself only, no inline script, no framing) and `Cache-Control: no-store`.

pub mod assets;
pub mod managers;
pub mod pages;
pub mod session;
pub mod setup;

use std::time::Duration;

use actix_web::{
    body::BoxBody,
    dev::HttpServiceFactory,
    http::{header, StatusCode},
    middleware::DefaultHeaders,
    web, FromRequest, HttpRequest, HttpResponse, ResponseError,
};
use askama::Template;
use futures::future::LocalBoxFuture;
use reqwest::Url;
use secrecy::SecretString;

use actors::config::{self, ConfigError, Source};

use crate::{error::ApiError, metrics::Metrics, state::AppState};

use session::{Keys, Role, Session};

/// The console's settings (all optional).
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// `APP_CONSOLE_MANAGER_URLS`: base URLs of the runner managers whose runners the console
    /// shows, comma-separated (none: no runners section).
    pub managers: Vec<Url>,
    /// `APP_CONSOLE_MANAGER_TOKEN_VALUE`: the bearer token the managers' status API accepts
    /// (required with `APP_CONSOLE_MANAGER_URLS`).
    pub manager_token: Option<SecretString>,
    /// `APP_CONSOLE_GITHUB_URL` (default `https://github.com`): where the set-up page creates the
    /// GitHub App (GitHub Enterprise Server: `https://HOST`).
    pub github_url: Url,
    /// The REST API the manifest code is converted with: `APP_GITHUB_API_URL` when set, else
    /// `https://api.github.com` for github.com and `<APP_CONSOLE_GITHUB_URL>/api/v3` otherwise.
    pub github_api_url: Url,
    /// `APP_CONSOLE_WEBHOOK_URL`: the gateway's webhook URL, offered on the set-up page.
    pub webhook_url: Option<String>,
    /// Longest wait for a manager or GitHub (5 s).
    pub request_timeout: Duration,
}

const MANAGER_URLS: &str = "APP_CONSOLE_MANAGER_URLS";
const MANAGER_TOKEN: &str = "APP_CONSOLE_MANAGER_TOKEN_VALUE";
const GITHUB_URL: &str = "APP_CONSOLE_GITHUB_URL";
const GITHUB_API_URL: &str = "APP_GITHUB_API_URL";
const WEBHOOK_URL: &str = "APP_CONSOLE_WEBHOOK_URL";

impl Default for ConsoleConfig {
    fn default() -> Self {
        let github_url = Url::parse("https://github.com").expect("github.com");
        Self {
            managers: Vec::new(),
            manager_token: None,
            github_api_url: api_url_of(&github_url),
            github_url,
            webhook_url: None,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// The REST API of a GitHub web URL: `api.github.com` for github.com, `/api/v3` on GitHub
/// Enterprise Server.
pub fn api_url_of(github_url: &Url) -> Url {
    if github_url.host_str() == Some("github.com") {
        return Url::parse(actors::github::DEFAULT_API_URL).expect("default API URL");
    }
    let mut api = github_url.clone();
    api.set_path(&format!(
        "{}/api/v3",
        github_url.path().trim_end_matches('/')
    ));
    api
}

impl ConsoleConfig {
    /// Reads the `APP_CONSOLE_*` variables (and `APP_GITHUB_API_URL`).
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let mut console = Self::default();
        if let Some(list) = source.get(MANAGER_URLS) {
            for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let url = actors::github::parse_api_url(item)
                    .map_err(|reason| ConfigError::new(MANAGER_URLS, reason))?;
                console.managers.push(url);
            }
        }
        console.manager_token = source.get(MANAGER_TOKEN).map(SecretString::from);
        if !console.managers.is_empty() && console.manager_token.is_none() {
            return Err(ConfigError::new(
                MANAGER_TOKEN,
                format!("is required with {MANAGER_URLS}"),
            ));
        }
        // The API's address follows the site's unless it is set itself.
        let site = config::parsed(source, GITHUB_URL, None, |url| {
            actors::github::parse_api_url(url).map(Some)
        })?;
        if let Some(site) = site {
            console.github_api_url = api_url_of(&site);
            console.github_url = site;
        }
        console.github_api_url = config::parsed(
            source,
            GITHUB_API_URL,
            console.github_api_url,
            actors::github::parse_api_url,
        )?;
        if let Some(url) = source.get(WEBHOOK_URL) {
            actors::github::parse_api_url(&url)
                .map_err(|reason| ConfigError::new(WEBHOOK_URL, reason))?;
            console.webhook_url = Some(url);
        }
        Ok(console)
    }
}

/// What the console's handlers share (besides [`AppState`] and [`PressureService`]).
pub struct Console {
    pub config: ConsoleConfig,
    pub keys: Keys,
    /// For the managers and GitHub (timeouts set per request).
    pub http: reqwest::Client,
    /// The planner's metrics: also the record of what the consumer did.
    pub metrics: Metrics,
}

impl Console {
    /// The console of a planner whose admin token is `admin_token`.
    pub fn new(
        config: ConsoleConfig,
        admin_token: &str,
        metrics: Metrics,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            keys: Keys::from_admin_token(admin_token),
            http: reqwest::Client::builder()
                .user_agent("github-runner-planner-console")
                .connect_timeout(config.request_timeout)
                .timeout(config.request_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            config,
            metrics,
        })
    }
}

/// The policy of every console page: nothing but the console's own scripts, styles and
/// connections (the pressure stream); no inline script or style, no plugins, no framing, forms
/// posting back to the console only (the set-up page adds GitHub).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// The `/console` scope: every page, with the console's headers.
pub fn service(console: web::Data<Console>) -> impl HttpServiceFactory {
    web::scope("/console")
        .app_data(console)
        .app_data(
            web::FormConfig::default()
                .limit(16 * 1024)
                .error_handler(|_, _| ConsoleError::BadForm.into()),
        )
        .app_data(web::QueryConfig::default().error_handler(|_, _| ConsoleError::BadForm.into()))
        .wrap(
            DefaultHeaders::new()
                .add((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
                .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                .add((header::X_FRAME_OPTIONS, "DENY"))
                .add((header::REFERRER_POLICY, "no-referrer"))
                .add((header::CACHE_CONTROL, "no-store")),
        )
        .service(assets::asset)
        .service(pages::login_form_route)
        .service(pages::login_route)
        .service(pages::logout_route)
        .service(pages::overview_page)
        .route(
            "/",
            web::get().to(|| async {
                HttpResponse::SeeOther()
                    .insert_header((header::LOCATION, "/console"))
                    .finish()
            }),
        )
        .service(pages::stream_route)
        .service(pages::jobs_page)
        .service(pages::job_page)
        .service(pages::matching_page)
        .service(pages::deliveries_page)
        .service(pages::runners_page)
        .service(setup::setup_page)
        .service(setup::setup_start)
        .service(setup::setup_callback)
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(ConsoleError::NotFound("page".to_owned()))
        }))
}

/// Everything a console request can fail with; each is an HTML page (or a redirect).
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No session, or one that is no longer valid: to the login page.
    #[error("not signed in")]
    SignedOut,
    /// A read-only session on an admin page.
    #[error("this page needs the admin token")]
    AdminOnly,
    /// A form without the CSRF token of this session (or login form).
    #[error(
        "this form has expired or did not come from this console; reload the page and try again"
    )]
    Csrf,
    /// A form that could not be read.
    #[error("the form could not be read")]
    BadForm,
    /// The login token was refused.
    #[error("unknown token")]
    BadToken,
    #[error("no such {0}")]
    NotFound(String),
    /// An error of the API's own rules (a filter, a name).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// GitHub refused or failed the manifest conversion.
    #[error("{0}")]
    GitHub(String),
    /// A page could not be rendered.
    #[error("rendering failed")]
    Render(#[from] askama::Error),
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage<'a> {
    nav: Nav,
    status: u16,
    message: &'a str,
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsoleError::SignedOut => StatusCode::SEE_OTHER,
            ConsoleError::AdminOnly | ConsoleError::Csrf => StatusCode::FORBIDDEN,
            ConsoleError::BadForm => StatusCode::BAD_REQUEST,
            ConsoleError::BadToken => StatusCode::UNAUTHORIZED,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::Api(err) => err.status_code(),
            ConsoleError::GitHub(_) => StatusCode::BAD_GATEWAY,
            ConsoleError::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        if let ConsoleError::SignedOut = self {
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/console/login"))
                .finish();
        }
        let status = self.status_code();
        let message = if status.is_server_error() && !matches!(self, ConsoleError::GitHub(_)) {
            log::error!(
                "event=console_failed status={} error=\"{self}\"",
                status.as_u16()
            );
            "something went wrong; the planner's log says what".to_owned()
        } else {
            self.to_string()
        };
        let page = ErrorPage {
            nav: Nav::anonymous(),
            status: status.as_u16(),
            message: &message,
        };
        match page.render() {
            Ok(body) => HttpResponse::build(status)
                .content_type("text/html; charset=utf-8")
                .body(body),
            Err(_) => HttpResponse::build(status).finish(),
        }
    }
}

/// The header every page shows: which pages there are, and the logout form.
pub struct Nav {
    /// The page shown (its link is marked current).
    pub page: &'static str,
    /// Signed in at all (the header shows the links and the logout form).
    pub signed_in: bool,
    pub admin: bool,
    /// The CSRF token of the logout form.
    pub csrf: String,
}

impl Nav {
    fn anonymous() -> Self {
        Self {
            page: "",
            signed_in: false,
            admin: false,
            csrf: String::new(),
        }
    }

    /// Whether `page` is the page shown: `aria-current` for its link.
    pub fn current(&self, page: &str) -> &'static str {
        if self.page == page {
            "page"
        } else {
            "false"
        }
    }
}

/// The person signed in (any valid session), else a redirect to the login page.
pub struct Viewer {
    pub session: Session,
    /// The CSRF token of this session's forms.
    pub csrf: String,
}

impl Viewer {
    /// The header of `page`.
    pub fn nav(&self, page: &'static str) -> Nav {
        Nav {
            page,
            signed_in: true,
            admin: self.session.role == Role::Admin,
            csrf: self.csrf.clone(),
        }
    }

    /// Checks a form's CSRF token.
    pub fn check_csrf(&self, presented: &str) -> Result<(), ConsoleError> {
        if session::same(presented, &self.csrf) {
            Ok(())
        } else {
            Err(ConsoleError::Csrf)
        }
    }

    /// 403 unless signed in with the admin token.
    pub fn require_admin(&self) -> Result<(), ConsoleError> {
        match self.session.role {
            Role::Admin => Ok(()),
            Role::Read => Err(ConsoleError::AdminOnly),
        }
    }
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Viewer {
    /// The viewer whose session is the cookie `name` of `req`, else [`ConsoleError::SignedOut`].
    pub fn from_cookie(
        req: &HttpRequest,
        name: &str,
    ) -> LocalBoxFuture<'static, Result<Self, ConsoleError>> {
        let cookie = req.cookie(name);
        let console = req.app_data::<web::Data<Console>>().cloned();
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let (Some(cookie), Some(console), Some(state)) = (cookie, console, state) else {
                return Err(ConsoleError::SignedOut);
            };
            let session = console
                .keys
                .session(cookie.value(), now())
                .ok_or(ConsoleError::SignedOut)?;
            if let Some(hash) = session.token_sha256 {
                // A general token's session lasts as long as the token does.
                let name = state
                    .db(move |conn| Ok(schema::queries::token_name_by_any_hash(conn, &[&hash])?))
                    .await?;
                if name.is_none() {
                    return Err(ConsoleError::SignedOut);
                }
            }
            let csrf = console.keys.csrf(&session);
            Ok(Viewer { session, csrf })
        })
    }
}

impl FromRequest for Viewer {
    type Error = ConsoleError;
    type Future = LocalBoxFuture<'static, Result<Self, ConsoleError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        Viewer::from_cookie(req, session::SESSION_COOKIE)
    }
}

/// A rendered page, `200 OK`.
pub fn html(page: &impl Template) -> Result<HttpResponse, ConsoleError> {
    html_with(StatusCode::OK, page)
}

/// A rendered page with `status`.
pub fn html_with(status: StatusCode, page: &impl Template) -> Result<HttpResponse, ConsoleError> {
    Ok(HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(page.render()?))
}

/// A short, human age: `42s`, `5m 3s`, `2h 10m`, `3d 4h`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_well() {
        assert_eq!(age(-3), "0s");
        assert_eq!(age(42), "42s");
        assert_eq!(age(303), "5m 3s");
        assert_eq!(age(7800), "2h 10m");
        assert_eq!(age(3 * 86400 + 4 * 3600 + 5), "3d 4h");
    }

    #[test]
    fn the_api_url_follows_the_github_url() {
        let dotcom = Url::parse("https://github.com").unwrap();
        assert_eq!(api_url_of(&dotcom).as_str(), "https://api.github.com/");
        let ghes = Url::parse("https://ghe.example.com").unwrap();
        assert_eq!(api_url_of(&ghes).as_str(), "https://ghe.example.com/api/v3");
    }

    struct Vars(Vec<(&'static str, &'static str)>);

    impl Source for Vars {
        fn get(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        }
    }

    #[test]
    fn the_configuration_names_the_variable_at_fault() {
        let console = ConsoleConfig::from_source(&Vars(vec![])).unwrap();
        assert!(console.managers.is_empty());
        assert_eq!(console.github_url.as_str(), "https://github.com/");

        let console = ConsoleConfig::from_source(&Vars(vec![
            (MANAGER_URLS, "http://m1:8080, http://m2:8080"),
            (MANAGER_TOKEN, "secret"),
            (GITHUB_URL, "https://ghe.example.com"),
        ]))
        .unwrap();
        assert_eq!(console.managers.len(), 2);
        assert_eq!(
            console.github_api_url.as_str(),
            "https://ghe.example.com/api/v3"
        );

        for (vars, variable) in [
            (vec![(MANAGER_URLS, "http://m1:8080")], MANAGER_TOKEN),
            (
                vec![(MANAGER_URLS, "ftp://m1"), (MANAGER_TOKEN, "x")],
                MANAGER_URLS,
            ),
            (vec![(GITHUB_URL, "github.com")], GITHUB_URL),
            (vec![(WEBHOOK_URL, "gateway")], WEBHOOK_URL),
        ] {
            let err = ConsoleConfig::from_source(&Vars(vars)).unwrap_err();
            assert_eq!(err.variable, variable);
        }
    }
}
