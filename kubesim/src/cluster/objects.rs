//! Kind-independent object operations: create, update (main resource or `/status`),
//! immediate delete, and the raw writes controllers use.

use std::sync::Arc;

use serde_json::Value;

use super::Cluster;
use crate::error::{ApiError, ObjectRef};
use crate::kinds::Kind;
use crate::time::Now;

/// Which part of an object an update may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// Everything but `status`.
    Main,
    /// Only `status`.
    Status,
}

pub(crate) fn object_ref<'a, K: Kind>(name: &'a str) -> ObjectRef<'a> {
    ObjectRef {
        plural: K::URL_PATH_SEGMENT,
        group: K::GROUP,
        name,
    }
}

fn to_value<K: Kind>(obj: &K) -> Result<Value, ApiError> {
    serde_json::to_value(obj).map_err(|e| ApiError::internal(format!("encoding {}: {e}", K::KIND)))
}

fn from_value<K: Kind>(value: Value, name: &str) -> Result<K, ApiError> {
    serde_json::from_value(value).map_err(|e| {
        ApiError::invalid(
            K::KIND,
            object_ref::<K>(name),
            vec![crate::error::Cause {
                reason: "FieldValueInvalid".into(),
                message: e.to_string(),
                field: None,
            }],
        )
    })
}

impl Cluster {
    pub fn get<K: Kind>(&self, namespace: &str, name: &str) -> Option<&Arc<K>> {
        K::store(self).get(namespace, name)
    }

    /// Writes an object as is (controllers), bumping the resourceVersion.
    pub(crate) fn write<K: Kind>(&mut self, obj: K) -> Arc<K> {
        let rv = self.next_rv();
        K::store_mut(self).put(obj, rv)
    }

    /// Removes an object for good.
    pub(crate) fn remove<K: Kind>(&mut self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let rv = self.rv + 1;
        let removed = K::store_mut(self).remove(namespace, name, rv)?;
        self.rv = rv;
        Some(removed)
    }

    /// Creates an object as the API server would: generated name, uid, timestamps, defaults,
    /// validation, namespace existence.
    pub fn create<K: Kind>(&mut self, obj: K, now: &Now) -> Result<Arc<K>, ApiError> {
        self.create_as(obj, now, None)
    }

    /// [`Cluster::create`] by an API client: `manager` owns the fields it set.
    pub fn create_as<K: Kind>(
        &mut self,
        mut obj: K,
        now: &Now,
        manager: Option<&str>,
    ) -> Result<Arc<K>, ApiError> {
        let meta = obj.metadata_mut();
        if meta.name.as_deref().is_none_or(str::is_empty) {
            match meta.generate_name.clone().filter(|g| !g.is_empty()) {
                Some(prefix) => {
                    let suffix = self.random_suffix(5);
                    obj.metadata_mut().name = Some(format!("{prefix}{suffix}"));
                }
                None => {
                    return Err(ApiError::invalid(
                        K::KIND,
                        object_ref::<K>(""),
                        vec![crate::error::Cause {
                            reason: "FieldValueRequired".into(),
                            message: "name or generateName is required".into(),
                            field: Some("metadata.name".into()),
                        }],
                    ));
                }
            }
        }
        let name = obj.metadata().name.clone().unwrap_or_default();
        let namespace = if K::NAMESPACED {
            let ns = obj
                .metadata()
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            if self.namespaces.get("", &ns).is_none() {
                return Err(ApiError::not_found(crate::error::ObjectRef {
                    plural: "namespaces",
                    group: "",
                    name: &ns,
                }));
            }
            obj.metadata_mut().namespace = Some(ns.clone());
            ns
        } else {
            obj.metadata_mut().namespace = None;
            String::new()
        };
        if K::store(self).get(&namespace, &name).is_some() {
            return Err(ApiError::already_exists(object_ref::<K>(&name)));
        }
        obj.apply_defaults();
        let causes = obj.validate();
        if !causes.is_empty() {
            return Err(ApiError::invalid(K::KIND, object_ref::<K>(&name), causes));
        }
        let uid = self.new_uid();
        let meta = obj.metadata_mut();
        meta.uid = Some(uid);
        meta.creation_timestamp = Some(now.time());
        meta.generation = Some(1);
        meta.deletion_timestamp = None;
        meta.deletion_grace_period_seconds = None;
        meta.managed_fields = None;
        if let Some(manager) = manager {
            let value = to_value(&obj)?;
            let entries = super::fields::after_write(
                &[],
                &Value::Null,
                &value,
                manager,
                false,
                K::API_VERSION,
                now.time(),
            );
            obj.metadata_mut().managed_fields = (!entries.is_empty()).then_some(entries);
        }
        Ok(self.write(obj))
    }

