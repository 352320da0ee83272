//! A K3s release mirror on 127.0.0.1 that serves a directory laid out like
//! GitHub releases (`/<version>/<asset>`), with failures on demand: slow
//! bodies (to kill an agent mid-download), connections cut mid-body, and
//! missing files.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;

/// How the mirror serves the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorBehaviour {
    /// Whole files at full speed.
    Normal,
    /// Bodies trickle at this many bytes per second (checksum files too).
    Slow { bytes_per_second: usize },
    /// The connection is cut after this many bytes of a binary's body
    /// (checksum files are served whole).
    CutAfter { bytes: usize },
    /// After this many bytes of a binary's body nothing more comes, and the
    /// connection stays open (checksum files are served whole).
    StallAfter { bytes: usize },
}

struct Shared {
    dir: PathBuf,
    behaviour: Mutex<MirrorBehaviour>,
    requests: Mutex<Vec<String>>,
}

/// A running mirror; stops when dropped.
pub struct Mirror {
    address: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("address", &self.address)
            .finish()
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mirror {
    /// Serves `dir` on 127.0.0.1 (a free port) on the current tokio runtime.
    pub async fn start(dir: &Path) -> std::io::Result<Mirror> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            behaviour: Mutex::new(MirrorBehaviour::Normal),
            requests: Mutex::new(Vec::new()),
        });
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(respond(&shared, &request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Mirror {
            address,
            shared,
            task,
        })
    }

    /// The base URL to give `k3sfleet k3s install --mirror`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn set_behaviour(&self, behaviour: MirrorBehaviour) {
        *self
            .shared
            .behaviour
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = behaviour;
    }

    /// Paths requested so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

async fn respond(shared: &Shared, request: &Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    shared
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(path.clone());
    let relative = path.trim_start_matches('/');
    let data = if relative
        .split('/')
        .any(|part| part == ".." || part.is_empty())
    {
        None
    } else {
        tokio::fs::read(shared.dir.join(relative)).await.ok()
    };
    let Some(data) = data else {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(
                Full::new(Bytes::from_static(b"Not Found"))
                    .map_err(|e| match e {})
                    .boxed(),
            )
            .expect("valid response");
    };
    let behaviour = *shared.behaviour.lock().unwrap_or_else(|p| p.into_inner());
    let is_checksum_file = relative.ends_with(".txt");
    let total = data.len();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        let data = Bytes::from(data);
        match behaviour {
            MirrorBehaviour::Slow { bytes_per_second } => {
                // Ten small chunks a second.
                let chunk = (bytes_per_second / 10).max(1);
                for piece in data.chunks(chunk) {
                    if sender
                        .send(Ok(Frame::data(data.slice_ref(piece))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            MirrorBehaviour::CutAfter { bytes } if !is_checksum_file => {
                let cut = bytes.min(data.len());
                let _ = sender.send(Ok(Frame::data(data.slice(..cut)))).await;
                // Let the bytes reach the client, then break the connection.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = sender
                    .send(Err(std::io::Error::other(
                        "connection cut by the test mirror",
                    )))
                    .await;
            }
            MirrorBehaviour::StallAfter { bytes } if !is_checksum_file => {
                let stall = bytes.min(data.len());
                let _ = sender.send(Ok(Frame::data(data.slice(..stall)))).await;
                // Hold the body open until the client gives up.
                sender.closed().await;
            }
            _ => {
                for piece in data.chunks(256 * 1024) {
                    if sender
                        .send(Ok(Frame::data(data.slice_ref(piece))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    let stream = tokio_stream_from(receiver);
    Response::builder()
        .header(header::CONTENT_LENGTH, total)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(StreamBody::new(stream).boxed())
        .expect("valid response")
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(url: &str) -> (u16, Result<Vec<u8>, String>) {
        let stream = tokio::net::TcpStream::connect(
            url.trim_start_matches("http://").split('/').next().unwrap(),
        )
        .await
        .unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let path = format!("/{}", url.splitn(4, '/').nth(3).unwrap_or_default());
        let response = sender
            .send_request(
                Request::get(path)
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .map_err(|e| e.to_string());
        (status, body)
    }

    #[tokio::test]
    async fn serves_files_and_breaks_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("v1")).unwrap();
        std::fs::write(dir.path().join("v1/k3s"), vec![7u8; 10_000]).unwrap();
        let mirror = Mirror::start(dir.path()).await.unwrap();
        let (status, body) = get(&format!("{}/v1/k3s", mirror.url())).await;
        assert_eq!((status, body.unwrap().len()), (200, 10_000));
        assert_eq!(get(&format!("{}/v1/nope", mirror.url())).await.0, 404);
        mirror.set_behaviour(MirrorBehaviour::CutAfter { bytes: 100 });
        let (status, body) = get(&format!("{}/v1/k3s", mirror.url())).await;
        assert_eq!(status, 200);
        assert!(body.is_err());
        assert_eq!(mirror.requests().len(), 3);
    }
}
