//! Checks on the services the agent manages: K3s and Tailscale.

use k3sfleet_proto::v1::{CheckResult, Health, K3sState, TailscaleState};

use super::check;

/// A Tailscale node key expiring sooner than this is a warning.
const KEY_EXPIRY_WARNING_MS: i64 = 14 * 24 * 3600 * 1000;

pub fn k3s(state: &K3sState) -> CheckResult {
    const ID: &str = "k3s.service";
    if state.binary_sha256.is_empty() {
        return check(ID, Health::Ok, "K3s is not installed on this host");
    }
    let version = if state.installed_version.is_empty() {
        "K3s (version unknown)".to_string()
    } else {
        format!("K3s {}", state.installed_version)
    };
    if state.service_active {
        check(
            ID,
            Health::Ok,
            format!("{version}, {} active", state.service_unit),
        )
    } else {
        check(
            ID,
            Health::Error,
            format!(
                "{version} is installed but {unit} is not active: see `journalctl -u {unit}`; \
                 `k3sfleet k3s rollback` puts the previous binary back",
                unit = state.service_unit
            ),
        )
    }
}

pub fn tailscale(state: &TailscaleState, now_unix_ms: i64) -> CheckResult {
    const ID: &str = "tailscale";
    if !state.installed {
        return check(ID, Health::Ok, "Tailscale is not installed on this host");
    }
    if !state.error.is_empty() {
        return check(
            ID,
            Health::Warning,
            format!(
                "cannot read the Tailscale state: {}; is tailscaled running?",
                state.error
            ),
        );
    }
    if state.backend_state != "Running" {
        return check(
            ID,
            Health::Warning,
            format!(
                "Tailscale is {}, not Running: enroll with `k3sfleet tailscale up`",
                state.backend_state
            ),
        );
    }
    if state.key_expired {
        return check(
            ID,
            Health::Error,
            "the Tailscale node key has expired: re-authenticate the node (`k3sfleet tailscale up` with a fresh key)",
        );
    }
    if state.key_expiry_unix_ms > 0
        && state.key_expiry_unix_ms - now_unix_ms < KEY_EXPIRY_WARNING_MS
    {
        let days = (state.key_expiry_unix_ms - now_unix_ms).max(0) / (24 * 3600 * 1000);
        return check(
            ID,
            Health::Warning,
            format!(
                "the Tailscale node key expires in {days} days: re-authenticate or disable key expiry for this node"
            ),
        );
    }
    // Tailscale itself warns only after 8 minutes without its control
    // server (a maintenance window); Online says it at once.
    if !state.online {
        return check(
            ID,
            Health::Warning,
            "Tailscale is Running but not connected to its control server: peers still reach this node, \
             but changes to the tailnet do not reach it until the control server answers",
        );
    }
    if !state.health.is_empty() {
        return check(
            ID,
            Health::Warning,
            format!("Tailscale reports: {}", state.health.join("; ")),
        );
    }
    check(
        ID,
        Health::Ok,
        format!(
            "Running as {} ({})",
            state.hostname,
            state.tailscale_ips.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k3s_installed_but_stopped_is_an_error() {
        let mut state = K3sState {
            installed_version: "v1.31.4+k3s1".into(),
            binary_sha256: "ab".into(),
            service_unit: "k3s.service".into(),
            service_active: true,
            ..Default::default()
        };
        assert_eq!(k3s(&state).status, Health::Ok as i32);
        state.service_active = false;
        let c = k3s(&state);
        assert_eq!(c.status, Health::Error as i32);
        assert!(c.message.contains("journalctl -u k3s.service"));
        assert_eq!(k3s(&K3sState::default()).status, Health::Ok as i32);
    }

    #[test]
    fn tailscale_states() {
        let now = 1_000_000_000_000;
        let running = TailscaleState {
            installed: true,
            backend_state: "Running".into(),
            hostname: "w1".into(),
            online: true,
            key_expiry_unix_ms: now + 90 * 24 * 3600 * 1000,
            ..Default::default()
        };
        assert_eq!(tailscale(&running, now).status, Health::Ok as i32);
        let offline = TailscaleState {
            online: false,
            ..running.clone()
        };
        let c = tailscale(&offline, now);
        assert_eq!(c.status, Health::Warning as i32);
        assert!(c.message.contains("control server"), "{}", c.message);
        let soon = TailscaleState {
            key_expiry_unix_ms: now + 3 * 24 * 3600 * 1000,
            ..running.clone()
        };
        let c = tailscale(&soon, now);
        assert_eq!(c.status, Health::Warning as i32);
        assert!(c.message.contains("3 days"), "{}", c.message);
        let expired = TailscaleState {
            key_expired: true,
            ..running.clone()
        };
        assert_eq!(tailscale(&expired, now).status, Health::Error as i32);
        let logged_out = TailscaleState {
            backend_state: "NeedsLogin".into(),
            ..running
        };
        assert_eq!(tailscale(&logged_out, now).status, Health::Warning as i32);
        assert_eq!(
            tailscale(&TailscaleState::default(), now).status,
            Health::Ok as i32
        );
    }
}
