//! The AMQP topology shared by the gateway (publisher) and the planner (consumer).
//!
//! Both services declare all of it with identical arguments: RabbitMQ accepts a re-declaration
//! only when the arguments match, and a publisher that declares the queue too means a webhook
//! accepted before the planner ever started is kept, not dropped as unroutable.
//!
//! [`QueueType`] chooses between RabbitMQ's two durable queue types (`APP_AMQP_QUEUE_TYPE`):
//! `classic` (the default, exactly the arguments Canonical's planner declares, so its queue can
//! be taken over as it is) and `quorum` (replicated with Raft over the nodes of a cluster; the
//! choice for a cluster, `docs/scaling.md`). A queue that exists with the other type is a
//! [`DeclareError::QueueTypeMismatch`] that says what to do.

use lapin::{
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable, ShortString},
    Channel, ErrorKind, ExchangeKind,
};

/// How many times a quorum queue delivers a message before it dead-letters it (the broker's
/// own `x-delivery-limit`): a message that keeps a planner from acknowledging it (a crash, a
/// connection lost mid-batch) does not come back forever. Generous, because every broker
/// connection lost while a message was unacknowledged counts as one delivery.
pub const DELIVERY_LIMIT: i64 = 20;

/// RabbitMQ's queue type for the job queue and its dead-letter queue (`APP_AMQP_QUEUE_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// One node holds the queue (`classic`, the default; Canonical's planner's queue).
    #[default]
    Classic,
    /// Replicated over the cluster's nodes with Raft (`quorum`): survives the loss of a
    /// minority of the nodes.
    Quorum,
}

impl QueueType {
    /// The value of `APP_AMQP_QUEUE_TYPE` (and of the broker's `x-queue-type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }

    /// The other type.
    pub fn other(self) -> Self {
        match self {
            Self::Classic => Self::Quorum,
            Self::Quorum => Self::Classic,
        }
    }
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for QueueType {
    type Err = crate::config::ValueError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "classic" => Ok(Self::Classic),
            "quorum" => Ok(Self::Quorum),
            _ => Err(crate::config::ValueError::Rule("must be classic or quorum")),
        }
    }
}

/// Why [`Topology::declare`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    /// The queue exists with the other queue type: RabbitMQ cannot change a queue's type, and
    /// this process does not delete a queue that may hold webhooks.
    #[error(
        "queue {queue:?} already exists as a {existing} queue but APP_AMQP_QUEUE_TYPE is \
         {wanted}: set APP_AMQP_QUEUE_TYPE={existing} on every gateway and planner, or move \
         the queue to {wanted} as docs/scaling.md describes (\"Moving a classic queue to quorum\")"
    )]
    QueueTypeMismatch {
        /// The queue's name.
        queue: String,
        /// The type it has.
        existing: QueueType,
        /// The type `APP_AMQP_QUEUE_TYPE` asks for.
        wanted: QueueType,
    },
    /// The queue exists with other arguments than this version declares (made by another
    /// program or by hand).
    #[error(
        "queue {queue:?} already exists with other arguments than this service declares \
         (the broker says: {reason}); declare it as docs/scaling.md lists, or remove it once it \
         is empty"
    )]
    ArgumentsMismatch {
        /// The queue's name.
        queue: String,
        /// The broker's words.
        reason: String,
    },
    /// The broker or the channel failed.
    #[error("{0}")]
    Broker(#[from] lapin::Error),
}

impl DeclareError {
    /// Logs an error a person must act on (a queue of the other type or with other
    /// arguments), once per attempt, as an error rather than as one more reconnect.
    pub fn log_mismatch(&self, connection: &str) {
        if !matches!(self, Self::Broker(_)) {
            log::error!(
                event = "amqp_topology_mismatch",
                connection = connection,
                error:% = self;
                "the queues cannot be declared as configured"
            );
        }
    }

