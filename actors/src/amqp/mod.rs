//! AMQP (RabbitMQ) building blocks: topology and the publisher actor.

mod publisher;
mod topology;

pub use publisher::{
    Publish, PublishError, Publisher, PublisherConfig, PublisherStatus, Publishing, Shutdown,
    Status,
};
pub use topology::{DeclareError, QueueType, Topology, DELIVERY_LIMIT};

/// Why [`connect`] found no connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The broker refused or the network failed (the message never holds the URI).
    #[error("{0}")]
    Failed(#[from] lapin::Error),
    /// The handshakes did not finish in time.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// None of several nodes answered: each node's `host:port` and why.
    #[error("no broker node answered: {}", .0.iter().map(|(node, err)| format!("{node}: {err}")).collect::<Vec<_>>().join("; "))]
    NoNode(Vec<(String, ConnectError)>),
}

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use lapin::{Connection, ConnectionProperties};

/// The broker nodes a service connects to: `RABBITMQ_CONNECT_STRING`, one AMQP URI or several
/// separated by commas (the nodes of one cluster).
///
/// [`Brokers::connect`] tries them in turn and keeps the first that answers. The next call
/// (after that connection was lost) starts with the node after it, so a service moves to
/// another node rather than waiting for the one that went away. Clones share that position.
/// The URIs may hold passwords: `Debug` shows only how many there are.
#[derive(Clone)]
pub struct Brokers {
    uris: Arc<[String]>,
    next: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Brokers([{} redacted])", self.uris.len())
    }
}

impl Brokers {
    /// The URIs of `list`, separated by commas (spaces around them are ignored).
    pub fn new(list: &str) -> Self {
        Self {
            uris: split_uris(list).map(str::to_owned).collect(),
            next: Arc::default(),
        }
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.uris.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.uris.is_empty()
    }

    /// Connects to the first node that answers, starting after the node of the last
    /// connection; each attempt is bounded by `timeout`.
    pub async fn connect(&self, name: &str, timeout: Duration) -> Result<Connection, ConnectError> {
        let count = self.uris.len();
        let start = self.next.load(Ordering::SeqCst);
        let mut failures = Vec::new();
        for offset in 0..count {
            let index = (start + offset) % count;
            let uri = &self.uris[index];
            match connect(uri, name, timeout).await {
                Ok(connection) => {
                    self.next.store((index + 1) % count, Ordering::SeqCst);
                    return Ok(connection);
                }
                Err(err) if count == 1 => return Err(err),
                Err(err) => failures.push((node_of(uri), err)),
            }
        }
        Err(ConnectError::NoNode(failures))
    }
}

/// The URIs of a comma-separated list.
pub fn split_uris(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|uri| !uri.is_empty())
}

/// `host:port` of an AMQP URI: what a log may say about a node (never the credentials).
fn node_of(uri: &str) -> String {
    match uri.parse::<lapin::uri::AMQPUri>() {
        Ok(parsed) => format!("{}:{}", parsed.authority.host, parsed.authority.port),
        Err(_) => "an unparsable URI".to_owned(),
    }
}

/// Opens one AMQP connection with a bound on how long the TCP and AMQP handshakes may take.
///
/// `name` shows up in the RabbitMQ management UI so operators can tell the services apart.
pub async fn connect(uri: &str, name: &str, timeout: Duration) -> Result<Connection, ConnectError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(timeout, Connection::connect(uri, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(err)) => Err(ConnectError::Failed(err)),
        Err(_) => Err(ConnectError::TimedOut(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_split_on_commas() {
        let brokers = Brokers::new(" amqp://a:1/%2f, amqp://u:p@b:2/%2f ,,");
        assert_eq!(brokers.len(), 2);
        assert_eq!(&brokers.uris[1], "amqp://u:p@b:2/%2f");
        assert_eq!(format!("{brokers:?}"), "Brokers([2 redacted])");
    }

    #[test]
    fn nodes_are_named_without_credentials() {
        assert_eq!(
            node_of("amqp://guest:secret@10.0.0.1:5701/%2f"),
            "10.0.0.1:5701"
        );
    }

    #[tokio::test]
    async fn the_first_node_that_answers_is_used_and_the_next_connect_starts_after_it() {
        // Two listeners that accept and hang up: "answers" needs a real broker, so this checks
        // the order of attempts through the failures each node reports.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = closed.local_addr().unwrap();
        drop(closed);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = closed.local_addr().unwrap();
        drop(closed);
        let brokers = Brokers::new(&format!("amqp://u:pw@{a}/%2f,amqp://u:pw@{b}/%2f"));
        let err = brokers
            .connect("test", Duration::from_secs(2))
            .await
            .unwrap_err();
        let text = err.to_string();
        let (first, second) = (text.find(&a.to_string()), text.find(&b.to_string()));
        assert!(
            first.is_some() && second.is_some() && first < second,
            "{text}"
        );
        assert!(!text.contains("pw"), "a password is logged: {text}");
    }
}
