//! Rollouts and the progress of each node in them. Written before every
//! action a rollout takes, so a restarted coordinator knows exactly where
//! each node was.

use std::collections::BTreeMap;

use prost::Message;
use rusqlite::{Connection, OptionalExtension, Row, params};

use k3sfleet_proto::v1::UpgradeOptions;

use super::{Store, StoreError};
use crate::rollout::state::{Phase, Step};

/// One rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRecord {
    pub id: i64,
    pub target: String,
    pub phase: Phase,
    pub pause_reason: String,
    pub options: UpgradeOptions,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub created_by: String,
    /// Batches of nodes started together so far.
    pub batches_started: u32,
    /// Moves with every save; a save expecting another one is refused, so
    /// two writers can never overwrite each other.
    pub generation: u64,
    /// Since when alerts have held new nodes back, if they do.
    pub alert_hold_since_ms: Option<i64>,
    /// Since when Longhorn's rebuilds have kept every node from starting.
    pub longhorn_hold_since_ms: Option<i64>,
    /// In upgrade order: servers first.
    pub nodes: Vec<NodeProgress>,
}

/// One node of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProgress {
    pub node: String,
    pub server: bool,
    /// The batch it was started in (nodes started together are cordoned
    /// together before any of them drains).
    pub batch: u32,
    pub step: Step,
    pub attempt: u32,
    /// When it entered its current step.
    pub step_started_ms: Option<i64>,
    /// The current step's operation may have been sent: run it again (the
    /// same try, so the same command id) rather than think it never began.
    pub dispatched: bool,
    /// Passing failures of the current step in this attempt.
    pub retries: u32,
    /// Not before this time may the step be tried again.
    pub retry_at_ms: Option<i64>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// What the node was before k3sfleet cordoned it; None until observed.
    pub was_unschedulable: Option<bool>,
    pub cordoned_by_us: bool,
    pub from_version: String,
    /// The binary it ran before, as its agent reported it: what a rollback returns to.
    pub from_sha256: String,
    pub failure: String,
    pub snapshot: String,
    /// Milliseconds spent waiting, by reason.
    pub waits: BTreeMap<String, u64>,
    /// Settling: healthy without a gap since then. Only this process's own
    /// observations count: cleared when a coordinator loads the rollout.
    pub healthy_since_ms: Option<i64>,
    /// Settling: could not see the node since then.
    pub unseen_since_ms: Option<i64>,
}

impl NodeProgress {
    pub fn new(node: String, server: bool, from_version: String) -> Self {
        NodeProgress {
            node,
            server,
            batch: 0,
            step: Step::Pending,
            attempt: 0,
            step_started_ms: None,
            dispatched: false,
            retries: 0,
            retry_at_ms: None,
            started_ms: None,
            finished_ms: None,
            was_unschedulable: None,
            cordoned_by_us: false,
            from_version,
            from_sha256: String::new(),
            failure: String::new(),
            snapshot: String::new(),
            waits: BTreeMap::new(),
            healthy_since_ms: None,
            unseen_since_ms: None,
        }
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Query(rusqlite::Error::InvalidColumnType(
        0,
        what.to_string(),
        rusqlite::types::Type::Text,
    ))
}

fn rollout_from_row(row: &Row<'_>) -> rusqlite::Result<(RolloutRecord, Vec<u8>, String)> {
    Ok((
        RolloutRecord {
            id: row.get(0)?,
            target: row.get(1)?,
            phase: Phase::Running,
            pause_reason: row.get(3)?,
            options: UpgradeOptions::default(),
            created_at_ms: row.get(5)?,
            updated_at_ms: row.get(6)?,
            finished_at_ms: row.get(7)?,
            created_by: row.get(8)?,
            batches_started: row.get(9)?,
            generation: row.get::<_, i64>(10)? as u64,
            alert_hold_since_ms: row.get(11)?,
            longhorn_hold_since_ms: row.get(12)?,
            nodes: Vec::new(),
        },
        row.get(4)?,
        row.get(2)?,
    ))
}

const ROLLOUT_COLUMNS: &str = "id, target, phase, pause_reason, options, created_at_ms, updated_at_ms, \
     finished_at_ms, created_by, waves_started, generation, alert_hold_since_ms, longhorn_hold_since_ms";
const NODE_COLUMNS: &str = "node, server, wave, step, attempt, step_started_ms, started_ms, finished_ms, \
     was_unschedulable, cordoned_by_us, from_version, failure, snapshot, waits, dispatched, retries, \
     retry_at_ms, from_sha256, healthy_since_ms, unseen_since_ms";

fn node_from_row(row: &Row<'_>) -> rusqlite::Result<(NodeProgress, String, String)> {
    Ok((
        NodeProgress {
            node: row.get(0)?,
            server: row.get(1)?,
            batch: row.get(2)?,
            step: Step::Pending,
            attempt: row.get(4)?,
            step_started_ms: row.get(5)?,
            started_ms: row.get(6)?,
            finished_ms: row.get(7)?,
            was_unschedulable: row.get(8)?,
            cordoned_by_us: row.get(9)?,
            from_version: row.get(10)?,
            failure: row.get(11)?,
            snapshot: row.get(12)?,
            waits: BTreeMap::new(),
            dispatched: row.get(14)?,
            retries: row.get(15)?,
            retry_at_ms: row.get(16)?,
            from_sha256: row.get(17)?,
            healthy_since_ms: row.get(18)?,
            unseen_since_ms: row.get(19)?,
        },
        row.get(3)?,
        row.get(13)?,
    ))
}

fn load(conn: &Connection, id: i64) -> Result<Option<RolloutRecord>, StoreError> {
    let found = conn
        .query_row(
            &format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?1"),
            [id],
            rollout_from_row,
        )
        .optional()?;
    let Some((mut rollout, options, phase)) = found else {
        return Ok(None);
    };
    rollout.phase = Phase::parse(&phase).ok_or_else(|| corrupt("rollout phase"))?;
    rollout.options =
        UpgradeOptions::decode(options.as_slice()).map_err(|source| StoreError::Decode {
            what: "rollout options",
            source,
        })?;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {NODE_COLUMNS} FROM rollout_nodes WHERE rollout_id = ?1 ORDER BY position"
    ))?;
    for row in stmt.query_map([id], node_from_row)? {
        let (mut node, step, waits) = row?;
        node.step = Step::parse(&step).ok_or_else(|| corrupt("node step"))?;
        node.waits = serde_json::from_str(&waits).map_err(|_| corrupt("node waits"))?;
        rollout.nodes.push(node);
    }
    Ok(Some(rollout))
}

