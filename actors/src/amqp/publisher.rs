//! The supervised AMQP publisher actor.
//!
//! It owns the one connection and channel a process publishes on, and their lifecycle. Callers
//! publish through a [`Publishing`] handle: it hands each [`Publish`] to lapin on the current
//! channel from the caller's own task and awaits the publisher confirm there, so many publishes
//! are in flight together on one channel (confirms are pipelined; no lock, no one-at-a-time) and
//! none waits for the actor's thread. When the connection fails, publishes get
//! [`PublishError::NotConnected`] straight away, and the actor reconnects in the background with
//! capped, jittered exponential backoff, re-declaring the topology each time; with several
//! broker nodes ([`Brokers`]) it moves to the next node that answers.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::StreamExt;
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::FieldTable,
    BasicProperties, Channel, Confirmation, Connection, Event,
};

use tokio::sync::watch;

use super::DeclareError;

use super::{Brokers, ConnectError, Topology};
use crate::reconnect::{Backoff, Delays};

/// Settings of a [`Publisher`].
#[derive(Clone)]
pub struct PublisherConfig {
    /// The broker's nodes (one or several AMQP URIs). They may carry a password: never log it.
    pub brokers: Brokers,
    /// Where publishes go; declared on every (re)connect.
    pub topology: Topology,
    /// Connection name shown in the RabbitMQ management UI.
    pub connection_name: String,
    /// Bound on the TCP + AMQP handshake of one connection attempt.
    pub connect_timeout: Duration,
    /// Delays between reconnect attempts.
    pub backoff: Backoff,
}

impl std::fmt::Debug for PublisherConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherConfig")
            .field("brokers", &self.brokers)
            .field("topology", &self.topology)
            .field("connection_name", &self.connection_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl PublisherConfig {
    /// Defaults suited to a service: 5 s connect timeout, backoff from 100 ms to 10 s. `uris`
    /// is one AMQP URI or several separated by commas ([`Brokers`]).
    pub fn new(uris: &str, topology: Topology, connection_name: &str) -> Self {
        Self {
            brokers: Brokers::new(uris),
            topology,
            connection_name: connection_name.to_owned(),
            connect_timeout: Duration::from_secs(5),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
        }
    }
}

/// Connection state of the publisher, as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// No connection yet, or the last one failed and a new one is being made.
    Connecting,
    /// Connected, topology declared, confirms enabled: publishes go through.
    Connected,
    /// Stopped for good (shutdown).
    Stopped,
}

/// A cheap, clonable view of the publisher's [`Status`] for health checks and tests: reading it
/// does not go through the actor's mailbox, and [`PublisherStatus::wait_for`] awaits a change.
#[derive(Debug, Clone)]
pub struct PublisherStatus(Arc<watch::Sender<Status>>);

impl PublisherStatus {
    fn new() -> Self {
        Self(Arc::new(watch::Sender::new(Status::Connecting)))
    }

    fn set(&self, status: Status) {
        self.0.send_replace(status);
    }

    /// The current status.
    pub fn get(&self) -> Status {
        *self.0.borrow()
    }

    /// True while publishes can go through.
    pub fn is_connected(&self) -> bool {
        self.get() == Status::Connected
    }

    /// A receiver that sees every change of status (e.g. to drive a gauge).
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.0.subscribe()
    }

    /// Resolves once the status is `status`.
    pub async fn wait_for(&self, status: Status) {
        let mut receiver = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = receiver.wait_for(|current| *current == status).await;
    }
}

/// Why a publish did not end in a positive confirm. Every variant means "not stored": the
/// caller must not acknowledge the delivery to its own client.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// There is no broker connection right now (it is being re-established).
    #[error("not connected to the broker")]
    NotConnected,
    /// The broker refused the message (`basic.nack`).
    #[error("the broker refused the message")]
    Nacked,
    /// The message was returned as unroutable: no queue is bound for its routing key.
    #[error("the message was unroutable: {0}")]
    Unroutable(String),
    /// The channel or connection failed while publishing.
    #[error("publishing failed: {0}")]
    Channel(String),
    /// The publisher actor is gone (shutdown).
    #[error("the publisher is stopped")]
    Stopped,
}

/// One message for [`Publishing::publish`]: sent to the topology's exchange and routing key,
/// persistent and mandatory.
pub struct Publish {
    /// The message body, sent unchanged (shared, not copied, with the HTTP request's body).
    pub body: bytes::Bytes,
    /// Content type property (e.g. `application/json`).
    pub content_type: &'static str,
    /// AMQP headers.
    pub headers: FieldTable,
}

/// The channel publishes go out on while connected, and the generation of its connection.
#[derive(Clone)]
struct Live {
    channel: Channel,
    generation: u64,
}

/// The publisher's current channel, shared by the actor (which replaces it on every connect
/// and clears it on every loss) and its [`Publishing`] handles; it outlives actor restarts.
type LiveChannel = Arc<watch::Sender<Option<Live>>>;

