//! `k3sfleet-coordinator ca init` and `cert issue`: the fleet CA on the
//! coordinator host and hand-issued certificates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k3sfleet_pki::{ClientCertRequest, FleetCa, IssueError, ServerCertRequest};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "coordinator.crt";
pub const SERVER_KEY: &str = "coordinator.key";

/// What `ca init` wrote.
#[derive(Debug)]
pub struct CaInitialized {
    pub files: Vec<PathBuf>,
    pub fingerprint: String,
}

/// Creates the fleet CA and the coordinator's server certificate in `dir`.
pub fn ca_init(
    dir: &Path,
    sans: &[String],
    server_validity: Duration,
    force: bool,
) -> Result<CaInitialized, IssueError> {
    create_dir(dir)?;
    let ca = FleetCa::generate("k3sfleet fleet CA")?;
    let server = ca.issue_server(&ServerCertRequest {
        sans: sans.to_vec(),
        validity: server_validity,
    })?;
    let files = [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY].map(|name| dir.join(name));
    if !force && let Some(existing) = files.iter().find(|path| path.exists()) {
        return Err(k3sfleet_pki::FileError::Exists {
            path: existing.clone(),
        }
        .into());
    }
    ca.save(&files[0], &files[1], force)?;
    // The chain carries the CA so enrolling hosts can pin it by fingerprint.
    k3sfleet_pki::write_public_file(&files[2], &ca.chain_pem(&server.cert_pem), force)?;
    let key = server.key_pem.as_deref().expect("issued with a fresh key");
    k3sfleet_pki::write_private_file(&files[3], key, force)?;
    Ok(CaInitialized {
        files: files.to_vec(),
        fingerprint: ca.fingerprint().to_string(),
    })
}

/// What `cert issue` wrote.
#[derive(Debug)]
pub struct CertIssued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub serial: String,
    pub not_after: i64,
}

/// Issues a client certificate and key into `out_dir` as NAME.crt / NAME.key.
pub fn cert_issue(
    ca_dir: &Path,
    out_dir: &Path,
    request: &ClientCertRequest,
    force: bool,
) -> Result<CertIssued, IssueError> {
    let ca = FleetCa::load(&ca_dir.join(CA_CERT), &ca_dir.join(CA_KEY))?;
    let issued = ca.issue_client(request)?;
    let name = &request.name;
    create_dir(out_dir)?;
    let cert = out_dir.join(format!("{name}.crt"));
    let key = out_dir.join(format!("{name}.key"));
    if !force && let Some(existing) = [&cert, &key].into_iter().find(|p| p.exists()) {
        return Err(k3sfleet_pki::FileError::Exists {
            path: existing.clone(),
        }
        .into());
    }
    k3sfleet_pki::write_private_file(&key, issued.key_pem.as_deref().expect("fresh key"), force)?;
    k3sfleet_pki::write_public_file(&cert, &issued.cert_pem, force)?;
    Ok(CertIssued {
        cert,
        key,
        serial: issued.serial,
        not_after: issued.not_after,
    })
}

fn create_dir(dir: &Path) -> Result<(), IssueError> {
    std::fs::create_dir_all(dir).map_err(|source| {
        k3sfleet_pki::FileError::Write {
            path: dir.to_owned(),
            source,
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k3sfleet_pki::{K3sRole, Role};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_then_issue_writes_keys_0600_and_refuses_to_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let done = ca_init(
            &pki,
            &["127.0.0.1".into(), "coord.example".into()],
            Duration::from_secs(3600),
            false,
        )
        .unwrap();
        assert!(done.fingerprint.starts_with("sha256:"));
        for key in [CA_KEY, SERVER_KEY] {
            let mode = std::fs::metadata(pki.join(key))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
        let err = ca_init(
            &pki,
            &["127.0.0.1".into()],
            Duration::from_secs(3600),
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");

        let request = |name: &str| ClientCertRequest {
            name: name.into(),
            role: Role::Agent,
            k3s_role: Some(K3sRole::Agent),
            validity: Duration::from_secs(60),
        };
        let issued =
            cert_issue(&pki, &dir.path().join("out"), &request("worker-01"), false).unwrap();
        let mode = std::fs::metadata(&issued.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err =
            cert_issue(&pki, &dir.path().join("out"), &request("Worker 01"), false).unwrap_err();
        assert!(err.to_string().contains("Worker 01"), "{err}");
    }
}
