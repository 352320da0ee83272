//! etcd snapshots on servers: `k3s etcd-snapshot save --name NAME`.
//!
//! K3s stores the snapshot as `<name>-<node>-<unix time>` and logs
//! `Snapshot <full name> saved.`; the full name is what a restore needs, so
//! it is what the result carries.

use k3sfleet_proto::v1::{
    CommandOutcome, CommandResult, EtcdSnapshot, EtcdSnapshotResult, command_result,
};

use super::{K3sManager, outcome};
use crate::config::K3sRole;
use crate::duties::ProgressSink;
use crate::host::Tool;
use crate::session::display_error;

impl K3sManager {
    pub async fn snapshot(&self, request: EtcdSnapshot, progress: &ProgressSink) -> CommandResult {
        if self.role != K3sRole::Server {
            return outcome(
                CommandOutcome::Rejected,
                "etcd snapshots are taken on servers; this node is a K3s agent",
            );
        }
        let name = request.name.trim();
        if let Err(reason) = validate_name(name) {
            return outcome(CommandOutcome::Rejected, reason);
        }
        let _busy = self.wait_until_idle(progress).await;
        progress.step("snapshot", format!("k3s etcd-snapshot save --name {name}"));
        let output = match self
            .tools
            .run_for(
                Tool::K3s,
                ["etcd-snapshot", "save", "--name", name],
                self.config.snapshot_timeout,
            )
            .await
        {
            Ok(output) => output,
            Err(err) => return outcome(CommandOutcome::Failed, display_error(&err)),
        };
        if !output.success() {
            return outcome(
                CommandOutcome::Failed,
                format!("k3s etcd-snapshot save failed: {}", output.last_words()),
            );
        }
        let saved = saved_snapshot_name(&output.stderr)
            .or_else(|| saved_snapshot_name(&output.stdout))
            .unwrap_or_else(|| name.to_string());
        CommandResult {
            detail: Some(command_result::Detail::EtcdSnapshot(EtcdSnapshotResult {
                snapshot_name: saved.clone(),
            })),
            ..outcome(
                CommandOutcome::Succeeded,
                format!("saved etcd snapshot {saved}"),
            )
        }
    }
}

/// Snapshot names become file names on the server.
fn validate_name(name: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty()
        || name.len() > 100
        || name.starts_with(['.', '-'])
        || !name.chars().all(plain)
    {
        return Err(format!(
            "invalid snapshot name {name:?}: use 1-100 letters, digits, '-', '_', '.'"
        ));
    }
    Ok(())
}

/// The name in K3s's `Snapshot <name> saved.` log line.
fn saved_snapshot_name(log: &str) -> Option<String> {
    log.lines().find_map(|line| {
        let (_, rest) = line.split_once("Snapshot ")?;
        let mut words = rest.split_whitespace();
        let name = words.next()?.trim_matches(|c| c == '"' || c == '\'');
        words
            .next()
            .is_some_and(|w| w.starts_with("saved"))
            .then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_saved_name_in_k3s_logs() {
        let log = "time=\"2024-05-01T10:00:00Z\" level=info msg=\"Saving etcd snapshot to /var/lib/rancher/k3s/server/db/snapshots/pre-upgrade-server-1-1714557600\"\n\
                   time=\"2024-05-01T10:00:01Z\" level=info msg=\"Snapshot pre-upgrade-server-1-1714557600 saved.\"\n";
        assert_eq!(
            saved_snapshot_name(log).as_deref(),
            Some("pre-upgrade-server-1-1714557600")
        );
        assert_eq!(
            saved_snapshot_name("INFO[0000] Snapshot x-1 saved.").as_deref(),
            Some("x-1")
        );
        assert_eq!(saved_snapshot_name("nothing here"), None);
    }

    #[test]
    fn names() {
        validate_name("k3sfleet-2024-05-01T10-00-00Z").unwrap();
        for bad in ["", "-x", "../x", "a b", "a;b", &"x".repeat(101)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
