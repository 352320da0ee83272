//! A stand-in kubelet: what a stand-in K3s runs while its unit is active.
//!
//! Like a real kubelet it registers its node with the API server, then posts
//! node status (Ready, with its kubelet version) as a heartbeat. A server's
//! stand-in also answers etcd's `/health` on loopback, where the agent's etcd
//! check looks. When K3s restarts with a new binary, the new kubelet reports
//! the new version: exactly what a rollout waits for.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A kubelet gives up on a request after a while and tries again, so a
/// network cut delays its heartbeats instead of hanging them.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What this kubelet is.
#[derive(Debug, Clone)]
pub struct KubeletSpec {
    /// Base URL of the API server, e.g. http://127.0.0.1:6443.
    pub api: String,
    pub node: String,
    pub version: String,
    pub server: bool,
    /// How long after start the node reports Ready (a kubelet's start-up).
    pub ready_after: Duration,
    pub heartbeat: Duration,
    /// Where a server answers etcd's /health.
    pub etcd_health: Option<SocketAddr>,
    /// The stand-in host this kubelet belongs to: it exits once the host's
    /// `.standin/kubelet.env` is gone (the test or demo that made it ended).
    pub host_root: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("{method} {url} failed")]
    Request {
        method: Method,
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{method} {url}: no answer within {REQUEST_TIMEOUT:?}")]
    Timeout { method: Method, url: String },
    #[error("{method} {url} answered {status}: {body}")]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("cannot serve etcd health on {address}")]
    Etcd {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Registers the node and posts status until the process is stopped.
pub async fn run(spec: KubeletSpec) -> Result<(), KubeletError> {
    if let Some(address) = spec.etcd_health {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| KubeletError::Etcd { address, source })?;
        tokio::spawn(serve_etcd_health(listener));
    }
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let registration =
        k3sfleet_kubesim::kubelet::registration(&spec.node, spec.server, &spec.version);
    let url = format!("{}/api/v1/nodes", spec.api);
    // Registration is retried until it goes through, as a kubelet does;
    // 409 AlreadyExists means the node is registered.
    loop {
        if host_gone(&spec) {
            return Ok(());
        }
        match send(
            &client,
            Method::POST,
            &url,
            "application/json",
            &registration,
            &[StatusCode::CONFLICT],
        )
        .await
        {
            Ok(()) => break,
            Err(err) => eprintln!("stand-in kubelet {}: registering: {err}", spec.node),
        }
        tokio::time::sleep(spec.heartbeat).await;
    }
    tokio::time::sleep(spec.ready_after).await;
    let status_url = format!("{}/api/v1/nodes/{}/status", spec.api, spec.node);
    loop {
        if host_gone(&spec) {
            return Ok(());
        }
        let now = k3sfleet_kubesim::time::Now::capture();
        let patch = k3sfleet_kubesim::kubelet::ready_status_patch(true, &spec.version, &now);
        if let Err(err) = send(
            &client,
            Method::PATCH,
            &status_url,
            k3sfleet_kubesim::kubelet::STRATEGIC_MERGE_PATCH,
            &patch,
            &[],
        )
        .await
        {
            // The API server may be slow or down for a moment; a kubelet keeps trying.
            eprintln!("stand-in kubelet {}: {err}", spec.node);
        }
        tokio::time::sleep(spec.heartbeat).await;
    }
}

fn host_gone(spec: &KubeletSpec) -> bool {
    spec.host_root
        .as_ref()
        .is_some_and(|root| !root.join(".standin/kubelet.env").exists())
}

async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    content_type: &str,
    body: &serde_json::Value,
    also_fine: &[StatusCode],
) -> Result<(), KubeletError> {
    let request = Request::builder()
        .method(method.clone())
        .uri(url)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a well-formed request");
    let response = tokio::time::timeout(REQUEST_TIMEOUT, client.request(request))
        .await
        .map_err(|_| KubeletError::Timeout {
            method: method.clone(),
            url: url.to_string(),
        })?
        .map_err(|source| KubeletError::Request {
            method: method.clone(),
            url: url.to_string(),
            source,
        })?;
    let status = response.status();
    if status.is_success() || also_fine.contains(&status) {
        return Ok(());
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Err(KubeletError::Status {
        method,
        url: url.to_string(),
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Answers every request the way etcd answers GET /health when healthy.
async fn serve_etcd_health(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_request| async {
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from_static(
                            b"{\"health\":\"true\",\"reason\":\"\"}",
                        )))
                        .expect("a well-formed response"),
                )
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
