//! Pressure streams through a real actix-web server and real HTTP clients.
//!
//! Each test starts its own server on 127.0.0.1:0 with a tiny pressure route wired to its own
//! broadcaster, the way the planner wires its route, and reads the stream line by line.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actors::broadcast::{Broadcaster, Current, Publish, Shutdown, Subscribe, SubscriberCount};
use actors::pressure::{Filter, PressureMap};
use actors::stream::{self, DEFAULT_HEARTBEAT};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long any single awaited event may take before the test fails. Generous for a loaded
/// machine, and far shorter than the heartbeats the "at once" tests rely on not waiting for.
const PATIENCE: Duration = Duration::from_secs(5);

/// A heartbeat that never fires during a test.
const NEVER: u64 = 600_000;

fn map(entries: &[(&str, u64)]) -> PressureMap {
    entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The route as the planner would write it; `hb_ms` sets the heartbeat (tests only).
async fn pressure(
    req: HttpRequest,
    name: web::Path<String>,
    query: web::Query<BTreeMap<String, String>>,
    broadcaster: web::Data<Addr<Broadcaster>>,
) -> HttpResponse {
    let filter = Filter::from_path(&name);
    let heartbeat = query
        .get("hb_ms")
        .map(|ms| Duration::from_millis(ms.parse().unwrap()))
        .unwrap_or(DEFAULT_HEARTBEAT);
    if !stream::wants_stream(&req) {
        let current = broadcaster.send(Current).await.unwrap();
        return HttpResponse::Ok()
            .content_type("application/json")
            .body(current.view(&filter).json().clone());
    }
    match broadcaster.send(Subscribe).await {
        Ok(Ok(subscription)) => stream::respond(&req, subscription, filter, heartbeat),
        _ => HttpResponse::ServiceUnavailable().finish(),
    }
}

struct TestApp {
    base: String,
    port: u16,
    broadcaster: Addr<Broadcaster>,
    client: reqwest::Client,
}

impl TestApp {
    async fn spawn(initial: PressureMap) -> Self {
        let broadcaster = Broadcaster::with_generation(initial, 1).start();
        let data = web::Data::new(broadcaster.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/api/v1/flavors/{name}/pressure", web::get().to(pressure))
        })
        .workers(1)
        .disable_signals()
        // Notice a client's FIN at once rather than at the next write.
        .h1_allow_half_closed(false)
        .shutdown_timeout(1)
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        actix_rt::spawn(server.run());
        Self {
            base: format!("http://127.0.0.1:{port}/api/v1/flavors"),
            port,
            broadcaster,
            client: reqwest::Client::new(),
        }
    }

    async fn publish(&self, entries: &[(&str, u64)]) -> u64 {
        self.broadcaster.send(Publish(map(entries))).await.unwrap()
    }

    async fn subscribers(&self) -> usize {
        self.broadcaster.send(SubscriberCount).await.unwrap()
    }

    /// Waits (bounded) until the subscriber count is `expected`; returns how long it took.
    async fn await_subscribers(&self, expected: usize) -> Duration {
        let start = Instant::now();
        loop {
            let count = self.subscribers().await;
            if count == expected {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < PATIENCE,
                "subscriber count stayed {count}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn get(&self, path: &str, sse: bool) -> reqwest::Response {
        let mut request = self.client.get(format!("{}/{path}", self.base));
        if sse {
            request = request
                .header("accept", "text/event-stream")
                .header("last-event-id", "123456789");
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        response
    }

    async fn ndjson(&self, path: &str) -> Frames {
        let response = self.get(path, false).await;
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        Frames::new(response, b"\n")
    }

    async fn sse(&self, path: &str) -> Frames {
        let response = self.get(path, true).await;
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        Frames::new(response, b"\n\n")
    }
}

/// Reads a streamed body frame by frame: NDJSON lines (`\n`) or SSE blocks (`\n\n`).
struct Frames {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: Vec<u8>,
    separator: &'static [u8],
}

impl Frames {
    fn new(response: reqwest::Response, separator: &'static [u8]) -> Self {
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
            separator,
        }
    }

    /// The next frame without its separator; `None` when the stream ends. Fails the test when
    /// nothing comes within [`PATIENCE`].
    async fn next(&mut self) -> Option<String> {
        tokio::time::timeout(PATIENCE, self.read())
            .await
            .expect("no frame within the deadline")
    }

    async fn read(&mut self) -> Option<String> {
        loop {
            let at = self
                .buffer
                .windows(self.separator.len())
                .position(|w| w == self.separator);
            if let Some(at) = at {
                let frame: Vec<u8> = self.buffer.drain(..at + self.separator.len()).collect();
                return Some(String::from_utf8(frame[..at].to_vec()).unwrap());
            }
            match self.body.next().await {
                Some(chunk) => self.buffer.extend_from_slice(&chunk.unwrap()),
                None => {
                    assert!(self.buffer.is_empty(), "a partial frame at the end");
                    return None;
                }
            }
        }
    }

    /// The next NDJSON line, parsed.
    async fn map(&mut self) -> PressureMap {
        serde_json::from_str(&self.next().await.expect("the stream ended")).unwrap()
    }

    /// The next NDJSON line that differs from `old`, skipping heartbeats that repeat `old` (a
    /// loaded machine may fire one before a change arrives).
    async fn changed_from(&mut self, old: &PressureMap) -> PressureMap {
        loop {
            let next = self.map().await;
            if next != *old {
                return next;
            }
        }
    }

    /// The next SSE event (comments skipped) as (id, data).
    async fn event(&mut self) -> (u64, PressureMap) {
        loop {
            let frame = self.next().await.expect("the stream ended");
            if frame.starts_with(':') {
                continue;
            }
            let lines: Vec<&str> = frame.lines().collect();
            assert_eq!(lines.len(), 3, "{frame:?}");
            assert_eq!(lines[0], "event: pressure");
            let id = lines[1].strip_prefix("id: ").unwrap().parse().unwrap();
            let data = serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
            return (id, data);
        }
    }
}

#[actix_rt::test]
async fn ndjson_sends_the_map_at_once_then_only_changes() {
    let app = TestApp::spawn(map(&[("a", 1), ("b", 2)])).await;
    let plain = reqwest::get(format!("{}/_/pressure", app.base))
        .await
        .unwrap();
    assert_eq!(plain.text().await.unwrap(), r#"{"a":1,"b":2}"#);

    let mut stream = app
        .ndjson(&format!("_/pressure?stream=true&hb_ms={NEVER}"))
        .await;
    assert_eq!(stream.map().await, map(&[("a", 1), ("b", 2)]));

    assert_eq!(app.publish(&[("b", 2), ("a", 1)]).await, 1, "unchanged");
    assert_eq!(app.publish(&[("a", 1), ("b", 3)]).await, 2);
    // Had the identical publish produced a line, it would come first.
    assert_eq!(stream.map().await, map(&[("a", 1), ("b", 3)]));
    assert_eq!(app.publish(&[("a", 0)]).await, 3);
    assert_eq!(stream.map().await, map(&[("a", 0)]));
}

#[actix_rt::test]
async fn ndjson_heartbeats_repeat_the_map_per_client() {
    let app = TestApp::spawn(map(&[("a", 1)])).await;
    let heartbeat = Duration::from_millis(200);
    let mut quiet = app
        .ndjson(&format!("_/pressure?stream=true&hb_ms={NEVER}"))
        .await;
    assert_eq!(quiet.map().await, map(&[("a", 1)]));

    let opened = Instant::now();
    let mut chatty = app.ndjson("_/pressure?stream=true&hb_ms=200").await;
    assert_eq!(chatty.map().await, map(&[("a", 1)]));
    assert_eq!(chatty.map().await, map(&[("a", 1)]));
    assert!(
        opened.elapsed() >= heartbeat,
        "a heartbeat, not an early line"
    );
    assert_eq!(chatty.map().await, map(&[("a", 1)]));
    assert!(opened.elapsed() >= 2 * heartbeat);

    // The quiet client had no heartbeat meanwhile: its next line is the change.
    app.publish(&[("a", 2)]).await;
    assert_eq!(quiet.map().await, map(&[("a", 2)]));
    let old = map(&[("a", 1)]);
    assert_eq!(chatty.changed_from(&old).await, map(&[("a", 2)]));
}

#[actix_rt::test]
async fn a_single_flavor_stream_ignores_other_flavors_but_keeps_its_heartbeat() {
    let app = TestApp::spawn(map(&[("a", 1), ("b", 1)])).await;
    let mut long = app
        .ndjson(&format!("a/pressure?stream=true&hb_ms={NEVER}"))
        .await;
    assert_eq!(long.map().await, map(&[("a", 1)]));
    let opened = Instant::now();
    let mut short = app.ndjson("a/pressure?stream=true&hb_ms=300").await;
    assert_eq!(short.map().await, map(&[("a", 1)]));

    app.publish(&[("a", 1), ("b", 5)]).await;
    // The next line of the short-heartbeat client is its heartbeat, not a reaction to `b`.
    assert_eq!(short.map().await, map(&[("a", 1)]));
    assert!(opened.elapsed() >= Duration::from_millis(300));

    app.publish(&[("a", 2), ("b", 5)]).await;
    assert_eq!(
        long.map().await,
        map(&[("a", 2)]),
        "no line for the b change"
    );
    assert_eq!(
        short.changed_from(&map(&[("a", 1)])).await,
        map(&[("a", 2)])
    );

    // The flavor disappears from the map: its view becomes empty.
    app.publish(&[("b", 5)]).await;
    assert_eq!(long.map().await, PressureMap::new());
}

#[actix_rt::test]
async fn sse_events_carry_growing_ids_and_keep_alives() {
    let app = TestApp::spawn(map(&[("a", 1)])).await;
    // The request carries a Last-Event-ID: the current state still comes at once.
    let mut events = app.sse("_/pressure?hb_ms=200").await;
    let (first_id, first) = events.event().await;
    assert_eq!(first_id, 1);
    assert_eq!(first, map(&[("a", 1)]));

    app.publish(&[("a", 4)]).await;
    let (second_id, second) = events.event().await;
    assert!(second_id > first_id);
    assert_eq!(second, map(&[("a", 4)]));

    // Nothing else is published, so what comes next is a keep-alive comment.
    assert_eq!(events.next().await.unwrap(), ": keep-alive");

    let mut single = app.sse(&format!("a/pressure?hb_ms={NEVER}")).await;
    assert_eq!(single.event().await, (second_id, map(&[("a", 4)])));
}

#[actix_rt::test]
async fn a_disconnected_client_is_unsubscribed_at_once() {
    let app = TestApp::spawn(map(&[("a", 1)])).await;
    let path = format!("_/pressure?stream=true&hb_ms={NEVER}");
    let mut one = app.ndjson(&path).await;
    let mut two = app.ndjson(&path).await;
    let mut three = app.sse(&format!("a/pressure?hb_ms={NEVER}")).await;
    one.map().await;
    two.map().await;
    three.event().await;
    assert_eq!(app.subscribers().await, 3);

    // No heartbeat is due for ten minutes: only noticing the closed connection can do this.
    drop(three);
    app.await_subscribers(2).await;
    drop(one);
    app.await_subscribers(1).await;

    app.publish(&[("a", 2)]).await;
    assert_eq!(two.map().await, map(&[("a", 2)]));
}

#[actix_rt::test]
async fn shutdown_ends_every_stream_without_waiting_for_a_heartbeat() {
    let app = TestApp::spawn(map(&[("a", 1)])).await;
    let mut all = app
        .ndjson(&format!("_/pressure?stream=true&hb_ms={NEVER}"))
        .await;
    let mut one = app
        .ndjson(&format!("a/pressure?stream=true&hb_ms={NEVER}"))
        .await;
    let mut events = app.sse(&format!("_/pressure?hb_ms={NEVER}")).await;
    all.map().await;
    one.map().await;
    events.event().await;

    let start = Instant::now();
    app.broadcaster.send(Shutdown).await.unwrap();
    assert_eq!(all.next().await, None);
    assert_eq!(one.next().await, None);
    assert_eq!(events.next().await, None);
    assert!(start.elapsed() < PATIENCE);

    let late = app
        .client
        .get(format!("{}/_/pressure?stream=true", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 503, "no new streams after shutdown");
}

#[actix_rt::test]
async fn a_client_that_does_not_read_gets_the_latest_state_not_a_backlog() {
    // Lines of about 30 KiB, so a backlog would be obvious.
    let mut flavors: PressureMap = (0..1_000)
        .map(|i| (format!("f{i:04}"), u64::MAX - i))
        .collect();
    flavors.insert("n".to_owned(), 0);
    let app = TestApp::spawn(flavors.clone()).await;

    // A raw client with a small receive window that reads nothing for now.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket
        .connect(([127, 0, 0, 1], app.port).into())
        .await
        .unwrap();
    let request = format!(
        "GET /api/v1/flavors/_/pressure?stream=true&hb_ms={NEVER} HTTP/1.1\r\n\
         Host: 127.0.0.1\r\n\r\n"
    );
    slow.write_all(request.as_bytes()).await.unwrap();
    app.await_subscribers(1).await;

    const UPDATES: u64 = 600;
    for n in 1..=UPDATES {
        flavors.insert("n".to_owned(), n);
        app.broadcaster
            .send(Publish(flavors.clone()))
            .await
            .unwrap();
    }

    // Now read until the latest state arrives.
    let last = format!("\"n\":{UPDATES}}}\n");
    let mut received = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    tokio::time::timeout(PATIENCE, async {
        loop {
            let n = slow.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed the stream");
            received.extend_from_slice(&chunk[..n]);
            let tail = &received[received.len().saturating_sub(n + last.len())..];
            if tail.windows(last.len()).any(|w| w == last.as_bytes()) {
                break;
            }
        }
    })
    .await
    .expect("the latest state never arrived");

    let text = String::from_utf8_lossy(&received);
    let lines = text.matches("\"n\":").count();
    assert!(
        lines < (UPDATES as usize) / 2,
        "{lines} of {UPDATES} states were queued for a client that did not read"
    );
    assert_eq!(app.subscribers().await, 1);
}
