//! The test's own AMQP names on the real RabbitMQ: [`TopologyGuard`] deletes them when the test
//! ends (passing or not), [`Broker`] publishes onto them as the gateway does and reads them back.

use std::time::Duration;

use actors::amqp::Topology;
use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
        ConfirmSelectOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions, QueuePurgeOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties, Channel, Connection, Consumer,
};
use serde_json::Value;

use crate::env::rabbitmq_url;

/// A topology no other test (or earlier run) uses.
pub fn unique_topology() -> Topology {
    Topology::with_prefix(&crate::unique("test"))
}

/// Deletes a topology's queues and exchanges on `Drop`, even when the test panics. Whoever
/// makes up a topology holds its guard: [`crate::planner::TestPlanner`],
/// [`crate::gateway::TestGateway`] and [`crate::system::System`] for the names they make up,
/// the test itself for names it hands to them.
pub struct TopologyGuard(pub Topology);

impl TopologyGuard {
    /// A [`unique_topology`] and its guard.
    pub fn unique() -> Self {
        Self(unique_topology())
    }

    /// The guarded topology.
    pub fn topology(&self) -> &Topology {
        &self.0
    }
}

impl Drop for TopologyGuard {
    fn drop(&mut self) {
        delete_topology_on(&rabbitmq_url(), &self.0);
    }
}

/// Deletes `topology`'s queues and exchanges through the first of `uris` (comma-separated AMQP
/// URIs) that answers; blocks, so a guard's `Drop` can call it (even inside a runtime).
pub fn delete_topology_on(uris: &str, topology: &Topology) {
    let topology = topology.clone();
    let brokers = actors::amqp::Brokers::new(uris);
    // Drop cannot await, and may run inside a runtime: use a thread with its own.
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let Ok(connection) = brokers
                .connect("tests-cleanup", Duration::from_secs(5))
                .await
            else {
                return;
            };
            if let Ok(channel) = connection.create_channel().await {
                delete_topology(&channel, &topology).await;
            }
            let _ = connection.close(200, "bye".into()).await;
        });
    });
    let _ = cleanup.join();
}

