//! Streaming pressure responses for actix-web: NDJSON (Canonical-compatible, `?stream=true`)
//! and Server-Sent Events (`Accept: text/event-stream`), built on a broadcaster
//! [`Subscription`].
//!
//! Every stream, whatever its format:
//! - sends the current view (all flavors, or one) at once;
//! - sends a new line/event whenever *its* view changes: a change to another flavor does not
//!   wake a single-flavor client's socket;
//! - sends something at least every `heartbeat` when nothing changed, timed per client: NDJSON
//!   repeats the current view, SSE sends a `: keep-alive` comment;
//! - ends as soon as the broadcaster shuts down (it does not wait for a heartbeat);
//! - is dropped by actix-web when the client goes away, and with it the subscription (the
//!   subscriber count drops). actix-web notices a closed connection at once only when the
//!   server refuses HTTP/1 half-closed connections, `HttpServer::h1_allow_half_closed(false)`
//!   (the planner should set it); with the default it notices at the next write, i.e. within a
//!   heartbeat or two.
//!
//! SSE reconnects: a client that reconnects with `Last-Event-ID` gets the current state at once,
//! exactly like a new client. Pressure is a state, not a log of events, so there is nothing to
//! replay; the newest event supersedes every one the client missed. Event ids are the snapshot
//! generation, which only grows (see [`Broadcaster::new`](crate::broadcast::Broadcaster::new)).
//! Generations are per process: with several planners behind a load balancer, ids are not
//! comparable between them, which is harmless since the id is never used to resume.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, ContentEncoding, HeaderValue};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures::Stream;
use tokio::time::{Instant, Sleep};

use crate::broadcast::Subscription;
use crate::config::{self, ConfigError, Source};
use crate::pressure::{Filter, Pressure};

/// Default interval of heartbeats (`APP_STREAM_HEARTBEAT`).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// `Content-Type` of NDJSON streams.
pub const NDJSON: &str = "application/x-ndjson";

/// `Content-Type` of Server-Sent Events streams.
pub const EVENT_STREAM: &str = "text/event-stream";

const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// `APP_STREAM_HEARTBEAT`: the longest a stream stays silent; plain seconds or with units
/// (`30`, `500ms`, `1m`), positive; default [`DEFAULT_HEARTBEAT`].
pub fn heartbeat_from(source: &dyn Source) -> Result<Duration, ConfigError> {
    config::parsed(
        source,
        "APP_STREAM_HEARTBEAT",
        DEFAULT_HEARTBEAT,
        config::duration,
    )
}

/// Wire format of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line, `application/x-ndjson`.
    Ndjson,
    /// Server-Sent Events, `text/event-stream`.
    Sse,
}

impl Format {
    /// SSE when the request's `Accept` lists `text/event-stream` (with a non-zero quality),
    /// NDJSON otherwise.
    pub fn of(req: &HttpRequest) -> Self {
        let accepts_sse = req.get_header::<header::Accept>().is_some_and(|accept| {
            accept.iter().any(|item| {
                item.item.essence_str() == EVENT_STREAM && item.quality > header::Quality::ZERO
            })
        });
        if accepts_sse {
            Self::Sse
        } else {
            Self::Ndjson
        }
    }
}

/// True when the request asks for a stream rather than one JSON object: `?stream=true`
/// (Canonical's parameter) or an `Accept` that lists `text/event-stream`.
pub fn wants_stream(req: &HttpRequest) -> bool {
    let stream_param = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|query| query.get("stream").map(|v| v.eq_ignore_ascii_case("true")))
        .unwrap_or(false);
    stream_param || Format::of(req) == Format::Sse
}

