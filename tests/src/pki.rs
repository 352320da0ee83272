//! A fleet CA and certificates for one test, in a temporary directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k3sfleet_pki::{ClientCertRequest, FixedClientCert, FleetCa, Role, ServerCertRequest};

pub struct TestPki {
    pub dir: PathBuf,
    pub ca: FleetCa,
}

/// Paths of one issued certificate and its key.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    /// Creates a CA and a coordinator certificate for 127.0.0.1 and localhost.
    pub fn create(dir: &Path) -> TestPki {
        std::fs::create_dir_all(dir).unwrap();
        let ca = FleetCa::generate("test fleet CA").unwrap();
        ca.save(&dir.join("ca.crt"), &dir.join("ca.key"), false)
            .unwrap();
        let server = ca
            .issue_server(&ServerCertRequest {
                sans: vec!["127.0.0.1".into(), "localhost".into()],
                validity: Duration::from_secs(24 * 3600),
            })
            .unwrap();
        std::fs::write(dir.join("coordinator.crt"), ca.chain_pem(&server.cert_pem)).unwrap();
        k3sfleet_pki::write_private_file(
            &dir.join("coordinator.key"),
            server.key_pem.as_deref().unwrap(),
            false,
        )
        .unwrap();
        TestPki {
            dir: dir.to_owned(),
            ca,
        }
    }

    /// The CA fingerprint agents pin when enrolling.
    pub fn fingerprint(&self) -> String {
        self.ca.fingerprint().to_string()
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn server(&self) -> CertFiles {
        CertFiles {
            cert: self.dir.join("coordinator.crt"),
            key: self.dir.join("coordinator.key"),
        }
    }

    /// Issues a client certificate for `name` with `role`.
    pub fn issue(&self, role: Role, name: &str) -> CertFiles {
        self.issue_valid_for(role, name, Duration::from_secs(24 * 3600))
    }

    /// Issues a client certificate valid for `validity` from now.
    pub fn issue_valid_for(&self, role: Role, name: &str, validity: Duration) -> CertFiles {
        let issued = self
            .ca
            .issue_client(&ClientCertRequest {
                name: name.into(),
                role,
                k3s_role: None,
                validity,
            })
            .unwrap();
        let files = CertFiles {
            cert: self.dir.join(format!("{role}-{name}.crt")),
            key: self.dir.join(format!("{role}-{name}.key")),
        };
        std::fs::write(&files.cert, &issued.cert_pem).unwrap();
        k3sfleet_pki::write_private_file(&files.key, issued.key_pem.as_deref().unwrap(), true)
            .unwrap();
        files
    }

    /// A rustls client config trusting this CA, presenting `identity` if given.
    pub fn client_tls(&self, identity: Option<&CertFiles>) -> Arc<rustls::ClientConfig> {
        let roots = k3sfleet_pki::root_store(&self.ca_cert()).unwrap();
        let identity = identity.map(|files| {
            Arc::new(FixedClientCert(
                k3sfleet_pki::certified_key(&files.cert, &files.key).unwrap(),
            )) as Arc<dyn rustls::client::ResolvesClientCert>
        });
        Arc::new(k3sfleet_pki::client_config(roots, identity))
    }
}
