//! The planner's web console over plain HTTP, as a browser without JavaScript uses it: a
//! client that keeps the console's cookies ([`ConsoleClient`]), follows no redirects (tests
//! check each one), and reads the CSRF token out of a page's form ([`csrf_of`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use reqwest::{header, Response};

/// A client of one planner's console, keeping its cookies.
pub struct ConsoleClient {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    http: reqwest::Client,
    cookies: Mutex<BTreeMap<String, String>>,
    /// Extra headers sent with every request (e.g. `X-Forwarded-Proto`).
    pub headers: Vec<(&'static str, String)>,
}

impl ConsoleClient {
    /// A client of the planner at `base`, without cookies.
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(15))
                .build()
                .expect("client"),
            cookies: Mutex::default(),
            headers: Vec::new(),
        }
    }

    /// The value of the cookie `name`, if the console set it.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.lock().expect("cookies").get(name).cloned()
    }

    /// Sets (or, with `None`, forgets) a cookie by hand.
    pub fn set_cookie(&self, name: &str, value: Option<&str>) {
        let mut cookies = self.cookies.lock().expect("cookies");
        match value {
            Some(value) => cookies.insert(name.to_owned(), value.to_owned()),
            None => cookies.remove(name),
        };
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let url = if url.starts_with("http") {
            url.to_owned()
        } else {
            format!("{}{url}", self.base)
        };
        let mut builder = self.http.request(method, url);
        let cookies = self.cookies.lock().expect("cookies");
        if !cookies.is_empty() {
            let line: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            builder = builder.header(header::COOKIE, line.join("; "));
        }
        for (name, value) in &self.headers {
            builder = builder.header(*name, value);
        }
        builder
    }

    fn keep(&self, response: &Response) {
        let mut cookies = self.cookies.lock().expect("cookies");
        for set in response.headers().get_all(header::SET_COOKIE) {
            let set = set.to_str().expect("Set-Cookie is text");
            let pair = set.split(';').next().unwrap_or_default();
            let (name, value) = pair.split_once('=').expect("name=value");
            let removed = value.is_empty() || set.to_ascii_lowercase().contains("max-age=0");
            if removed {
                cookies.remove(name);
            } else {
                cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    /// `GET path` (or a full URL).
    pub async fn get(&self, path: &str) -> Response {
        let response = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("GET");
        self.keep(&response);
        response
    }

    /// `POST path` with a form.
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Response {
        let response = self
            .request(reqwest::Method::POST, path)
            .form(form)
            .send()
            .await
            .expect("POST");
        self.keep(&response);
        response
    }

    /// Logs in with `token` through the login form; the answer to the form.
    pub async fn login(&self, token: &str) -> Response {
        let form = self.get("/console/login").await;
        assert_eq!(form.status(), 200);
        let csrf = csrf_of(&form.text().await.expect("login page"));
        self.post_form("/console/login", &[("token", token), ("csrf", &csrf)])
            .await
    }

    /// Logs in and checks it worked (303 to the overview).
    pub async fn signed_in(base: &str, token: &str) -> Self {
        let client = Self::new(base);
        let response = client.login(token).await;
        assert_eq!(response.status(), 303, "login with a valid token");
        assert_eq!(location(&response), "/console");
        client
    }

    /// The body of `GET path`, which must answer 200.
    pub async fn page(&self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.text().await.expect("page")
    }
}

/// The `Location` of a redirect.
pub fn location(response: &Response) -> String {
    response
        .headers()
        .get(header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The value of the first `<input name="name" value="...">` of a page, HTML-unescaped.
pub fn input_value(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no input {name} in the page"))
        + marker.len();
    let end = start + page[start..].find('"').expect("end of the value");
    unescape(&page[start..end])
}

/// The CSRF token of a page's first form.
pub fn csrf_of(page: &str) -> String {
    input_value(page, "csrf")
}

/// The `action` of the first form whose action is not on the console.
pub fn foreign_form_action(page: &str) -> String {
    page.match_indices("action=\"")
        .map(|(at, marker)| {
            let start = at + marker.len();
            let end = start + page[start..].find('"').expect("end of the action");
            unescape(&page[start..end])
        })
        .find(|action| action.starts_with("http"))
        .expect("a form posting elsewhere")
}

/// HTML's character references as the console's templates write them, decoded.
pub fn unescape(text: &str) -> String {
    text.replace("&#34;", "\"")
        .replace("&#60;", "<")
        .replace("&#62;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
        .replace("&#38;", "&")
}
