//! Generic verbs on resources (get, list, create, update, patch, delete), plus the pod-only
//! ones (graceful delete, eviction), dispatched by kind.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{Value, json};

use super::patch::{self, PatchType};
use super::request::{Query, ResourceKind, Target};
use super::table::{table, wants_table};
use super::{ApiRequest, Shared, json_response, watch, wire};
use crate::cluster::objects::{Subresource, object_ref};
use crate::cluster::pods::DeleteOptions;
use crate::error::ApiError;
use crate::kinds::Kind;
use crate::longhorn::{LonghornNode, Replica, Setting, Volume};
use crate::selector::{FieldQuery, LabelQuery};
use crate::time::Now;

pub(super) async fn handle(shared: &Arc<Shared>, request: ApiRequest) -> Response {
    let result = match request.target.kind {
        ResourceKind::Node => serve::<Node>(shared, request).await,
        ResourceKind::Pod => serve::<Pod>(shared, request).await,
        ResourceKind::Namespace => serve::<Namespace>(shared, request).await,
        ResourceKind::PodDisruptionBudget => serve::<PodDisruptionBudget>(shared, request).await,
        ResourceKind::Deployment => serve::<Deployment>(shared, request).await,
        ResourceKind::ReplicaSet => serve::<ReplicaSet>(shared, request).await,
        ResourceKind::StatefulSet => serve::<StatefulSet>(shared, request).await,
        ResourceKind::DaemonSet => serve::<DaemonSet>(shared, request).await,
        ResourceKind::LonghornVolume => serve::<Volume>(shared, request).await,
        ResourceKind::LonghornReplica => serve::<Replica>(shared, request).await,
        ResourceKind::LonghornNode => serve::<LonghornNode>(shared, request).await,
        ResourceKind::LonghornSetting => serve::<Setting>(shared, request).await,
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn serve<K: Kind>(shared: &Arc<Shared>, request: ApiRequest) -> Result<Response, ApiError> {
    let target = &request.target;
    if !K::NAMESPACED && target.namespace.is_some() {
        return Err(ApiError::path_not_found());
    }
    let is_pod = target.kind == ResourceKind::Pod;
    let name = target.name.clone();
    match (
        &request.method,
        name.as_deref(),
        target.subresource.as_deref(),
    ) {
        (&Method::GET, None, None) if request.query.flag("watch") => {
            watch::serve::<K>(shared, &request)
        }
        (&Method::GET, None, None) => list::<K>(shared, &request),
        (&Method::GET, Some(name), None | Some("status")) => get::<K>(shared, &request, name),
        (&Method::POST, None, None) => create::<K>(shared, &request),
        (&Method::POST, Some(name), Some("eviction")) if is_pod => evict(shared, &request, name),
        (&Method::PUT, Some(name), sub @ (None | Some("status"))) => {
            update::<K>(shared, &request, name, subresource(sub))
        }
        (&Method::PATCH, Some(name), sub @ (None | Some("status"))) => {
            patch::<K>(shared, &request, name, subresource(sub))
        }
        (&Method::DELETE, Some(name), None) => delete::<K>(shared, &request, name),
        (_, Some(_), Some(sub)) if !matches!(sub, "status" | "eviction") => {
            Err(ApiError::path_not_found())
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn subresource(sub: Option<&str>) -> Subresource {
    if sub == Some("status") {
        Subresource::Status
    } else {
        Subresource::Main
    }
}

fn namespace_of(target: &Target) -> String {
    target.namespace.clone().unwrap_or_default()
}

/// The selectors of a list or watch request.
pub(super) struct Selectors {
    labels: LabelQuery,
    fields: FieldQuery,
}

impl Selectors {
    pub(super) fn parse<K: Kind>(query: &Query) -> Result<Self, ApiError> {
        let bad = |e: crate::selector::SelectorError| ApiError::bad_request(e.to_string());
        let labels =
            LabelQuery::parse(query.get("labelSelector").unwrap_or_default()).map_err(bad)?;
        let fields =
            FieldQuery::parse(query.get("fieldSelector").unwrap_or_default()).map_err(bad)?;
        fields.check_fields(&K::selectable_fields()).map_err(bad)?;
        Ok(Self { labels, fields })
    }

    pub(super) fn matches<K: Kind>(&self, obj: &K, namespace: Option<&str>) -> bool {
        namespace.is_none_or(|ns| obj.metadata().namespace.as_deref() == Some(ns))
            && self.labels.matches(obj.metadata().labels.as_ref())
            && self.fields.matches(|f| obj.field(f))
    }
}

fn list<K: Kind>(shared: &Shared, request: &ApiRequest) -> Result<Response, ApiError> {
    let target = &request.target;
    let selectors = Selectors::parse::<K>(&request.query)?;
    let limit: Option<usize> = request.query.number("limit")?.filter(|l: &usize| *l > 0);
    let continue_after = request
        .query
        .get("continue")
        .map(|token| {
            hex::decode(token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::bad_request("invalid continue token"))
        })
        .transpose()?;
    let cluster = shared.lock();
    let rv = cluster.resource_version();
    let namespace = target.namespace.as_deref();
    let mut matching = K::store(&cluster)
        .iter()
        .filter(|obj| selectors.matches(&***obj, namespace))
        .filter(|obj| {
            continue_after
                .as_deref()
                .is_none_or(|after| sort_key(&***obj).as_str() > after)
        });
    let mut items: Vec<&K> = match limit {
        Some(n) => matching.by_ref().take(n).map(|o| &**o).collect(),
        None => matching.by_ref().map(|o| &**o).collect(),
    };
    let remaining = matching.count();
    let continue_token = (remaining > 0)
        .then(|| items.last().map(|o| hex::encode(sort_key(*o))))
        .flatten();
    if let Some(table_version) = request
        .headers
        .get(http::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .and_then(wants_table)
    {
        let include = request.query.get("includeObject").unwrap_or("Metadata");
        let mut doc = table::<K>(
            &items,
            table_version,
            rv,
            include,
            &target.api_version,
            Now::capture().wall,
        );
        if let Some(token) = &continue_token {
            doc["metadata"]["continue"] = json!(token);
        }
        return Ok(json_response(StatusCode::OK, &doc));
    }
    items.sort_by_key(|o| sort_key(*o));
    let items: Vec<Value> = items
        .iter()
        .map(|obj| {
            let mut value = wire(*obj, &target.api_version);
            if let Some(map) = value.as_object_mut() {
                // Items of typed lists carry no apiVersion/kind on a real server.
                map.remove("apiVersion");
                map.remove("kind");
            }
            value
        })
        .collect();
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
        metadata["remainingItemCount"] = json!(remaining);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "kind": format!("{}List", K::KIND), "apiVersion": target.api_version, "metadata": metadata, "items": items }),
    ))
}

/// Store order: namespace, then name.
fn sort_key<K: Kind>(obj: &K) -> String {
    let meta = obj.metadata();
    format!(
        "{}\u{0}{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

fn respond_object<K: Kind>(request: &ApiRequest, code: StatusCode, obj: &K, rv: u64) -> Response {
    let accept = request
        .headers
        .get(http::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .unwrap_or_default();
    match wants_table(accept) {
        Some(table_version) if request.method == Method::GET => {
            let include = request.query.get("includeObject").unwrap_or("Metadata");
            let api_version = &request.target.api_version;
            json_response(
                code,
                &table::<K>(
                    &[obj],
                    table_version,
                    rv,
                    include,
                    api_version,
                    Now::capture().wall,
                ),
            )
        }
        _ => json_response(code, &wire(obj, &request.target.api_version)),
    }
}

fn get<K: Kind>(shared: &Shared, request: &ApiRequest, name: &str) -> Result<Response, ApiError> {
    let cluster = shared.lock();
    let obj = K::store(&cluster)
        .get(&namespace_of(&request.target), name)
        .ok_or_else(|| ApiError::not_found(object_ref::<K>(name)))?;
    Ok(respond_object(
        request,
        StatusCode::OK,
        &**obj,
        cluster.resource_version(),
    ))
}

fn require_json(request: &ApiRequest) -> Result<(), ApiError> {
    let content_type = request
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if media == "application/json" || media.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(
            content_type,
            &["application/json", "application/yaml"],
        ))
    }
}

/// Decodes a body into `K`, filling in and checking name and namespace against the URL.
fn decode_object<K: Kind>(request: &ApiRequest, url_name: Option<&str>) -> Result<K, ApiError> {
    require_json(request)?;
    let mut obj: K = serde_json::from_slice(&request.body).map_err(|e| {
        ApiError::bad_request(format!("error decoding {} from request body: {e}", K::KIND))
    })?;
    let url_namespace = request.target.namespace.clone();
    let meta = obj.metadata_mut();
    if K::NAMESPACED {
        match (&meta.namespace, &url_namespace) {
            (Some(body), Some(url)) if body != url && !body.is_empty() => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => meta.namespace = url_namespace.or_else(|| meta.namespace.clone()),
        }
    }
    if let Some(url_name) = url_name {
        match meta.name.as_deref() {
            Some(body) if body != url_name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body}) does not match the name on the URL ({url_name})"
                )));
            }
            _ => meta.name = Some(url_name.to_owned()),
        }
    }
    Ok(obj)
}

