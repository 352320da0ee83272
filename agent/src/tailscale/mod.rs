//! Tailscale: the node's state for reports, and enrollment with `tailscale up`.
//!
//! The auth key goes to `tailscale up --auth-key=file:PATH` through a file
//! created 0600 in the agent's private state directory and removed right
//! after; it is never on a command line, in a log line, a report or an
//! error (tool output is scrubbed of it too).

mod secret;
pub mod status;

use std::path::PathBuf;
use std::time::Duration;

use k3sfleet_proto::v1::{
    CommandOutcome, CommandResult, TailscaleState, TailscaleUp, command_result,
};
use serde::{Deserialize, Serialize};

use crate::duties::ProgressSink;
use crate::host::{HostTools, Tool, ToolError};
use crate::session::display_error;
use secret::SecretFile;

/// Settings of the last successful `up` (never the key), for idempotency:
/// status shows hostname and tags but not the login server or extra flags.
const APPLIED_FILE: &str = "tailscale-up.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    hostname: String,
    tags: Vec<String>,
    login_server: String,
    extra_flags: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Tailscale {
    tools: HostTools,
    state_dir: PathBuf,
}

impl Tailscale {
    pub fn new(tools: HostTools, state_dir: PathBuf) -> Self {
        Tailscale { tools, state_dir }
    }

    /// The node's Tailscale state; `installed: false` without the CLI.
    pub async fn status(&self) -> TailscaleState {
        let output = match self
            .tools
            .run(Tool::Tailscale, ["status", "--json", "--peers=false"])
            .await
        {
            Ok(output) => output,
            Err(ToolError::NotFound { .. }) => return TailscaleState::default(),
            Err(err) => return failed_state(display_error(&err)),
        };
        // `status --json` exits non-zero when logged out but still prints JSON.
        match status::parse(&output.stdout) {
            Ok(state) => state,
            Err(_) if !output.success() => failed_state(output.last_words()),
            Err(reason) => failed_state(reason),
        }
    }

    pub async fn up(&self, request: TailscaleUp, progress: &ProgressSink) -> CommandResult {
        if let Err(reason) = validate(&request) {
            return result(CommandOutcome::Rejected, reason, None);
        }
        let key = request.auth_key.trim().to_string();
        let mut tags = request.advertise_tags.clone();
        tags.sort();
        tags.dedup();
        let wanted = Applied {
            hostname: request.hostname.trim().to_string(),
            tags,
            login_server: request.login_server.trim().to_string(),
            extra_flags: request.extra_flags.clone(),
        };

        let before = self.status().await;
        if !before.installed {
            return result(
                CommandOutcome::Failed,
                "tailscale is not installed on this host".to_string(),
                Some(before),
            );
        }
        if already_applied(&before, &wanted, self.applied().as_ref()) {
            return result(
                CommandOutcome::NoOp,
                format!(
                    "already Running as {} with the same settings",
                    before.hostname
                ),
                Some(before),
            );
        }

        let secret =
            match SecretFile::create(&self.state_dir.join("secrets"), "tailscale-auth-key", &key) {
                Ok(secret) => secret,
                Err(err) => {
                    return result(CommandOutcome::Failed, display_error(&err), Some(before));
                }
            };
        let wait = self.tools.timeout();
        let mut args = vec![
            "up".to_string(),
            // The command carries the complete desired settings.
            "--reset".to_string(),
            format!("--auth-key=file:{}", secret.path().display()),
            format!("--hostname={}", wanted.hostname),
            format!("--timeout={}s", wait.as_secs().max(1)),
        ];
        if !wanted.tags.is_empty() {
            args.push(format!("--advertise-tags={}", wanted.tags.join(",")));
        }
        if !wanted.login_server.is_empty() {
            args.push(format!("--login-server={}", wanted.login_server));
        }
        args.extend(wanted.extra_flags.iter().cloned());
        progress.step(
            "up",
            format!(
                "tailscale up as {} (tags: {})",
                wanted.hostname,
                shown_tags(&wanted.tags)
            ),
        );
        let ran = self
            .tools
            .run_for(Tool::Tailscale, &args, wait + Duration::from_secs(15))
            .await;
        drop(secret);
        let after = self.status().await;
        match ran {
            Ok(output) if output.success() => {
                self.remember(&wanted);
                let ips = after.tailscale_ips.join(", ");
                result(
                    CommandOutcome::Succeeded,
                    format!("{} as {} ({ips})", after.backend_state, after.hostname),
                    Some(after),
                )
            }
            Ok(output) => result(
                CommandOutcome::Failed,
                scrub(
                    &format!("tailscale up failed: {}", output.last_words()),
                    &key,
                ),
                Some(after),
            ),
            Err(err) => result(
                CommandOutcome::Failed,
                scrub(&display_error(&err), &key),
                Some(after),
            ),
        }
    }

