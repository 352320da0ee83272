//! Objects of one kind with resource versions, a bounded event history for watch resumption,
//! and a broadcast fan-out to live watchers.
//!
//! Resource versions come from one cluster-wide counter (as etcd revisions do); the store is
//! told the version of each change. A watch may resume from any version at or after the last
//! event that fell out of the history; older ones get 410 Gone, like a compacted etcd.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::kinds::Kind;

/// Events kept per kind for watch resumption, unless the scenario says otherwise.
pub const DEFAULT_HISTORY: usize = 2000;
/// Events buffered per live watcher before it is cut off (it then re-watches from its last RV).
const FANOUT_CAPACITY: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change. `previous` lets filtered watches turn "moved out of the selector" into DELETED.
#[derive(Debug)]
pub struct Event<K> {
    pub kind: EventType,
    pub rv: u64,
    pub object: Arc<K>,
    pub previous: Option<Arc<K>>,
}

/// (namespace, name); namespace is empty for cluster-scoped kinds.
pub type Key = (String, String);

/// What a new watcher gets: past events to replay, and the live feed.
pub type WatchStart<K> = (Vec<Arc<Event<K>>>, broadcast::Receiver<Arc<Event<K>>>);

pub fn key_of<K: Kind>(obj: &K) -> Key {
    let meta = obj.metadata();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

#[derive(Debug)]
pub struct Store<K> {
    objects: BTreeMap<Key, Arc<K>>,
    history: VecDeque<Arc<Event<K>>>,
    history_capacity: usize,
    /// Watches from a resourceVersion below this cannot be served (410 Gone).
    oldest_resumable_rv: u64,
    fanout: broadcast::Sender<Arc<Event<K>>>,
}

impl<K: Kind> Default for Store<K> {
    fn default() -> Self {
        Self::with_history(DEFAULT_HISTORY)
    }
}

impl<K: Kind> Store<K> {
    /// A store that keeps the last `history_capacity` events (at least one) for resumption.
    pub fn with_history(history_capacity: usize) -> Self {
        Self {
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_capacity: history_capacity.max(1),
            oldest_resumable_rv: 0,
            fanout: broadcast::channel(FANOUT_CAPACITY).0,
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&Arc<K>> {
        self.objects.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// All objects, ordered by namespace then name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<K>> {
        self.objects.values()
    }

    pub fn in_namespace<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Arc<K>> + 'a {
        self.objects
            .range((namespace.to_owned(), String::new())..)
            .take_while(move |((ns, _), _)| ns == namespace)
            .map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Inserts or replaces an object; stamps `rv` into its metadata and records the event.
    pub fn put(&mut self, mut obj: K, rv: u64) -> Arc<K> {
        obj.metadata_mut().resource_version = Some(rv.to_string());
        let obj = Arc::new(obj);
        let previous = self.objects.insert(key_of(&*obj), obj.clone());
        let kind = if previous.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(Event {
            kind,
            rv,
            object: obj.clone(),
            previous,
        });
        obj
    }

    /// Removes an object; the DELETED event carries it stamped with the deletion's `rv`.
    pub fn remove(&mut self, namespace: &str, name: &str, rv: u64) -> Option<Arc<K>> {
        let previous = self
            .objects
            .remove(&(namespace.to_owned(), name.to_owned()))?;
        let mut last = (*previous).clone();
        last.metadata_mut().resource_version = Some(rv.to_string());
        let last = Arc::new(last);
        self.record(Event {
            kind: EventType::Deleted,
            rv,
            object: last.clone(),
            previous: Some(previous),
        });
        Some(last)
    }

    fn record(&mut self, event: Event<K>) {
        let event = Arc::new(event);
        if self.history.len() >= self.history_capacity
            && let Some(dropped) = self.history.pop_front()
        {
            self.oldest_resumable_rv = dropped.rv;
        }
        self.history.push_back(event.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.fanout.send(event);
    }

    /// Subscribes to live events and returns the history after `since_rv`, atomically (the
    /// caller holds the cluster lock). `None` when `since_rv` is too old to resume from.
    pub fn watch_from(&self, since_rv: u64) -> Option<WatchStart<K>> {
        if since_rv < self.oldest_resumable_rv {
            return None;
        }
        let replay = self
            .history
            .iter()
            .filter(|e| e.rv > since_rv)
            .cloned()
            .collect();
        Some((replay, self.fanout.subscribe()))
    }

    /// Subscribes to live events only.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event<K>>> {
        self.fanout.subscribe()
    }

    pub fn oldest_resumable_rv(&self) -> u64 {
        self.oldest_resumable_rv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn put_and_remove_record_events_with_versions() {
        let mut store = Store::<Node>::default();
        store.put(node("a"), 5);
        store.put(node("a"), 6);
        let gone = store.remove("", "a", 7).unwrap();
        assert_eq!(gone.metadata.resource_version.as_deref(), Some("7"));
        let (replay, _rx) = store.watch_from(5).unwrap();
        let kinds: Vec<_> = replay.iter().map(|e| (e.kind, e.rv)).collect();
        assert_eq!(
            kinds,
            vec![(EventType::Modified, 6), (EventType::Deleted, 7)]
        );
        assert!(store.is_empty());
    }

    #[test]
    fn too_old_resource_version_cannot_resume() {
        let mut store = Store::<Node>::with_history(100);
        for rv in 1..=110 {
            store.put(node("a"), rv);
        }
        assert_eq!(store.oldest_resumable_rv(), 10);
        assert!(store.watch_from(9).is_none());
        let (replay, _) = store.watch_from(10).unwrap();
        assert_eq!(replay.len(), 100);
    }

    #[test]
    fn namespace_range_is_exact() {
        use k8s_openapi::api::core::v1::Pod;
        let mut store = Store::<Pod>::default();
        for (ns, name) in [("a", "1"), ("ab", "2"), ("a", "3"), ("b", "4")] {
            let pod = Pod {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            store.put(pod, 1);
        }
        let names: Vec<_> = store
            .in_namespace("a")
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, vec!["1", "3"]);
    }
}
