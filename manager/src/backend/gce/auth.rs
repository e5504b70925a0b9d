//! OAuth access tokens for Compute Engine, with the project's own `jsonwebtoken` (the GitHub
//! client signs its App JWTs with it too):
//!
//! - a service-account key file (`APP_GCE_CREDENTIALS_FILE`): an RS256 JWT grant
//!   (`urn:ietf:params:oauth:grant-type:jwt-bearer`) posted to the file's `token_uri`;
//! - otherwise the metadata server's token of the VM or service the manager runs on
//!   (`/computeMetadata/v1/instance/service-accounts/default/token`, `Metadata-Flavor: Google`).
//!
//! A token is cached until a minute before it expires; [`Auth::invalidate`] drops it (a 401).
//! A token request that gets no answer, a 5xx or a 429 is retried as Compute Engine calls are
//! (the same attempts and backoff); any other refusal is not.

use std::path::Path;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::GceError;

/// The OAuth scope of the Compute Engine API.
pub const COMPUTE_SCOPE: &str = "https://www.googleapis.com/auth/compute";
/// A token is renewed this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Longest lifetime Google grants a self-signed JWT.
const JWT_LIFETIME_SECS: i64 = 3600;
/// Path of the default service account's token on the metadata server.
pub const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// Where tokens come from.
enum Source {
    Key {
        email: String,
        key_id: Option<String>,
        key: EncodingKey,
        token_uri: Url,
    },
    Metadata(Url),
}

/// The fields of a service-account key file this client uses.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: String,
    private_key: String,
    private_key_id: Option<String>,
    token_uri: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

struct Cached {
    value: SecretString,
    renew_at: Instant,
}

/// A token source with its cache.
pub struct Auth {
    source: Source,
    http: reqwest::Client,
    cached: Mutex<Option<Cached>>,
}

impl Auth {
    /// Tokens from the key file at `path`; the error names the file, never its key.
    pub fn from_key_file(path: &Path, http: reqwest::Client) -> Result<Self, GceError> {
        let invalid = |reason: String| {
            GceError::Config(format!(
                "APP_GCE_CREDENTIALS_FILE {}: {reason}",
                path.display()
            ))
        };
        let text = std::fs::read(path).map_err(|err| invalid(format!("cannot be read: {err}")))?;
        let file: KeyFile = serde_json::from_slice(&text)
            .map_err(|_| invalid("is not a service-account key file (JSON)".into()))?;
        if file.kind != "service_account" {
            return Err(invalid(format!(
                "has type {:?}; expected \"service_account\"",
                file.kind
            )));
        }
        let key = EncodingKey::from_rsa_pem(file.private_key.as_bytes())
            .map_err(|_| invalid("private_key is not an RSA private key (PEM)".into()))?;
        let token_uri = actors::github::parse_api_url(&file.token_uri)
            .map_err(|reason| invalid(format!("token_uri {reason}")))?;
        Ok(Self::new(
            Source::Key {
                email: file.client_email,
                key_id: file.private_key_id,
                key,
                token_uri,
            },
            http,
        ))
    }

    /// Tokens from the metadata server at `base`.
    pub fn from_metadata(base: &Url, http: reqwest::Client) -> Result<Self, GceError> {
        let url = base
            .join(METADATA_TOKEN_PATH)
            .map_err(|err| GceError::Config(format!("APP_GCE_METADATA_URL: {err}")))?;
        Ok(Self::new(Source::Metadata(url), http))
    }

    fn new(source: Source, http: reqwest::Client) -> Self {
        Self {
            source,
            http,
            cached: Mutex::new(None),
        }
    }

    /// `key file` or `metadata server`, for logs.
    pub fn kind(&self) -> &'static str {
        match self.source {
            Source::Key { .. } => "key_file",
            Source::Metadata(_) => "metadata_server",
        }
    }

    /// The cached token, or a new one.
    pub async fn token(&self) -> Result<SecretString, GceError> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref() {
            if Instant::now() < token.renew_at {
                return Ok(token.value.clone());
            }
        }
        let answer = self.fetch().await?;
        let value = SecretString::from(answer.access_token);
        let lifetime = Duration::from_secs(answer.expires_in);
        *cached = Some(Cached {
            value: value.clone(),
            renew_at: Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN),
        });
        log::info!(
            event = "gce_token_fetched",
            source = self.kind(),
            expires_in_s = answer.expires_in;
            "Google access token fetched"
        );
        Ok(value)
    }

    /// Forgets the cached token (it was refused).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    /// A new token, retrying transient failures.
    async fn fetch(&self) -> Result<TokenAnswer, GceError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.fetch_once().await {
                Err(Failure {
                    error,
                    transient: true,
                }) if attempt < super::ATTEMPTS => {
                    log::debug!(
                        event = "gce_token_retry",
                        source = self.kind(),
                        attempt,
                        error:% = error;
                        "retrying a Google token request"
                    );
                    tokio::time::sleep(super::retry_delay(attempt)).await;
                }
                result => return result.map_err(|failure| failure.error),
            }
        }
    }

    /// One token request.
    async fn fetch_once(&self) -> Result<TokenAnswer, Failure> {
        let lasting = |error| Failure {
            error,
            transient: false,
        };
        let request = match &self.source {
            Source::Key {
                email,
                key_id,
                key,
                token_uri,
            } => {
                let now = chrono::Utc::now().timestamp();
                let claims = Claims {
                    iss: email,
                    scope: COMPUTE_SCOPE,
                    aud: token_uri.as_str(),
                    iat: now,
                    exp: now + JWT_LIFETIME_SECS,
                };
                let mut header = Header::new(Algorithm::RS256);
                header.kid = key_id.clone();
                let assertion =
                    SecretString::from(jsonwebtoken::encode(&header, &claims, key).map_err(
                        |err| lasting(GceError::Auth(format!("cannot sign the JWT: {err}"))),
                    )?);
                self.http.post(token_uri.clone()).form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", assertion.expose_secret()),
                ])
            }
            Source::Metadata(url) => self
                .http
                .get(url.clone())
                .header("Metadata-Flavor", "Google"),
        };
        let response = request.send().await.map_err(|err| Failure {
            error: GceError::Auth(format!("token endpoint: {}", super::transport(&err))),
            transient: true,
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failure {
                error: GceError::Auth(format!("token endpoint answered {}", status.as_u16())),
                transient: super::transient_status(status.as_u16()),
            });
        }
        let body = super::read_body(response).await.map_err(|error| Failure {
            error,
            transient: true,
        })?;
        serde_json::from_slice(&body).map_err(|_| {
            lasting(GceError::Auth(
                "token endpoint answered no access token".into(),
            ))
        })
    }
}

/// Why a token request failed, and whether trying again may help.
struct Failure {
    error: GceError,
    transient: bool,
}
