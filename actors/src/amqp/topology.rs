//! The AMQP topology shared by the gateway (publisher) and the planner (consumer).
//!
//! Both services declare all of it with identical arguments: RabbitMQ accepts a re-declaration
//! only when the arguments match, and a publisher that declares the queue too means a webhook
//! accepted before the planner ever started is kept, not dropped as unroutable.

use lapin::{
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
    Channel, ExchangeKind,
};

/// Exchange, queue and dead-letter names. [`Topology::default`] gives the production names,
/// which match Canonical's planner; tests use [`Topology::with_prefix`] to get their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Durable direct exchange the gateway publishes to.
    pub exchange: String,
    /// Durable queue the planner consumes, bound to `exchange` with `routing_key`.
    pub queue: String,
    /// Routing key of every webhook delivery.
    pub routing_key: String,
    /// Dead-letter exchange: where the queue sends messages the planner rejects.
    pub dead_letter_exchange: String,
    /// Durable queue bound to the dead-letter exchange; poison messages wait here for a human.
    pub dead_letter_queue: String,
}

impl Default for Topology {
    fn default() -> Self {
        Self::named("github-workflow-jobs")
    }
}

impl Topology {
    /// The topology whose exchange and queue are both called `base`, as in production.
    pub fn named(base: &str) -> Self {
        Self {
            exchange: base.to_owned(),
            queue: base.to_owned(),
            routing_key: "workflow-job".to_owned(),
            dead_letter_exchange: format!("{base}-dlx"),
            dead_letter_queue: format!("{base}-dlq"),
        }
    }

    /// A topology of its own, for tests that run side by side on one broker.
    pub fn with_prefix(prefix: &str) -> Self {
        Self::named(&format!("{prefix}-github-workflow-jobs"))
    }

    /// Declares exchanges, queues and bindings. Idempotent; fails with `PRECONDITION_FAILED`
    /// if a queue of the same name exists with other arguments.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };

        // Dead letters first, so the main queue's DLX exists the moment anything is rejected.
        channel
            .exchange_declare(
                self.dead_letter_exchange.as_str().into(),
                ExchangeKind::Direct,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.dead_letter_queue.as_str().into(),
                durable_queue,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                self.dead_letter_queue.as_str().into(),
                self.dead_letter_exchange.as_str().into(),
                self.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Direct,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.queue.as_str().into(),
                durable_queue,
                self.queue_arguments(),
            )
            .await?;
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                self.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Arguments of the main queue. Both services must use exactly these.
    fn queue_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        // A message the planner rejects without requeue (a poison message) is re-published to
        // the dead-letter exchange with its original routing key, so it lands in the DLQ.
        arguments.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(self.dead_letter_exchange.as_str().into()),
        );
        arguments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_names_match_canonical_planner() {
        let topology = Topology::default();
        assert_eq!(topology.exchange, "github-workflow-jobs");
        assert_eq!(topology.queue, "github-workflow-jobs");
        assert_eq!(topology.routing_key, "workflow-job");
        assert_eq!(topology.dead_letter_exchange, "github-workflow-jobs-dlx");
        assert_eq!(topology.dead_letter_queue, "github-workflow-jobs-dlq");
    }

    #[test]
    fn prefixed_names_do_not_collide_with_production() {
        let topology = Topology::with_prefix("t1");
        assert_eq!(topology.queue, "t1-github-workflow-jobs");
        assert_eq!(topology.dead_letter_queue, "t1-github-workflow-jobs-dlq");
    }
}
