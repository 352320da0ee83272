//! Hellos saved with group commit.
//!
//! A hello is saved before its agent is welcomed, and each commit waits for
//! the disk (synchronous=FULL: an fsync, ~2-5 ms on a VM disk). When 10,000
//! agents reconnect after a coordinator restart, one transaction per hello
//! would take 20-50 s of fsyncs in a row, and agents waiting longer than
//! their 30 s welcome timeout would start over. So hellos queue up for one
//! writer, which commits everything waiting in one transaction: at low load
//! a batch is one hello (no added delay), in a storm it is hundreds. Every
//! caller still returns only after its hello is on disk.

use std::sync::Arc;

use k3sfleet_proto::v1::Hello;
use tokio::sync::{mpsc, oneshot};

use super::nodes::save_hellos;
use super::{Store, StoreError};

/// Hellos in one transaction at most; bounds a commit's time.
const MAX_BATCH: usize = 1024;

/// Saves hellos through one writer task; cheap to clone.
#[derive(Debug, Clone)]
pub struct HelloLog {
    queue: mpsc::UnboundedSender<Pending>,
}

#[derive(Debug)]
struct Pending {
    hello: Hello,
    at_ms: i64,
    saved: oneshot::Sender<Result<(), Arc<StoreError>>>,
}

impl Store {
    /// Starts the writer of hellos (inside a Tokio runtime). It stops when
    /// every handle is gone.
    pub fn hello_log(&self) -> HelloLog {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(self.clone(), pending));
        HelloLog { queue }
    }
}

impl HelloLog {
    /// Records a hello (creating the node on first sight); returns once it
    /// is committed.
    pub async fn record(&self, hello: Hello, at_ms: i64) -> Result<(), StoreError> {
        let (saved, result) = oneshot::channel();
        self.queue
            .send(Pending {
                hello,
                at_ms,
                saved,
            })
            .map_err(|_| StoreError::WriterStopped)?;
        result
            .await
            .map_err(|_| StoreError::WriterStopped)?
            .map_err(StoreError::Batch)
    }
}

async fn write_batches(store: Store, mut queue: mpsc::UnboundedReceiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (rows, waiters): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|pending| ((pending.hello, pending.at_ms), pending.saved))
            .unzip();
        let count = rows.len();
        let result = store
            .call(move |conn| save_hellos(conn, &rows))
            .await
            .map_err(Arc::new);
        if count > 1 {
            tracing::debug!(count, "saved hellos in one transaction");
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: &str) -> Hello {
        Hello {
            node_name: name.into(),
            role: 2,
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_hellos_are_all_saved_and_each_caller_waits_for_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let log = store.hello_log();
        let mut tasks = Vec::new();
        for i in 0..300 {
            let log = log.clone();
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let name = format!("node-{i:03}");
                log.record(hello(&name), 1_000 + i).await.unwrap();
                // Returned: it must be in the database already.
                assert!(store.node_exists(name).await.unwrap());
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        drop(store);
        let nodes = Store::open(dir.path()).unwrap().load_nodes().await.unwrap();
        assert_eq!(nodes.len(), 300);
        assert_eq!(nodes[7].name, "node-007");
        assert_eq!(nodes[7].last_hello_ms, Some(1_007));
    }

    #[tokio::test]
    async fn a_failed_commit_fails_every_hello_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .call(|conn| Ok(conn.execute_batch("DROP TABLE nodes")?))
            .await
            .unwrap();
        let err = store
            .hello_log()
            .record(hello("node-1"), 1)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Batch(_)), "{err}");
    }
}
