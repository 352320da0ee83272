//! Fault injection for tests: added latency on every Kubernetes API request, a period
//! during which they all fail with HTTP 500, evictions carried out whose answers are lost
//! (a 504, as from a proxy that timed out), and watch events delivered late (a watch
//! lagging behind the store, as a busy API server's does). The `/sim/v1` surface is
//! never affected.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::Shared;
use crate::error::ApiError;

/// Faults to inject, as set through `/sim/v1/faults` or `Running::inject_faults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Added to every API request.
    #[serde(default)]
    pub latency_ms: u64,
    /// Every API request fails with 500 for this many wall seconds from now.
    #[serde(default)]
    pub errors_for_seconds: f64,
    /// The next this many evictions are carried out, then answered 504.
    #[serde(default)]
    pub lose_eviction_answers: u32,
    /// Every live watch event is sent this much later.
    #[serde(default)]
    pub watch_delay_ms: u64,
}

#[derive(Debug, Default)]
pub(crate) struct FaultState(Mutex<Active>);

#[derive(Debug, Default, Clone, Copy)]
struct Active {
    latency: Duration,
    errors_until: Option<Instant>,
    lose_eviction_answers: u32,
    watch_delay: Duration,
}

impl FaultState {
    pub(crate) fn set(&self, faults: &Faults) {
        let errors_until = (faults.errors_for_seconds > 0.0
            && faults.errors_for_seconds.is_finite())
        .then(|| Instant::now() + Duration::from_secs_f64(faults.errors_for_seconds));
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Active {
            latency: Duration::from_millis(faults.latency_ms),
            errors_until,
            lose_eviction_answers: faults.lose_eviction_answers,
            watch_delay: Duration::from_millis(faults.watch_delay_ms),
        };
    }

    /// What is in force now.
    pub(crate) fn current(&self) -> Faults {
        let active = *self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let remaining = active.errors_until.map_or(0.0, |t| {
            t.saturating_duration_since(Instant::now()).as_secs_f64()
        });
        Faults {
            latency_ms: active.latency.as_millis() as u64,
            errors_for_seconds: remaining,
            lose_eviction_answers: active.lose_eviction_answers,
            watch_delay_ms: active.watch_delay.as_millis() as u64,
        }
    }

    /// How late live watch events are sent now.
    pub(crate) fn watch_delay(&self) -> Duration {
        self.snapshot().watch_delay
    }

    /// Whether this eviction's answer is to be lost (counting it).
    fn lose_eviction_answer(&self) -> bool {
        let mut active = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let lose = active.lose_eviction_answers > 0;
        active.lose_eviction_answers = active.lose_eviction_answers.saturating_sub(1);
        lose
    }

    fn snapshot(&self) -> Active {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) async fn inject(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let active = shared.faults.snapshot();
    if !active.latency.is_zero() {
        tokio::time::sleep(active.latency).await;
    }
    if active
        .errors_until
        .is_some_and(|until| Instant::now() < until)
    {
        return ApiError::internal("injected fault: the simulated API server is failing requests")
            .into_response();
    }
    let eviction =
        request.method() == http::Method::POST && request.uri().path().ends_with("/eviction");
    if eviction && shared.faults.lose_eviction_answer() {
        drop(next.run(request).await);
        return (
            http::StatusCode::GATEWAY_TIMEOUT,
            "injected fault: the eviction was carried out and its answer lost",
        )
            .into_response();
    }
    next.run(request).await
}
