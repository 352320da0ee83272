//! Prometheus metrics on `metrics.listen`: `GET /metrics` in the text
//! exposition format 0.0.4, rendered at scrape time from the latest host
//! observation and freshly sampled host figures.
//!
//! The crate is `prometheus` (tikv) rather than `prometheus-client`: its
//! classic text format lints clean under Debian's promtool 2.42, which flags
//! prometheus-client's OpenMetrics counters ("no help text") and info types.

mod families;

pub use families::Families;
pub use k3sfleet_daemon::metrics_http::{CONTENT_TYPE, Endpoint, bind, render_with, serve};
