//! Which certificates are revoked.
//!
//! Revocation is by identity: revoking a name in a role denies every
//! certificate issued to it up to that moment, including ones issued offline
//! by `k3sfleet-coordinator cert issue` whose serials the coordinator never
//! saw. Certificates the coordinator issued itself are judged by their exact
//! issue time; others by their not-before time.

use std::collections::HashMap;
use std::sync::RwLock;

use k3sfleet_pki::{CERT_BACKDATE, PeerIdentity, Role};

#[derive(Debug, Default)]
pub struct Revocations {
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    /// (role, name) -> revoked at, Unix ms.
    identities: HashMap<(Role, String), i64>,
    /// serial -> issued at, Unix ms, for certificates the coordinator issued.
    issued: HashMap<String, i64>,
}

impl Revocations {
    pub fn revoke(&self, role: Role, name: &str, at_ms: i64) {
        self.write()
            .identities
            .insert((role, name.to_string()), at_ms);
    }

    pub fn record_issued(&self, serial: &str, issued_at_ms: i64) {
        self.write().issued.insert(serial.to_string(), issued_at_ms);
    }

    /// When this identity was last revoked, if ever.
    pub fn revoked_at(&self, role: Role, name: &str) -> Option<i64> {
        self.read()
            .identities
            .get(&(role, name.to_string()))
            .copied()
    }

    pub fn is_revoked(&self, peer: &PeerIdentity) -> bool {
        let state = self.read();
        let Some(revoked_at) = state.identities.get(&(peer.role, peer.name.clone())) else {
            return false;
        };
        let issued_at = state
            .issued
            .get(&peer.serial)
            .copied()
            .unwrap_or(peer.not_before * 1000 + CERT_BACKDATE.as_millis() as i64);
        issued_at <= *revoked_at
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k3sfleet_pki::Fingerprint;

    fn peer(serial: &str, not_before: i64) -> PeerIdentity {
        PeerIdentity {
            name: "worker-01".into(),
            role: Role::Agent,
            k3s_role: None,
            serial: serial.into(),
            not_before,
            not_after: not_before + 3600,
            fingerprint: Fingerprint::of_der(serial.as_bytes()),
        }
    }

    #[test]
    fn revocation_denies_what_was_issued_before_it_only() {
        let revocations = Revocations::default();
        revocations.record_issued("old", 1_000_000);
        revocations.record_issued("new", 2_000_001);
        assert!(!revocations.is_revoked(&peer("old", 0)));
        revocations.revoke(Role::Agent, "worker-01", 2_000_000);
        assert!(revocations.is_revoked(&peer("old", 0)));
        assert!(!revocations.is_revoked(&peer("new", 0)));
        // Issued offline: judged by not-before plus the backdating.
        assert!(revocations.is_revoked(&peer("offline", 1_000)));
        assert!(!revocations.is_revoked(&peer("offline-later", 3_000)));
        // Other roles with the same name are not affected.
        let mut admin = peer("old", 0);
        admin.role = Role::Admin;
        assert!(!revocations.is_revoked(&admin));
    }
}
