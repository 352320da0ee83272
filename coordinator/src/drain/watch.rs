//! A live, watched copy of some objects (the node's pods, the budgets), and a
//! signal whenever it changes, so waits end the moment the cluster moves
//! instead of at the next poll. kube-runtime's watcher relists after errors
//! and expired resourceVersions, so no change is missed for long.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Live<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    store: Store<K>,
    changes: watch::Receiver<u64>,
    last_error: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl<K> Live<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    /// Starts watching what `api` and `config` select.
    pub fn start(api: Api<K>, config: watcher::Config) -> Self {
        let (store, mut writer) = reflector::store::<K>();
        let (notify, changes) = watch::channel(0u64);
        let last_error = Arc::new(Mutex::new(None));
        let errors = last_error.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, config).default_backoff().boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        writer.apply_watcher_event(&event);
                        *errors.lock().expect("error slot") = None;
                        notify.send_modify(|n| *n += 1);
                    }
                    Err(error) => {
                        tracing::debug!(%error, "watch failed; retrying");
                        *errors.lock().expect("error slot") = Some(error.to_string());
                    }
                }
            }
        });
        Live {
            store,
            changes,
            last_error,
            task,
        }
    }

    /// Resolves once the first complete list has arrived.
    pub async fn ready(&self) {
        // The writer lives as long as the task, which lives as long as self.
        let _ = self.store.wait_until_ready().await;
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.store.get(&ObjectRef::new(name).within(namespace))
    }

    pub fn snapshot(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// Marks a change as seen each time one arrives.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// The last watch failure, while the watch is failing.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("error slot").clone()
    }
}

impl<K> Drop for Live<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    fn drop(&mut self) {
        self.task.abort();
    }
}
