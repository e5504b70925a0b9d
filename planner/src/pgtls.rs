//! TLS of the pressure calculator's `LISTEN` connection (tokio-postgres), with the connection
//! string's `sslmode` and `sslrootcert` read as libpq reads them for the pool, so that both
//! connections are protected alike.
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | - |
//! | `allow`, `prefer` (the default) | when the server offers it, else plain | not checked |
//! | `require` | always (no TLS: the connection fails) | not checked; with `sslrootcert`, as `verify-ca` |
//! | `verify-ca` | always | signed by `sslrootcert` |
//! | `verify-full` | always | signed by `sslrootcert`, and for the host connected to |
//!
//! `sslrootcert` is a file of PEM certificates, or `system` for the system's roots; for
//! `verify-ca`/`verify-full` without it, `~/.postgresql/root.crt` (libpq's default). `allow`
//! tries TLS first (tokio-postgres has no plain-first mode); it connects wherever libpq's does.
//! Client certificates (`sslcert`, `sslkey`) are refused with a clear error rather than
//! ignored. libpq's `PGSSLMODE`-style environment variables are not read: put the settings in
//! the connection string.

use std::{path::PathBuf, sync::Arc, time::Duration};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    client::WebPkiServerVerifier,
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::{config::SslMode as PgSslMode, tls::MakeTlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, TlsError> {
        Ok(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return Err(TlsError::SslMode),
        })
    }
}

/// Why a connection string cannot be used for the `LISTEN` connection. Messages never quote
/// the string (it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full")]
    SslMode,
    #[error("{0} (a client certificate) is not supported for the LISTEN connection")]
    ClientCertificate(&'static str),
    #[error(
        "sslmode={0} needs sslrootcert (a file of PEM certificates, or `system`), and \
         ~/.postgresql/root.crt does not exist"
    )]
    NoRootCertificate(&'static str),
    #[error("sslrootcert {path}: {reason}")]
    RootCertificate { path: String, reason: String },
    #[error("the connection string is not understood by tokio-postgres")]
    Unparsable,
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The connection object of a [`ListenTarget::connect`] (it does the I/O).
pub type ListenConnection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// Where and how the `LISTEN` connection connects.
pub struct ListenTarget {
    /// The connection string without libpq's TLS settings, with the TLS mode set.
    pub config: tokio_postgres::Config,
    /// The mode asked for.
    pub mode: SslMode,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for ListenTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenTarget")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl ListenTarget {
    /// Reads a `postgres://` connection string.
    pub fn parse(url: &str) -> Result<Self, TlsError> {
        // A URL keeps its parameters in the query (`&`-separated, percent-encoded); libpq's
        // `key=value` form has them among the others, separated by spaces.
        let keyword_form = !url.contains("://");
        let (base, params, separator) = if keyword_form {
            ("", url, ' ')
        } else {
            let (base, query) = url.split_once('?').unwrap_or((url, ""));
            (base, query, '&')
        };
        let mut mode = SslMode::Prefer;
        let mut root: Option<String> = None;
        let mut kept = Vec::new();
        for pair in params.split(separator).filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = if keyword_form {
                value.trim_matches('\'').into()
            } else {
                percent_encoding::percent_decode_str(value).decode_utf8_lossy()
            };
            match key.trim() {
                "sslmode" => mode = SslMode::parse(&value)?,
                "sslrootcert" => root = Some(value.into_owned()),
                "sslcert" => return Err(TlsError::ClientCertificate("sslcert")),
                "sslkey" => return Err(TlsError::ClientCertificate("sslkey")),
                _ => kept.push(pair),
            }
        }
        let url = if keyword_form {
            kept.join(" ")
        } else if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| TlsError::Unparsable)?;
        config.ssl_mode(match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
        let tls = MakeRustlsConnect::new(client_config(mode, root.as_deref())?);
        Ok(Self { config, mode, tls })
    }

    /// Connects within `timeout`; the caller drives the returned connection.
    pub async fn connect(
        &self,
        timeout: Duration,
    ) -> Result<(tokio_postgres::Client, ListenConnection), tokio_postgres::Error> {
        let mut config = self.config.clone();
        config.connect_timeout(timeout);
        config.connect(self.tls.clone()).await
    }
}

