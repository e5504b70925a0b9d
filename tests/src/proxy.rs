//! A TCP proxy the test controls, to cut, stall and restore a service's connection to the
//! broker or the database without touching the shared servers.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass bytes both ways.
    Forward,
    /// Keep connections open but hold every byte: the peer sees silence (a stalled broker).
    Paused,
    /// Close every connection and refuse new ones: the peer sees the server go away.
    Cut,
}

/// A running proxy from a local port to `upstream`. Stops when dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    held: Arc<watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let mode = Arc::new(watch::Sender::new(Mode::Forward));
        let held = Arc::new(watch::Sender::new(0u64));
        let task = tokio::spawn(accept_loop(listener, upstream, mode.clone(), held.clone()));
        Self {
            addr,
            mode,
            held,
            task,
        }
    }

    /// The address to connect to instead of `upstream`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the mode; switching to [`Mode::Cut`] closes every open connection at once.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
        if mode != Mode::Paused {
            self.held.send_replace(0);
        }
    }

    /// Resolves once at least `bytes` bytes from clients are being held by [`Mode::Paused`].
    pub async fn held_at_least(&self, bytes: u64) {
        let mut receiver = self.held.subscribe();
        let _ = receiver.wait_for(|held| *held >= bytes).await;
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Cut);
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    held: Arc<watch::Sender<u64>>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if *mode.borrow() == Mode::Cut {
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(upstream).await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::spawn(pump(
            client_read,
            server_write,
            mode.subscribe(),
            Some(held.clone()),
        ));
        tokio::spawn(pump(server_read, client_write, mode.subscribe(), None));
    }
}

/// Copies one direction until EOF, an error, or [`Mode::Cut`]. While [`Mode::Paused`] it keeps
/// reading, holds what it read (counted in `held`), and writes it all once forwarding resumes.
/// Returning drops both halves.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    held: Option<Arc<watch::Sender<u64>>>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Cut => return,
            Mode::Forward if !pending.is_empty() => {
                if to.write_all(&pending).await.is_err() {
                    return;
                }
                pending.clear();
            }
            _ => {}
        }
        tokio::select! {
            read = from.read(&mut buffer) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let now = *mode.borrow();
                match now {
                    Mode::Cut => return,
                    Mode::Paused => {
                        pending.extend_from_slice(&buffer[..n]);
                        if let Some(held) = &held {
                            held.send_modify(|total| *total += n as u64);
                        }
                    }
                    Mode::Forward => {
                        if !pending.is_empty() {
                            if to.write_all(&pending).await.is_err() {
                                return;
                            }
                            pending.clear();
                        }
                        if to.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
