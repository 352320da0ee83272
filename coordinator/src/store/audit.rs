//! The audit log: every operator action and every command sent, in order.

use rusqlite::params;

use super::{Store, StoreError};

/// Something to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Who: "admin:alice", "agent:worker-01", "coordinator".
    pub actor: String,
    /// What, as a dotted verb: "command.sent", "drain.started".
    pub action: String,
    pub node: Option<String>,
    /// Free text for humans. Never a secret.
    pub detail: String,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: i64,
    pub event: AuditEvent,
}

impl Store {
    /// Appends an event; returns its id.
    pub async fn audit(&self, event: AuditEvent, at_ms: i64) -> Result<i64, StoreError> {
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO audit (at_ms, actor, action, node, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![at_ms, event.actor, event.action, event.node, event.detail],
            )?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    /// The newest `limit` entries, newest first, optionally about one node.
    pub async fn audit_entries(
        &self,
        limit: u32,
        node: Option<String>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT id, at_ms, actor, action, node, detail FROM audit
                 WHERE ?1 IS NULL OR node = ?1
                 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![node, limit], |row| {
                Ok(AuditEntry {
                    id: row.get(0)?,
                    at_ms: row.get(1)?,
                    event: AuditEvent {
                        actor: row.get(2)?,
                        action: row.get(3)?,
                        node: row.get(4)?,
                        detail: row.get(5)?,
                    },
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &str, node: Option<&str>) -> AuditEvent {
        AuditEvent {
            actor: "admin:alice".into(),
            action: action.into(),
            node: node.map(Into::into),
            detail: String::new(),
        }
    }

    #[tokio::test]
    async fn newest_first_and_filtered_by_node() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.audit(event("a", Some("n1")), 1).await.unwrap();
        store.audit(event("b", Some("n2")), 2).await.unwrap();
        store.audit(event("c", Some("n1")), 3).await.unwrap();
        store.audit(event("d", None), 4).await.unwrap();

        let all = store.audit_entries(10, None).await.unwrap();
        let actions: Vec<_> = all.iter().map(|e| e.event.action.as_str()).collect();
        assert_eq!(actions, ["d", "c", "b", "a"]);

        let n1 = store.audit_entries(10, Some("n1".into())).await.unwrap();
        let actions: Vec<_> = n1.iter().map(|e| e.event.action.as_str()).collect();
        assert_eq!(actions, ["c", "a"]);

        assert_eq!(store.audit_entries(1, None).await.unwrap().len(), 1);
    }
}
