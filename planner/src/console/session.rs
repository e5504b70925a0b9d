//! Console sessions and CSRF tokens, with nothing stored server-side and no token in a cookie.
//!
//! A successful login sets the `planner_console` cookie to
//! `v1.<expiry>.<role>.<subject>.<nonce>.<mac>`: the expiry (Unix seconds), the role (`admin`
//! or `read`), for a general token the SHA-256 under which its hash is stored (the value in the
//! `auth` table, never the token), 16 random bytes, and an HMAC-SHA256 of all that under a key
//! derived from the admin token ([`Keys::from_admin_token`]). Every planner with the same admin
//! token accepts the same sessions (replicas behind a load balancer need no sticky sessions),
//! and changing the admin token ends every session. A general token's session is checked
//! against the database on every request, as the API checks the token: a deleted token ends
//! its sessions at once.
//!
//! Each form carries a CSRF token: the HMAC of the session cookie (or, on the login form, of a
//! random `planner_console_login` cookie set with the form), compared in constant time. Cookies
//! are `HttpOnly`, `SameSite=Strict`, `Path=/console`, and `Secure` when the request came over
//! TLS (directly, or as the `Forwarded` / `X-Forwarded-Proto` header of a proxy says).

use std::time::Duration;

use actix_web::{
    cookie::{Cookie, SameSite},
    HttpRequest,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The session cookie.
pub const SESSION_COOKIE: &str = "planner_console";
/// The cookie the login form's CSRF token is bound to.
pub const LOGIN_COOKIE: &str = "planner_console_login";
/// The session again, `SameSite=Lax` and sent to the set-up callback only: GitHub's redirect
/// back is a navigation from another site, which a `Strict` cookie does not follow. The
/// callback also needs the `state` bound to this session, so a forged navigation gets nowhere.
pub const SETUP_COOKIE: &str = "planner_console_setup";
/// Where [`SETUP_COOKIE`] is sent.
pub const SETUP_COOKIE_PATH: &str = "/console/setup/callback";
/// How long a set-up started may take (GitHub's codes last an hour).
pub const SETUP_LIFETIME: Duration = Duration::from_secs(3600);
/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// How long a login form stays valid.
pub const LOGIN_FORM_LIFETIME: Duration = Duration::from_secs(3600);
/// Where the console's cookies are sent.
pub const COOKIE_PATH: &str = "/console";

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Logged in with the admin token: every page, the set-up included.
    Admin,
    /// Logged in with a general token: the read-only pages.
    Read,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Read => "read",
        }
    }
}

/// A session read back from its cookie (signature and expiry checked; a general token's
/// existence is the caller's to check, against the database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub role: Role,
    /// For [`Role::Read`]: the stored SHA-256 of the token logged in with.
    pub token_sha256: Option<[u8; 32]>,
    /// When it ends (Unix seconds).
    pub expires: i64,
    /// The cookie's value, which CSRF tokens are bound to.
    cookie: String,
}

impl Session {
    /// The cookie value it was read from.
    pub fn cookie_value(&self) -> &str {
        &self.cookie
    }
}

/// The console's HMAC key.
#[derive(Clone)]
pub struct Keys {
    key: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys([REDACTED])")
    }
}

type HmacSha256 = Hmac<Sha256>;

