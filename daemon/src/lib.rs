//! What both k3sfleet daemons share: reading TOML config files with errors
//! that name the file and key, logging to journald or stderr, systemd
//! readiness and watchdog notifications, and waiting for a shutdown signal.

pub mod config;
pub mod duration;
pub mod logging;
pub mod secret;
pub mod shutdown;
pub mod systemd;