/// A cheap, clonable handle that publishes on the [`Publisher`]'s current channel from the
/// caller's task, and tells the actor when a publish finds the connection broken.
#[derive(Clone)]
pub struct Publishing {
    live: LiveChannel,
    status: PublisherStatus,
    actor: Addr<Publisher>,
    exchange: String,
    routing_key: String,
}

impl Publishing {
    /// The publisher's connection state.
    pub fn status(&self) -> &PublisherStatus {
        &self.status
    }

    /// Publishes `msg` and resolves once the broker has confirmed it.
    pub async fn publish(&self, msg: Publish) -> Result<(), PublishError> {
        let current = self.live.borrow().clone();
        let Some(Live {
            channel,
            generation,
        }) = current
        else {
            return Err(if self.status.get() == Status::Stopped {
                PublishError::Stopped
            } else {
                PublishError::NotConnected
            });
        };
        let properties = BasicProperties::default()
            .with_delivery_mode(2) // persistent: survives a broker restart
            .with_content_type(msg.content_type.into())
            .with_headers(msg.headers);
        let options = BasicPublishOptions {
            mandatory: true, // unroutable -> returned to us, never silently dropped
            ..BasicPublishOptions::default()
        };
        let outcome = async {
            channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    self.routing_key.as_str().into(),
                    options,
                    &msg.body,
                    properties,
                )
                .await?
                .await
        }
        .await;
        let lost = |reason: String| {
            self.actor.do_send(ConnectionLost { generation, reason });
        };
        match outcome {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(returned))) => {
                Err(PublishError::Unroutable(returned.reply_text.to_string()))
            }
            Ok(Confirmation::Nack(_)) => {
                // Nothing here limits a queue's length, so a nack means a queue could not take
                // the message. The broker keeps per-channel state about a quorum queue's
                // leader, and after a leader change that state can go on refusing every
                // publish of this channel while the queue itself has a leader again: start
                // over on a new connection (the next node), as after a failure.
                lost("the broker refused a message".to_owned());
                Err(PublishError::Nacked)
            }
            Ok(Confirmation::NotRequested) => Err(PublishError::Channel(
                "publisher confirms are not enabled on the channel".to_owned(),
            )),
            Err(err) => {
                let reason = err.to_string();
                lost(reason.clone());
                Err(PublishError::Channel(reason))
            }
        }
    }
}

/// Sent by the connection-event listener and by failed publishes: the connection of generation
/// `generation` is broken.
#[derive(Message)]
#[rtype(result = "()")]
struct ConnectionLost {
    generation: u64,
    reason: String,
}

/// Try to (re)connect now.
#[derive(Message)]
#[rtype(result = "()")]
struct Connect;

/// Close the connection cleanly and stop. Publishes already handed to the broker keep their
/// confirms; call this after the HTTP server has drained.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// The publisher actor. Start it with [`Publisher::start_supervised`].
pub struct Publisher {
    config: PublisherConfig,
    status: PublisherStatus,
    /// The channel publishes go out on ([`Publishing`] reads it), while connected.
    live: LiveChannel,
    /// The connection of that channel, while connected.
    connection: Option<Connection>,
    /// Incremented on every successful connect, so a late "lost" notice about an old connection
    /// does not tear down the new one.
    generation: u64,
    backoff: Delays,
    connecting: bool,
    stopping: bool,
}

impl Publisher {
    /// Starts the actor under an actix [`Supervisor`] on the current arbiter and returns its
    /// address together with the handle to publish through (and its status view for health
    /// checks).
    pub fn start_supervised(config: PublisherConfig) -> (Addr<Self>, Publishing) {
        let status = PublisherStatus::new();
        let live: LiveChannel = Arc::new(watch::Sender::new(None));
        let (exchange, routing_key) = (
            config.topology.exchange.clone(),
            config.topology.routing_key.clone(),
        );
        let (actor_status, actor_live) = (status.clone(), live.clone());
        let actor = Supervisor::start(move |_| Self::new(config, actor_status, actor_live));
        let publishing = Publishing {
            live,
            status,
            actor: actor.clone(),
            exchange,
            routing_key,
        };
        (actor, publishing)
    }

    fn new(config: PublisherConfig, status: PublisherStatus, live: LiveChannel) -> Self {
        let backoff = config.backoff.delays();
        Self {
            config,
            status,
            live,
            connection: None,
            generation: 0,
            backoff,
            connecting: false,
            stopping: false,
        }
    }

    fn schedule_reconnect(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let delay = self.backoff.next_delay();
        log::info!(
            event = "amqp_reconnect_scheduled",
            connection = self.config.connection_name,
            delay_ms = delay.as_millis();
            "reconnecting to the broker later"
        );
        ctx.notify_later(Connect, delay);
    }

