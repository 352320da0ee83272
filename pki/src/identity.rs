//! Who is on the other end of a TLS connection, read from their certificate.

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{Fingerprint, K3sRole, Role};

/// The identity a verified client certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The Subject CommonName: a node name for agents, a person or tool for
    /// admins and readers.
    pub name: String,
    pub role: Role,
    /// For agents enrolled since roles are bound: what the host runs of K3s.
    pub k3s_role: Option<K3sRole>,
    /// The certificate's serial number in lowercase hex, for revocation.
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub fingerprint: Fingerprint,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate cannot be parsed as X.509")]
    Unparseable,
    #[error("the certificate has no Subject CommonName naming its holder")]
    NoName,
    #[error("the certificate carries no k3sfleet role (Subject O=k3sfleet:agent|admin|reader)")]
    NoRole,
    #[error("the certificate carries more than one k3sfleet role")]
    SeveralRoles,
    #[error("the certificate carries more than one K3s role (Subject OU=k3s:server|k3s:agent)")]
    SeveralK3sRoles,
}

impl PeerIdentity {
    /// Reads the identity from a DER certificate. The caller must have verified
    /// the certificate's chain already; this only reads it.
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparseable)?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .filter(|cn| !cn.is_empty())
            .ok_or(IdentityError::NoName)?
            .to_string();
        let mut roles = subject
            .iter_organization()
            .filter_map(|org| org.as_str().ok())
            .filter_map(Role::from_organization);
        let role = roles.next().ok_or(IdentityError::NoRole)?;
        if roles.next().is_some() {
            return Err(IdentityError::SeveralRoles);
        }
        let mut k3s_roles = subject
            .iter_organizational_unit()
            .filter_map(|unit| unit.as_str().ok())
            .filter_map(K3sRole::from_organizational_unit);
        let k3s_role = k3s_roles.next();
        if k3s_roles.next().is_some() {
            return Err(IdentityError::SeveralK3sRoles);
        }
        Ok(PeerIdentity {
            name,
            role,
            k3s_role,
            serial: hex::encode(cert.raw_serial()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            fingerprint: Fingerprint::of_der(der),
        })
    }
}
