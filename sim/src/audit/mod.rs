//! An independent judge of what k3sfleet did to a real cluster.
//!
//! kubesim counts its own PDB violations; a real cluster does not. The
//! auditor watches every pod and PodDisruptionBudget through the API (with
//! an identity of its own) and reads the API servers' audit logs, and
//! [`judge::judge`] turns that into three counts every real-tier test
//! asserts are zero: disruptions of healthy covered pods made while their
//! budget allowed none, direct DELETEs of covered pods by the coordinator,
//! and cordons the coordinator left behind or lifted without having made
//! them. It shares no code with the drain engine.

pub mod judge;
pub mod log;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

pub use judge::{AuditRecord, Change, Disruption, Object, Verdict, judge};

/// The live auditor of one cluster.
#[derive(Debug)]
pub struct Auditor {
    changes: Arc<Mutex<Vec<Change>>>,
    /// Watch restarts after the first list: while a watch is down, changes
    /// can be missed (the audit log is not).
    relists: Arc<AtomicU64>,
    synced: watch::Receiver<u8>,
    logs: Vec<PathBuf>,
    coordinator: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Auditor {
    /// Starts watching pods and budgets on `runtime` with `client`; judges
    /// the audit logs at `logs`, and `coordinator`'s requests.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        client: kube::Client,
        logs: Vec<PathBuf>,
        coordinator: &str,
    ) -> Auditor {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let relists = Arc::new(AtomicU64::new(0));
        let (synced_tx, synced) = watch::channel(0u8);
        let synced_tx = Arc::new(synced_tx);
        let pods = runtime.spawn(record(
            Api::<Pod>::all(client.clone()),
            |pod| Object::Pod(Box::new(pod)),
            changes.clone(),
            relists.clone(),
            synced_tx.clone(),
        ));
        let pdbs = runtime.spawn(record(
            Api::<PodDisruptionBudget>::all(client),
            |pdb| Object::Pdb(Box::new(pdb)),
            changes.clone(),
            relists.clone(),
            synced_tx,
        ));
        Auditor {
            changes,
            relists,
            synced,
            logs,
            coordinator: coordinator.to_string(),
            tasks: vec![pods, pdbs],
        }
    }

    /// Waits (blocking) until both watches have listed once.
    pub fn wait_synced(&self, timeout: std::time::Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        while *self.synced.borrow() < 2 {
            if std::time::Instant::now() >= deadline {
                anyhow::bail!("the auditor's watches did not list within {timeout:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    }

    /// The judge's verdict on everything observed so far.
    pub fn verdict(&self) -> Verdict {
        let changes = self.changes.lock().expect("not poisoned").clone();
        judge(&changes, &log::read_all(&self.logs), &self.coordinator)
    }

    /// Every audit record so far.
    pub fn audit_records(&self) -> Vec<AuditRecord> {
        log::read_all(&self.logs)
    }

    /// How often a watch had to list again (a gap in what it saw).
    pub fn relists(&self) -> u64 {
        self.relists.load(Ordering::Relaxed)
    }
}

impl Drop for Auditor {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn record<K>(
    api: Api<K>,
    wrap: fn(K) -> Object,
    changes: Arc<Mutex<Vec<Change>>>,
    relists: Arc<AtomicU64>,
    synced: Arc<watch::Sender<u8>>,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut listed = false;
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let (object, deleted) = match event {
            Ok(Event::Apply(object) | Event::InitApply(object)) => (object, false),
            Ok(Event::Delete(object)) => (object, true),
            Ok(Event::Init) => {
                if listed {
                    relists.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            Ok(Event::InitDone) => {
                if !listed {
                    listed = true;
                    synced.send_modify(|n| *n += 1);
                }
                continue;
            }
            Err(_) => continue,
        };
        let rv = object
            .meta()
            .resource_version
            .as_deref()
            .and_then(|rv| rv.parse().ok())
            .unwrap_or(0);
        changes.lock().expect("not poisoned").push(Change {
            rv,
            object: wrap(object),
            deleted,
        });
    }
}
