//! rustls configurations for the fleet's mutual TLS.
//!
//! Everything uses the ring provider and offers TLS 1.3 first. Only the
//! coordinator listens: it verifies client certificates against the fleet CA
//! and lets the authorization layer decide per RPC (a connection without a
//! client certificate can reach only the RPCs the table opens to anonymous
//! callers, such as health checks and enrollment).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier, danger::ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::files::{self, FileError};

/// ALPN for gRPC over HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// Where a party's trust anchor, certificate and key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{cert} and {key} do not belong together (the key is not the certificate's)")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{path}: {what}")]
    Invalid {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("{path} holds no usable CA certificate")]
    BadRoots {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a certificate chain and its private key, refusing a key that does
/// not match the certificate.
pub fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = files::read_certificates(cert)?;
    let private_key = files::read_private_key(key)?;
    match CertifiedKey::from_der(chain, private_key, &provider()) {
        Ok(certified) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        }),
        Err(source) => Err(TlsError::Invalid {
            path: key.to_owned(),
            what: "unsupported private key",
            source,
        }),
    }
}

/// Trust anchors from a PEM file of CA certificates.
pub fn root_store(ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in files::read_certificates(ca)? {
        roots.add(cert).map_err(|source| TlsError::BadRoots {
            path: ca.to_owned(),
            source: Box::new(source),
        })?;
    }
    Ok(Arc::new(roots))
}

/// A verifier that accepts client certificates chaining to the fleet CA, and
/// connections without one (the authorization layer then treats the caller
/// as anonymous). A certificate from any other CA fails the handshake.
pub fn client_verifier(ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(root_store(ca)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|source| TlsError::BadRoots {
            path: ca.to_owned(),
            source: Box::new(source),
        })
}

/// The coordinator's server configuration.
pub fn server_config(
    verifier: Arc<dyn ClientCertVerifier>,
    certificate: Arc<dyn ResolvesServerCert>,
) -> ServerConfig {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config
}

/// How often a served certificate's files are checked for a renewal.
pub const CERT_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// An HTTPS `/metrics` endpoint's server configuration from its files; the
/// certificate is read again when they change. Needs a tokio runtime (the
/// check runs as a task).
pub fn metrics_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let certificate = crate::ReloadingCertificate::load(cert.to_owned(), key.to_owned())?;
    certificate.watch(CERT_RELOAD_INTERVAL);
    metrics_server_config(certificate, client_ca)
}

/// The server configuration of an HTTPS `/metrics` endpoint: HTTP/1.1, and
/// with `client_ca` only scrapers presenting a certificate that chains to it
/// (Prometheus' `tls_config` `cert_file`/`key_file`) complete the handshake.
pub fn metrics_server_config(
    certificate: Arc<dyn ResolvesServerCert>,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3");
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(root_store(ca)?, provider())
                .build()
                .map_err(|source| TlsError::BadRoots {
                    path: ca.to_owned(),
                    source: Box::new(source),
                })?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client configuration that trusts `roots` and presents `identity`, if any.
pub fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<Arc<dyn ResolvesClientCert>>,
) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder.with_client_cert_resolver(identity),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config
}

/// A client configuration for ordinary HTTPS (mirrors, Prometheus): the
/// host's own root certificates, plus `extra_roots` (a private CA) if given.
pub fn platform_client_config(
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())?;
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// Presents one fixed certificate.
#[derive(Debug)]
pub struct FixedClientCert(pub Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
