//! The fleet CA and the certificates it issues.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::files::{self, FileError};
use crate::{Fingerprint, K3sRole, Role};

/// How long a freshly created fleet CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates are valid from a little before issuance so that hosts whose
/// clocks lag slightly accept them.
pub const CERT_BACKDATE: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path} does not hold a usable CA private key")]
    BadCaKey {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("{path} does not hold a usable CA certificate")]
    BadCaCert {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid subject alternative name {san:?}")]
    InvalidSan { san: String },
    #[error("the certificate signing request is malformed or its signature does not verify")]
    BadCsr(#[source] rcgen::Error),
    #[error("certificate generation failed")]
    Generate(#[source] rcgen::Error),
}

/// A certificate the CA issued, as PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    /// The new private key, when the CA generated it. `None` for a CSR, whose
    /// key never leaves the requester.
    pub key_pem: Option<String>,
    /// Lowercase hex, as `PeerIdentity::serial`.
    pub serial: String,
    pub not_after: i64,
}

impl std::fmt::Debug for IssuedCert {
    // Hand-written so a private key can never reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What a coordinator server certificate must cover.
#[derive(Debug, Clone)]
pub struct ServerCertRequest {
    /// DNS names and IP addresses clients will dial.
    pub sans: Vec<String>,
    pub validity: Duration,
}

/// A client certificate for a node, an operator or a reader.
#[derive(Debug, Clone)]
pub struct ClientCertRequest {
    pub name: String,
    pub role: Role,
    /// Bound into an agent's certificate (Subject OU).
    pub k3s_role: Option<K3sRole>,
    pub validity: Duration,
}

/// The fleet CA: its certificate and the key that signs with it.
pub struct FleetCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

impl std::fmt::Debug for FleetCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl FleetCa {
    /// Creates a new CA with a fresh P-256 key.
    pub fn generate(common_name: &str) -> Result<Self, IssueError> {
        let key = KeyPair::generate().map_err(IssueError::Generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name, Some("k3sfleet"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(IssueError::Generate)?;
        Ok(FleetCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    /// Loads the CA from its certificate and key files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, IssueError> {
        let cert_der = files::read_certificates(cert_path)?.remove(0).to_vec();
        let key_pem = std::fs::read_to_string(key_path).map_err(|source| FileError::Read {
            path: key_path.to_owned(),
            source,
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| IssueError::BadCaKey {
            path: key_path.to_owned(),
            source,
        })?;
        let cert_pem = std::fs::read_to_string(cert_path).map_err(|source| FileError::Read {
            path: cert_path.to_owned(),
            source,
        })?;
        Issuer::from_ca_cert_der(&cert_der.clone().into(), &key).map_err(|source| {
            IssueError::BadCaCert {
                path: cert_path.to_owned(),
                source,
            }
        })?;
        // Refuse a key that does not belong to the certificate.
        if !cert_matches_key(&cert_der, &key) {
            return Err(IssueError::BadCaKey {
                path: key_path.to_owned(),
                source: rcgen::Error::PemError("key does not match the CA certificate".into()),
            });
        }
        Ok(FleetCa {
            cert_pem,
            cert_der,
            key,
        })
    }

    /// Writes the CA certificate (0644) and key (0600).
    pub fn save(
        &self,
        cert_path: &Path,
        key_path: &Path,
        overwrite: bool,
    ) -> Result<(), IssueError> {
        files::write_private_file(key_path, &self.key.serialize_pem(), overwrite)?;
        files::write_public_file(cert_path, &self.cert_pem, overwrite)?;
        Ok(())
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_der(&self.cert_der)
    }

    /// A server certificate followed by this CA: what the coordinator presents,
    /// so enrolling hosts can pin the CA by fingerprint.
    pub fn chain_pem(&self, leaf_pem: &str) -> String {
        format!("{}\n{}", leaf_pem.trim_end(), self.cert_pem)
    }

    /// Issues the coordinator's server certificate with a fresh key.
    pub fn issue_server(&self, request: &ServerCertRequest) -> Result<IssuedCert, IssueError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name("k3sfleet-coordinator", Some("k3sfleet"));
        params.subject_alt_names = request
            .sans
            .iter()
            .map(|san| parse_san(san))
            .collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, request.validity);
        self.sign_with_new_key(params)
    }

    /// Issues a client certificate with a fresh key.
    pub fn issue_client(&self, request: &ClientCertRequest) -> Result<IssuedCert, IssueError> {
        self.sign_with_new_key(client_params(request)?)
    }

    /// Signs a certificate signing request for `request`'s name and role.
    ///
    /// Only the CSR's public key is used: the subject, extensions and lifetime
    /// come from `request`, so a requester cannot ask for more than it was
    /// granted.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        request: &ClientCertRequest,
    ) -> Result<IssuedCert, IssueError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(IssueError::BadCsr)?;
        let params = client_params(request)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer())
            .map_err(IssueError::Generate)?;
        Ok(issued(cert.pem(), None, &params))
    }

    fn sign_with_new_key(&self, mut params: CertificateParams) -> Result<IssuedCert, IssueError> {
        let key = KeyPair::generate().map_err(IssueError::Generate)?;
        params.serial_number.get_or_insert_with(random_serial);
        let cert = params
            .signed_by(&key, &self.issuer())
            .map_err(IssueError::Generate)?;
        Ok(issued(cert.pem(), Some(key.serialize_pem()), &params))
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        // The certificate was parsed when the CA was generated or loaded.
        Issuer::from_ca_cert_der(&self.cert_der.clone().into(), &self.key)
            .expect("the fleet CA certificate was validated when loaded")
    }
}

/// Generates a P-256 key and a CSR for it, as PEM (key, csr). The key stays
/// with the caller; only the CSR is sent anywhere.
pub fn generate_key_and_csr(common_name: &str) -> Result<(String, String), IssueError> {
    let key = KeyPair::generate().map_err(IssueError::Generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name, None);
    let csr = params
        .serialize_request(&key)
        .map_err(IssueError::Generate)?;
    Ok((
        key.serialize_pem(),
        csr.pem().map_err(IssueError::Generate)?,
    ))
}

/// A CSR for an existing private key (PEM), so a certificate can be renewed
/// without the key changing.
pub fn csr_for_key(common_name: &str, key_pem: &str) -> Result<String, IssueError> {
    let key = KeyPair::from_pem(key_pem).map_err(IssueError::BadCsr)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name, None);
    let csr = params
        .serialize_request(&key)
        .map_err(IssueError::Generate)?;
    csr.pem().map_err(IssueError::Generate)
}

