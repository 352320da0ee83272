//! The coordinator's two kinds of cordon owner, operators' drains and the
//! rollout, telling each other what they work on: one claim per node across
//! both. The claim itself is on the Node ([`super::claim`]); this says which
//! claims are live in this process.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::claim::Owner;

#[derive(Debug, Default)]
pub struct Claims {
    /// Nodes being drained by operators now, and by whom.
    draining: Mutex<BTreeMap<String, String>>,
    /// The rollout under way; 0 when none.
    active_rollout: AtomicU64,
}

impl Claims {
    fn drains(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.draining.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `node` as being drained by `actor` until the guard is dropped;
    /// `Err` names who drains it already.
    pub fn start_drain(self: &Arc<Self>, node: &str, actor: &str) -> Result<DrainGuard, String> {
        let mut drains = self.drains();
        if let Some(by) = drains.get(node) {
            return Err(by.clone());
        }
        drains.insert(node.to_string(), actor.to_string());
        Ok(DrainGuard {
            claims: self.clone(),
            node: node.to_string(),
        })
    }

    pub fn draining(&self) -> BTreeSet<String> {
        self.drains().keys().cloned().collect()
    }

    pub fn is_draining(&self, node: &str) -> bool {
        self.drains().contains_key(node)
    }

    pub fn set_active_rollout(&self, id: Option<u64>) {
        self.active_rollout
            .store(id.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn active_rollout(&self) -> Option<u64> {
        match self.active_rollout.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    /// Whether a claim on `node` by `owner` belongs to work under way here:
    /// the active rollout, or a drain of that node running now. Anything
    /// else is left over (a drain that ended, a finished rollout).
    pub fn is_live_on(&self, node: &str, owner: &Owner) -> bool {
        match owner {
            Owner::Rollout(id) => self.active_rollout() == Some(*id),
            Owner::Drain(_) => self.is_draining(node),
        }
    }
}

/// A drain under way; dropping it ends the claim.
#[derive(Debug)]
pub struct DrainGuard {
    claims: Arc<Claims>,
    node: String,
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        self.claims.drains().remove(&self.node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_drain_per_node_and_live_claims_are_told_from_leftovers() {
        let claims = Arc::new(Claims::default());
        let guard = claims.start_drain("worker-1", "admin:alice").unwrap();
        assert_eq!(
            claims.start_drain("worker-1", "admin:bob").unwrap_err(),
            "admin:alice"
        );
        let drain = Owner::Drain("admin:alice".into());
        assert!(claims.is_live_on("worker-1", &drain));
        assert!(!claims.is_live_on("worker-2", &drain));
        drop(guard);
        assert!(!claims.is_live_on("worker-1", &drain));
        assert!(claims.draining().is_empty());

        claims.set_active_rollout(Some(7));
        assert!(claims.is_live_on("worker-1", &Owner::Rollout(7)));
        assert!(!claims.is_live_on("worker-1", &Owner::Rollout(6)));
        claims.set_active_rollout(None);
        assert!(!claims.is_live_on("worker-1", &Owner::Rollout(7)));
    }
}