    async fn open(config: PublisherConfig) -> Result<(Connection, Channel), OpenError> {
        let connection = config
            .brokers
            .connect(&config.connection_name, config.connect_timeout)
            .await?;
        let setup = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            config.topology.declare(&channel).await?;
            Ok::<_, DeclareError>(channel)
        };
        match tokio::time::timeout(config.connect_timeout, setup).await {
            Ok(Ok(channel)) => Ok((connection, channel)),
            Ok(Err(err)) => {
                err.log_mismatch(&config.connection_name);
                Err(err.into())
            }
            Err(_) => Err(OpenError::SetupTimedOut(config.connect_timeout)),
        }
    }
}

/// Why the publisher has no confirming channel yet (it tries again after a back-off).
#[derive(Debug, thiserror::Error)]
enum OpenError {
    /// No broker node gave a connection.
    #[error("{0}")]
    Connect(#[from] ConnectError),
    /// The channel, confirm mode or the topology could not be set up.
    #[error("{0}")]
    Declare(#[from] DeclareError),
    /// The channel set-up did not finish in time.
    #[error("channel setup took longer than {0:?}")]
    SetupTimedOut(Duration),
}

impl Actor for Publisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.notify(Connect);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if self.stopping {
            self.status.set(Status::Stopped);
        } else {
            self.status.set(Status::Connecting);
        }
    }
}

impl Supervised for Publisher {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        // After a shutdown the supervisor restarts the actor while addresses to it remain; it
        // stays stopped (`Connect` does nothing once stopping): nothing to report or reset.
        if self.stopping {
            return;
        }
        log::warn!(
            event = "amqp_publisher_restarting",
            connection = self.config.connection_name;
            "publisher restarting"
        );
        self.connection = None;
        self.live.send_replace(None);
        self.connecting = false;
        self.status.set(Status::Connecting);
        self.backoff.reset();
    }
}

impl Handler<Connect> for Publisher {
    type Result = ();

    fn handle(&mut self, _: Connect, ctx: &mut Self::Context) {
        if self.connecting || self.connection.is_some() || self.stopping {
            return;
        }
        self.connecting = true;
        self.status.set(Status::Connecting);
        let config = self.config.clone();
        ctx.spawn(Self::open(config).into_actor(self).map(|result, act, ctx| {
            act.connecting = false;
            match result {
                Ok((connection, channel)) => {
                    if act.stopping {
                        return;
                    }
                    act.generation += 1;
                    let generation = act.generation;
                    let me = ctx.address();
                    let mut events = connection.events_listener();
                    actix::spawn(async move {
                        while let Some(event) = events.next().await {
                            if let Event::Error(err) = event {
                                me.do_send(ConnectionLost {
                                    generation,
                                    reason: err.to_string(),
                                });
                                return;
                            }
                        }
                        me.do_send(ConnectionLost {
                            generation,
                            reason: "connection closed".to_owned(),
                        });
                    });
                    act.live.send_replace(Some(Live {
                        channel,
                        generation,
                    }));
                    act.connection = Some(connection);
                    act.backoff.reset();
                    act.status.set(Status::Connected);
                    log::info!(
                        event = "amqp_connected",
                        connection = act.config.connection_name,
                        exchange = act.config.topology.exchange,
                        generation;
                        "connected to the broker"
                    );
                }
                Err(reason) => {
                    log::warn!(
                        event = "amqp_connect_failed",
                        connection = act.config.connection_name,
                        error:% = reason;
                        "cannot connect to the broker"
                    );
                    act.schedule_reconnect(ctx);
                }
            }
        }));
    }
}

impl Handler<ConnectionLost> for Publisher {
    type Result = ();

    fn handle(&mut self, msg: ConnectionLost, ctx: &mut Self::Context) {
        if msg.generation != self.generation || self.connection.is_none() {
            return;
        }
        log::warn!(
            event = "amqp_connection_lost",
            connection = self.config.connection_name,
            generation = msg.generation,
            error = msg.reason;
            "lost the broker connection"
        );
        self.live.send_replace(None);
        if let Some(connection) = self.connection.take() {
            // Make sure the old socket is gone even if only the channel failed.
            actix::spawn(async move {
                let _ = connection.close(320, "reconnecting".into()).await;
            });
        }
        self.status.set(Status::Connecting);
        self.schedule_reconnect(ctx);
    }
}

impl Handler<Shutdown> for Publisher {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        let link = self.live.send_replace(None).zip(self.connection.take());
        Box::pin(
            async move {
                if let Some((Live { channel, .. }, connection)) = link {
                    // Confirms of publishes already sent are awaited by their callers; waiting
                    // here too makes sure nothing is cut off by the close.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), channel.wait_for_confirms())
                            .await;
                    let _ = connection.close(200, "shutdown".into()).await;
                }
            }
            .into_actor(self)
            .map(|_, act, ctx| {
                act.status.set(Status::Stopped);
                log::info!(
                    event = "amqp_publisher_stopped",
                    connection = act.config.connection_name;
                    "publisher stopped"
                );
                ctx.stop();
            }),
        )
    }
}
