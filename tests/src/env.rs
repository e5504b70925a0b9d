//! Where the shared servers are: the one place the tests read their URLs from the environment.
//! Every test, helper and the bench take the broker and database URLs from here, so pointing
//! `TEST_RABBITMQ_URL` or `TEST_DATABASE_URL` elsewhere moves all of them.

use std::net::SocketAddr;

/// `TEST_RABBITMQ_URL`, by default the local broker (`amqp://guest:guest@127.0.0.1:5672/%2f`).
pub fn rabbitmq_url() -> String {
    std::env::var("TEST_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// `TEST_DATABASE_URL`, by default the local server's `postgres` database
/// (`postgres://postgres:postgres@127.0.0.1:5432/postgres`): test databases are created and
/// dropped through it.
pub fn database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The broker's address, resolved (to put a [`crate::proxy::TcpProxy`] in front of it).
pub async fn rabbitmq_address() -> SocketAddr {
    socket_address(&rabbitmq_url(), 5672).await
}

/// The database server's address, resolved.
pub async fn database_address() -> SocketAddr {
    socket_address(&database_url(), 5432).await
}

/// The broker URL, or the same URL pointed at `via` (a proxy).
pub fn rabbitmq_url_via(via: Option<SocketAddr>) -> String {
    match via {
        None => rabbitmq_url(),
        Some(address) => with_address(&rabbitmq_url(), address),
    }
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let slash = base.rfind('/').expect("database URL has a path");
    let mut out = format!("{}/{name}", &base[..slash]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// `url` with its `host:port` replaced by `address` (to go through a proxy).
pub fn with_address(url: &str, address: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("URL has a scheme");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let credentials = authority
        .rsplit_once('@')
        .map(|(credentials, _)| credentials);
    match credentials {
        Some(credentials) => format!("{scheme}://{credentials}@{address}{path}"),
        None => format!("{scheme}://{address}{path}"),
    }
}

/// The `host:port` of a URL (`default_port` when it names none), resolved.
pub async fn socket_address(url: &str, default_port: u16) -> SocketAddr {
    let (_, rest) = url.split_once("://").expect("URL has a scheme");
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    };
    let mut addresses = tokio::net::lookup_host(host_port.as_str())
        .await
        .unwrap_or_else(|err| panic!("cannot resolve {host_port}: {err}"));
    addresses
        .next()
        .unwrap_or_else(|| panic!("{host_port} has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://h/postgres?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
        let proxy: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            with_address("postgres://u:p@db:5432/x", proxy),
            "postgres://u:p@127.0.0.1:9/x"
        );
    }
}
