//! Reading a streaming HTTP response (NDJSON lines or SSE events) line by line, with deadlines.

use std::time::Duration;

use futures::StreamExt;

/// A streaming response read one line at a time.
pub struct Lines {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: Vec<u8>,
}

impl Lines {
    /// Wraps a response whose body is a stream of lines.
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buffer: Vec::new(),
        }
    }

    /// The next line (without its `\n`); `None` when the stream ends. Fails the test after
    /// `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<String> {
        crate::within(limit, "the next stream line", self.next_line()).await
    }

    async fn next_line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Reads NDJSON lines until one parses to `expected`; fails the test after `limit` or if
    /// the stream ends first. Returns how many lines were read.
    pub async fn until_json(&mut self, expected: &serde_json::Value, limit: Duration) -> usize {
        let mut seen = Vec::new();
        let search = async {
            loop {
                let line = self.next_line().await?;
                let value: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|err| panic!("not JSON: {line:?}: {err}"));
                seen.push(value.clone());
                if &value == expected {
                    return Some(seen.len());
                }
            }
        };
        match tokio::time::timeout(limit, search).await {
            Ok(Some(count)) => count,
            Ok(None) => panic!("stream ended before {expected}; saw {seen:?}"),
            Err(_) => panic!("timed out after {limit:?} waiting for {expected}; saw {seen:?}"),
        }
    }
}