/// The streaming response for `req`: SSE or NDJSON as [`Format::of`] chooses, showing `filter`
/// of the snapshots `subscription` receives, with a heartbeat at least every `heartbeat`.
///
/// The caller has already checked authentication and that a named flavor exists. `heartbeat`
/// comes from [`heartbeat_from`] (positive); shorter than a millisecond counts as one.
pub fn respond(
    req: &HttpRequest,
    subscription: Subscription,
    filter: Filter,
    heartbeat: Duration,
) -> HttpResponse {
    let format = Format::of(req);
    if format == Format::Sse {
        if let Some(last) = req.headers().get("last-event-id") {
            // Nothing to replay: the current state (sent first) supersedes what was missed.
            log::debug!(
                event = "pressure_stream_resumed",
                last_event_id = last.to_str().unwrap_or("<not text>"),
                filter:% = filter;
                "pressure stream resumed"
            );
        }
    }
    let content_type = match format {
        Format::Ndjson => NDJSON,
        Format::Sse => EVENT_STREAM,
    };
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header(header::CacheControl(vec![header::CacheDirective::NoCache]))
        // Compressing middleware would buffer lines; `identity` makes actix-web's `Compress`
        // leave this response alone.
        .insert_header(ContentEncoding::Identity)
        // Reverse proxies such as nginx must not buffer the stream either.
        .insert_header(("x-accel-buffering", HeaderValue::from_static("no")))
        .streaming(body(subscription, filter, format, heartbeat))
}

/// The body of a stream on its own: the chunks [`respond`] sends, ending when the broadcaster
/// shuts down. Each chunk is one NDJSON line, one SSE event or one SSE comment.
pub fn body(
    subscription: Subscription,
    filter: Filter,
    format: Format,
    heartbeat: Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> + 'static {
    log::debug!(
        event = "pressure_stream_opened",
        format:? = format,
        filter:% = filter;
        "pressure stream opened"
    );
    let heartbeat = heartbeat.max(Duration::from_millis(1));
    let feed = Feed {
        subscription,
        filter,
        format,
        heartbeat,
        timer: Box::pin(tokio::time::sleep(heartbeat)),
        last: None,
    };
    futures::stream::unfold(feed, |mut feed| async move {
        let chunk = feed.next_chunk().await?;
        Some((Ok(chunk), feed))
    })
}

/// One client's stream state: its subscription, what it last sent, its own heartbeat timer.
struct Feed {
    subscription: Subscription,
    filter: Filter,
    format: Format,
    heartbeat: Duration,
    timer: Pin<Box<Sleep>>,
    /// The snapshot last looked at; `None` before the first line.
    last: Option<Arc<Pressure>>,
}

