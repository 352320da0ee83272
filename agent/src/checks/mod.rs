//! Host checks: Longhorn prerequisites, disks, and the managed services.
//! Each check has a stable dotted id, a status (ok / warning / error) and a
//! message that says what was found and, when not ok, what to do.
//!
//! The checks are pure functions of what was gathered ([`inventory`],
//! [`crate::disks`], the K3s and Tailscale states), so every verdict is
//! unit-tested without a host.

pub mod disk;
pub mod family;
pub mod inventory;
pub mod longhorn;
pub mod services;

use k3sfleet_proto::v1::{CheckResult, Health};
use serde::Deserialize;

/// `[host.longhorn]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LonghornConfig {
    /// Run the Longhorn preflight checks (hosts that will never run Longhorn
    /// can turn them off).
    #[serde(default = "default_true")]
    pub checks: bool,
    /// Also check what the V2 data engine needs (huge pages, SPDK modules).
    #[serde(default)]
    pub v2_data_engine: bool,
}

fn default_true() -> bool {
    true
}

impl Default for LonghornConfig {
    fn default() -> Self {
        LonghornConfig {
            checks: true,
            v2_data_engine: false,
        }
    }
}

pub fn check(id: &str, status: Health, message: impl Into<String>) -> CheckResult {
    CheckResult {
        id: id.to_string(),
        status: status as i32,
        message: message.into(),
    }
}

/// How bad a status is, for ordering (unknown counts as a warning).
pub fn severity(status: i32) -> u8 {
    match Health::try_from(status).unwrap_or(Health::Unspecified) {
        Health::Ok => 0,
        Health::Unspecified | Health::Warning => 1,
        Health::Error => 2,
    }
}

/// The worst status of all checks; OK when there are none.
pub fn overall(checks: &[CheckResult]) -> Health {
    match checks.iter().map(|c| severity(c.status)).max().unwrap_or(0) {
        0 => Health::Ok,
        1 => Health::Warning,
        _ => Health::Error,
    }
}

/// Short lowercase name of a status, as printed and as metric labels.
pub fn status_name(status: Health) -> &'static str {
    match status {
        Health::Ok => "ok",
        Health::Warning => "warning",
        Health::Error => "error",
        Health::Unspecified => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overall_is_the_worst() {
        assert_eq!(overall(&[]), Health::Ok);
        let checks = [check("a", Health::Ok, ""), check("b", Health::Warning, "")];
        assert_eq!(overall(&checks), Health::Warning);
        let checks = [
            check("a", Health::Error, ""),
            check("b", Health::Warning, ""),
        ];
        assert_eq!(overall(&checks), Health::Error);
    }
}
