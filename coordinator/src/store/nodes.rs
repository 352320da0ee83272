//! The node registry: every node that ever said hello, with what it said last.

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};

use k3sfleet_proto::v1::{HealthReport, Hello};

use super::{Store, StoreError};

/// A node as the database remembers it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub name: String,
    pub role: i32,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub last_hello: Option<Hello>,
    pub last_hello_ms: Option<i64>,
    pub last_report: Option<HealthReport>,
    pub last_report_ms: Option<i64>,
}

impl Store {
    /// Records one hello: creates the node on first sight, else updates it.
    /// The coordinator saves hellos through [`super::HelloLog`], which
    /// commits many in one transaction.
    pub async fn record_hello(&self, hello: Hello, at_ms: i64) -> Result<(), StoreError> {
        self.call(move |conn| save_hellos(conn, &[(hello, at_ms)]))
            .await
    }

    /// Saves the latest report of several nodes in one transaction. Reports are
    /// observations, saved in batches: a crash loses at most one batch of
    /// "last seen" times, never a decision.
    pub async fn record_reports(
        &self,
        reports: Vec<(String, HealthReport, i64)>,
    ) -> Result<(), StoreError> {
        if reports.is_empty() {
            return Ok(());
        }
        self.call(move |conn| save_reports(conn, &reports)).await
    }

    pub fn record_reports_blocking(
        &self,
        reports: &[(String, HealthReport, i64)],
    ) -> Result<(), StoreError> {
        self.call_blocking(|conn| save_reports(conn, reports))
    }

    pub async fn load_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn.prepare(
                "SELECT name, role, first_seen_ms, last_seen_ms, last_hello, last_hello_ms,
                        last_report, last_report_ms
                 FROM nodes ORDER BY name",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i32>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, Option<Vec<u8>>>(4)?,
                    row.get::<_, Option<i64>>(5)?,
                    row.get::<_, Option<Vec<u8>>>(6)?,
                    row.get::<_, Option<i64>>(7)?,
                ))
            })?;
            let mut nodes = Vec::new();
            for row in rows {
                let (
                    name,
                    role,
                    first_seen_ms,
                    last_seen_ms,
                    hello,
                    last_hello_ms,
                    report,
                    last_report_ms,
                ) = row?;
                nodes.push(NodeRecord {
                    name,
                    role,
                    first_seen_ms,
                    last_seen_ms,
                    last_hello: decode(hello, "hello")?,
                    last_hello_ms,
                    last_report: decode(report, "health report")?,
                    last_report_ms,
                });
            }
            Ok(nodes)
        })
        .await
    }

    /// Whether a node with this name was ever registered.
    pub async fn node_exists(&self, name: String) -> Result<bool, StoreError> {
        self.call(move |conn| {
            Ok(conn
                .query_row("SELECT 1 FROM nodes WHERE name = ?1", [name], |_| Ok(()))
                .optional()?
                .is_some())
        })
        .await
    }
}

/// Saves hellos in one transaction: creates each node on first sight, else
/// updates it.
pub(super) fn save_hellos(
    conn: &mut Connection,
    hellos: &[(Hello, i64)],
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO nodes (name, role, first_seen_ms, last_seen_ms, last_hello, last_hello_ms)
             VALUES (?1, ?2, ?3, ?3, ?4, ?3)
             ON CONFLICT (name) DO UPDATE SET
                role = excluded.role,
                last_seen_ms = excluded.last_seen_ms,
                last_hello = excluded.last_hello,
                last_hello_ms = excluded.last_hello_ms",
        )?;
        for (hello, at_ms) in hellos {
            stmt.execute(params![
                hello.node_name,
                hello.role,
                at_ms,
                hello.encode_to_vec()
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn save_reports(
    conn: &mut Connection,
    reports: &[(String, HealthReport, i64)],
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "UPDATE nodes SET last_report = ?2, last_report_ms = ?3,
                              last_seen_ms = MAX(last_seen_ms, ?3)
             WHERE name = ?1",
        )?;
        for (name, report, at_ms) in reports {
            stmt.execute(params![name, report.encode_to_vec(), at_ms])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn decode<M: Message + Default>(
    bytes: Option<Vec<u8>>,
    what: &'static str,
) -> Result<Option<M>, StoreError> {
    bytes
        .map(|bytes| {
            M::decode(bytes.as_slice()).map_err(|source| StoreError::Decode { what, source })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hello_then_reports_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let hello = Hello {
            node_name: "worker-01".into(),
            role: 2,
            k3s_version: "v1.31.4+k3s1".into(),
            ..Default::default()
        };
        store.record_hello(hello.clone(), 1_000).await.unwrap();
        store.record_hello(hello.clone(), 2_000).await.unwrap();
        let report = HealthReport {
            sequence: 7,
            ..Default::default()
        };
        store
            .record_reports(vec![("worker-01".into(), report.clone(), 3_000)])
            .await
            .unwrap();

        drop(store);
        let nodes = Store::open(dir.path()).unwrap().load_nodes().await.unwrap();
        assert_eq!(nodes.len(), 1);
        let node = &nodes[0];
        assert_eq!(node.first_seen_ms, 1_000);
        assert_eq!(node.last_seen_ms, 3_000);
        assert_eq!(node.last_hello_ms, Some(2_000));
        assert_eq!(node.last_hello.as_ref(), Some(&hello));
        assert_eq!(node.last_report.as_ref(), Some(&report));
    }
}
