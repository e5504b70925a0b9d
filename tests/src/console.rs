//! The planner's web console over plain HTTP, as a browser without JavaScript uses it: a
//! client that keeps the console's cookies ([`ConsoleClient`]), follows no redirects (tests
//! check each one), reads the CSRF token out of a page's form ([`csrf_of`]), walks the GitHub
//! App set-up up to GitHub's redirect back ([`ConsoleClient::create_app`]), and reads what a
//! page shows: an element's text ([`text_of`]), a table's rows ([`table_rows`]), a list's items
//! ([`list_items`]), a link's target ([`link_to`]).

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

/// What [`ConsoleClient::create_app`] went through.
pub struct AppCreation {
    /// The confirmation page's `Content-Security-Policy`.
    pub csp: String,
    /// Where its form posts the manifest (GitHub's page).
    pub action: String,
    /// Where GitHub sent the browser back (the console's callback, with the code).
    pub callback: String,
}

impl ConsoleClient {
    /// The set-up flow as a browser walks it, up to GitHub's redirect back: the form (an App
    /// named `name`, owned by `organization` or the user), the confirmation page, the manifest
    /// posted to GitHub (here the fake, which confirms at once).
    pub async fn create_app(&self, name: &str, organization: Option<&str>) -> AppCreation {
        let csrf = csrf_of(&self.page("/console/setup").await);
        let mut form = vec![
            ("csrf", csrf.as_str()),
            ("name", name),
            ("webhook_url", "https://gw.example.com/webhook"),
        ];
        if let Some(organization) = organization {
            form.push(("organization", organization));
        }
        let confirm = self.post_form("/console/setup", &form).await;
        assert_eq!(confirm.status(), 200, "the confirmation page");
        let csp = confirm.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("CSP is text")
            .to_owned();
        let confirm = confirm.text().await.expect("the confirmation page");
        let action = foreign_form_action(&confirm);
        let manifest = input_value(&confirm, "manifest");
        let created = self.post_form(&action, &[("manifest", &manifest)]).await;
        assert_eq!(created.status(), 302, "GitHub redirects back");
        AppCreation {
            csp,
            action,
            callback: location(&created),
        }
    }
}

/// The text of the element whose opening tag holds `marker` (e.g. `id="total"`): its content
/// without tags, HTML-unescaped, whitespace collapsed. Panics, naming it, when there is none.
pub fn text_of(page: &str, marker: &str) -> String {
    let at = page
        .find(marker)
        .unwrap_or_else(|| panic!("no element with {marker} in the page"));
    let open = page[..at].rfind('<').expect("an opening tag");
    let tag: String = page[open + 1..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    let start = at + page[at..].find('>').expect("end of the tag") + 1;
    let end = start
        + page[start..]
            .find(&format!("</{tag}>"))
            .unwrap_or_else(|| panic!("no </{tag}> after {marker}"));
    plain(&page[start..end])
}

/// The contents of each `<tag>` element of `html` (not nested in another of the same tag),
/// raw.
fn elements<'a>(html: &'a str, tags: &[&str]) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut rest = html;
    loop {
        let next = tags
            .iter()
            .filter_map(|tag| {
                let at = rest.match_indices(&format!("<{tag}")).find(|(at, open)| {
                    // `<th` is not `<thead`.
                    rest[at + open.len()..].starts_with(['>', ' '])
                })?;
                Some((at.0, *tag))
            })
            .min();
        let Some((at, tag)) = next else {
            return found;
        };
        let start = at + rest[at..].find('>').expect("end of the tag") + 1;
        let Some(length) = rest[start..].find(&format!("</{tag}>")) else {
            return found;
        };
        found.push(&rest[start..start + length]);
        rest = &rest[start + length..];
    }
}

/// The rows of the first table after `marker` in `page`, each its cells' text (as [`text_of`]
/// reads it) by column heading.
pub fn table_rows(page: &str, marker: &str) -> Vec<BTreeMap<String, String>> {
    let at = page
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in the page"));
    let table = &page[at..];
    let table = &table[..table.find("</table>").expect("end of the table")];
    let head = &table[..table.find("</thead>").expect("a table head")];
    let headings: Vec<String> = elements(head, &["th"]).into_iter().map(plain).collect();
    let body = &table[table.find("<tbody>").expect("a table body")..];
    elements(body, &["tr"])
        .into_iter()
        .map(|row| {
            headings
                .iter()
                .cloned()
                .zip(elements(row, &["th", "td"]).into_iter().map(plain))
                .collect()
        })
        .collect()
}

/// The text of each `<li>` of the list after `marker` in `page`.
pub fn list_items(page: &str, marker: &str) -> Vec<String> {
    let at = page
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in the page"));
    let list = &page[at..];
    let end = list
        .find("</ol>")
        .or_else(|| list.find("</ul>"))
        .expect("end of the list");
    elements(&list[..end], &["li"])
        .into_iter()
        .map(plain)
        .collect()
}

/// The `href` of the link with the text `text`, HTML-unescaped.
pub fn link_to(page: &str, text: &str) -> String {
    let at = page
        .find(&format!(">{text}</a>"))
        .unwrap_or_else(|| panic!("no link {text:?} in the page"));
    let open = page[..at].rfind("<a ").expect("the link's tag");
    let marker = "href=\"";
    let start = open + page[open..at].find(marker).expect("an href") + marker.len();
    let end = start + page[start..].find('"').expect("end of the href");
    unescape(&page[start..end])
}

/// HTML as a person reads it: tags dropped, references decoded, whitespace collapsed.
fn plain(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    unescape(&text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