    /// What declaring `queue` of type `wanted` failing with `err` means.
    fn of_queue(err: lapin::Error, queue: &str, wanted: QueueType) -> Self {
        let ErrorKind::ProtocolError(amqp) = err.kind() else {
            return Self::Broker(err);
        };
        if *amqp.kind() != AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) {
            return Self::Broker(err);
        }
        let reason = amqp.get_message().to_string();
        if reason.contains("'x-queue-type'") {
            Self::QueueTypeMismatch {
                queue: queue.to_owned(),
                existing: wanted.other(),
                wanted,
            }
        } else {
            Self::ArgumentsMismatch {
                queue: queue.to_owned(),
                reason,
            }
        }
    }
}

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
    /// Type of both queues.
    pub queue_type: QueueType,
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
            queue_type: QueueType::Classic,
        }
    }

    /// The same names with queues of type `queue_type`.
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// A topology of its own, for tests that run side by side on one broker.
    pub fn with_prefix(prefix: &str) -> Self {
        Self::named(&format!("{prefix}-github-workflow-jobs"))
    }

    /// Declares exchanges, queues and bindings. Idempotent; fails (and the broker closes the
    /// channel) if a queue of the same name exists with another type or other arguments.
    pub async fn declare(&self, channel: &Channel) -> Result<(), DeclareError> {
        // Dead letters first, so the main queue's DLX exists the moment anything is rejected.
        self.declare_bound(
            channel,
            &self.dead_letter_exchange,
            &self.dead_letter_queue,
            self.dead_letter_queue_arguments(),
        )
        .await?;
        self.declare_bound(channel, &self.exchange, &self.queue, self.queue_arguments())
            .await
    }

    /// Declares the durable direct exchange `exchange`, the durable queue `queue` with
    /// `arguments`, and binds them with the routing key.
    async fn declare_bound(
        &self,
        channel: &Channel,
        exchange: &str,
        queue: &str,
        arguments: FieldTable,
    ) -> Result<(), DeclareError> {
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .map_err(|err| DeclareError::of_queue(err, queue, self.queue_type))?;
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                self.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Arguments of the main queue. Both services must use exactly these.
    pub fn queue_arguments(&self) -> FieldTable {
        let mut arguments = self.type_argument();
        // A message the planner rejects without requeue (a poison message) is re-published to
        // the dead-letter exchange with its original routing key, so it lands in the DLQ.
        arguments.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(self.dead_letter_exchange.as_str().into()),
        );
        if self.queue_type == QueueType::Quorum {
            // The broker counts deliveries and dead-letters a message delivered this many
            // times without an acknowledgement.
            arguments.insert(
                ShortString::from("x-delivery-limit"),
                AMQPValue::LongLongInt(DELIVERY_LIMIT),
            );
            // Dead-lettering waits for the dead-letter queue's confirm before the message
            // leaves this queue (the default, at-most-once, could lose it on the way)...
            arguments.insert(
                ShortString::from("x-dead-letter-strategy"),
                AMQPValue::LongString("at-least-once".into()),
            );
            // ...which RabbitMQ accepts only when a full queue refuses publishes rather than
            // dropping its oldest messages (there is no length limit: nothing is refused).
            arguments.insert(
                ShortString::from("x-overflow"),
                AMQPValue::LongString("reject-publish".into()),
            );
        }
        arguments
    }

    /// Arguments of the dead-letter queue: only its type.
    pub fn dead_letter_queue_arguments(&self) -> FieldTable {
        self.type_argument()
    }

    /// `x-queue-type` for quorum queues; nothing for classic ones, as Canonical declares them
    /// (RabbitMQ compares the arguments given, so an existing queue keeps matching).
    fn type_argument(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            arguments.insert(
                ShortString::from("x-queue-type"),
                AMQPValue::LongString("quorum".into()),
            );
        }
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

    fn argument<'a>(arguments: &'a FieldTable, name: &str) -> Option<&'a AMQPValue> {
        arguments.inner().get(name)
    }

    #[test]
    fn classic_queues_keep_canonical_arguments() {
        let topology = Topology::default();
        assert_eq!(topology.queue_type, QueueType::Classic);
        let arguments = topology.queue_arguments();
        assert_eq!(arguments.inner().len(), 1, "{arguments:?}");
        assert_eq!(
            argument(&arguments, "x-dead-letter-exchange"),
            Some(&AMQPValue::LongString("github-workflow-jobs-dlx".into()))
        );
        assert!(topology.dead_letter_queue_arguments().inner().is_empty());
    }

    #[test]
    fn quorum_queues_dead_letter_at_least_once_after_the_delivery_limit() {
        let topology = Topology::default().with_queue_type(QueueType::Quorum);
        let arguments = topology.queue_arguments();
        let quorum = AMQPValue::LongString("quorum".into());
        assert_eq!(argument(&arguments, "x-queue-type"), Some(&quorum));
        assert_eq!(
            argument(&arguments, "x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(DELIVERY_LIMIT))
        );
        assert_eq!(
            argument(&arguments, "x-dead-letter-strategy"),
            Some(&AMQPValue::LongString("at-least-once".into()))
        );
        assert_eq!(
            argument(&arguments, "x-overflow"),
            Some(&AMQPValue::LongString("reject-publish".into()))
        );
        assert_eq!(
            argument(&topology.dead_letter_queue_arguments(), "x-queue-type"),
            Some(&quorum)
        );
    }

    #[test]
    fn queue_types_parse_from_their_names() {
        for queue_type in [QueueType::Classic, QueueType::Quorum] {
            assert_eq!(queue_type.as_str().parse(), Ok(queue_type));
            assert_eq!(queue_type.other().other(), queue_type);
        }
        assert!("stream".parse::<QueueType>().is_err());
    }

    #[test]
    fn a_type_mismatch_says_what_to_do() {
        let err = DeclareError::QueueTypeMismatch {
            queue: "q".to_owned(),
            existing: QueueType::Classic,
            wanted: QueueType::Quorum,
        };
        let text = err.to_string();
        assert!(text.contains("exists as a classic queue"), "{text}");
        assert!(text.contains("APP_AMQP_QUEUE_TYPE=classic"), "{text}");
        assert!(text.contains("docs/scaling.md"), "{text}");
    }
}