fn save_node(conn: &Connection, rollout_id: i64, node: &NodeProgress) -> Result<(), StoreError> {
    let waits = serde_json::to_string(&node.waits).expect("a map of strings to numbers serializes");
    let changed = conn.execute(
        "UPDATE rollout_nodes SET wave = ?3, step = ?4, attempt = ?5, step_started_ms = ?6, started_ms = ?7,
             finished_ms = ?8, was_unschedulable = ?9, cordoned_by_us = ?10, failure = ?11, snapshot = ?12,
             waits = ?13, dispatched = ?14, retries = ?15, retry_at_ms = ?16, from_sha256 = ?17,
             healthy_since_ms = ?18, unseen_since_ms = ?19
         WHERE rollout_id = ?1 AND node = ?2",
        params![
            rollout_id,
            node.node,
            node.batch,
            node.step.as_str(),
            node.attempt,
            node.step_started_ms,
            node.started_ms,
            node.finished_ms,
            node.was_unschedulable,
            node.cordoned_by_us,
            node.failure,
            node.snapshot,
            waits,
            node.dispatched,
            node.retries,
            node.retry_at_ms,
            node.from_sha256,
            node.healthy_since_ms,
            node.unseen_since_ms,
        ],
    )?;
    if changed != 1 {
        return Err(corrupt("rollout node row"));
    }
    Ok(())
}

