//! Helpers for commands sent to agents: ids, and descriptions safe to log.

use k3sfleet_proto::v1::{Command, CommandOutcome, artifact_source, command};

/// A fresh, unique command id.
pub fn new_command_id() -> String {
    format!(
        "cmd-{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

/// Command ids are the agents' idempotency keys and end up in file names on
/// hosts: keep them short and plain.
pub fn validate_command_id(id: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    if id.is_empty() || id.len() > 128 || !id.chars().all(plain) || id.starts_with('.') {
        return Err(format!(
            "invalid command id {id:?}: use 1-128 letters, digits, '-', '_', '.', ':' (not starting with '.')"
        ));
    }
    Ok(())
}

/// A one-line description for logs and the audit trail. Never includes secrets.
pub fn describe(command: &Command) -> String {
    match &command.action {
        Some(command::Action::InstallK3s(install)) => {
            let source = match install.source.as_ref().and_then(|s| s.kind.as_ref()) {
                Some(artifact_source::Kind::MirrorUrl(url)) => format!("mirror {url}"),
                Some(artifact_source::Kind::LocalDir(dir)) => format!("local dir {dir}"),
                Some(artifact_source::Kind::Coordinator(_)) => "coordinator".to_string(),
                None => "the agent's default source".to_string(),
            };
            format!("install-k3s {} from {source}", install.version)
        }
        Some(command::Action::RollbackK3s(_)) => "rollback-k3s".to_string(),
        Some(command::Action::EtcdSnapshot(snapshot)) => format!("etcd-snapshot {}", snapshot.name),
        // Every setting but the auth key, which is deliberately left out.
        Some(command::Action::TailscaleUp(up)) => format!(
            "tailscale-up hostname={} tags={} login_server={} flags={}",
            up.hostname,
            up.advertise_tags.join(","),
            up.login_server,
            up.extra_flags.join(" ")
        ),
        Some(command::Action::Remediate(fix)) => format!(
            "remediate load_modules={} enable_iscsid={}",
            fix.load_modules, fix.enable_iscsid
        ),
        None => "unknown command".to_string(),
    }
}

pub fn outcome_name(outcome: i32) -> &'static str {
    match CommandOutcome::try_from(outcome).unwrap_or(CommandOutcome::Unspecified) {
        CommandOutcome::Succeeded => "succeeded",
        CommandOutcome::NoOp => "no-op",
        CommandOutcome::Failed => "failed",
        CommandOutcome::Rejected => "rejected",
        CommandOutcome::Unspecified => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k3sfleet_proto::v1::TailscaleUp;

    #[test]
    fn descriptions_never_carry_the_tailscale_key() {
        let command = Command {
            id: "x".into(),
            action: Some(command::Action::TailscaleUp(TailscaleUp {
                auth_key: "tskey-auth-SECRET".into(),
                hostname: "worker-01".into(),
                advertise_tags: vec!["tag:k3s".into()],
                login_server: "https://hs.example".into(),
                extra_flags: vec!["--accept-routes".into(), "--shields-up".into()],
            })),
        };
        let text = describe(&command);
        assert!(!text.contains("SECRET"), "{text}");
        assert_eq!(
            text,
            "tailscale-up hostname=worker-01 tags=tag:k3s login_server=https://hs.example flags=--accept-routes --shields-up"
        );
    }

    #[test]
    fn command_ids() {
        validate_command_id(&new_command_id()).unwrap();
        validate_command_id("rollout-3:worker-01:install").unwrap();
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_command_id(bad).is_err(), "{bad:?}");
        }
    }
}