    /// Replaces an object (PUT, or the result of a PATCH) with optimistic concurrency: a
    /// resourceVersion in `new` must match the stored one. Server-owned metadata is kept, and
    /// only the part named by `subresource` changes. A no-op update writes nothing.
    pub fn update<K: Kind>(
        &mut self,
        new: K,
        subresource: Subresource,
        now: &Now,
    ) -> Result<Arc<K>, ApiError> {
        self.update_as(new, subresource, now, "kubesim")
    }

    /// [`Cluster::update`] by `manager`, who then owns the fields it changed
    /// (metadata.managedFields).
    pub fn update_as<K: Kind>(
        &mut self,
        new: K,
        subresource: Subresource,
        now: &Now,
        manager: &str,
    ) -> Result<Arc<K>, ApiError> {
        let namespace = if K::NAMESPACED {
            new.metadata().namespace.clone().unwrap_or_default()
        } else {
            String::new()
        };
        let name = new.metadata().name.clone().unwrap_or_default();
        let current = K::store(self)
            .get(&namespace, &name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(object_ref::<K>(&name)))?;
        let current_meta = current.metadata();
        if let Some(rv) = new
            .metadata()
            .resource_version
            .as_deref()
            .filter(|rv| !rv.is_empty())
            && Some(rv) != current_meta.resource_version.as_deref()
        {
            return Err(ApiError::conflict(
                object_ref::<K>(&name),
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        if let Some(uid) = new.metadata().uid.as_deref().filter(|u| !u.is_empty())
            && Some(uid) != current_meta.uid.as_deref()
        {
            return Err(ApiError::conflict(
                object_ref::<K>(&name),
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    current_meta.uid.as_deref().unwrap_or("")
                ),
            ));
        }

        let old_value = to_value(&*current)?;
        let mut new_value = to_value(&new)?;
        if K::HAS_STATUS {
            match subresource {
                Subresource::Main => copy_field(&old_value, &mut new_value, "status"),
                Subresource::Status => {
                    let mut merged = old_value.clone();
                    copy_field(&new_value, &mut merged, "status");
                    // The status subresource may still change labels and annotations.
                    for key in ["labels", "annotations"] {
                        if let (Some(src), Some(dst)) =
                            (new_value.get("metadata"), merged.get_mut("metadata"))
                        {
                            copy_field(src, dst, key);
                        }
                    }
                    new_value = merged;
                }
            }
        }
        let mut merged: K = from_value(new_value, &name)?;
        let meta = merged.metadata_mut();
        meta.uid = current_meta.uid.clone();
        meta.creation_timestamp = current_meta.creation_timestamp.clone();
        meta.deletion_timestamp = current_meta.deletion_timestamp.clone();
        meta.deletion_grace_period_seconds = current_meta.deletion_grace_period_seconds;
        meta.generation = current_meta.generation;
        meta.resource_version = current_meta.resource_version.clone();
        meta.namespace = current_meta.namespace.clone();
        meta.managed_fields = current_meta.managed_fields.clone();
        let causes = merged.validate();
        if !causes.is_empty() {
            return Err(ApiError::invalid(K::KIND, object_ref::<K>(&name), causes));
        }
        let merged_value = to_value(&merged)?;
        if merged_value == old_value {
            return Ok(current);
        }
        let entries = super::fields::after_write(
            current_meta.managed_fields.as_deref().unwrap_or_default(),
            &old_value,
            &merged_value,
            manager,
            subresource == Subresource::Status,
            K::API_VERSION,
            now.time(),
        );
        merged.metadata_mut().managed_fields = (!entries.is_empty()).then_some(entries);
        if merged_value.get("spec") != old_value.get("spec") {
            merged.metadata_mut().generation = Some(current_meta.generation.unwrap_or(0) + 1);
        }
        let written = self.write(merged);
        K::after_api_update(self, &current, &written, now);
        Ok(written)
    }

    /// Deletes a non-pod object immediately (no finalizers or cascading in the simulator:
    /// owned objects are left to their controllers).
    pub fn delete_now<K: Kind>(&mut self, namespace: &str, name: &str) -> Result<Arc<K>, ApiError> {
        self.remove::<K>(namespace, name)
            .ok_or_else(|| ApiError::not_found(object_ref::<K>(name)))
    }
}

fn copy_field(from: &Value, to: &mut Value, key: &str) {
    let Some(obj) = to.as_object_mut() else {
        return;
    };
    match from.get(key) {
        Some(v) => {
            obj.insert(key.to_owned(), v.clone());
        }
        None => {
            obj.remove(key);
        }
    }
}
