//! Dialing the coordinator as one simulated agent: a fresh TCP connection and
//! full TLS handshake per session, as a real agent does, optionally from one
//! of several local addresses (10,000 connections to one coordinator port
//! from one address would crowd the ephemeral port range after a few restarts).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use k3sfleet_pki::FixedClientCert;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// Where the simulated agents connect, shared by all of them.
#[derive(Debug, Clone)]
pub struct Target {
    pub address: SocketAddr,
    /// The name the coordinator's certificate must carry.
    pub server_name: ServerName<'static>,
    pub roots: Arc<RootCertStore>,
    /// Local addresses to spread connections over; empty: the kernel chooses.
    pub source_addresses: Vec<IpAddr>,
    pub connect_timeout: Duration,
}

impl Target {
    /// The `index`th agent's local address, if any were given.
    fn source_for(&self, index: usize) -> Option<IpAddr> {
        (!self.source_addresses.is_empty())
            .then(|| self.source_addresses[index % self.source_addresses.len()])
    }
}

/// Opens a channel with `identity`; fails if the first connection fails.
pub async fn dial(
    target: &Target,
    index: usize,
    identity: Arc<CertifiedKey>,
) -> Result<Channel, tonic::transport::Error> {
    let tls = k3sfleet_pki::client_config(
        target.roots.clone(),
        Some(Arc::new(FixedClientCert(identity))),
    );
    let connector = TlsConnector::from(Arc::new(tls));
    let address = target.address;
    let source = target.source_for(index);
    let server_name = target.server_name.clone();
    let timeout = target.connect_timeout;
    let connect = tower::service_fn(move |_uri: Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        async move {
            let handshake = async {
                let socket = match address {
                    SocketAddr::V4(_) => TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => TcpSocket::new_v6()?,
                };
                if let Some(source) = source {
                    socket.bind(SocketAddr::new(source, 0))?;
                }
                let tcp = socket.connect(address).await?;
                tcp.set_nodelay(true)?;
                connector.connect(server_name, tcp).await
            };
            let stream = tokio::time::timeout(timeout, handshake)
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS connection timed out")
                })??;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // The agent's channel settings (pki::dial): keepalive pings find a dead peer.
    Endpoint::from_shared(format!("http://{address}"))
        .expect("a socket address is a valid authority")
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect_with_connector(connect)
        .await
}
