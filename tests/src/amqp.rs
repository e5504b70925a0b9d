//! Direct access to the test's queues on the real RabbitMQ.

use std::time::Duration;

use actors::amqp::Topology;
use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, ExchangeDeleteOptions, QueueDeleteOptions},
    types::FieldTable,
    Channel, Connection, Consumer,
};

/// URL of the broker the tests use: `TEST_RABBITMQ_URL`, by default the local one.
pub fn rabbitmq_url() -> String {
    std::env::var("TEST_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A connection of the test's own, to inspect and clean up its topology.
pub struct Broker {
    /// The topology under test.
    pub topology: Topology,
    connection: Connection,
    channel: Channel,
}

impl Broker {
    /// Connects and declares `topology` (the same declaration the services make). Panics
    /// with a clear message when RabbitMQ is unreachable: tests never skip.
    pub async fn connect(topology: Topology) -> Self {
        let connection = actors::amqp::connect(&rabbitmq_url(), "tests", Duration::from_secs(5))
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "RabbitMQ is not reachable at TEST_RABBITMQ_URL ({err}); run `make services`"
                )
            });
        let channel = connection.create_channel().await.expect("channel");
        topology.declare(&channel).await.expect("declare topology");
        Self {
            topology,
            connection,
            channel,
        }
    }

    /// Starts consuming `queue` (manual ack).
    pub async fn consume(&self, queue: &str) -> Reader {
        let consumer = self
            .channel
            .basic_consume(
                queue.into(),
                crate::unique("test-reader").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("basic_consume");
        Reader { consumer }
    }

    /// Removes the binding of the main queue, so publishes become unroutable.
    pub async fn unbind_queue(&self) {
        self.channel
            .queue_unbind(
                self.topology.queue.as_str().into(),
                self.topology.exchange.as_str().into(),
                self.topology.routing_key.as_str().into(),
                FieldTable::default(),
            )
            .await
            .expect("queue_unbind");
    }

    /// Drops every message waiting in the main queue.
    pub async fn purge(&self) {
        self.channel
            .queue_purge(
                self.topology.queue.as_str().into(),
                lapin::options::QueuePurgeOptions::default(),
            )
            .await
            .expect("queue_purge");
    }

    /// Deletes the test's queues and exchanges.
    pub async fn cleanup(self) {
        for queue in [&self.topology.queue, &self.topology.dead_letter_queue] {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in [&self.topology.exchange, &self.topology.dead_letter_exchange] {
            let _ = self
                .channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// Reads messages from one queue, in order.
pub struct Reader {
    consumer: Consumer,
}

impl Reader {
    /// The next message, acknowledged; fails the test if none arrives within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Delivery {
        let delivery = crate::within(limit, "a message on the queue", self.consumer.next())
            .await
            .expect("consumer ended")
            .expect("delivery error");
        delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("basic_ack");
        delivery
    }
}
