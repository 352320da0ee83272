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
    pub waves_started: u32,
    /// In upgrade order: servers first.
    pub nodes: Vec<NodeProgress>,
}

/// One node of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProgress {
    pub node: String,
    pub server: bool,
    pub wave: u32,
    pub step: Step,
    pub attempt: u32,
    pub step_started_ms: Option<i64>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// What the node was before k3sfleet cordoned it; None until observed.
    pub was_unschedulable: Option<bool>,
    pub cordoned_by_us: bool,
    pub from_version: String,
    pub failure: String,
    pub snapshot: String,
    /// Milliseconds spent waiting, by reason.
    pub waits: BTreeMap<String, u64>,
}

impl NodeProgress {
    pub fn new(node: String, server: bool, from_version: String) -> Self {
        NodeProgress {
            node,
            server,
            wave: 0,
            step: Step::Pending,
            attempt: 0,
            step_started_ms: None,
            started_ms: None,
            finished_ms: None,
            was_unschedulable: None,
            cordoned_by_us: false,
            from_version,
            failure: String::new(),
            snapshot: String::new(),
            waits: BTreeMap::new(),
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
            waves_started: row.get(9)?,
            nodes: Vec::new(),
        },
        row.get(4)?,
        row.get(2)?,
    ))
}

const ROLLOUT_COLUMNS: &str = "id, target, phase, pause_reason, options, created_at_ms, updated_at_ms, finished_at_ms, created_by, waves_started";
const NODE_COLUMNS: &str = "node, server, wave, step, attempt, step_started_ms, started_ms, finished_ms, \
     was_unschedulable, cordoned_by_us, from_version, failure, snapshot, waits";

fn node_from_row(row: &Row<'_>) -> rusqlite::Result<(NodeProgress, String, String)> {
    Ok((
        NodeProgress {
            node: row.get(0)?,
            server: row.get(1)?,
            wave: row.get(2)?,
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
             waits = ?13
         WHERE rollout_id = ?1 AND node = ?2",
        params![
            rollout_id,
            node.node,
            node.wave,
            node.step.as_str(),
            node.attempt,
            node.step_started_ms,
            node.started_ms,
            node.finished_ms,
            node.was_unschedulable,
            node.cordoned_by_us,
            node.failure,
            node.snapshot,
            waits
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
                &format!("INSERT INTO rollouts ({ROLLOUT_COLUMNS}) VALUES (NULL, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    rollout.target,
                    rollout.phase.as_str(),
                    rollout.pause_reason,
                    rollout.options.encode_to_vec(),
                    rollout.created_at_ms,
                    rollout.updated_at_ms,
                    rollout.finished_at_ms,
                    rollout.created_by,
                    rollout.waves_started
                ],
            )?;
            rollout.id = tx.last_insert_rowid();
            for (position, node) in rollout.nodes.iter().enumerate() {
                tx.execute(
                    "INSERT INTO rollout_nodes (rollout_id, node, server, position, wave, step, attempt,
                         cordoned_by_us, from_version, failure, snapshot, waits)
                     VALUES (?1, ?2, ?3, ?4, 0, ?5, 0, 0, ?6, '', '', '{}')",
                    params![rollout.id, node.node, node.server, position as i64, node.step.as_str(), node.from_version],
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

    /// Saves the rollout's own fields (phase, reason, waves) and the given nodes
    /// in one transaction.
    pub async fn save_rollout(
        &self,
        rollout: RolloutRecord,
        nodes: Vec<NodeProgress>,
    ) -> Result<(), StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "UPDATE rollouts SET phase = ?2, pause_reason = ?3, updated_at_ms = ?4, finished_at_ms = ?5,
                     waves_started = ?6
                 WHERE id = ?1",
                params![
                    rollout.id,
                    rollout.phase.as_str(),
                    rollout.pause_reason,
                    rollout.updated_at_ms,
                    rollout.finished_at_ms,
                    rollout.waves_started
                ],
            )?;
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
            waves_started: 0,
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
        node.wave = 2;
        node.was_unschedulable = Some(false);
        node.cordoned_by_us = true;
        node.waits.insert("pdb shop/web".into(), 1500);
        saved.phase = Phase::Paused;
        saved.pause_reason = "operator".into();
        saved.waves_started = 2;
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
}