/// Who a write is from, as the API server names field managers.
fn manager_of(request: &ApiRequest) -> String {
    crate::cluster::fields::manager_of(
        request.query.get("fieldManager"),
        request
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
    )
}

fn create<K: Kind>(shared: &Shared, request: &ApiRequest) -> Result<Response, ApiError> {
    let obj = decode_object::<K>(request, None)?;
    if K::NAMESPACED && request.target.namespace.is_none() {
        return Err(ApiError::method_not_allowed());
    }
    let (created, rv) = shared.mutate(|cluster, now| {
        let created = cluster.create_as(obj, now, Some(&manager_of(request)))?;
        K::after_api_write(cluster, &created, None, now);
        Ok::<_, ApiError>((created, cluster.resource_version()))
    })?;
    Ok(respond_object(request, StatusCode::CREATED, &*created, rv))
}

fn update<K: Kind>(
    shared: &Shared,
    request: &ApiRequest,
    name: &str,
    sub: Subresource,
) -> Result<Response, ApiError> {
    let obj = decode_object::<K>(request, Some(name))?;
    let (updated, rv) = shared.mutate(|cluster, now| {
        let updated = cluster.update_as(obj, sub, now, &manager_of(request))?;
        K::after_api_write(cluster, &updated, Some(sub), now);
        Ok::<_, ApiError>((updated, cluster.resource_version()))
    })?;
    Ok(respond_object(request, StatusCode::OK, &*updated, rv))
}

