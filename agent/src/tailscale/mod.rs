//! Tailscale: the node's state for reports, and enrollment with `tailscale up`.
//!
//! Every call goes through the configured CLI and tailscaled socket
//! ([`TailscaleConfig`]). The auth key goes to `tailscale up
//! --auth-key=file:PATH` through a file created 0600 in the agent's private
//! state directory and removed right after; it is never on a command line,
//! in a log line, a report or an error (tool output is scrubbed of it too).
//! A failed `up` is undone (see [`prefs`]); a Running node whose control
//! server and tags stay is changed in place, without spending the key.

pub mod config;
pub mod enroll;
mod failure;
pub mod flags;
mod prefs;
mod request;
mod secret;
pub mod status;

use std::path::PathBuf;
use std::time::Duration;

use k3sfleet_proto::v1::{
    CommandOutcome, CommandResult, TailscaleState, TailscaleUp, command_result,
};

use crate::duties::ProgressSink;
use crate::host::{HostTools, Tool, ToolError, ToolOutput};
use crate::session::display_error;
pub use config::{EnrollConfig, TailscaleConfig};
use prefs::Prefs;
use request::Settings;
use secret::SecretFile;

/// Settings of the last successful `up` (never the key).
const APPLIED_FILE: &str = "tailscale-up.json";
/// How much longer than `up --timeout` the CLI itself may take.
const CLI_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct Tailscale {
    tools: HostTools,
    state_dir: PathBuf,
    config: TailscaleConfig,
}

impl Tailscale {
    pub fn new(tools: HostTools, state_dir: PathBuf, config: TailscaleConfig) -> Self {
        Tailscale {
            tools,
            state_dir,
            config,
        }
    }

    pub fn config(&self) -> &TailscaleConfig {
        &self.config
    }

    /// Runs the CLI against the configured socket.
    async fn cli(&self, args: &[String], timeout: Duration) -> Result<ToolOutput, ToolError> {
        let mut all = self.config.global_args();
        all.extend(args.iter().cloned());
        self.tools.run_for(Tool::Tailscale, &all, timeout).await
    }

    async fn cli_default(&self, args: &[&str]) -> Result<ToolOutput, ToolError> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.cli(&args, self.tools.timeout()).await
    }

    /// The node's Tailscale state; `installed: false` without the CLI.
    pub async fn status(&self) -> TailscaleState {
        let output = match self
            .cli_default(&["status", "--json", "--peers=false"])
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

    async fn prefs(&self) -> Result<Prefs, String> {
        let output = self
            .cli_default(&["debug", "prefs"])
            .await
            .map_err(|err| display_error(&err))?;
        if !output.success() {
            return Err(format!(
                "`tailscale debug prefs` failed: {}",
                output.last_words()
            ));
        }
        Prefs::parse(&output.stdout)
    }

    /// Puts tailscaled's preferences back as they were; `Err` says why not.
    async fn restore(&self, prefs: &Prefs) -> Result<(), String> {
        let args = [
            "debug".to_string(),
            "localapi".to_string(),
            "POST".to_string(),
            "start".to_string(),
            prefs.restore_body(),
        ];
        match self.cli(&args, self.tools.timeout()).await {
            Ok(output) if output.success() => Ok(()),
            Ok(output) => Err(output.last_words()),
            Err(err) => Err(display_error(&err)),
        }
    }

    pub async fn up(&self, request: TailscaleUp, progress: &ProgressSink) -> CommandResult {
        if let Err(reason) = request::validate(&request, &self.config) {
            return result(CommandOutcome::Rejected, reason, None);
        }
        let key = request.auth_key.trim().to_string();
        let wanted = Settings::of(&request);
        let who = wanted.hostname.clone();

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
                format!("already Running as {who} with the same settings; nothing changed"),
                Some(before),
            );
        }
        let prior = match self.prefs().await {
            Ok(prior) => prior,
            Err(reason) => {
                return result(
                    CommandOutcome::Failed,
                    format!("tailscale up for {who}: cannot read tailscaled's settings: {reason}"),
                    Some(before),
                );
            }
        };
        let running = before.backend_state == "Running";
        if running && prior.control_url() != wanted.login_server {
            return result(
                CommandOutcome::Rejected,
                format!(
                    "{who} is Running on the control server {}; moving it to {} would log it out of its tailnet \
                     (perhaps the path you reach it by): run `tailscale logout` on the host first",
                    shown_server(&prior.control_url()),
                    shown_server(&wanted.login_server),
                ),
                Some(before),
            );
        }
        // A Running node whose tags stay is edited in place; logging in
        // (again) is what spends the key.
        let needs_login =
            !running || (!wanted.tags.is_empty() && prior.advertise_tags() != wanted.tags);
        if needs_login && key.is_empty() {
            return result(
                CommandOutcome::Rejected,
                format!("{who} must log in and the auth key is empty"),
                Some(before),
            );
        }
        let secret = match needs_login {
            false => None,
            true => match SecretFile::create(
                &self.state_dir.join("secrets"),
                "tailscale-auth-key",
                &key,
            ) {
                Ok(secret) => Some(secret),
                Err(err) => {
                    return result(CommandOutcome::Failed, display_error(&err), Some(before));
                }
            },
        };
        let args = up_args(
            &wanted,
            secret.as_ref().map(|s| s.path()),
            self.config.up_timeout,
        );
        progress.step("up", format!("tailscale up: {}", wanted.describe()));
        let ran = self.cli(&args, self.config.up_timeout + CLI_GRACE).await;
        drop(secret);
        let after = self.status().await;
        if matches!(&ran, Ok(output) if output.success()) {
            self.remember(&wanted);
            let how = match needs_login {
                true => "joined with the auth key",
                false => "settings changed in place; the auth key was not needed",
            };
            return result(
                CommandOutcome::Succeeded,
                format!(
                    "{} as {} ({}); {how}",
                    after.backend_state,
                    after.hostname,
                    after.tailscale_ips.join(", ")
                ),
                Some(after),
            );
        }
        let failure = failure::classify(&ran, &after);
        let undone = match self.restore(&prior).await {
            Ok(()) => "its Tailscale settings are as they were".to_string(),
            Err(reason) => format!("putting its Tailscale settings back failed too: {reason}"),
        };
        let mut failed = result(
            CommandOutcome::Failed,
            scrub(
                &format!(
                    "tailscale up for {who} failed: {}; {undone}{}",
                    failure.reason,
                    if failure.retryable {
                        "; retry once the control server answers"
                    } else {
                        ""
                    }
                ),
                &key,
            ),
            Some(self.status().await),
        );
        failed.retryable = failure.retryable;
        failed
    }

    fn applied(&self) -> Option<Settings> {
        let bytes = std::fs::read(self.state_dir.join(APPLIED_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn remember(&self, applied: &Settings) {
        let path = self.state_dir.join(APPLIED_FILE);
        let written = serde_json::to_vec(applied)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&path, bytes));
        if let Err(err) = written {
            tracing::warn!(path = %path.display(), error = %err, "cannot record the Tailscale settings");
        }
    }
}

