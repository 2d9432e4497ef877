//! The accept boundary: every TCP connection passes here before TLS.
//!
//! Invariant: the controller holds at most `max_connections` connections, at
//! most `max_connections_per_address` from one source address, and none that
//! has been silent (nothing read or written) for `idle_timeout`; connections
//! over a cap are closed at once. The TLS handshake has its own, shorter timeout
//! (`server`), and HTTP/2 keepalive ends peers that stop answering pings.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Connection limits of `ballast serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnLimits {
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// A connection with nothing read or written for this long is closed.
    /// Healthy HTTP/2 peers answer the keepalive pings well within it.
    pub idle_timeout: Duration,
    /// HTTP/2 keepalive: ping a peer this often, and drop it when a ping is
    /// not answered within `keepalive_timeout`.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Connections held at once; `None`: the open-files limit less a reserve.
    pub max_connections: Option<usize>,
    /// Connections held at once from one source address (hosts behind one
    /// NAT address share it).
    pub max_connections_per_address: usize,
}

const WARN_EVERY: Duration = Duration::from_secs(10);

/// Descriptors kept free for the store, certificates and bootstrap downloads.
pub const FD_RESERVE: usize = 256;

impl Default for ConnLimits {
    fn default() -> ConnLimits {
        ConnLimits {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            max_connections: None,
            max_connections_per_address: 1024,
        }
    }
}

impl ConnLimits {
    /// `max_connections`, or the soft open-files limit less [`FD_RESERVE`].
    pub fn total(&self) -> usize {
        self.max_connections.unwrap_or_else(|| {
            let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024);
            (soft.min(1 << 20) as usize)
                .saturating_sub(FD_RESERVE)
                .max(16)
        })
    }
}

/// Counts connections per source address.
#[derive(Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

/// Holds one connection's place in both counts; gives it back when dropped.
struct Place {
    _permit: OwnedSemaphorePermit,
    addr: IpAddr,
    per_address: Arc<PerAddress>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut map = self.per_address.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.addr);
            }
        }
    }
}

/// The listening socket with the limits applied; a stream of admitted connections.
pub struct Incoming {
    listener: TcpListener,
    limits: ConnLimits,
    total: Arc<Semaphore>,
    per_address: Arc<PerAddress>,
    /// After an accept error (out of descriptors), wait a little.
    pause: Option<Pin<Box<Sleep>>>,
    /// Connections closed over a cap since the last warning, and when that was.
    refused: u64,
    warned: Option<Instant>,
}

impl Incoming {
    pub fn new(listener: TcpListener, limits: ConnLimits) -> Incoming {
        let total = limits.total();
        tracing::info!(
            max_connections = total,
            max_connections_per_address = limits.max_connections_per_address,
            handshake_timeout_ms = limits.handshake_timeout.as_millis() as u64,
            idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
            "connection limits"
        );
        Incoming {
            listener,
            limits,
            total: Arc::new(Semaphore::new(total)),
            per_address: Arc::default(),
            pause: None,
            refused: 0,
            warned: None,
        }
    }

    fn admit(&self, addr: IpAddr) -> Option<Place> {
        let permit = self.total.clone().try_acquire_owned().ok()?;
        let mut map = self.per_address.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(addr).or_insert(0);
        if *n >= self.limits.max_connections_per_address {
            return None;
        }
        *n += 1;
        Some(Place {
            _permit: permit,
            addr,
            per_address: self.per_address.clone(),
        })
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(pause) = self.pause.as_mut() {
                ready!(pause.as_mut().poll(cx));
                self.pause = None;
            }
            match ready!(self.listener.poll_accept(cx)) {
                Ok((stream, peer)) => {
                    let Some(place) = self.admit(peer.ip()) else {
                        self.refused += 1;
                        // One line per WARN_EVERY at most: a flood must not flood the log.
                        if self.warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                            tracing::warn!(%peer, refused = self.refused, "connection limit reached; closing new connections");
                            self.refused = 0;
                            self.warned = Some(Instant::now());
                        }
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let idle = self.limits.idle_timeout;
                    return Poll::Ready(Some(Ok(Conn {
                        stream,
                        _place: place,
                        idle,
                        deadline: Box::pin(tokio::time::sleep(idle)),
                    })));
                }
                Err(e) => {
                    // EMFILE and friends: the queue waits in the kernel meanwhile.
                    tracing::warn!(error = %e, "accept failed; pausing");
                    self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
                }
            }
        }
    }
}

/// An admitted connection: fails its next read once nothing was read or
/// written for the idle timeout, which closes it.
pub struct Conn {
    stream: TcpStream,
    _place: Place,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl Connected for Conn {
    // The same info as a plain TCP stream, so TLS peer certificates are found as before.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl Conn {
    /// Bytes went out: the peer is reading what we send (a long download).
    fn progressed(&mut self, written: &io::Result<usize>) {
        if matches!(written, Ok(n) if *n > 0) {
            let next = Instant::now() + self.idle;
            self.deadline.as_mut().reset(next);
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.stream).poll_write(cx, buf));
        self.progressed(&written);
        Poll::Ready(written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, bufs));
        self.progressed(&written);
        Poll::Ready(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn places_are_counted_per_address_and_given_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let incoming = Incoming::new(
            listener,
            ConnLimits {
                max_connections: Some(3),
                max_connections_per_address: 2,
                ..ConnLimits::default()
            },
        );
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = incoming.admit(a).expect("first from a");
        let _a2 = incoming.admit(a).expect("second from a");
        assert!(
            incoming.admit(a).is_none(),
            "third from a is over the per-address cap"
        );
        let _b1 = incoming.admit(b).expect("first from b");
        assert!(incoming.admit(b).is_none(), "over the total cap");
        drop(a1);
        assert!(
            incoming.admit(a).is_some(),
            "a closed connection frees its place"
        );
    }

    #[tokio::test]
    async fn silent_connections_are_closed_after_the_idle_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_stream::StreamExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let idle = Duration::from_millis(300);
        let mut incoming = Incoming::new(
            listener,
            ConnLimits {
                idle_timeout: idle,
                ..ConnLimits::default()
            },
        );
        // A talking peer outlives the idle timeout; a silent one does not.
        let mut talker = TcpStream::connect(addr).await.unwrap();
        let mut talking = incoming.next().await.unwrap().unwrap();
        let mut downloader = TcpStream::connect(addr).await.unwrap();
        let mut serving = incoming.next().await.unwrap().unwrap();
        let _silent_peer = TcpStream::connect(addr).await.unwrap();
        let mut silent = incoming.next().await.unwrap().unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 8];
        for _ in 0..6 {
            talker.write_all(b"x").await.unwrap();
            assert_eq!(talking.read(&mut buf).await.unwrap(), 1);
            serving.write_all(b"y").await.unwrap();
            assert_eq!(downloader.read(&mut buf).await.unwrap(), 1);
            tokio::time::sleep(idle / 3).await;
        }
        assert!(started.elapsed() > idle);
        // A peer that only receives (a long download) is not idle either.
        let still = tokio::time::timeout(idle / 2, serving.read(&mut buf)).await;
        assert!(
            still.is_err(),
            "the serving side waits, no idle error: {still:?}"
        );
        let err = silent.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < idle * 10);
    }
}
