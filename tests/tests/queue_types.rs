//! `APP_AMQP_QUEUE_TYPE` on the real RabbitMQ: quorum queues as declared, the broker's own
//! delivery limit sending a message to the dead-letter queue, and a queue of the other type
//! reported with what to do.

use std::time::Duration;

use actors::amqp::{DeclareError, QueueType, Topology, DELIVERY_LIMIT};
use lapin::{
    options::{BasicGetOptions, BasicNackOptions},
    Channel, Connection,
};
use serde_json::json;
use tests::{
    amqp::{unique_topology, Broker, TopologyGuard},
    env::rabbitmq_url,
    process::GatewayProcess,
};

async fn channel() -> (Connection, Channel) {
    let connection = actors::amqp::connect(&rabbitmq_url(), "tests", Duration::from_secs(10))
        .await
        .expect("RabbitMQ is reachable (make services)");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// Declares `topology` on a channel of its own (the broker closes a channel whose declaration
/// it refuses).
async fn declare(topology: &Topology) -> Result<(), DeclareError> {
    let (_connection, channel) = channel().await;
    topology.declare(&channel).await
}

#[tokio::test]
async fn a_queue_of_the_other_type_is_reported_with_what_to_do() {
    for existing in [QueueType::Quorum, QueueType::Classic] {
        let guard = TopologyGuard(unique_topology().with_queue_type(existing));
        declare(guard.topology()).await.expect("first declaration");
        // Declaring it again the same way is fine (both services do it on every connect).
        declare(guard.topology()).await.expect("same declaration");

        let wanted = existing.other();
        let err = declare(&guard.topology().clone().with_queue_type(wanted))
            .await
            .unwrap_err();
        match &err {
            DeclareError::QueueTypeMismatch {
                queue,
                existing: found,
                wanted: asked,
            } => {
                // The dead-letter queue is declared first: it is the one named.
                assert_eq!(queue, &guard.topology().dead_letter_queue);
                assert_eq!((*found, *asked), (existing, wanted));
            }
            other => panic!("{existing} queue declared as {wanted}: {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(&format!("APP_AMQP_QUEUE_TYPE={existing}")),
            "{text}"
        );
        assert!(text.contains("docs/scaling.md"), "{text}");
    }
}

#[tokio::test]
async fn a_quorum_queue_dead_letters_a_message_delivered_more_than_the_limit() {
    let guard = TopologyGuard(unique_topology().with_queue_type(QueueType::Quorum));
    let broker = Broker::connect(guard.topology()).await;
    broker
        .publish(&json!({"action": "queued"}), "d-limit")
        .await;

    // A consumer that takes the message and gives it back, as a planner that crashes on it
    // would: the broker counts each delivery and, past the limit, dead-letters the message.
    let (_connection, channel) = channel().await;
    let mut deliveries = 0;
    while deliveries <= DELIVERY_LIMIT {
        let got = channel
            .basic_get(
                guard.topology().queue.as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .expect("basic_get");
        let Some(message) = got else {
            // Requeued messages may take a moment to be ready again.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        deliveries += 1;
        message
            .delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .expect("nack");
    }
    let dead = broker.wait_dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0.as_deref(), Some("d-limit"));
}

#[tokio::test]
async fn a_gateway_started_on_a_classic_queue_with_quorum_configured_says_what_to_do() {
    let guard = TopologyGuard::unique();
    declare(guard.topology()).await.expect("classic queue");
    let mut gateway = GatewayProcess::new(&guard.topology().exchange)
        .env("APP_AMQP_QUEUE_TYPE", "quorum")
        .spawn();
    let line = gateway
        .wait_for_log("event=amqp_topology_mismatch", Duration::from_secs(30))
        .await;
    assert!(line.contains("exists as a classic queue"), "{line}");
    assert!(line.contains("APP_AMQP_QUEUE_TYPE=classic"), "{line}");
    assert!(!line.contains("guest:guest"), "credentials logged: {line}");
}
