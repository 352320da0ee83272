//! Longhorn's custom resources as the simulator serves them (longhorn.io/v1beta2,
//! namespaced in `longhorn-system`): Volume, Replica, Node and Setting, with only the
//! fields k3sfleet reads given meaning (see [`super`]). The body is kept as JSON, as an
//! API server keeps a custom resource whose schema preserves unknown fields.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use serde::de::Deserializer;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::api::table::{Column, TableRow};
use crate::cluster::Cluster;
use crate::kinds::Kind;
use crate::store::Store;

pub const GROUP: &str = "longhorn.io";
pub const VERSION: &str = "v1beta2";

/// One Longhorn custom resource: metadata plus everything else as JSON.
macro_rules! longhorn_kind {
    ($ty:ident, $kind:literal, $plural:literal, $singular:literal, $short:expr, $store:ident, $has_status:expr) => {
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct $ty {
            pub metadata: ObjectMeta,
            /// Every top-level field but apiVersion, kind and metadata.
            pub body: Map<String, Value>,
        }

        impl k8s_openapi::Resource for $ty {
            const API_VERSION: &'static str = "longhorn.io/v1beta2";
            const GROUP: &'static str = GROUP;
            const KIND: &'static str = $kind;
            const VERSION: &'static str = VERSION;
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = k8s_openapi::NamespaceResourceScope;
        }

        impl k8s_openapi::Metadata for $ty {
            type Ty = ObjectMeta;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serialize_custom(
                    serializer,
                    <Self as k8s_openapi::Resource>::KIND,
                    &self.metadata,
                    &self.body,
                )
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let (metadata, body) = deserialize_custom(deserializer)?;
                Ok(Self { metadata, body })
            }
        }

        impl Kind for $ty {
            const NAMESPACED: bool = true;
            const SINGULAR: &'static str = $singular;
            const SHORT_NAMES: &'static [&'static str] = $short;
            const CATEGORIES: &'static [&'static str] = &["longhorn"];
            const HAS_STATUS: bool = $has_status;

            fn store(cluster: &Cluster) -> &Store<Self> {
                &cluster.longhorn.$store
            }
            fn store_mut(cluster: &mut Cluster) -> &mut Store<Self> {
                &mut cluster.longhorn.$store
            }
        }

        impl $ty {
            pub fn named(name: &str, body: Value) -> Self {
                Self {
                    metadata: ObjectMeta {
                        name: Some(name.into()),
                        namespace: Some(super::NAMESPACE.into()),
                        ..Default::default()
                    },
                    body: match body {
                        Value::Object(map) => map,
                        _ => Map::new(),
                    },
                }
            }

            pub fn name(&self) -> &str {
                self.metadata.name.as_deref().unwrap_or_default()
            }

            /// A string field by JSON pointer ("" when unset).
            pub fn text(&self, pointer: &str) -> &str {
                self.pointer(pointer).and_then(Value::as_str).unwrap_or("")
            }

            pub fn pointer(&self, pointer: &str) -> Option<&Value> {
                let mut parts = pointer.trim_start_matches('/').splitn(2, '/');
                let first = self.body.get(parts.next()?)?;
                match parts.next() {
                    Some(rest) => first.pointer(&format!("/{rest}")),
                    None => Some(first),
                }
            }

            /// Sets `section.field` (section "spec" or "status").
            pub fn set(&mut self, section: &str, field: &str, value: Value) {
                let entry = self
                    .body
                    .entry(section.to_string())
                    .or_insert_with(|| json!({}));
                if !entry.is_object() {
                    *entry = json!({});
                }
                if let Some(map) = entry.as_object_mut() {
                    map.insert(field.to_string(), value);
                }
            }
        }
    };
}

// The real CRDs (longhorn's deploy/longhorn.yaml) give volumes, replicas and nodes a
// status subresource; settings keep their value at the top level.
longhorn_kind!(
    Volume,
    "Volume",
    "volumes",
    "volume",
    &["lhv"],
    volumes,
    true
);
longhorn_kind!(
    Replica,
    "Replica",
    "replicas",
    "replica",
    &["lhr"],
    replicas,
    true
);
longhorn_kind!(LonghornNode, "Node", "nodes", "node", &["lhn"], nodes, true);
longhorn_kind!(
    Setting,
    "Setting",
    "settings",
    "setting",
    &["lhs"],
    settings,
    true
);

