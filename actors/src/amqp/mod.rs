//! AMQP (RabbitMQ) building blocks: topology and the publisher actor.

mod publisher;
mod topology;

pub use publisher::{
    Publish, PublishError, Publisher, PublisherConfig, PublisherStatus, Shutdown, Status,
};
pub use topology::Topology;

/// Why [`connect`] found no connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The broker refused or the network failed (the message never holds the URI).
    #[error("{0}")]
    Failed(#[from] lapin::Error),
    /// The handshakes did not finish in time.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

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
