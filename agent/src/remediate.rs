//! Fixing Longhorn prerequisites, only those asked for, reporting exactly
//! what changed. Never installs or upgrades packages: a missing package is
//! reported with the command to install it.

use std::io::Write;
use std::path::Path;

use k3sfleet_proto::v1::{
    CommandOutcome, CommandResult, Remediate, RemediationResult, command_result,
};

use crate::checks::inventory::{self, ISCSID_UNITS};
use crate::checks::longhorn::FIX_MODULES;
use crate::duties::ProgressSink;
use crate::host::systemd::Systemctl;
use crate::host::{HostFacts, HostRoot, HostTools, Tool};
use crate::session::display_error;

/// Where loaded modules are persisted for systemd-modules-load.
pub const MODULES_LOAD_FILE: &str = "/etc/modules-load.d/k3sfleet-longhorn.conf";

/// What a remediation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Remediation {
    /// One line per change made.
    pub changes: Vec<String>,
    /// One line per fix that failed.
    pub failures: Vec<String>,
}

impl Remediation {
    pub fn into_result(self) -> CommandResult {
        let (outcome, message) = if !self.failures.is_empty() {
            let done = if self.changes.is_empty() {
                "nothing was changed".to_string()
            } else {
                format!("changed: {}", self.changes.join("; "))
            };
            (
                CommandOutcome::Failed,
                format!("{}; {done}", self.failures.join("; ")),
            )
        } else if self.changes.is_empty() {
            (CommandOutcome::NoOp, "nothing needed fixing".to_string())
        } else {
            (CommandOutcome::Succeeded, self.changes.join("; "))
        };
        CommandResult {
            outcome: outcome as i32,
            message,
            detail: Some(command_result::Detail::Remediation(RemediationResult {
                changes: self.changes,
            })),
            ..Default::default()
        }
    }
}

pub async fn remediate(
    root: &HostRoot,
    tools: &HostTools,
    facts: &HostFacts,
    request: &Remediate,
    progress: &ProgressSink,
) -> Remediation {
    let mut done = Remediation::default();
    if request.load_modules {
        progress.step(
            "modules",
            format!("making sure {} are loaded", FIX_MODULES.join(", ")),
        );
        load_modules(root, tools, facts, &mut done).await;
    }
    if request.enable_iscsid {
        progress.step("iscsid", "making sure iscsid runs");
        enable_iscsid(root, tools, facts, &mut done).await;
    }
    done
}

async fn load_modules(
    root: &HostRoot,
    tools: &HostTools,
    facts: &HostFacts,
    done: &mut Remediation,
) {
    let before = inventory::gather(root, tools, facts).await;
    let missing: Vec<&str> = FIX_MODULES
        .iter()
        .copied()
        .filter(|m| !before.has_module(m))
        .collect();
    // A container shares its host machine's kernel: modprobe would fail (or,
    // worse, succeed on the host), and modules-load.d is not read at boot.
    if let Some(container) = &facts.container {
        if !missing.is_empty() {
            done.failures.push(format!(
                "not loading {}: this host is a container ({container}), which cannot load kernel \
                 modules; load them on the machine it runs on",
                missing.join(", ")
            ));
        }
        return;
    }
    for module in missing {
        match tools.run(Tool::Modprobe, [module]).await {
            Ok(output) if output.success() => {
                done.changes.push(format!("loaded kernel module {module}"))
            }
            Ok(output) => done.failures.push(format!(
                "modprobe {module} failed: {} (is the module shipped with kernel {}?)",
                output.last_words(),
                facts.kernel_version
            )),
            Err(err) => done.failures.push(display_error(&err)),
        }
    }
    // Persist what is loaded as a module now (built-ins need nothing, and a
    // module that does not exist would fail systemd-modules-load at boot).
    let after = inventory::gather(root, tools, facts).await;
    let persist: Vec<&str> = FIX_MODULES
        .iter()
        .copied()
        .filter(|m| after.loaded_modules.contains(*m) && !after.builtin_modules.contains(*m))
        .collect();
    if persist.is_empty() {
        return;
    }
    let content = format!(
        "# Kernel modules Longhorn needs; written by k3sfleet-agent.\n{}\n",
        persist.join("\n")
    );
    let path = root.path(MODULES_LOAD_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|existing| existing == content) {
        return;
    }
    match write_atomically(&path, &content) {
        Ok(()) => done.changes.push(format!(
            "wrote {MODULES_LOAD_FILE} ({}) so they load at boot",
            persist.join(", ")
        )),
        Err(err) => done
            .failures
            .push(format!("cannot write {MODULES_LOAD_FILE}: {err}")),
    }
}

/// Which iscsid unit to enable: the socket where the distribution ships one
/// (Debian, Ubuntu and RHEL do, enabled by default): iscsid then starts on
/// the first iscsiadm connection, which is how Longhorn reaches it, and
/// enabling it never waits on a daemon that cannot start (a kernel without
/// iSCSI, a container). Otherwise the service.
const ISCSID_ENABLE_ORDER: [&str; 2] = ["iscsid.socket", "iscsid.service"];

async fn enable_iscsid(
    root: &HostRoot,
    tools: &HostTools,
    facts: &HostFacts,
    done: &mut Remediation,
) {
    let inv = inventory::gather(root, tools, facts).await;
    if let Some(unit) = ISCSID_UNITS.iter().find(|u| inv.unit_running(u)) {
        tracing::debug!(unit, "iscsid already runs");
        return;
    }
    let systemctl = Systemctl(tools);
    let mut unit = None;
    for candidate in ISCSID_ENABLE_ORDER {
        match systemctl.exists(candidate).await {
            Ok(true) => {
                unit = Some(candidate);
                break;
            }
            Ok(false) => {}
            Err(err) => {
                done.failures.push(display_error(&err));
                return;
            }
        }
    }
    let Some(unit) = unit else {
        done.failures.push(format!(
            "iscsid is not installed (neither iscsid.socket nor iscsid.service exists): install {} first (`{}`); the agent never installs packages",
            inv.family.iscsi_package(),
            inv.family.install_command(&[inv.family.iscsi_package()])
        ));
        return;
    };
    match systemctl.enable_now(unit).await {
        Ok(output) if output.success() => done.changes.push(match unit {
            "iscsid.socket" => format!(
                "enabled and started {unit} (iscsid starts on the first iscsiadm connection)"
            ),
            _ => format!("enabled and started {unit}"),
        }),
        Ok(output) => done.failures.push(format!(
            "systemctl enable --now {unit} failed: {}",
            crate::host::systemd::failure_reason(&output)
        )),
        Err(err) => done.failures.push(display_error(&err)),
    }
}

fn write_atomically(path: &Path, content: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("conf.tmp");
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(content.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        let none = Remediation::default().into_result();
        assert_eq!(none.outcome, CommandOutcome::NoOp as i32);
        let some = Remediation {
            changes: vec!["loaded kernel module nfs".into()],
            failures: vec![],
        }
        .into_result();
        assert_eq!(some.outcome, CommandOutcome::Succeeded as i32);
        let failed = Remediation {
            changes: vec!["loaded kernel module nfs".into()],
            failures: vec!["modprobe dm_crypt failed".into()],
        }
        .into_result();
        assert_eq!(failed.outcome, CommandOutcome::Failed as i32);
        assert!(failed.message.contains("changed: loaded kernel module nfs"));
    }
}
