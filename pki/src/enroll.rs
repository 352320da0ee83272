//! The client side of joining the fleet and staying in it: enrolling with a
//! bootstrap token (trusting the coordinator by its CA's fingerprint), and
//! renewing a certificate with the one still held.
//!
//! The private key is generated here, written 0600 and never sent anywhere:
//! only a CSR travels. Renewal keeps the key, so it replaces exactly one file
//! (the certificate) atomically and key and certificate never disagree.

use std::sync::Arc;

use k3sfleet_proto::v1::certificate_service_client::CertificateServiceClient;
use k3sfleet_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use k3sfleet_proto::v1::{CertRole, EnrollRequest, NodeRole, RenewRequest};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::{
    DialError, DialTarget, Fingerprint, IssueError, K3sRole, Role, TlsFiles, dial, files,
    pinned_client_config,
};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("the coordinator refused: {}", .0.message())]
    Refused(tonic::Status),
    #[error(
        "the coordinator returned a CA whose fingerprint is {returned}, not the pinned {pinned}"
    )]
    CaMismatch {
        pinned: Fingerprint,
        returned: String,
    },
    #[error("the coordinator returned an unusable certificate")]
    BadResponse,
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error(transparent)]
    File(#[from] files::FileError),
    #[error(transparent)]
    Tls(#[from] crate::TlsError),
}

/// What enrollment produced; `Debug` never shows the key.
pub struct Enrollment {
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
    pub serial: String,
    pub not_after_unix_ms: i64,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("serial", &self.serial)
            .field("not_after_unix_ms", &self.not_after_unix_ms)
            .finish_non_exhaustive()
    }
}

fn proto_role(role: Role) -> CertRole {
    match role {
        Role::Agent => CertRole::Agent,
        Role::Admin => CertRole::Admin,
        Role::Reader => CertRole::Reader,
    }
}

/// Enrolls `name` in `role` with a bootstrap token; an agent names what its
/// host runs of K3s, which the certificate is then bound to.
pub async fn enroll(
    target: &DialTarget,
    pin: Fingerprint,
    token: &str,
    name: &str,
    role: Role,
    k3s_role: Option<K3sRole>,
) -> Result<Enrollment, EnrollError> {
    crate::validate_name(name)?;
    let (key_pem, csr_pem) = crate::generate_key_and_csr(name)?;
    let channel = dial(target, Arc::new(pinned_client_config(pin))).await?;
    let response = EnrollmentServiceClient::new(channel)
        .enroll(EnrollRequest {
            token: token.to_string(),
            name: name.to_string(),
            role: proto_role(role) as i32,
            csr_pem,
            k3s_role: k3s_role.map_or(NodeRole::Unspecified, NodeRole::from) as i32,
        })
        .await
        .map_err(EnrollError::Refused)?
        .into_inner();
    // The handshake already proved the pinned CA; check the copy we will keep, too.
    let ca = CertificateDer::from_pem_slice(response.ca_pem.as_bytes())
        .map_err(|_| EnrollError::BadResponse)?;
    let returned = Fingerprint::of_der(&ca);
    if returned != pin {
        return Err(EnrollError::CaMismatch {
            pinned: pin,
            returned: returned.to_string(),
        });
    }
    Ok(Enrollment {
        key_pem,
        cert_pem: response.certificate_pem,
        ca_pem: response.ca_pem,
        serial: response.serial,
        not_after_unix_ms: response.not_after_unix_ms,
    })
}

/// Writes an enrollment's key (0600), certificate and CA to `files`.
pub fn install(files: &TlsFiles, enrollment: &Enrollment) -> Result<(), EnrollError> {
    for dir in [&files.key, &files.cert, &files.ca]
        .into_iter()
        .filter_map(|p| p.parent())
    {
        std::fs::create_dir_all(dir).map_err(|source| files::FileError::Write {
            path: dir.to_owned(),
            source,
        })?;
    }
    files::write_private_file(&files.key, &enrollment.key_pem, true)?;
    files::write_public_file(&files.cert, &enrollment.cert_pem, true)?;
    files::write_public_file(&files.ca, &enrollment.ca_pem, true)?;
    Ok(())
}

/// A renewed certificate.
#[derive(Debug)]
pub struct Renewal {
    pub cert_pem: String,
    pub serial: String,
    pub not_after_unix_ms: i64,
}

/// Renews the certificate in `files` over mutual TLS with the current one,
/// keeping the key, and replaces the certificate file atomically.
pub async fn renew(
    target: &DialTarget,
    files: &TlsFiles,
    name: &str,
) -> Result<Renewal, EnrollError> {
    let key_pem = std::fs::read_to_string(&files.key).map_err(|source| files::FileError::Read {
        path: files.key.clone(),
        source,
    })?;
    let csr_pem = crate::csr_for_key(name, &key_pem)?;
    let roots = crate::root_store(&files.ca)?;
    let identity = crate::certified_key(&files.cert, &files.key)?;
    let tls = crate::client_config(roots, Some(Arc::new(crate::FixedClientCert(identity))));
    let channel = dial(target, Arc::new(tls)).await?;
    let response = CertificateServiceClient::new(channel)
        .renew(RenewRequest { csr_pem })
        .await
        .map_err(EnrollError::Refused)?
        .into_inner();
    files::write_public_file(&files.cert, &response.certificate_pem, true)?;
    Ok(Renewal {
        cert_pem: response.certificate_pem,
        serial: response.serial,
        not_after_unix_ms: response.not_after_unix_ms,
    })
}