fn patch<K: Kind>(
    shared: &Shared,
    request: &ApiRequest,
    name: &str,
    sub: Subresource,
) -> Result<Response, ApiError> {
    let content_type = request
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or_default();
    let patch_type = PatchType::from_content_type(content_type)?;
    let namespace = namespace_of(&request.target);
    let (updated, rv) = shared.mutate(|cluster, now| {
        let current = K::store(cluster)
            .get(&namespace, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(object_ref::<K>(name)))?;
        let mut doc =
            serde_json::to_value(&*current).map_err(|e| ApiError::internal(e.to_string()))?;
        patch::apply(&mut doc, patch_type, &request.body)?;
        let mut patched: K = serde_json::from_value(doc).map_err(|e| {
            ApiError::invalid(
                K::KIND,
                object_ref::<K>(name),
                vec![crate::error::Cause {
                    reason: "FieldValueInvalid".into(),
                    message: e.to_string(),
                    field: None,
                }],
            )
        })?;
        let meta = patched.metadata_mut();
        if meta.name.as_deref() != Some(name)
            || (K::NAMESPACED && meta.namespace.as_deref() != Some(namespace.as_str()))
        {
            return Err(ApiError::bad_request(
                "a patch may not change an object's name or namespace",
            ));
        }
        let updated = cluster.update_as(patched, sub, now, &manager_of(request))?;
        K::after_api_write(cluster, &updated, Some(sub), now);
        Ok::<_, ApiError>((updated, cluster.resource_version()))
    })?;
    Ok(respond_object(request, StatusCode::OK, &*updated, rv))
}

