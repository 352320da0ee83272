//! Agent identities for a simulated fleet: one key and certificate per agent,
//! issued in memory by the fleet CA (nothing is written to disk).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k3sfleet_pki::{ClientCertRequest, FleetCa, Role};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// What an agent presents in its handshake.
#[derive(Clone)]
pub struct AgentIdentity {
    pub name: String,
    pub key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for AgentIdentity {
    // The private key stays out of any output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentIdentity")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Issued identities and how long issuing took.
#[derive(Debug)]
pub struct Issued {
    pub identities: Vec<AgentIdentity>,
    pub elapsed: Duration,
}

/// The agent names of a simulated fleet: `{prefix}00001`, ...
pub fn agent_names(prefix: &str, count: usize) -> Vec<String> {
    (1..=count).map(|i| format!("{prefix}{i:05}")).collect()
}

/// Issues one agent certificate with a fresh P-256 key per name, on all cores.
pub fn issue_agents(ca: &FleetCa, names: &[String], validity: Duration) -> anyhow::Result<Issued> {
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = names.len().div_ceil(threads).max(1);
    let identities = std::thread::scope(|scope| {
        let workers: Vec<_> = names
            .chunks(chunk)
            .map(|names| {
                scope.spawn(move || {
                    names
                        .iter()
                        .map(|name| issue_one(ca, name, validity))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(names.len());
        for worker in workers {
            all.extend(worker.join().expect("an issuing thread panicked")?);
        }
        anyhow::Ok(all)
    })?;
    Ok(Issued {
        identities,
        elapsed: started.elapsed(),
    })
}

fn issue_one(ca: &FleetCa, name: &str, validity: Duration) -> anyhow::Result<AgentIdentity> {
    let issued = ca
        .issue_client(&ClientCertRequest {
            name: name.to_string(),
            role: Role::Agent,
            k3s_role: None,
            validity,
        })
        .with_context(|| format!("issuing the certificate of {name}"))?;
    let cert = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
        .with_context(|| format!("reading the certificate issued to {name}"))?;
    let key_pem = issued.key_pem.unwrap_or_default();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .with_context(|| format!("reading the key issued to {name}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(vec![cert], key, &provider)
        .with_context(|| format!("pairing the key and certificate of {name}"))?;
    Ok(AgentIdentity {
        name: name.to_string(),
        key: Arc::new(certified),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_agent_gets_its_own_certificate_for_its_name() {
        let ca = FleetCa::generate("test CA").unwrap();
        let names = agent_names("load-", 5);
        assert_eq!(names[0], "load-00001");
        let issued = issue_agents(&ca, &names, Duration::from_secs(3600)).unwrap();
        assert_eq!(issued.identities.len(), 5);
        let mut certs = std::collections::HashSet::new();
        for (identity, name) in issued.identities.iter().zip(&names) {
            assert_eq!(&identity.name, name);
            let peer = k3sfleet_pki::PeerIdentity::from_der(&identity.key.cert[0]).unwrap();
            assert_eq!(&peer.name, name);
            assert_eq!(peer.role, Role::Agent);
            assert!(
                certs.insert(identity.key.cert[0].to_vec()),
                "a certificate was reused"
            );
        }
    }
}