impl Store {
    /// Records a new rollout and its nodes; returns it with its id.
    pub async fn create_rollout(
        &self,
        mut rollout: RolloutRecord,
    ) -> Result<RolloutRecord, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                &format!("INSERT INTO rollouts ({ROLLOUT_COLUMNS}) VALUES (NULL, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
                params![
                    rollout.target,
                    rollout.phase.as_str(),
                    rollout.pause_reason,
                    rollout.options.encode_to_vec(),
                    rollout.created_at_ms,
                    rollout.updated_at_ms,
                    rollout.finished_at_ms,
                    rollout.created_by,
                    rollout.batches_started,
                    rollout.generation as i64,
                    rollout.alert_hold_since_ms,
                    rollout.longhorn_hold_since_ms,
                ],
            )?;
            rollout.id = tx.last_insert_rowid();
            for (position, node) in rollout.nodes.iter().enumerate() {
                tx.execute(
                    "INSERT INTO rollout_nodes (rollout_id, node, server, position, wave, step, attempt,
                         cordoned_by_us, from_version, failure, snapshot, waits, from_sha256)
                     VALUES (?1, ?2, ?3, ?4, 0, ?5, 0, 0, ?6, ?8, '', '{}', ?7)",
                    params![rollout.id, node.node, node.server, position as i64, node.step.as_str(),
                        node.from_version, node.from_sha256, node.failure],
                )?;
            }
            tx.commit()?;
            Ok(rollout)
        })
        .await
    }

    pub async fn rollout(&self, id: i64) -> Result<Option<RolloutRecord>, StoreError> {
        self.call(move |conn| load(conn, id)).await
    }

    /// The newest rollout, finished or not.
    pub async fn latest_rollout(&self) -> Result<Option<RolloutRecord>, StoreError> {
        self.call(|conn| {
            let id: Option<i64> = conn
                .query_row("SELECT MAX(id) FROM rollouts", [], |row| row.get(0))
                .optional()?
                .flatten();
            id.map_or(Ok(None), |id| load(conn, id))
        })
        .await
    }

    /// Saves the rollout's own fields (phase, reason, batches, hold) and the
    /// given nodes in one transaction, moving its generation from
    /// `rollout.generation - 1` to `rollout.generation`. Refused
    /// ([`StoreError::Stale`]) when the stored generation is not the one
    /// this writer last saw: someone else wrote meanwhile.
    pub async fn save_rollout(
        &self,
        rollout: RolloutRecord,
        nodes: Vec<NodeProgress>,
    ) -> Result<(), StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let expected = rollout.generation.saturating_sub(1);
            let changed = tx.execute(
                "UPDATE rollouts SET phase = ?2, pause_reason = ?3, updated_at_ms = ?4, finished_at_ms = ?5,
                     waves_started = ?6, generation = ?7, alert_hold_since_ms = ?8,
                     longhorn_hold_since_ms = ?10
                 WHERE id = ?1 AND generation = ?9",
                params![
                    rollout.id,
                    rollout.phase.as_str(),
                    rollout.pause_reason,
                    rollout.updated_at_ms,
                    rollout.finished_at_ms,
                    rollout.batches_started,
                    rollout.generation as i64,
                    rollout.alert_hold_since_ms,
                    expected as i64,
                    rollout.longhorn_hold_since_ms,
                ],
            )?;
            if changed != 1 {
                let found: Option<i64> = tx
                    .query_row("SELECT generation FROM rollouts WHERE id = ?1", [rollout.id], |row| row.get(0))
                    .optional()?;
                return Err(match found {
                    Some(found) => StoreError::Stale {
                        id: rollout.id,
                        expected,
                        found: found as u64,
                    },
                    None => corrupt("rollout row"),
                });
            }
            for node in &nodes {
                save_node(&tx, rollout.id, node)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout() -> RolloutRecord {
        RolloutRecord {
            id: 0,
            target: "v1.31.5+k3s1".into(),
            phase: Phase::Running,
            pause_reason: String::new(),
            options: UpgradeOptions {
                target_version: "v1.31.5+k3s1".into(),
                max_unavailable: "20%".into(),
                ..Default::default()
            },
            created_at_ms: 1,
            updated_at_ms: 1,
            finished_at_ms: None,
            created_by: "admin:alice".into(),
            batches_started: 0,
            generation: 0,
            alert_hold_since_ms: None,
            longhorn_hold_since_ms: None,
            nodes: vec![
                NodeProgress::new("server-1".into(), true, "v1.31.4+k3s1".into()),
                NodeProgress::new("worker-01".into(), false, "v1.31.4+k3s1".into()),
            ],
        }
    }

    #[tokio::test]
    async fn a_rollout_survives_reopening_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut saved = store.create_rollout(rollout()).await.unwrap();
        assert!(saved.id > 0);

        let node = &mut saved.nodes[1];
        node.step = Step::Drain;
        node.attempt = 1;
        node.batch = 2;
        node.was_unschedulable = Some(false);
        node.cordoned_by_us = true;
        node.dispatched = true;
        node.retries = 2;
        node.retry_at_ms = Some(1234);
        node.from_sha256 = "ab".repeat(32);
        node.healthy_since_ms = Some(99);
        node.waits.insert("pdb shop/web".into(), 1500);
        saved.phase = Phase::Paused;
        saved.pause_reason = "operator".into();
        saved.batches_started = 2;
        saved.alert_hold_since_ms = Some(77);
        saved.longhorn_hold_since_ms = Some(88);
        saved.generation = 1;
        store
            .save_rollout(saved.clone(), vec![saved.nodes[1].clone()])
            .await
            .unwrap();

        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.latest_rollout().await.unwrap(), Some(saved.clone()));
        assert_eq!(store.rollout(saved.id).await.unwrap(), Some(saved));
        assert_eq!(store.rollout(999).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_save_from_a_writer_that_missed_a_change_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let created = store.create_rollout(rollout()).await.unwrap();
        let mut first = created.clone();
        first.generation = 1;
        first.pause_reason = "first writer".into();
        store.save_rollout(first, Vec::new()).await.unwrap();

        // A second writer still at generation 0 tries to write generation 1.
        let mut second = created;
        second.generation = 1;
        second.phase = Phase::Aborting;
        let err = store.save_rollout(second, Vec::new()).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Stale {
                    expected: 0,
                    found: 1,
                    ..
                }
            ),
            "{err}"
        );
        let stored = store.latest_rollout().await.unwrap().unwrap();
        assert_eq!(stored.pause_reason, "first writer");
        assert_eq!(stored.phase, Phase::Running);
    }
}