/// DeleteOptions from an optional JSON body and the query string.
fn delete_options(body: &[u8], query: &Query) -> Result<DeleteOptions, ApiError> {
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    options_from_value(&body, query)
}

fn options_from_value(options: &Value, query: &Query) -> Result<DeleteOptions, ApiError> {
    let dry_run_values: Vec<String> = match options.get("dryRun") {
        Some(Value::Array(values)) => values
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => query
            .get("dryRun")
            .map(|v| vec![v.to_owned()])
            .unwrap_or_default(),
    };
    if let Some(bad) = dry_run_values.iter().find(|v| *v != "All") {
        return Err(ApiError::bad_request(format!(
            "Unsupported value: {bad:?}: supported values: \"All\""
        )));
    }
    Ok(DeleteOptions {
        grace_period_seconds: options
            .get("gracePeriodSeconds")
            .and_then(Value::as_i64)
            .or(query.number("gracePeriodSeconds")?),
        uid_precondition: options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_owned),
        resource_version_precondition: options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned),
        dry_run: !dry_run_values.is_empty(),
    })
}

fn delete<K: Kind>(
    shared: &Shared,
    request: &ApiRequest,
    name: &str,
) -> Result<Response, ApiError> {
    let options = delete_options(&request.body, &request.query)?;
    let namespace = namespace_of(&request.target);
    if request.target.kind == ResourceKind::Pod {
        let pod = shared
            .mutate(|cluster, now| cluster.delete_pod(&namespace, name, &options, "delete", now))?;
        return Ok(json_response(
            StatusCode::OK,
            &wire(&*pod, &request.target.api_version),
        ));
    }
    let deleted = shared.mutate(|cluster, _| {
        if options.dry_run {
            K::store(cluster)
                .get(&namespace, name)
                .cloned()
                .ok_or_else(|| ApiError::not_found(object_ref::<K>(name)))
        } else {
            cluster.delete_now::<K>(&namespace, name)
        }
    })?;
    Ok(json_response(
        StatusCode::OK,
        &wire(&*deleted, &request.target.api_version),
    ))
}

/// POST pods/{name}/eviction with a policy/v1 or policy/v1beta1 Eviction.
fn evict(shared: &Shared, request: &ApiRequest, name: &str) -> Result<Response, ApiError> {
    require_json(request)?;
    let body: Value = serde_json::from_slice(&request.body).map_err(|e| {
        ApiError::bad_request(format!("error decoding Eviction from request body: {e}"))
    })?;
    if let Some(kind) = body.get("kind").and_then(Value::as_str)
        && kind != "Eviction"
    {
        return Err(ApiError::bad_request(format!(
            "expected kind Eviction, got {kind:?}"
        )));
    }
    if let Some(api_version) = body.get("apiVersion").and_then(Value::as_str)
        && !matches!(api_version, "policy/v1" | "policy/v1beta1")
    {
        return Err(ApiError::bad_request(format!(
            "Eviction in version {api_version:?} cannot be handled as a Eviction"
        )));
    }
    if let Some(body_name) = body.pointer("/metadata/name").and_then(Value::as_str)
        && body_name != name
    {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let mut options = options_from_value(
        body.get("deleteOptions").unwrap_or(&Value::Null),
        &Query::default(),
    )?;
    if request.query.get("dryRun") == Some("All") {
        options.dry_run = true;
    }
    let namespace = namespace_of(&request.target);
    shared.mutate(|cluster, now| cluster.evict(&namespace, name, &options, now))?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201 }),
    ))
}
