//! `[host.tailscale]`: how the agent reaches tailscaled, which `tailscale up`
//! flags this host accepts, and an optional enrollment at start.
//!
//! ```toml
//! [host.tailscale]
//! socket = "/run/tailscale/tailscaled.sock"  # tailscaled's socket (tailscale --socket)
//! up_timeout = "60s"               # how long `tailscale up` waits for Running
//! allow_flags = ["--ssh"]          # flags refused unless listed here
//! allow_http_login_server = false  # true: accept an http:// login server
//!
//! [host.tailscale.enroll]          # join at start unless already joined so
//! auth_key_file = "/etc/k3sfleet/tailscale-auth-key"   # 0600, root's
//! hostname = "worker-01"           # default: the node name
//! tags = ["tag:k3s"]               # --advertise-tags; leave empty when the key carries them
//! login_server = "https://headscale.example"
//! flags = ["--accept-routes"]
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use k3sfleet_daemon::config::{self, ConfigError};
use serde::Deserialize;

use super::flags;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailscaleConfig {
    /// tailscaled's socket; `None`: the CLI's default
    /// (/run/tailscale/tailscaled.sock).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// `tailscale up --timeout`: how long it may wait for the Running state.
    #[serde(default = "default_up_timeout", with = "k3sfleet_daemon::duration")]
    pub up_timeout: Duration,
    /// Flags beyond the safe set (see [`flags`]) that requests may carry here.
    #[serde(default)]
    pub allow_flags: Vec<String>,
    /// A control server without TLS gets the node's registration in the
    /// clear: only where the operator says the network is trusted.
    #[serde(default)]
    pub allow_http_login_server: bool,
    #[serde(default)]
    pub enroll: Option<EnrollConfig>,
}

/// What `tailscale up` at start asks for; the same fields as the command.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollConfig {
    pub auth_key_file: PathBuf,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub login_server: Option<String>,
    #[serde(default)]
    pub flags: Vec<String>,
}

impl Default for TailscaleConfig {
    fn default() -> Self {
        TailscaleConfig {
            socket: None,
            up_timeout: default_up_timeout(),
            allow_flags: Vec::new(),
            allow_http_login_server: false,
            enroll: None,
        }
    }
}

fn default_up_timeout() -> Duration {
    Duration::from_secs(60)
}

impl TailscaleConfig {
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if self.up_timeout < Duration::from_secs(1) {
            return Err(config::invalid(
                path,
                "host.tailscale.up_timeout",
                "must be at least 1s",
            ));
        }
        for flag in &self.allow_flags {
            flags::allowable(flag)
                .map_err(|reason| config::invalid(path, "host.tailscale.allow_flags", reason))?;
        }
        if let Some(enroll) = &self.enroll
            && !enroll.auth_key_file.is_absolute()
        {
            return Err(config::invalid(
                path,
                "host.tailscale.enroll.auth_key_file",
                "must be an absolute path",
            ));
        }
        Ok(())
    }

    /// `--socket=PATH` before every subcommand, when configured.
    pub fn global_args(&self) -> Vec<String> {
        self.socket
            .iter()
            .map(|socket| format!("--socket={}", socket.display()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TailscaleConfig, ConfigError> {
        let config: TailscaleConfig = config::parse(Path::new("agent.toml"), text)?;
        config.validate(Path::new("agent.toml"))?;
        Ok(config)
    }

    #[test]
    fn defaults_and_socket() {
        let config = parse("").unwrap();
        assert_eq!(config.up_timeout, Duration::from_secs(60));
        assert!(config.global_args().is_empty());
        let config = parse("socket = \"/run/ts/s.sock\"\n").unwrap();
        assert_eq!(config.global_args(), ["--socket=/run/ts/s.sock"]);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = parse("allow_flags = [\"--auth-key\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("host.tailscale.allow_flags"), "{err}");
        assert!(err.contains("--auth-key"), "{err}");
        let err = parse("up_timeout = \"10ms\"\n").unwrap_err().to_string();
        assert!(err.contains("host.tailscale.up_timeout"), "{err}");
        let err = parse("[enroll]\nauth_key_file = \"key\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth_key_file"), "{err}");
        parse("allow_flags = [\"--ssh\", \"--advertise-routes\"]\n").unwrap();
    }
}
