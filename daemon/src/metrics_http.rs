//! Prometheus metrics over HTTP: `GET /metrics` in the text exposition
//! format 0.0.4, rendered at scrape time. Shared by the agent and the
//! coordinator.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// A scraper that sends nothing for this long is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Serves `/metrics` until `stop` is cancelled; `/` answers `banner`, and
/// `/ready` 200 or 503 with the reasons, when given `ready`.
pub async fn serve(
    listener: TcpListener,
    render: Render,
    ready: Option<Ready>,
    banner: &'static str,
    stop: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
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
        let render = render.clone();
        let ready = ready.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let render = render.clone();
                let ready = ready.clone();
                async move {
                    Ok::<_, Infallible>(respond(&request, &render, ready.as_ref(), banner).await)
                }
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
        });
    }
}

async fn respond(
    request: &Request<Incoming>,
    render: &Render,
    ready: Option<&Ready>,
    banner: &'static str,
) -> Response<Full<Bytes>> {
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
        (&Method::GET, "/ready") if ready.is_some() => match ready.map(|ready| ready()) {
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
