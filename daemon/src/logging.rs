//! Logging: to journald when systemd started us with a journal stream, to
//! stderr otherwise.
//!
//! The code logs with `tracing`. Under journald there is no tracing
//! subscriber: tracing's `log` feature turns each event into a `log` record,
//! which systemd-journal-logger writes as a structured journal entry with its
//! priority. On a terminal, tracing-subscriber formats to stderr.

use tracing_subscriber::EnvFilter;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Journald,
    Stderr,
}

/// Sets up logging once per process. `default_filter` is used unless
/// `RUST_LOG` is set, e.g. "info" or "k3sfleet_agent=debug,info".
pub fn init(syslog_identifier: &str, default_filter: &str) -> LogTarget {
    if systemd_journal_logger::connected_to_journal() {
        let installed = systemd_journal_logger::JournalLog::new()
            .map(|journal| journal.with_syslog_identifier(syslog_identifier.to_string()))
            .and_then(|journal| journal.install().map_err(std::io::Error::other));
        if installed.is_ok() {
            log::set_max_level(level_from(default_filter));
            return LogTarget::Journald;
        }
    }
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    LogTarget::Stderr
}

/// The most verbose level a filter string asks for (journald filtering is by
/// priority only).
fn level_from(default_filter: &str) -> log::LevelFilter {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| default_filter.to_string());
    ["trace", "debug", "info", "warn", "error"]
        .iter()
        .zip([
            log::LevelFilter::Trace,
            log::LevelFilter::Debug,
            log::LevelFilter::Info,
            log::LevelFilter::Warn,
            log::LevelFilter::Error,
        ])
        .find(|(name, _)| spec.contains(*name))
        .map(|(_, level)| level)
        .unwrap_or(log::LevelFilter::Info)
}
