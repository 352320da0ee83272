//! Watches: newline-delimited JSON events (`{"type":"ADDED","object":{...}}`) streamed over a
//! chunked response, resumable from a resourceVersion, with bookmarks, `timeoutSeconds`,
//! `sendInitialEvents`, and 410 Expired for versions the history no longer holds.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::Response;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::resources::Selectors;
use super::table::{table, wants_table};
use super::{ApiRequest, Shared, wire};
use crate::error::ApiError;
use crate::kinds::Kind;
use crate::store::{Event, EventType};
use crate::time::Now;

/// A real API server ends watches after a random 30-60 minutes when no timeout is asked for.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// Serialized events buffered per watch before the sender waits for the client.
const CHANNEL_DEPTH: usize = 256;

/// How one watch renders objects.
struct Render {
    api_version: String,
    /// meta.k8s.io Table version, when the client asked for tables.
    table_version: Option<&'static str>,
    include_object: String,
}

impl Render {
    fn event<K: Kind>(&self, kind: &str, obj: &K) -> Bytes {
        let object = match self.table_version {
            Some(version) => table::<K>(
                &[obj],
                version,
                0,
                &self.include_object,
                &self.api_version,
                Now::capture().wall,
            ),
            None => wire(obj, &self.api_version),
        };
        line(&json!({ "type": kind, "object": object }))
    }

    fn bookmark<K: Kind>(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({ "resourceVersion": rv.to_string() });
        if initial_events_end {
            metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        line(
            &json!({ "type": "BOOKMARK", "object": { "kind": K::KIND, "apiVersion": self.api_version, "metadata": metadata } }),
        )
    }
}

fn line(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Where a watch starts.
enum Start<K> {
    /// Synthetic ADDED events for the current state, then live events after `rv`.
    Snapshot { objects: Vec<Arc<K>>, rv: u64 },
    /// Replay of the history after the requested version, then live events.
    Resume { replay: Vec<Arc<Event<K>>>, rv: u64 },
}

pub(super) fn serve<K: Kind>(
    shared: &Arc<Shared>,
    request: &ApiRequest,
) -> Result<Response, ApiError> {
    let selectors = Selectors::parse::<K>(&request.query)?;
    let query = &request.query;
    let timeout = query
        .number::<u64>("timeoutSeconds")?
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let bookmarks = query.flag("allowWatchBookmarks");
    let send_initial = query.flag("sendInitialEvents");
    let requested_rv: Option<u64> = match query.get("resourceVersion") {
        None | Some("0") => None,
        Some(v) => Some(
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?,
        ),
    };
    let accept = request
        .headers
        .get(http::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .unwrap_or_default();
    let render = Render {
        api_version: request.target.api_version.clone(),
        table_version: wants_table(accept),
        include_object: query.get("includeObject").unwrap_or("Metadata").to_owned(),
    };
    let namespace = request.target.namespace.clone();

    let (start, live) = {
        let cluster = shared.lock();
        let store = K::store(&cluster);
        match requested_rv {
            Some(rv) if !send_initial => match store.watch_from(rv) {
                Some((replay, live)) => (Start::Resume { replay, rv }, live),
                None => {
                    let oldest = store.oldest_resumable_rv();
                    let error =
                        ApiError::expired(format!("too old resource version: {rv} ({oldest})"));
                    return Ok(stream_response(futures::stream::iter([line(
                        &json!({ "type": "ERROR", "object": error.to_status() }),
                    )])));
                }
            },
            _ => {
                let objects = store.iter().cloned().collect();
                (
                    Start::Snapshot {
                        objects,
                        rv: cluster.resource_version(),
                    },
                    store.subscribe(),
                )
            }
        }
    };

    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let mut shutdown = shared.shutdown.clone();
    let faults = shared.clone();
    let bookmark_interval = shared.bookmark_interval;
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_rv;
        match start {
            Start::Snapshot { objects, rv } => {
                for obj in objects
                    .iter()
                    .filter(|o| selectors.matches(&***o, namespace.as_deref()))
                {
                    if tx
                        .send(render.event(EventType::Added.as_str(), &**obj))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                last_rv = rv;
                if send_initial && tx.send(render.bookmark::<K>(rv, true)).await.is_err() {
                    return;
                }
            }
            Start::Resume { replay, rv } => {
                last_rv = rv;
                for event in replay {
                    last_rv = event.rv;
                    if let Some(bytes) = filtered(&event, &selectors, namespace.as_deref(), &render)
                        && tx.send(bytes).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
        stream_live(
            live,
            tx,
            &selectors,
            namespace.as_deref(),
            &render,
            last_rv,
            deadline,
            bookmarks.then_some(bookmark_interval),
            &mut shutdown,
            &faults,
        )
        .await;
    });
    Ok(stream_response(ReceiverStream::new(rx)))
}

#[allow(clippy::too_many_arguments)]
async fn stream_live<K: Kind>(
    mut live: broadcast::Receiver<Arc<Event<K>>>,
    tx: mpsc::Sender<Bytes>,
    selectors: &Selectors,
    namespace: Option<&str>,
    render: &Render,
    mut last_rv: u64,
    deadline: tokio::time::Instant,
    bookmark_every: Option<Duration>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    shared: &Shared,
) {
    let mut ticker = tokio::time::interval(bookmark_every.unwrap_or(Duration::from_secs(3600)));
    ticker.tick().await;
    loop {
        tokio::select! {
            received = live.recv() => match received {
                Ok(event) if event.rv <= last_rv => {}
                Ok(event) => {
                    last_rv = event.rv;
                    let late = shared.faults.watch_delay();
                    if !late.is_zero() {
                        tokio::time::sleep(late).await;
                    }
                    if let Some(bytes) = filtered(&event, selectors, namespace, render)
                        && tx.send(bytes).await.is_err()
                    {
                        return;
                    }
                }
                // Too slow a reader: end the watch; the client re-watches from its last version.
                Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = ticker.tick(), if bookmark_every.is_some() => {
                if tx.send(render.bookmark::<K>(last_rv, false)).await.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return,
            _ = shutdown.changed() => return,
            _ = tx.closed() => return,
        }
    }
}

/// The event as this watcher sees it: selectors turn moves in and out into ADDED / DELETED.
fn filtered<K: Kind>(
    event: &Event<K>,
    selectors: &Selectors,
    namespace: Option<&str>,
    render: &Render,
) -> Option<Bytes> {
    let now_matches = selectors.matches(&*event.object, namespace);
    let was_matching = event
        .previous
        .as_ref()
        .is_some_and(|p| selectors.matches(&**p, namespace));
    let kind = match event.kind {
        EventType::Added => now_matches.then_some(EventType::Added),
        EventType::Deleted => (was_matching || now_matches).then_some(EventType::Deleted),
        EventType::Modified => match (was_matching, now_matches) {
            (true, true) => Some(EventType::Modified),
            (false, true) => Some(EventType::Added),
            (true, false) => Some(EventType::Deleted),
            (false, false) => None,
        },
    }?;
    Some(render.event(kind.as_str(), &*event.object))
}

fn stream_response(stream: impl futures::Stream<Item = Bytes> + Send + 'static) -> Response {
    let body = Body::from_stream(stream.map(Ok::<Bytes, Infallible>));
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .unwrap_or_else(|_| Response::new(Body::empty()))
}
