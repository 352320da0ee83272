//! Accepting mutual-TLS connections for the gRPC server.
//!
//! Handshakes run concurrently, each in its own task with a deadline, so a
//! slow or hostile client cannot hold up the others (10,000 agents reconnect
//! at once after a coordinator restart). The server certificate is read from
//! disk again whenever its files change, without a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use k3sfleet_pki::TlsError;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A TLS handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
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

/// Accepts TCP connections and yields completed TLS streams.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (sender, receiver) = mpsc::channel(ACCEPT_QUEUE);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if let Err(err) = close_when_the_peer_vanishes(&tcp) {
                tracing::warn!(%peer, error = %err, "setting TCP keepalive failed");
            }
            if sender.is_closed() {
                break;
            }
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(stream)).await;
                    }
                    Ok(Err(err)) => tracing::info!(%peer, error = %err, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// Serves the certificate currently on disk.
#[derive(Debug)]
pub struct ReloadingCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    loaded_stamp: std::sync::Mutex<Option<(SystemTime, SystemTime)>>,
}

impl ReloadingCertificate {
    pub fn load(cert_path: PathBuf, key_path: PathBuf) -> Result<Arc<Self>, TlsError> {
        let key = k3sfleet_pki::certified_key(&cert_path, &key_path)?;
        let stamp = modification_stamp(&cert_path, &key_path);
        Ok(Arc::new(ReloadingCertificate {
            cert_path,
            key_path,
            current: ArcSwap::new(key),
            loaded_stamp: std::sync::Mutex::new(stamp),
        }))
    }

    /// Loads the files again if they changed since the last load. A pair that
    /// does not load (half-copied, mismatched) is reported and the old
    /// certificate stays in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamp = modification_stamp(&self.cert_path, &self.key_path);
        let mut loaded = self.loaded_stamp.lock().unwrap_or_else(|p| p.into_inner());
        if stamp == *loaded {
            return Ok(false);
        }
        let key = k3sfleet_pki::certified_key(&self.cert_path, &self.key_path)?;
        self.current.store(key);
        *loaded = stamp;
        Ok(true)
    }

    /// Checks the files every `every` for as long as the task runs.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            loop {
                ticker.tick().await;
                match this.reload_if_changed() {
                    Ok(true) => {
                        tracing::info!(cert = %this.cert_path.display(), "server certificate reloaded")
                    }
                    Ok(false) => {}
                    Err(err) => tracing::warn!(
                        error = %err,
                        "the server certificate files changed but do not load; keeping the previous certificate"
                    ),
                }
            }
        })
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn modification_stamp(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Option<(SystemTime, SystemTime)> {
    let modified = |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Some((modified(cert)?, modified(key)?))
}
