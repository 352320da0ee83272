//! Helpers shared by the kubesim integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::BodyExt;
use k3sfleet_kubesim::{KubeSim, Running, Scenario};
use serde_json::Value;

/// Generous: the machine is a shared, noisy 2-core box.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate is inside the workspace")
        .to_owned()
}

pub fn scenario_file(name: &str) -> Scenario {
    let path = repo_root().join("kubesim/scenarios").join(name);
    Scenario::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn scenario(toml: &str) -> Scenario {
    Scenario::from_toml(toml, "test scenario")
        .unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)))
}

pub async fn start(scenario: &Scenario) -> Running {
    KubeSim::start(scenario, "127.0.0.1:0")
        .await
        .expect("simulator starts")
}

/// A kube-rs client for the simulator. kube's default client silently retries 429s (up to 15
/// times, backing off to minutes), which would hide refused evictions: turned off here, as a
/// drain engine must.
pub fn client(sim: &Running) -> kube::Client {
    let mut config = kube::Config::new(sim.url().parse().expect("valid url"));
    config.default_retry = false;
    kube::Client::try_from(config).expect("kube client")
}

/// Polls `check` until it returns true; panics naming `what` after `WAIT`.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw HTTP exchange: status and body (JSON when it parses, else a string).
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
}

pub async fn request(
    client: &kube::Client,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Reply {
    let mut builder = http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder
        .body(body.map(|b| b.into_bytes()).unwrap_or_default())
        .expect("request");
    let response = client
        .send(request.map(kube::client::Body::from))
        .await
        .expect("http exchange");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Reply {
        status,
        content_type,
        body,
    }
}

pub async fn get(client: &kube::Client, path: &str) -> Reply {
    request(client, "GET", path, &[], None).await
}

pub async fn post_json(client: &kube::Client, path: &str, body: &Value) -> Reply {
    request(
        client,
        "POST",
        path,
        &[("content-type", "application/json")],
        Some(body.to_string()),
    )
    .await
}

pub fn eviction(name: &str, namespace: &str, api_version: &str) -> Value {
    serde_json::json!({
        "apiVersion": api_version,
        "kind": "Eviction",
        "metadata": { "name": name, "namespace": namespace },
    })
}

/// Names of the pods bound to `node` (any state), from the simulator's own state.
pub fn pods_on(sim: &Running, node: &str) -> Vec<String> {
    sim.inspect(|c| {
        c.pods
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect()
    })
}
