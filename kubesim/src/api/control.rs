//! The simulator's own JSON surface under `/sim/v1` (not Kubernetes API):
//! - `GET /sim/v1/stats` - violations, evictions accepted/refused, pods recreated;
//! - `GET|PUT|DELETE /sim/v1/faults` - read, set, clear injected faults.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::json;

use super::faults::Faults;
use super::{Shared, json_response};
use crate::error::ApiError;

pub(super) fn router() -> Router<Arc<Shared>> {
    Router::new().route("/sim/v1/stats", get(stats)).route(
        "/sim/v1/faults",
        get(get_faults).put(put_faults).delete(clear_faults),
    )
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let stats = shared.lock().stats().clone();
    json_response(
        StatusCode::OK,
        &serde_json::to_value(stats).unwrap_or_default(),
    )
}

async fn get_faults(State(shared): State<Arc<Shared>>) -> Response {
    json_response(StatusCode::OK, &json!(shared.faults.current()))
}

async fn put_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, ApiError> {
    let faults: Faults = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid faults document (fields: latency_ms, errors_for_seconds): {e}"
        ))
    })?;
    shared.faults.set(&faults);
    Ok(json_response(
        StatusCode::OK,
        &json!(shared.faults.current()),
    ))
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> Response {
    shared.faults.set(&Faults::default());
    json_response(StatusCode::OK, &json!(shared.faults.current()))
}