/// `up` with the complete desired settings: `--reset` puts every setting
/// the request does not name back to its default, so leaving a flag out
/// means "not that" (as the command is declarative).
fn up_args(
    wanted: &Settings,
    key_file: Option<&std::path::Path>,
    timeout: Duration,
) -> Vec<String> {
    let mut args = vec!["up".to_string(), "--reset".to_string()];
    if let Some(file) = key_file {
        args.push(format!("--auth-key=file:{}", file.display()));
    }
    args.push(format!("--hostname={}", wanted.hostname));
    args.push(format!("--timeout={}s", timeout.as_secs().max(1)));
    if !wanted.tags.is_empty() {
        args.push(format!("--advertise-tags={}", wanted.tags.join(",")));
    }
    if !wanted.login_server.is_empty() {
        args.push(format!("--login-server={}", wanted.login_server));
    }
    args.extend(wanted.extra_flags.iter().cloned());
    args
}

fn already_applied(state: &TailscaleState, wanted: &Settings, applied: Option<&Settings>) -> bool {
    let mut tags = state.tags.clone();
    tags.sort();
    state.backend_state == "Running"
        && state.hostname.eq_ignore_ascii_case(&wanted.hostname)
        && (wanted.tags.is_empty() || tags == wanted.tags)
        && applied == Some(wanted)
}

fn shown_server(url: &str) -> &str {
    if url.is_empty() { "of Tailscale" } else { url }
}

fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "[redacted]")
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

    fn wanted() -> Settings {
        Settings {
            hostname: "worker-01".into(),
            tags: vec!["tag:k3s".into()],
            login_server: String::new(),
            extra_flags: vec![],
        }
    }

    #[test]
    fn idempotency_needs_running_same_name_tags_and_settings() {
        let wanted = wanted();
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
        let other_flags = Settings {
            extra_flags: vec!["--shields-up".into()],
            ..wanted.clone()
        };
        assert!(!already_applied(&running, &other_flags, Some(&wanted)));
        // Tags from the key: whatever the control server gave counts.
        let from_key = Settings {
            tags: vec![],
            ..wanted.clone()
        };
        assert!(already_applied(&running, &from_key, Some(&from_key)));
    }

    #[test]
    fn up_names_every_setting_and_the_key_only_by_file() {
        let mut settings = wanted();
        settings.login_server = "https://hs.example".into();
        settings.extra_flags = vec!["--accept-routes".into()];
        let args = up_args(
            &settings,
            Some(std::path::Path::new("/s/key-1")),
            Duration::from_secs(20),
        );
        assert_eq!(
            args,
            [
                "up",
                "--reset",
                "--auth-key=file:/s/key-1",
                "--hostname=worker-01",
                "--timeout=20s",
                "--advertise-tags=tag:k3s",
                "--login-server=https://hs.example",
                "--accept-routes",
            ]
        );
        let edit = up_args(&settings, None, Duration::from_secs(20));
        assert!(
            !edit.iter().any(|a| a.starts_with("--auth-key")),
            "{edit:?}"
        );
    }

    #[test]
    fn scrubbing() {
        assert_eq!(
            scrub("bad key tskey-1 here", "tskey-1"),
            "bad key [redacted] here"
        );
    }
}
