//! Dialing the coordinator over mutual TLS, as a tonic channel.
//!
//! tonic's own TLS settings cannot present a certificate that changes after
//! renewal or pin a CA by fingerprint, so the channel uses a connector that
//! runs tokio-rustls with a `ClientConfig` the caller builds.

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("invalid coordinator address {address:?}: expected HOST:PORT")]
    BadAddress { address: String },
    #[error("invalid TLS server name {name:?}")]
    BadServerName { name: String },
    #[error("cannot connect to the coordinator at {address}")]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// How to reach the coordinator.
#[derive(Debug, Clone)]
pub struct DialTarget {
    /// HOST:PORT.
    pub address: String,
    /// The name to verify in the server certificate; the address's host
    /// when unset.
    pub server_name: Option<String>,
    pub connect_timeout: Duration,
}

impl DialTarget {
    pub fn new(address: impl Into<String>) -> Self {
        DialTarget {
            address: address.into(),
            server_name: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Opens a channel to the coordinator; fails if the first connection fails.
pub async fn dial(target: &DialTarget, tls: Arc<ClientConfig>) -> Result<Channel, DialError> {
    let bad_address = || DialError::BadAddress {
        address: target.address.clone(),
    };
    let (host, _port) = split_host_port(&target.address).ok_or_else(bad_address)?;
    let name = target
        .server_name
        .clone()
        .unwrap_or_else(|| host.to_string());
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| DialError::BadServerName { name })?
        .to_owned();
    // The URI only satisfies tonic; the connector dials `address` itself.
    let endpoint = Endpoint::from_shared(format!("http://{}", target.address))
        .map_err(|_| bad_address())?
        .connect_timeout(target.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let address = target.address.clone();
    let connector = TlsConnector::from(tls);
    let connect_timeout = target.connect_timeout;
    let tls_connector = tower::service_fn(move |_uri: Uri| {
        let address = address.clone();
        let connector = connector.clone();
        let server_name = server_name.clone();
        async move {
            let handshake = async {
                let tcp = TcpStream::connect(&address).await?;
                tcp.set_nodelay(true)?;
                connector.connect(server_name, tcp).await
            };
            let stream = tokio::time::timeout(connect_timeout, handshake)
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS connection timed out")
                })??;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    endpoint
        .connect_with_connector(tls_connector)
        .await
        .map_err(|source| DialError::Connect {
            address: target.address.clone(),
            source,
        })
}

/// Splits "host:port" or "[v6]:port".
fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port() {
        assert_eq!(
            split_host_port("coord.example:7443"),
            Some(("coord.example", 7443))
        );
        assert_eq!(split_host_port("127.0.0.1:1"), Some(("127.0.0.1", 1)));
        assert_eq!(split_host_port("[::1]:7443"), Some(("::1", 7443)));
        assert_eq!(split_host_port("coord.example"), None);
        assert_eq!(split_host_port(":7443"), None);
        assert_eq!(split_host_port("host:port"), None);
    }
}
