//! What both k3sfleet daemons share: reading TOML config files with errors
//! that name the file and key, logging to journald or stderr, systemd
//! readiness and watchdog notifications, waiting for a shutdown signal, and
//! serving Prometheus metrics.

pub mod config;
pub mod duration;
pub mod logging;
pub mod metrics_http;
pub mod secret;
pub mod shutdown;
pub mod systemd;