impl Keys {
    /// The key every planner with this admin token derives: HMAC-SHA256 keyed with the token,
    /// of a fixed label.
    pub fn from_admin_token(admin_token: &str) -> Self {
        let mut mac =
            HmacSha256::new_from_slice(admin_token.as_bytes()).expect("HMAC takes any key length");
        mac.update(b"runner-planner console session key v1");
        Self {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self, purpose: &str, value: &str) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A new session's cookie value, valid until `now + SESSION_LIFETIME`.
    pub fn new_session(&self, role: Role, token_sha256: Option<[u8; 32]>, now: i64) -> String {
        let expires = now + SESSION_LIFETIME.as_secs() as i64;
        let subject = token_sha256.map_or_else(|| "-".to_owned(), hex::encode);
        let nonce = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
        let body = format!("v1.{expires}.{}.{subject}.{nonce}", role.as_str());
        let mac = URL_SAFE_NO_PAD.encode(self.mac("session", &body));
        format!("{body}.{mac}")
    }

    /// The session a cookie value holds, if it is one of ours and has not expired at `now`.
    pub fn session(&self, cookie: &str, now: i64) -> Option<Session> {
        let (body, mac) = cookie.rsplit_once('.')?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        if !bool::from(self.mac("session", body).as_slice().ct_eq(&mac)) {
            return None;
        }
        let mut parts = body.split('.');
        let (Some("v1"), Some(expires), Some(role), Some(subject), Some(_nonce), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let expires: i64 = expires.parse().ok()?;
        if expires <= now {
            return None;
        }
        let (role, token_sha256) = match (role, subject) {
            ("admin", "-") => (Role::Admin, None),
            ("read", hash) => {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(hash, &mut bytes).ok()?;
                (Role::Read, Some(bytes))
            }
            _ => return None,
        };
        Some(Session {
            role,
            token_sha256,
            expires,
            cookie: cookie.to_owned(),
        })
    }

    /// The CSRF token of the forms shown in `session`.
    pub fn csrf(&self, session: &Session) -> String {
        URL_SAFE_NO_PAD.encode(self.mac("csrf", &session.cookie))
    }

    /// The CSRF token of a login form bound to the login cookie `nonce`.
    pub fn login_csrf(&self, nonce: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac("login", nonce))
    }

    /// The `state` of a GitHub App manifest flow started in `session`: GitHub sends it back
    /// with the code, and a code arriving with another state is refused.
    pub fn setup_state(&self, session: &Session) -> String {
        URL_SAFE_NO_PAD.encode(self.mac("setup", &session.cookie))
    }
}

/// Constant-time equality of a presented token with the expected one.
pub fn same(presented: &str, expected: &str) -> bool {
    bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// A random login-cookie value.
pub fn new_login_nonce() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

/// Whether the request came over TLS: directly, or as a proxy's `Forwarded` /
/// `X-Forwarded-Proto` says.
pub fn over_tls(req: &HttpRequest) -> bool {
    req.connection_info().scheme() == "https"
}

/// A console cookie (`HttpOnly`, `SameSite=Strict`, `Path=/console`, `Secure` over TLS)
/// lasting `lifetime`.
pub fn cookie(
    req: &HttpRequest,
    name: &'static str,
    value: String,
    lifetime: Duration,
) -> Cookie<'static> {
    Cookie::build(name, value)
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(over_tls(req))
        .max_age(actix_web::cookie::time::Duration::seconds(
            lifetime.as_secs() as i64,
        ))
        .finish()
}

/// [`SETUP_COOKIE`] holding the session `value`.
pub fn setup_cookie(req: &HttpRequest, value: String) -> Cookie<'static> {
    let mut setup = cookie(req, SETUP_COOKIE, value, SETUP_LIFETIME);
    setup.set_path(SETUP_COOKIE_PATH);
    setup.set_same_site(SameSite::Lax);
    setup
}

/// The cookie that removes `name` from the browser.
pub fn removal(req: &HttpRequest, name: &'static str) -> Cookie<'static> {
    let mut removal = cookie(req, name, String::new(), Duration::ZERO);
    if name == SETUP_COOKIE {
        removal.set_path(SETUP_COOKIE_PATH);
    }
    removal.make_removal();
    removal
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_session_round_trips_and_holds_no_token() {
        let keys = Keys::from_admin_token("planner_v0_abcdefghij0123456789");
        let admin = keys.new_session(Role::Admin, None, NOW);
        assert!(!admin.contains("planner_v0"));
        let session = keys.session(&admin, NOW + 1).expect("valid");
        assert_eq!(session.role, Role::Admin);
        assert_eq!(session.token_sha256, None);

        let read = keys.new_session(Role::Read, Some([9; 32]), NOW);
        let session = keys.session(&read, NOW).expect("valid");
        assert_eq!(session.role, Role::Read);
        assert_eq!(session.token_sha256, Some([9; 32]));
        // Two logins, two sessions, two CSRF tokens.
        let again = keys.new_session(Role::Read, Some([9; 32]), NOW);
        assert_ne!(read, again);
        assert_ne!(
            keys.csrf(&session),
            keys.csrf(&keys.session(&again, NOW).unwrap())
        );
    }

    #[test]
    fn forged_expired_and_foreign_sessions_are_refused() {
        let keys = Keys::from_admin_token("planner_v0_abcdefghij0123456789");
        let other = Keys::from_admin_token("planner_v0_zzzzzzzzzz0123456789");
        let read = keys.new_session(Role::Read, Some([9; 32]), NOW);
        // Another admin token's key.
        assert_eq!(other.session(&read, NOW), None);
        // Expired.
        let end = NOW + SESSION_LIFETIME.as_secs() as i64;
        assert!(keys.session(&read, end - 1).is_some());
        assert_eq!(keys.session(&read, end), None);
        // A read session promoted to admin by editing the cookie.
        let promoted = read.replacen(".read.", ".admin.", 1);
        assert_eq!(keys.session(&promoted, NOW), None);
        for garbage in ["", ".", "v1", "v1.1.admin.-.x.", "a.b.c.d.e.f.g"] {
            assert_eq!(keys.session(garbage, NOW), None, "{garbage}");
        }
    }

    #[test]
    fn csrf_tokens_are_bound_to_their_purpose() {
        let keys = Keys::from_admin_token("planner_v0_abcdefghij0123456789");
        let session = keys
            .session(&keys.new_session(Role::Admin, None, NOW), NOW)
            .unwrap();
        let csrf = keys.csrf(&session);
        assert!(same(&csrf, &keys.csrf(&session)));
        assert!(!same(&csrf, &keys.setup_state(&session)));
        assert!(!same(&keys.login_csrf("a"), &keys.login_csrf("b")));
    }
}
