//! systemd units through `systemctl`.

use std::time::Duration;

use super::tools::{HostTools, Tool, ToolError, ToolOutput};

/// Why a systemctl call failed, in systemctl's words: its first line that
/// is not the hint after it. Real systemctl says "Job for X failed because
/// the control process exited with error code." and then `See "systemctl
/// status X" and "journalctl -xeu X" for details.`; the hint alone says nothing.
pub fn failure_reason(output: &ToolOutput) -> String {
    let reason = [&output.stderr, &output.stdout].iter().find_map(|text| {
        text.lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with("See \"systemctl status"))
    });
    match reason {
        Some(line) => line.chars().take(300).collect(),
        None => output.last_words(),
    }
}

/// `systemctl is-active` states that count as running.
pub fn is_running(state: &str) -> bool {
    state == "active" || state == "reloading"
}

#[derive(Debug, Clone, Copy)]
pub struct Systemctl<'a>(pub &'a HostTools);

impl Systemctl<'_> {
    /// The `is-active` state of each unit, in order ("active", "inactive",
    /// "failed", "activating", "unknown" ...). One call for all units.
    pub async fn active_states(&self, units: &[&str]) -> Result<Vec<String>, ToolError> {
        let mut args = vec!["is-active"];
        args.extend_from_slice(units);
        let output = self.0.run(Tool::Systemctl, &args).await?;
        // is-active exits non-zero when any unit is not active; stdout still has a line each.
        let mut states: Vec<String> = output
            .stdout
            .lines()
            .map(|line| line.trim().to_string())
            .collect();
        states.resize(units.len(), "unknown".to_string());
        Ok(states)
    }

    pub async fn is_active(&self, unit: &str) -> Result<bool, ToolError> {
        Ok(self
            .active_states(&[unit])
            .await?
            .first()
            .is_some_and(|s| is_running(s)))
    }

    /// Whether systemd knows the unit (its unit file exists).
    pub async fn exists(&self, unit: &str) -> Result<bool, ToolError> {
        let output = self
            .0
            .run(
                Tool::Systemctl,
                ["show", "-p", "LoadState", "--value", unit],
            )
            .await?;
        let state = output.stdout.trim();
        Ok(!state.is_empty() && state != "not-found")
    }

    /// Restarts a unit and waits for the job (for Type=notify units, until the
    /// service says it is ready or fails), at most `timeout`.
    pub async fn restart(&self, unit: &str, timeout: Duration) -> Result<ToolOutput, ToolError> {
        self.0
            .run_for(Tool::Systemctl, ["restart", unit], timeout)
            .await
    }

    /// `systemctl enable --now UNIT`.
    pub async fn enable_now(&self, unit: &str) -> Result<ToolOutput, ToolError> {
        self.0.run(Tool::Systemctl, ["enable", "--now", unit]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_job_is_explained_by_systemctl_not_by_its_hint() {
        let output = ToolOutput {
            code: Some(1),
            stdout: String::new(),
            stderr: "Job for k3s.service failed because the control process exited with error code.\n\
                     See \"systemctl status k3s.service\" and \"journalctl -xeu k3s.service\" for details.\n"
                .into(),
        };
        assert_eq!(
            failure_reason(&output),
            "Job for k3s.service failed because the control process exited with error code."
        );
        let terse = ToolOutput {
            code: Some(5),
            stderr: "Failed to restart nope.service: Unit nope.service not found.\n".into(),
            ..Default::default()
        };
        assert_eq!(
            failure_reason(&terse),
            "Failed to restart nope.service: Unit nope.service not found."
        );
    }
}