    fn applied(&self) -> Option<Applied> {
        let bytes = std::fs::read(self.state_dir.join(APPLIED_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn remember(&self, applied: &Applied) {
        let path = self.state_dir.join(APPLIED_FILE);
        let written = serde_json::to_vec(applied)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&path, bytes));
        if let Err(err) = written {
            tracing::warn!(path = %path.display(), error = %err, "cannot record the Tailscale settings");
        }
    }
}

fn already_applied(state: &TailscaleState, wanted: &Applied, applied: Option<&Applied>) -> bool {
    let mut tags = state.tags.clone();
    tags.sort();
    state.backend_state == "Running"
        && state.hostname.eq_ignore_ascii_case(&wanted.hostname)
        && tags == wanted.tags
        && applied == Some(wanted)
}

/// Flags the command sets itself, or that would carry a secret.
const RESERVED_FLAGS: [&str; 7] = [
    "--auth-key",
    "--authkey",
    "--hostname",
    "--advertise-tags",
    "--login-server",
    "--reset",
    "--timeout",
];

fn validate(request: &TailscaleUp) -> Result<(), String> {
    let key = request.auth_key.trim();
    if key.is_empty() {
        return Err("the auth key is empty".into());
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the auth key contains whitespace or control characters".into());
    }
    let hostname = request.hostname.trim();
    let label = |c: char| c.is_ascii_alphanumeric() || c == '-';
    if hostname.is_empty()
        || hostname.len() > 63
        || hostname.starts_with('-')
        || !hostname.chars().all(label)
    {
        return Err(format!(
            "invalid hostname {hostname:?}: use 1-63 letters, digits and '-'"
        ));
    }
    for tag in &request.advertise_tags {
        let name = tag.strip_prefix("tag:").unwrap_or_default();
        if name.is_empty() || !name.chars().all(label) {
            return Err(format!("invalid tag {tag:?}: write tags as tag:name"));
        }
    }
    let server = request.login_server.trim();
    let is_url = server.starts_with("https://") || server.starts_with("http://");
    if !server.is_empty() && !is_url {
        return Err(format!(
            "invalid login server {server:?}: expected an https:// URL"
        ));
    }
    for flag in &request.extra_flags {
        let name = flag.split('=').next().unwrap_or_default();
        if !flag.starts_with("--") || flag.chars().any(char::is_whitespace) {
            return Err(format!(
                "invalid extra flag {flag:?}: expected --name or --name=value"
            ));
        }
        if RESERVED_FLAGS.contains(&name) {
            return Err(format!(
                "extra flag {name} is not allowed: the command sets it itself"
            ));
        }
        if flag.contains(key) {
            return Err("an extra flag contains the auth key".into());
        }
    }
    Ok(())
}

fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "[redacted]")
    }
}

fn shown_tags(tags: &[String]) -> String {
    if tags.is_empty() {
        "none".into()
    } else {
        tags.join(",")
    }
}

fn failed_state(error: String) -> TailscaleState {
    TailscaleState {
        installed: true,
        error,
        ..Default::default()
    }
}

fn result(
    outcome: CommandOutcome,
    message: String,
    state: Option<TailscaleState>,
) -> CommandResult {
    CommandResult {
        outcome: outcome as i32,
        message,
        detail: state.map(command_result::Detail::Tailscale),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> TailscaleUp {
        TailscaleUp {
            auth_key: "tskey-auth-abc123".into(),
            hostname: "worker-01".into(),
            advertise_tags: vec!["tag:k3s".into()],
            login_server: String::new(),
            extra_flags: vec!["--ssh".into(), "--accept-routes".into()],
        }
    }

    /// Spoils one field of a good request.
    type Spoil = fn(&mut TailscaleUp);

    #[test]
    fn validation_names_what_is_wrong() {
        validate(&request()).unwrap();
        let cases: [(Spoil, &str); 6] = [
            (|r| r.auth_key = " ".into(), "auth key is empty"),
            (|r| r.hostname = "bad name".into(), "invalid hostname"),
            (|r| r.advertise_tags = vec!["k3s".into()], "invalid tag"),
            (
                |r| r.extra_flags = vec!["--authkey=x".into()],
                "--authkey is not allowed",
            ),
            (|r| r.extra_flags = vec!["ssh".into()], "invalid extra flag"),
            (
                |r| r.login_server = "ftp://x".into(),
                "invalid login server",
            ),
        ];
        for (change, expected) in cases {
            let mut r = request();
            change(&mut r);
            let err = validate(&r).unwrap_err();
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains("abc123"), "{err}");
        }
    }

    #[test]
    fn idempotency_needs_running_same_name_tags_and_settings() {
        let wanted = Applied {
            hostname: "worker-01".into(),
            tags: vec!["tag:k3s".into()],
            login_server: String::new(),
            extra_flags: vec![],
        };
        let running = TailscaleState {
            installed: true,
            backend_state: "Running".into(),
            hostname: "worker-01".into(),
            tags: vec!["tag:k3s".into()],
            ..Default::default()
        };
        assert!(already_applied(&running, &wanted, Some(&wanted)));
        assert!(!already_applied(&running, &wanted, None));
        let stopped = TailscaleState {
            backend_state: "Stopped".into(),
            ..running.clone()
        };
        assert!(!already_applied(&stopped, &wanted, Some(&wanted)));
        let other_flags = Applied {
            extra_flags: vec!["--ssh".into()],
            ..wanted.clone()
        };
        assert!(!already_applied(&running, &other_flags, Some(&wanted)));
    }

    #[test]
    fn scrubbing() {
        assert_eq!(
            scrub("bad key tskey-1 here", "tskey-1"),
            "bad key [redacted] here"
        );
    }
}