async fn delete_topology(channel: &Channel, topology: &Topology) {
    for queue in [&topology.queue, &topology.dead_letter_queue] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [&topology.exchange, &topology.dead_letter_exchange] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// A connection of the test's own to a topology (declared as the services declare it): it
/// publishes as the gateway does (persistent, mandatory, the gateway's headers, confirmed) and
/// reads the queues back. It does not delete the topology: its [`TopologyGuard`] does.
pub struct Broker {
    /// The topology it publishes to and reads.
    pub topology: Topology,
    _connection: Connection,
    channel: Channel,
}

impl Broker {
    /// Connects, declares `topology` and enables publisher confirms. Panics with a clear
    /// message when RabbitMQ is unreachable: tests never skip.
    pub async fn connect(topology: &Topology) -> Self {
        Self::connect_to(&rabbitmq_url(), topology).await
    }

    /// Like [`Broker::connect`], to the first node of `uris` (one AMQP URI or several
    /// separated by commas, e.g. [`crate::cluster::RabbitCluster::urls`]) that answers.
    pub async fn connect_to(uris: &str, topology: &Topology) -> Self {
        let connection = actors::amqp::Brokers::new(uris)
            .connect("tests", Duration::from_secs(10))
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "RabbitMQ is not reachable at TEST_RABBITMQ_URL (or the default), or at \
                     the cluster's nodes: {err}; run `make services` (`make clusters`)"
                )
            });
        let channel = connection.create_channel().await.expect("channel");
        topology.declare(&channel).await.expect("declare topology");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        Self {
            topology: topology.clone(),
            _connection: connection,
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

    /// Binds a second queue to the main queue's routing key, one that refuses every message
    /// (`x-max-length` 0, `x-overflow` reject-publish): publishes are nacked until
    /// [`Broker::delete_queue`] removes it. Exclusive: it goes with this connection.
    pub async fn bind_refusing_queue(&self) -> String {
        let name = crate::unique("refusing");
        let mut arguments = FieldTable::default();
        arguments.insert(ShortString::from("x-max-length"), AMQPValue::LongLongInt(0));
        arguments.insert(
            ShortString::from("x-overflow"),
            AMQPValue::LongString("reject-publish".into()),
        );
        self.channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .expect("queue_declare");
        self.channel
            .queue_bind(
                name.as_str().into(),
                self.topology.exchange.as_str().into(),
                self.topology.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue_bind");
        name
    }

    /// Deletes queue `name`.
    pub async fn delete_queue(&self, name: &str) {
        self.channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await
            .expect("queue_delete");
    }

    /// Drops every message waiting in the main queue.
    pub async fn purge(&self) {
        self.channel
            .queue_purge(
                self.topology.queue.as_str().into(),
                QueuePurgeOptions::default(),
            )
            .await
            .expect("queue_purge");
    }

    /// Publishes a `workflow_job` webhook body.
    pub async fn publish(&self, body: &Value, delivery: &str) {
        self.publish_raw(
            &serde_json::to_vec(body).unwrap(),
            Some("workflow_job"),
            Some(delivery),
        )
        .await;
    }

    /// Publishes raw bytes with the gateway's headers (`None` leaves a header out).
    pub async fn publish_raw(&self, body: &[u8], event: Option<&str>, delivery: Option<&str>) {
        self.publish_with(body, event, delivery, &[]).await;
    }

    /// Like [`Broker::publish_raw`], with `extra` headers (e.g. `traceparent`).
    pub async fn publish_with(
        &self,
        body: &[u8],
        event: Option<&str>,
        delivery: Option<&str>,
        extra: &[(&str, &str)],
    ) {
        let confirm = self.send(body, event, delivery, extra).await;
        confirmed(confirm.await);
    }

    /// Publishes `workflow_job` deliveries (body, delivery id) in order, up to `in_flight` of
    /// them awaiting their confirms at once; returns when the broker has confirmed every one.
    pub async fn publish_all(&self, messages: Vec<(Vec<u8>, String)>, in_flight: usize) {
        use futures::stream::FuturesUnordered;
        let mut pending = FuturesUnordered::new();
        for (body, delivery) in messages {
            if pending.len() >= in_flight {
                confirmed(pending.next().await.expect("a pending confirm"));
            }
            pending.push(
                self.send(&body, Some("workflow_job"), Some(&delivery), &[])
                    .await,
            );
        }
        while let Some(confirmation) = pending.next().await {
            confirmed(confirmation);
        }
    }

    /// Publishes one message with the gateway's headers (`None` leaves a header out) and
    /// properties; the answer resolves on the broker's confirm.
    async fn send(
        &self,
        body: &[u8],
        event: Option<&str>,
        delivery: Option<&str>,
        extra: &[(&str, &str)],
    ) -> lapin::PublisherConfirm {
        let mut headers = FieldTable::default();
        for (name, value) in extra {
            headers.insert(
                ShortString::from(*name),
                AMQPValue::LongString((*value).into()),
            );
        }
        if let Some(event) = event {
            headers.insert(
                ShortString::from("X-GitHub-Event"),
                AMQPValue::LongString(event.into()),
            );
        }
        if let Some(delivery) = delivery {
            headers.insert(
                ShortString::from("X-GitHub-Delivery"),
                AMQPValue::LongString(delivery.into()),
            );
        }
        headers.insert(
            ShortString::from("X-GitHub-Hook-ID"),
            AMQPValue::LongString("1".into()),
        );
        self.channel
            .basic_publish(
                self.topology.exchange.as_str().into(),
                self.topology.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_headers(headers),
            )
            .await
            .expect("publish")
    }

    /// Takes every message from the dead-letter queue: (delivery id header, body).
    pub async fn drain_dead_letters(&self) -> Vec<(Option<String>, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(
                self.topology.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic_get")
        {
            let delivery = message
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|headers| headers.inner().get("X-GitHub-Delivery").cloned())
                .and_then(|value| match value {
                    AMQPValue::LongString(value) => {
                        Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
                    }
                    _ => None,
                });
            out.push((delivery, message.delivery.data.clone()));
        }
        out
    }

    /// Takes messages from the dead-letter queue until there are `count`; panics after `timeout`.
    pub async fn wait_dead_letters(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Vec<(Option<String>, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut dead = Vec::new();
        loop {
            dead.extend(self.drain_dead_letters().await);
            if dead.len() >= count {
                return dead;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} with {} of {count} dead letters",
                dead.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Fails unless the broker acknowledged a publish.
fn confirmed(confirmation: lapin::Result<lapin::Confirmation>) {
    let confirmation = confirmation.expect("confirm");
    assert!(confirmation.is_ack(), "broker did not ack the publish");
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
