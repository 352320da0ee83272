//! The real cluster's identities, generated fresh for every lab (rcgen, P-256):
//!
//! - a cluster CA: the API servers' serving certificates (SANs: the load
//!   balancer, 127.0.0.1, the host, `kubernetes.default...`, the Service IP)
//!   and every client certificate (the control plane, each node's kubelet,
//!   the coordinator, the operator, the lab's admin);
//! - etcd's server CA (members' client-facing certificates, and the client
//!   certificate the API server, `etcdctl` and the agent's health check use)
//!   and peer CA, at the paths K3s uses;
//! - the service-account signing key.
//!
//! Keys are written 0600 and never appear on a command line: every flag
//! takes a file.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::Context;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The first address of the Service CIDR (10.43.0.0/16, K3s's default): the
/// `kubernetes` Service, a SAN of every API server.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 1);

/// A certificate authority and the key it signs with.
pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    /// etcd members present one certificate both ways.
    ServerAndClient,
}

/// A certificate and its fresh key, as PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    // No key in any log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

impl Ca {
    pub fn generate(common_name: &str) -> anyhow::Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `common_name` in `organizations`, valid for `sans`.
    pub fn issue(
        &self,
        common_name: &str,
        organizations: &[&str],
        sans: &[San],
        usage: Usage,
    ) -> anyhow::Result<Issued> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, organizations);
        params.subject_alt_names = sans
            .iter()
            .map(|san| match san {
                San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
                San::Dns(dns) => Ok(SanType::DnsName(dns.as_str().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.serial_number = Some(rand::random::<u64>().into());
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.clone().into(), &self.key)
            .context("the CA certificate was just made")?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Ip(IpAddr),
    Dns(String),
}

impl San {
    pub fn ip(ip: impl Into<IpAddr>) -> San {
        San::Ip(ip.into())
    }

    pub fn dns(name: &str) -> San {
        San::Dns(name.to_string())
    }
}

fn name(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    for organization in organizations {
        dn.push(DnType::OrganizationName, *organization);
    }
    dn
}

/// Every secret of one real cluster.
pub struct ClusterPki {
    pub cluster: Ca,
    pub etcd_server: Ca,
    pub etcd_peer: Ca,
    /// The service-account signing key (PKCS#8 PEM) and its public half
    /// (the API server verifies tokens with it; it reads no PKCS#8 private
    /// key as a public one).
    service_account_key: String,
    service_account_public: String,
}

impl std::fmt::Debug for ClusterPki {
    // No key in any log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPki").finish_non_exhaustive()
    }
}

impl ClusterPki {
    pub fn generate() -> anyhow::Result<ClusterPki> {
        let key = KeyPair::generate()?;
        Ok(ClusterPki {
            cluster: Ca::generate("k3s-server-ca")?,
            etcd_server: Ca::generate("etcd-server-ca")?,
            etcd_peer: Ca::generate("etcd-peer-ca")?,
            service_account_key: key.serialize_pem(),
            service_account_public: key.public_key_pem(),
        })
    }

    /// A server's TLS files under K3s's paths (`layout`): etcd's, the API
    /// server's, the service-account key.
    pub fn write_server(
        &self,
        layout: &k3sfleet_standin::real::K3sLayout,
        node: &str,
        address: Ipv4Addr,
        registration: Ipv4Addr,
    ) -> anyhow::Result<()> {
        let etcd = layout.etcd_tls();
        let loopback = Ipv4Addr::LOCALHOST;
        let member_sans = [
            San::ip(loopback),
            San::ip(address),
            San::dns("localhost"),
            San::dns(node),
        ];
        write_public(&etcd.join("server-ca.crt"), self.etcd_server.cert_pem())?;
        write_pair(
            &etcd,
            "server-client",
            &self
                .etcd_server
                .issue("etcd-server", &[], &member_sans, Usage::ServerAndClient)?,
        )?;
        write_pair(
            &etcd,
            "client",
            &self
                .etcd_server
                .issue("etcd-client", &[], &[], Usage::Client)?,
        )?;
        write_public(&etcd.join("peer-ca.crt"), self.etcd_peer.cert_pem())?;
        write_pair(
            &etcd,
            "peer-server-client",
            &self
                .etcd_peer
                .issue("etcd-peer", &[], &member_sans, Usage::ServerAndClient)?,
        )?;

        let tls = layout.server_tls();
        write_public(&tls.join("server-ca.crt"), self.cluster.cert_pem())?;
        write_public(&tls.join("client-ca.crt"), self.cluster.cert_pem())?;
        let mut sans = vec![
            San::ip(registration),
            San::ip(address),
            San::ip(loopback),
            San::ip(KUBERNETES_SERVICE_IP),
            San::dns("localhost"),
            San::dns(node),
        ];
        for name in [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ] {
            sans.push(San::dns(name));
        }
        write_pair(
            &tls,
            "serving-kube-apiserver",
            &self
                .cluster
                .issue("kube-apiserver", &[], &sans, Usage::Server)?,
        )?;
        k3sfleet_pki::write_private_file(
            &tls.join("service.key"),
            &self.service_account_key,
            true,
        )?;
        write_public(&tls.join("service.pub"), &self.service_account_public)?;

        let cred = layout.server_cred();
        let local = "https://127.0.0.1:6443";
        self.write_kubeconfig(
            &cred.join("controller.kubeconfig"),
            local,
            "system:kube-controller-manager",
            &[],
        )?;
        self.write_kubeconfig(
            &cred.join("scheduler.kubeconfig"),
            local,
            "system:kube-scheduler",
            &[],
        )?;
        Ok(())
    }

    /// The node's own kubeconfig (`system:node:<name>` in `system:nodes`).
    pub fn write_kubelet(
        &self,
        layout: &k3sfleet_standin::real::K3sLayout,
        node: &str,
        api_url: &str,
    ) -> anyhow::Result<()> {
        self.write_kubeconfig(
            &layout.kubelet_kubeconfig(),
            api_url,
            &format!("system:node:{node}"),
            &["system:nodes"],
        )
    }

    /// A kubeconfig for `user` (in `groups`) against `server`, with its
    /// client certificate and key inline; the file is 0600.
    pub fn write_kubeconfig(
        &self,
        path: &Path,
        server: &str,
        user: &str,
        groups: &[&str],
    ) -> anyhow::Result<()> {
        let issued = self.cluster.issue(user, groups, &[], Usage::Client)?;
        let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
             users:\n- name: {user:?}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n\
             contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: {user:?}\ncurrent-context: lab\n",
            ca = b64(self.cluster.cert_pem()),
            cert = b64(&issued.cert_pem),
            key = b64(&issued.key_pem),
        );
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        k3sfleet_pki::write_private_file(path, &text, true)?;
        Ok(())
    }
}

fn write_public(path: &Path, pem: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    k3sfleet_pki::write_public_file(path, pem, true)?;
    Ok(())
}

/// `<dir>/<stem>.crt` (0644) and `<dir>/<stem>.key` (0600).
fn write_pair(dir: &Path, stem: &str, issued: &Issued) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    k3sfleet_pki::write_public_file(&dir.join(format!("{stem}.crt")), &issued.cert_pem, true)?;
    k3sfleet_pki::write_private_file(&dir.join(format!("{stem}.key")), &issued.key_pem, true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfigs_are_private_and_parse() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::generate().unwrap();
        let path = dir.path().join("operator.kubeconfig");
        pki.write_kubeconfig(&path, "https://127.0.0.1:6443", "lab-operator", &[])
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let config = kube::config::Kubeconfig::read_from(&path).unwrap();
        assert_eq!(config.auth_infos[0].name, "lab-operator");
        assert!(!format!("{pki:?}").contains("PRIVATE"));
    }
}
