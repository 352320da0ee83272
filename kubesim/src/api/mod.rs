//! The HTTP surface: the Kubernetes API (discovery, resources, watches, tables) and the
//! simulator's own control endpoints under `/sim/v1`.

pub mod control;
mod discovery;
pub mod faults;
pub mod patch;
pub mod request;
mod resources;
pub mod table;
mod watch;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::Value;
use tokio::sync::{Notify, watch as watch_channel};

use crate::cluster::Cluster;
use crate::error::ApiError;
use crate::kinds::Kind;
use crate::time::Now;
use request::{Query, parse_target};

/// What every request handler shares.
#[derive(Debug)]
pub struct Shared {
    cluster: Mutex<Cluster>,
    /// Wakes the controller loop after a change so it re-plans its next deadline.
    pub(crate) wake: Notify,
    pub(crate) faults: faults::FaultState,
    /// Flips to true on shutdown; open watches end.
    pub(crate) shutdown: watch_channel::Receiver<bool>,
    /// `host:port` clients reach the server at (for /api's serverAddressByClientCIDRs).
    pub(crate) server_address: String,
    pub(crate) bookmark_interval: Duration,
}

impl Shared {
    pub(crate) fn new(
        cluster: Cluster,
        shutdown: watch_channel::Receiver<bool>,
        server_address: String,
        bookmark_interval: Duration,
    ) -> Self {
        Self {
            cluster: Mutex::new(cluster),
            wake: Notify::new(),
            faults: faults::FaultState::default(),
            shutdown,
            server_address,
            bookmark_interval,
        }
    }

    /// The cluster, read-only use. A panic while holding the lock cannot leave a half-made
    /// change (each change is one store write), so a poisoned lock is still usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a change, then the controllers, so the next request sees settled state (PDB
    /// status included), and tells the controller loop to re-plan.
    pub(crate) fn mutate<R>(&self, change: impl FnOnce(&mut Cluster, &Now) -> R) -> R {
        let now = Now::capture();
        let mut cluster = self.lock();
        let result = change(&mut cluster, &now);
        cluster.reconcile(&now);
        drop(cluster);
        self.wake.notify_one();
        result
    }
}

pub fn json_response(code: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        code,
        [(http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response()
}

/// An object as served under `api_version` (PDBs are also served as policy/v1beta1).
pub fn wire<K: Kind>(obj: &K, api_version: &str) -> Value {
    let mut value = serde_json::to_value(obj).unwrap_or_default();
    if api_version != K::API_VERSION
        && let Some(map) = value.as_object_mut()
    {
        map.insert("apiVersion".into(), Value::String(api_version.to_owned()));
    }
    value
}

pub fn router(shared: Arc<Shared>) -> Router {
    let kubernetes = Router::new()
        .route("/version", get(discovery::version))
        .route("/version/", get(discovery::version))
        .route("/api", get(discovery::api_versions))
        .route("/api/", get(discovery::api_versions))
        .route("/apis", get(discovery::api_groups))
        .route("/apis/", get(discovery::api_groups))
        .route("/api/{*rest}", any(core_api))
        .route("/apis/{*rest}", any(group_api))
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            faults::inject,
        ));
    kubernetes
        .merge(control::router())
        .fallback(|| async { ApiError::path_not_found() })
        .with_state(shared)
}

/// A request for a resource, as the generic handlers see it.
pub(crate) struct ApiRequest {
    pub method: Method,
    pub target: request::Target,
    pub query: Query,
    pub headers: HeaderMap,
    pub body: Bytes,
}

async fn core_api(
    State(shared): State<Arc<Shared>>,
    Path(rest): Path<String>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["v1"] => discovery::resource_list(&shared, "", "v1"),
        ["v1", rest @ ..] => {
            serve_resource(&shared, "", "v1", rest, method, query, headers, body).await
        }
        _ => ApiError::path_not_found().into_response(),
    }
}

async fn group_api(
    State(shared): State<Arc<Shared>>,
    Path(rest): Path<String>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [group] => discovery::group(&shared, group),
        [group, version] => discovery::resource_list(&shared, group, version),
        [group, version, rest @ ..] => {
            serve_resource(&shared, group, version, rest, method, query, headers, body).await
        }
        _ => ApiError::path_not_found().into_response(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_resource(
    shared: &Arc<Shared>,
    group: &str,
    version: &str,
    rest: &[&str],
    method: Method,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = match parse_target(group, version, rest) {
        Ok(target) if target.kind.is_longhorn() && !shared.lock().longhorn_installed() => {
            return ApiError::path_not_found().into_response();
        }
        Ok(target) => target,
        Err(error) => return error.into_response(),
    };
    let request = ApiRequest {
        method,
        target,
        query: Query::parse(query.as_deref()),
        headers,
        body,
    };
    resources::handle(shared, request).await
}
