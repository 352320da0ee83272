//! Accepting mutual-TLS connections for the gRPC server.
//!
//! Handshakes run concurrently, each in its own task with a deadline, so a
//! slow or hostile client cannot hold up the others (10,000 agents reconnect
//! at once after a coordinator restart), within the limits of
//! [`super::limits`]. The server certificate is read from
//! disk again whenever its files change, without a restart.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::limits::{ConnectionSlots, Counted, HandshakeSlots};
use crate::config::LimitsConfig;
use crate::heartbeat::Heartbeat;

/// Completed handshakes waiting for the gRPC server to pick them up.
const ACCEPT_QUEUE: usize = 1024;

/// Connections the kernel queues before the accept loop takes them. Tokio's
/// default (1024) overflows when 10,000 agents reconnect at once; dropped SYNs
/// are retried by the client after 1 s, 3 s, 7 s..., stretching the storm.
/// The kernel caps it at net.core.somaxconn (4096 on Debian 12).
const LISTEN_BACKLOG: u32 = 4096;

/// The kernel probes a connection idle this long (a live agent's pings and
/// reports keep it busy, so this costs nothing while it is there)...
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// ...every this long, and closes it after this many unanswered probes.
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE_PROBES: u32 = 3;
/// Data the peer has not acknowledged for this long closes the connection
/// too (without it, retransmissions to a vanished host last 15 minutes).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// Listens on `addr` with a backlog sized for reconnect storms.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As TcpListener::bind: a restarted coordinator rebinds at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Lets the kernel find and close a connection whose agent vanished without
/// a FIN (power loss, a cut cable): the coordinator sends no pings.
fn close_when_the_peer_vanishes(tcp: &TcpStream) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(tcp);
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(TCP_KEEPALIVE_IDLE)
            .with_interval(TCP_KEEPALIVE_INTERVAL)
            .with_retries(TCP_KEEPALIVE_PROBES),
    )?;
    socket.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT))
}

/// The accept loop beats at least this often, connections or not.
pub const ACCEPT_LOOP_BEAT: Duration = Duration::from_secs(5);
/// Refused connections are logged at most this often (a flood must not
/// flood the journal too).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A TLS stream holding its connection slot.
pub type Connection = Counted<TlsStream<TcpStream>>;

/// Accepts TCP connections and yields completed TLS streams, within `limits`.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: &LimitsConfig,
    heartbeat: Arc<Heartbeat>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Connection>> {
    let (sender, receiver) = mpsc::channel(ACCEPT_QUEUE);
    let connections = ConnectionSlots::new(limits);
    let handshakes = HandshakeSlots::new(limits);
    let deadline = limits.handshake_timeout;
    tokio::spawn(async move {
        let mut refusals = Refusals::default();
        loop {
            heartbeat.beat();
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tokio::time::sleep(ACCEPT_LOOP_BEAT) => continue,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if sender.is_closed() {
                break;
            }
            let Some(slot) = connections.try_acquire() else {
                refusals.count(peer);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            if let Err(err) = close_when_the_peer_vanishes(&tcp) {
                tracing::warn!(%peer, error = %err, "setting TCP keepalive failed");
            }
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            let handshakes = handshakes.clone();
            tokio::spawn(async move {
                let handshake = async {
                    let _handshake_slot = handshakes.acquire(peer.ip()).await;
                    acceptor.accept(tcp).await
                };
                match tokio::time::timeout(deadline, handshake).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(Counted::new(stream, slot))).await;
                    }
                    Ok(Err(err)) => tracing::info!(%peer, error = %err, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// Connections closed for want of a slot, logged in summaries.
#[derive(Default)]
struct Refusals {
    since_log: u64,
    logged_at: Option<std::time::Instant>,
}

impl Refusals {
    fn count(&mut self, peer: std::net::SocketAddr) {
        self.since_log += 1;
        if self
            .logged_at
            .is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL)
        {
            tracing::warn!(
                %peer,
                refused = self.since_log,
                "closed new connections at once: limits.max_connections are open"
            );
            self.since_log = 0;
            self.logged_at = Some(std::time::Instant::now());
        }
    }
}