fn client_params(request: &ClientCertRequest) -> Result<CertificateParams, IssueError> {
    validate_name(&request.name)?;
    let mut params = CertificateParams::default();
    params.distinguished_name =
        distinguished_name(&request.name, Some(&request.role.organization()));
    if let Some(k3s_role) = request.k3s_role {
        params.distinguished_name.push(
            DnType::OrganizationalUnitName,
            k3s_role.organizational_unit(),
        );
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial());
    set_validity(&mut params, request.validity);
    Ok(params)
}

fn issued(cert_pem: String, key_pem: Option<String>, params: &CertificateParams) -> IssuedCert {
    IssuedCert {
        cert_pem,
        key_pem,
        serial: params
            .serial_number
            .as_ref()
            .map(|s| hex::encode(s.to_bytes()))
            .unwrap_or_default(),
        not_after: params.not_after.unix_timestamp(),
    }
}

/// Names become certificate subjects and Kubernetes node names: a DNS-1123
/// subdomain (lowercase letters, digits, '-' and '.', at most 253 characters).
pub fn validate_name(name: &str) -> Result<(), IssueError> {
    let invalid = |reason| IssueError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > 253 {
        return Err(invalid("it is longer than 253 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        return Err(invalid(
            "use only lowercase letters, digits, '-' and '.' (a Kubernetes node name)",
        ));
    }
    let starts_and_ends_alphanumeric = |part: &str| {
        part.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && part
                .chars()
                .last()
                .is_some_and(|c| c.is_ascii_alphanumeric())
    };
    if !name.split('.').all(starts_and_ends_alphanumeric) {
        return Err(invalid(
            "each dot-separated part must start and end with a letter or digit",
        ));
    }
    Ok(())
}

fn parse_san(san: &str) -> Result<SanType, IssueError> {
    if let Ok(ip) = san.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns = san
        .to_string()
        .try_into()
        .map_err(|_| IssueError::InvalidSan {
            san: san.to_string(),
        })?;
    Ok(SanType::DnsName(dns))
}

fn distinguished_name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CERT_BACKDATE;
    params.not_after = now + validity;
}

fn random_serial() -> SerialNumber {
    // 16 random bytes with the top bit cleared: a positive 127-bit serial,
    // unique across the fleet for revocation purposes.
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn cert_matches_key(cert_der: &[u8], key: &KeyPair) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(cert_der)
        .map(|(_, cert)| cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PeerIdentity;

    fn ca() -> FleetCa {
        FleetCa::generate("test fleet CA").unwrap()
    }

    #[test]
    fn client_certificates_carry_name_role_and_serial() {
        let ca = ca();
        let issued = ca
            .issue_client(&ClientCertRequest {
                name: "worker-01".into(),
                role: Role::Agent,
                k3s_role: Some(K3sRole::Agent),
                validity: Duration::from_secs(3600),
            })
            .unwrap();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
            .unwrap();
        let id = PeerIdentity::from_der(&der).unwrap();
        assert_eq!(id.name, "worker-01");
        assert_eq!(id.role, Role::Agent);
        assert_eq!(id.k3s_role, Some(K3sRole::Agent));
        assert_eq!(id.serial, issued.serial);
        assert!(id.not_after - id.not_before >= 3600);
        assert!(issued.key_pem.is_some());
        assert!(!format!("{issued:?}").contains("PRIVATE"));
    }

    #[test]
    fn csr_subject_is_replaced_by_the_grant() {
        let ca = ca();
        let (_key, csr) = generate_key_and_csr("someone-else").unwrap();
        let issued = ca
            .sign_csr(
                &csr,
                &ClientCertRequest {
                    name: "worker-02".into(),
                    role: Role::Agent,
                    k3s_role: None,
                    validity: Duration::from_secs(600),
                },
            )
            .unwrap();
        assert!(issued.key_pem.is_none());
        let der: rustls::pki_types::CertificateDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let id = PeerIdentity::from_der(&der).unwrap();
        assert_eq!(id.name, "worker-02");
        assert_eq!(id.k3s_role, None);
    }

    #[test]
    fn names_must_be_node_names() {
        for good in ["worker-01", "a", "srv1.dc-2.example"] {
            validate_name(good).unwrap();
        }
        for bad in ["", "Worker", "-a", "a-", "a..b", "a b", "a/b", "ä"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn load_refuses_a_key_from_another_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (ca(), ca());
        one.save(
            &dir.path().join("ca.crt"),
            &dir.path().join("ca.key"),
            false,
        )
        .unwrap();
        two.save(&dir.path().join("b.crt"), &dir.path().join("b.key"), false)
            .unwrap();
        FleetCa::load(&dir.path().join("ca.crt"), &dir.path().join("ca.key")).unwrap();
        let err = FleetCa::load(&dir.path().join("ca.crt"), &dir.path().join("b.key")).unwrap_err();
        assert!(err.to_string().contains("b.key"), "{err}");
    }
}