/// An error with its causes (`error performing TLS handshake: server does not support TLS`):
/// tokio-postgres's own message names only the kind of failure.
pub fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.ends_with(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for `mode`, with `root` (`sslrootcert`) when given.
fn client_config(mode: SslMode, root: Option<&str>) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let verify_ca = match mode {
        SslMode::VerifyCa => true,
        // libpq: with a root certificate, `require` checks the chain as `verify-ca` does.
        SslMode::Require => root.is_some(),
        _ => false,
    };
    let config = match mode {
        SslMode::VerifyFull => builder
            .with_root_certificates(roots(root, "verify-full")?)
            .with_no_client_auth(),
        _ => {
            let chain = if verify_ca {
                let roots = Arc::new(roots(root, "verify-ca")?);
                let chain = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|err| rustls::Error::General(err.to_string()))?;
                Some(chain)
            } else {
                None
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient { chain, provider }))
                .with_no_client_auth()
        }
    };
    Ok(config)
}

/// The trusted roots: `sslrootcert` (a PEM file, or `system`), else libpq's default file.
fn roots(root: Option<&str>, mode: &'static str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let path = match root {
        Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::RootCertificate {
                    path: "system".into(),
                    reason: "no certificate found in the system's store".into(),
                });
            }
            return Ok(store);
        }
        Some(path) => PathBuf::from(path),
        None => {
            let default = std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".postgresql/root.crt"))
                .filter(|path| path.exists());
            default.ok_or(TlsError::NoRootCertificate(mode))?
        }
    };
    let shown = path.display().to_string();
    let certificates = CertificateDer::pem_file_iter(&path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| TlsError::RootCertificate {
            path: shown.clone(),
            reason: err.to_string(),
        })?;
    let (added, _) = store.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(TlsError::RootCertificate {
            path: shown,
            reason: "no certificate in it".into(),
        });
    }
    Ok(store)
}

/// The check of the server's certificate below `verify-full`. The handshake signatures are
/// verified in every mode.
#[derive(Debug)]
struct Lenient {
    /// `verify-ca`: the chain must lead to a trusted root; the name in the certificate is not
    /// compared with the host. `None` for `require`/`prefer` without a root: encryption, no
    /// check of who the server is (libpq's meaning).
    chain: Option<Arc<WebPkiServerVerifier>>,
    /// The signature algorithms the handshake may use.
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_settings_are_taken_out_and_mapped() {
        for (query, mode, pg) in [
            ("", SslMode::Prefer, PgSslMode::Prefer),
            ("?sslmode=disable", SslMode::Disable, PgSslMode::Disable),
            ("?sslmode=allow", SslMode::Allow, PgSslMode::Prefer),
            (
                "?application_name=x&sslmode=require",
                SslMode::Require,
                PgSslMode::Require,
            ),
        ] {
            let target =
                ListenTarget::parse(&format!("postgres://u:pw@db/planner{query}")).unwrap();
            assert_eq!(
                (target.mode, target.config.get_ssl_mode()),
                (mode, pg),
                "{query}"
            );
        }
        let target = ListenTarget::parse(
            "postgres://db/planner?sslmode=verify-full&sslrootcert=system&connect_timeout=3",
        );
        // The system store may be empty on a build machine; either way the mode was understood.
        if let Ok(target) = target {
            assert_eq!(target.config.get_ssl_mode(), PgSslMode::Require);
            assert_eq!(
                target.config.get_connect_timeout(),
                Some(&Duration::from_secs(3))
            );
        }
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_without_quoting_the_string() {
        for (url, expected) in [
            (
                "postgres://u:SECRET@db/p?sslmode=verify-everything",
                "sslmode must be one of",
            ),
            (
                "postgres://u:SECRET@db/p?sslcert=/c.pem",
                "sslcert (a client certificate)",
            ),
            ("postgres://u:SECRET@db/p?sslkey=/k.pem", "sslkey"),
            (
                "postgres://u:SECRET@db/p?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
                "sslrootcert /nonexistent/ca.pem:",
            ),
            (
                "postgres://u:SECRET@db/p?colour=red",
                "not understood by tokio-postgres",
            ),
        ] {
            let message = ListenTarget::parse(url).unwrap_err().to_string();
            assert!(message.contains(expected), "{url}: {message}");
            assert!(!message.contains("SECRET"), "{message}");
        }
    }
}