fn serialize_custom<S: Serializer>(
    serializer: S,
    kind: &str,
    metadata: &ObjectMeta,
    body: &Map<String, Value>,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(None)?;
    map.serialize_entry("apiVersion", "longhorn.io/v1beta2")?;
    map.serialize_entry("kind", kind)?;
    map.serialize_entry("metadata", metadata)?;
    for (key, value) in body {
        map.serialize_entry(key, value)?;
    }
    map.end()
}

fn deserialize_custom<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<(ObjectMeta, Map<String, Value>), D::Error> {
    let mut body = Map::<String, Value>::deserialize(deserializer)?;
    body.remove("apiVersion");
    body.remove("kind");
    let metadata = match body.remove("metadata") {
        Some(meta) => serde_json::from_value(meta).map_err(serde::de::Error::custom)?,
        None => ObjectMeta::default(),
    };
    Ok((metadata, body))
}

/// The stores of Longhorn's kinds.
#[derive(Debug, Default)]
pub struct Stores {
    pub volumes: Store<Volume>,
    pub replicas: Store<Replica>,
    pub nodes: Store<LonghornNode>,
    pub settings: Store<Setting>,
    pub(crate) state: super::LonghornState,
}

impl Stores {
    pub fn with_history(history: usize) -> Self {
        Self {
            volumes: Store::with_history(history),
            replicas: Store::with_history(history),
            nodes: Store::with_history(history),
            settings: Store::with_history(history),
            state: Default::default(),
        }
    }
}

fn cell(value: &str) -> Value {
    json!(value)
}

fn name_cell(meta: &ObjectMeta) -> Value {
    json!(meta.name.clone().unwrap_or_default())
}

fn age_cell(meta: &ObjectMeta, now: Timestamp) -> Value {
    match &meta.creation_timestamp {
        Some(created) => json!(format!("{}s", now.as_second() - created.0.as_second())),
        None => json!("<unknown>"),
    }
}

// Columns as the CRDs' additionalPrinterColumns define them (a subset).
impl TableRow for Volume {
    fn columns() -> Vec<Column> {
        vec![
            Column("Name", "string", 0),
            Column("State", "string", 0),
            Column("Robustness", "string", 0),
            Column("Node", "string", 0),
            Column("Age", "date", 0),
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        vec![
            name_cell(&self.metadata),
            cell(self.text("/status/state")),
            cell(self.text("/status/robustness")),
            cell(self.text("/status/currentNodeID")),
            age_cell(&self.metadata, now),
        ]
    }
}

impl TableRow for Replica {
    fn columns() -> Vec<Column> {
        vec![
            Column("Name", "string", 0),
            Column("State", "string", 0),
            Column("Node", "string", 0),
            Column("Age", "date", 0),
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        vec![
            name_cell(&self.metadata),
            cell(self.text("/status/currentState")),
            cell(self.text("/spec/nodeID")),
            age_cell(&self.metadata, now),
        ]
    }
}

impl TableRow for LonghornNode {
    fn columns() -> Vec<Column> {
        vec![Column("Name", "string", 0), Column("Age", "date", 0)]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        vec![name_cell(&self.metadata), age_cell(&self.metadata, now)]
    }
}

impl TableRow for Setting {
    fn columns() -> Vec<Column> {
        vec![
            Column("Name", "string", 0),
            Column("Value", "string", 0),
            Column("Age", "date", 0),
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        vec![
            name_cell(&self.metadata),
            cell(self.text("/value")),
            age_cell(&self.metadata, now),
        ]
    }
}

/// The CustomResourceDefinitions that serve these kinds on a real API server: the names,
/// scope and status subresources Longhorn's own (deploy/longhorn.yaml) have, with a schema
/// that keeps every field, as kubesim does.
pub fn custom_resource_definitions() -> Vec<Value> {
    vec![
        definition::<Volume>(),
        definition::<Replica>(),
        definition::<LonghornNode>(),
        definition::<Setting>(),
    ]
}

fn definition<K: Kind>() -> Value {
    let plural = K::URL_PATH_SEGMENT;
    let mut version = json!({
        "name": VERSION,
        "served": true,
        "storage": true,
        "schema": {"openAPIV3Schema": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true
        }}
    });
    if K::HAS_STATUS {
        version["subresources"] = json!({"status": {}});
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{GROUP}")},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "plural": plural,
                "singular": K::SINGULAR,
                "kind": K::KIND,
                "shortNames": K::SHORT_NAMES,
                "categories": K::CATEGORIES
            },
            "versions": [version]
        }
    })
}
