//! Prometheus metrics over HTTP or HTTPS: `GET /metrics` in the text
//! exposition format 0.0.4, rendered at scrape time. Shared by the agent and
//! the coordinator.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// A scraper that sends nothing (or does not finish its TLS handshake) for
/// this long is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// `[metrics.tls]` of either daemon's config: `/metrics` over HTTPS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsTls {
    /// PEM server certificate (chain) of the endpoint, read again when it
    /// changes.
    pub cert: PathBuf,
    /// Its PEM private key.
    pub key: PathBuf,
    /// When set, only scrapers presenting a client certificate that chains
    /// to this PEM CA are served.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// Whether the daemon can do its work: `Err` lists why not. Answers `/ready`.
pub type Ready = Arc<dyn Fn() -> Result<(), Vec<String>> + Send + Sync>;

/// Produces the exposition text for one scrape.
pub type Render = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// A [`Render`] from a function that needs no waiting.
pub fn render_with(render: impl Fn() -> String + Send + Sync + 'static) -> Render {
    Arc::new(move || {
        let text = render();
        Box::pin(async move { text })
    })
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {address}")]
pub struct ListenError {
    address: SocketAddr,
    #[source]
    source: std::io::Error,
}

pub async fn bind(address: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ListenError { address, source })
}

/// What one endpoint serves: `/metrics` from `render`, `/` the banner, and
/// `/ready` (200, or 503 with the reasons) when given `ready`; over TLS
/// when given `tls`.
#[derive(Clone)]
pub struct Endpoint {
    pub render: Render,
    pub ready: Option<Ready>,
    pub banner: &'static str,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Serves `endpoint` on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, endpoint: Endpoint, stop: CancellationToken) {
    let acceptor = endpoint.tls.clone().map(TlsAcceptor::from);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accepting a metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let endpoint = endpoint.clone();
        let acceptor = acceptor.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                return serve_connection(stream, endpoint, stop).await;
            };
            // A scraper without an accepted certificate (or not speaking
            // TLS) fails here; at debug level, so a port scan floods no log.
            match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_connection(tls, endpoint, stop).await,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "metrics TLS handshake failed")
                }
                Err(_) => tracing::debug!(%peer, "metrics TLS handshake timed out"),
            }
        });
    }
}

async fn serve_connection<S>(stream: S, endpoint: Endpoint, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let endpoint = endpoint.clone();
        async move { Ok::<_, Infallible>(respond(&request, &endpoint).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        _ = stop.cancelled() => {}
    }
}

async fn respond(request: &Request<Incoming>, endpoint: &Endpoint) -> Response<Full<Bytes>> {
    let Endpoint {
        render,
        ready,
        banner,
        ..
    } = endpoint;
    let text = |status, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => Response::builder()
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .body(Full::new(Bytes::from(render().await)))
            .expect("valid response"),
        (&Method::GET, "/") => text(StatusCode::OK, banner.to_string()),
        (&Method::GET, "/ready") if ready.is_some() => match ready.as_ref().map(|ready| ready()) {
            Some(Err(problems)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", problems.join("; ")),
            ),
            _ => text(StatusCode::OK, "ready\n".to_string()),
        },
        (_, "/metrics") => text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".to_string()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n".to_string(),
        ),
    }
}
