//! Trusting a coordinator on first contact by the fingerprint of its CA.
//!
//! An enrolling host has no CA file yet, only the fingerprint the operator
//! copied from `ca init`. The coordinator presents its CA in its chain; this
//! verifier accepts the chain only if one of its certificates has the pinned
//! fingerprint and the server certificate verifies against that CA alone.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::Fingerprint;

#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    pub fn new(pin: Fingerprint) -> Arc<Self> {
        Arc::new(PinnedCaVerifier {
            pin,
            provider: crate::tls::provider(),
        })
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|cert| Fingerprint::of_der(cert) == self.pin)
        else {
            let presented: Vec<String> = intermediates
                .iter()
                .map(|cert| Fingerprint::of_der(cert).to_string())
                .collect();
            return Err(rustls::Error::General(format!(
                "the coordinator is not signed by the pinned fleet CA {}: it presented CA fingerprints [{}]",
                self.pin,
                presented.join(", ")
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|err| rustls::Error::General(err.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration without a client certificate that trusts only a
/// coordinator whose chain holds the pinned CA.
pub fn pinned_client_config(pin: Fingerprint) -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(PinnedCaVerifier::new(pin))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}