impl Feed {
    /// The next chunk to send; `None` once the broadcaster has shut down.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        let Some(last) = &self.last else {
            let current = self.subscription.current();
            return Some(self.send(current));
        };
        let mut last = Arc::clone(last);
        loop {
            tokio::select! {
                next = self.subscription.changed() => {
                    let next = next?;
                    if !self.filter.same_view(&last, &next) {
                        return Some(self.send(next));
                    }
                    // Another flavor changed: nothing to tell this client.
                    last = next;
                    self.last = Some(Arc::clone(&last));
                }
                () = self.timer.as_mut() => {
                    self.rearm();
                    return Some(match self.format {
                        Format::Ndjson => last.view(&self.filter).ndjson().clone(),
                        Format::Sse => Bytes::from_static(KEEP_ALIVE),
                    });
                }
            }
        }
    }

    /// Records `snapshot` as sent, restarts the heartbeat timer and returns its line.
    fn send(&mut self, snapshot: Arc<Pressure>) -> Bytes {
        let view = snapshot.view(&self.filter);
        let chunk = match self.format {
            Format::Ndjson => view.ndjson().clone(),
            Format::Sse => view.sse().clone(),
        };
        self.last = Some(snapshot);
        self.rearm();
        chunk
    }

    fn rearm(&mut self) {
        self.timer.as_mut().reset(Instant::now() + self.heartbeat);
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        log::debug!(
            event = "pressure_stream_closed",
            format:? = self.format,
            filter:% = self.filter;
            "pressure stream closed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broadcast::{Broadcaster, Publish, Shutdown, Subscribe};
    use crate::pressure::PressureMap;
    use actix::Actor;
    use actix_web::test::TestRequest;
    use futures::{FutureExt, StreamExt};

    fn map(entries: &[(&str, u64)]) -> PressureMap {
        entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn the_heartbeat_is_configurable() {
        assert_eq!(heartbeat_from(&[("X", "1")]), Ok(DEFAULT_HEARTBEAT));
        let short = [("APP_STREAM_HEARTBEAT", "250ms")];
        assert_eq!(heartbeat_from(&short), Ok(Duration::from_millis(250)));
        let zero = [("APP_STREAM_HEARTBEAT", "0")];
        assert_eq!(
            heartbeat_from(&zero).unwrap_err().variable,
            "APP_STREAM_HEARTBEAT"
        );
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        let plain = TestRequest::get().to_http_request();
        assert_eq!(Format::of(&plain), Format::Ndjson);
        let sse = TestRequest::get()
            .insert_header(("accept", "application/json, text/event-stream;q=0.9"))
            .to_http_request();
        assert_eq!(Format::of(&sse), Format::Sse);
        let refused = TestRequest::get()
            .insert_header(("accept", "text/event-stream;q=0"))
            .to_http_request();
        assert_eq!(Format::of(&refused), Format::Ndjson);
        let garbage = TestRequest::get()
            .insert_header(("accept", ";;;"))
            .to_http_request();
        assert_eq!(Format::of(&garbage), Format::Ndjson);
    }

    #[test]
    fn a_stream_is_asked_for_by_parameter_or_accept() {
        let asked = |uri: &str, accept: Option<&str>| {
            let mut req = TestRequest::get().uri(uri);
            if let Some(accept) = accept {
                req = req.insert_header(("accept", accept));
            }
            wants_stream(&req.to_http_request())
        };
        assert!(asked("/p?stream=true", None));
        assert!(asked("/p?x=1&stream=True", None));
        assert!(!asked("/p?stream=false", None));
        assert!(!asked("/p", Some("application/json")));
        assert!(asked("/p", Some("text/event-stream")));
    }

    #[actix_rt::test]
    async fn the_response_headers_match_the_format() {
        let addr = Broadcaster::new(map(&[("a", 1)])).start();
        let sse = TestRequest::get()
            .insert_header(("accept", "text/event-stream"))
            .to_http_request();
        let subscription = addr.send(Subscribe).await.unwrap().unwrap();
        let response = respond(&sse, subscription, Filter::All, DEFAULT_HEARTBEAT);
        let headers = response.headers();
        assert_eq!(headers.get("content-type").unwrap(), EVENT_STREAM);
        assert_eq!(headers.get("cache-control").unwrap(), "no-cache");

        let plain = TestRequest::get().uri("/p?stream=true").to_http_request();
        let subscription = addr.send(Subscribe).await.unwrap().unwrap();
        let response = respond(&plain, subscription, Filter::All, DEFAULT_HEARTBEAT);
        assert_eq!(response.headers().get("content-type").unwrap(), NDJSON);
    }

    #[actix_rt::test]
    async fn a_body_sends_current_then_changes_of_its_view_and_ends_on_shutdown() {
        let addr = Broadcaster::with_generation(map(&[("a", 1), ("b", 1)]), 5).start();
        let subscription = addr.send(Subscribe).await.unwrap().unwrap();
        let stream = body(
            subscription,
            Filter::from_path("a"),
            Format::Sse,
            DEFAULT_HEARTBEAT,
        );
        let mut stream = std::pin::pin!(stream);
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first, "event: pressure\nid: 5\ndata: {\"a\":1}\n\n");

        addr.send(Publish(map(&[("a", 1), ("b", 2)])))
            .await
            .unwrap();
        // The stream sees generation 6 when polled, and has nothing to say about it.
        assert!(stream.next().now_or_never().is_none());
        addr.send(Publish(map(&[("a", 3), ("b", 2)])))
            .await
            .unwrap();
        let next = stream.next().await.unwrap().unwrap();
        assert_eq!(next, "event: pressure\nid: 7\ndata: {\"a\":3}\n\n");

        addr.send(Shutdown).await.unwrap();
        assert!(stream.next().await.is_none());
    }
}
