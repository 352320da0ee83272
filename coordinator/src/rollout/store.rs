//! Where the engine keeps rollouts, as a narrow seam: SQLite in the
//! coordinator ([`crate::store::Store`]), memory in the simulation test.
//! Both refuse a save from a writer that missed a change (the generation).

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::store::{AuditEvent, NodeProgress, RolloutRecord, Store, StoreError};

pub trait RolloutStore: Send + Sync + 'static {
    /// Rollout `id`, or the newest with 0.
    fn load(&self, id: i64) -> BoxFuture<'_, Result<Option<RolloutRecord>, StoreError>>;
    fn create(&self, rollout: RolloutRecord) -> BoxFuture<'_, Result<RolloutRecord, StoreError>>;
    /// Saves the rollout's fields and `nodes`, moving its generation from
    /// `rollout.generation - 1` to `rollout.generation`.
    fn save(
        &self,
        rollout: RolloutRecord,
        nodes: Vec<NodeProgress>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    fn audit(&self, event: AuditEvent, at_ms: i64) -> BoxFuture<'_, Result<(), StoreError>>;
}

impl RolloutStore for Store {
    fn load(&self, id: i64) -> BoxFuture<'_, Result<Option<RolloutRecord>, StoreError>> {
        Box::pin(async move {
            match id {
                0 => self.latest_rollout().await,
                id => self.rollout(id).await,
            }
        })
    }

    fn create(&self, rollout: RolloutRecord) -> BoxFuture<'_, Result<RolloutRecord, StoreError>> {
        Box::pin(self.create_rollout(rollout))
    }

    fn save(
        &self,
        rollout: RolloutRecord,
        nodes: Vec<NodeProgress>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.save_rollout(rollout, nodes))
    }

    fn audit(&self, event: AuditEvent, at_ms: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { Store::audit(self, event, at_ms).await.map(|_| ()) })
    }
}

/// Rollouts and audit entries in memory, with the same generation rule as
/// SQLite; what a "killed" coordinator left behind is exactly what was saved.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Memory>>,
}

#[derive(Debug, Default)]
struct Memory {
    rollouts: Vec<RolloutRecord>,
    audit: Vec<(i64, AuditEvent)>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every audit entry, oldest first.
    pub fn audit_log(&self) -> Vec<(i64, AuditEvent)> {
        self.lock().audit.clone()
    }

    /// The newest rollout as saved.
    pub fn latest(&self) -> Option<RolloutRecord> {
        self.lock().rollouts.last().cloned()
    }
}

impl RolloutStore for MemoryStore {
    fn load(&self, id: i64) -> BoxFuture<'_, Result<Option<RolloutRecord>, StoreError>> {
        let memory = self.lock();
        let found = match id {
            0 => memory.rollouts.last().cloned(),
            id => memory.rollouts.iter().find(|r| r.id == id).cloned(),
        };
        Box::pin(async move { Ok(found) })
    }

    fn create(
        &self,
        mut rollout: RolloutRecord,
    ) -> BoxFuture<'_, Result<RolloutRecord, StoreError>> {
        let mut memory = self.lock();
        rollout.id = memory.rollouts.len() as i64 + 1;
        memory.rollouts.push(rollout.clone());
        Box::pin(async move { Ok(rollout) })
    }

    fn save(
        &self,
        rollout: RolloutRecord,
        nodes: Vec<NodeProgress>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut memory = self.lock();
        let result = match memory.rollouts.iter_mut().find(|r| r.id == rollout.id) {
            None => Err(StoreError::Stale {
                id: rollout.id,
                expected: rollout.generation.saturating_sub(1),
                found: 0,
            }),
            Some(stored) if stored.generation + 1 != rollout.generation => Err(StoreError::Stale {
                id: rollout.id,
                expected: rollout.generation.saturating_sub(1),
                found: stored.generation,
            }),
            Some(stored) => {
                let mut saved_nodes = std::mem::take(&mut stored.nodes);
                for node in nodes {
                    if let Some(slot) = saved_nodes.iter_mut().find(|n| n.node == node.node) {
                        *slot = node;
                    }
                }
                *stored = RolloutRecord {
                    nodes: saved_nodes,
                    ..rollout
                };
                Ok(())
            }
        };
        Box::pin(async move { result })
    }

    fn audit(&self, event: AuditEvent, at_ms: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.lock().audit.push((at_ms, event));
        Box::pin(async { Ok(()) })
    }
}
