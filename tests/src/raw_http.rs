//! HTTP/1.1 requests written byte by byte on a TCP connection, for what reqwest refuses to send
//! (CR or LF in a header value, invalid UTF-8 in a path, contradictory lengths, a body that
//! stops half-way).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How the client ends its side after writing the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Keeps the connection open and waits for the answer.
    Wait,
    /// Closes its sending side (half-close), as a client that died mid-body would, and reads.
    CloseWrite,
}

/// A response read from the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first header called `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Sends `request` to `address` (`host:port`) and reads one response (by its `Content-Length`,
/// or to the end of the connection); fails the test after `limit`.
pub async fn send(address: &str, request: &[u8], then: Then, limit: Duration) -> RawResponse {
    crate::within(limit, "a raw HTTP response", async {
        let mut socket = TcpStream::connect(address).await.expect("connect");
        socket.write_all(request).await.expect("write request");
        if then == Then::CloseWrite {
            socket.shutdown().await.expect("half-close");
        }
        let mut received = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(response) = parse(&received) {
                return response;
            }
            let n = socket.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return parse(&received).unwrap_or_else(|| {
                    panic!(
                        "connection closed without a whole response: {:?}",
                        String::from_utf8_lossy(&received)
                    )
                });
            }
            received.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}

/// A whole response in `bytes`, if there is one yet.
fn parse(bytes: &[u8]) -> Option<RawResponse> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()?
        .split(' ')
        .nth(1)?
        .parse()
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map(|(_, value)| value.parse().expect("content-length"))?;
    let body = bytes.get(end + 4..end + 4 + length)?;
    Some(RawResponse {
        status,
        headers,
        body: body.to_vec(),
    })
}
