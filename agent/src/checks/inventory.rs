//! Everything the host checks look at, gathered in one pass. The checks
//! themselves are pure functions of this inventory.

use std::collections::{BTreeMap, BTreeSet};

use std::path::Path;

use crate::disks::mountinfo;
use crate::host::systemd::Systemctl;
use crate::host::{HostFacts, HostRoot, HostTools, Tool, ToolError};
use crate::session::display_error;

use super::family::Family;

/// Units whose state the Longhorn checks need.
pub const ISCSID_UNITS: [&str; 2] = ["iscsid.service", "iscsid.socket"];
pub const MULTIPATHD_UNITS: [&str; 2] = ["multipathd.service", "multipathd.socket"];

/// Where Longhorn keeps replicas by default.
pub const LONGHORN_DATA_PATH: &str = "/var/lib/longhorn";

/// Tools Longhorn runs on the host (through nsenter).
pub const HOST_TOOLS: [&str; 7] = ["bash", "curl", "findmnt", "grep", "awk", "blkid", "lsblk"];
const TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

#[derive(Debug, Clone)]
pub struct Inventory {
    pub family: Family,
    pub os_id: String,
    pub kernel_version: String,
    /// `is-active` state per unit, or why systemd could not be asked.
    pub units: Result<BTreeMap<String, String>, String>,
    /// Installed or not, per package of the family; or why the package
    /// database could not be asked.
    pub packages: Result<BTreeMap<String, bool>, String>,
    /// The container manager, when the host is a container (its kernel,
    /// modules and kernel config belong to the machine it runs on).
    pub container: Option<String>,
    /// Whether /proc/modules could be read (a kernel without loadable
    /// modules has none).
    pub modules_listed: bool,
    /// Modules in /proc/modules.
    pub loaded_modules: BTreeSet<String>,
    /// Modules built into the kernel (modules.builtin).
    pub builtin_modules: BTreeSet<String>,
    /// /boot/config-<kernel>, if present.
    pub kernel_config: Option<String>,
    /// /etc/nfsmount.conf, if present.
    pub nfsmount_conf: Option<String>,
    /// Host tools Longhorn needs that are missing.
    pub missing_tools: Vec<String>,
    /// HugePages_Total from /proc/meminfo.
    pub hugepages_total: Option<u64>,
    /// CPU flags (amd64) or features (arm64) from /proc/cpuinfo.
    pub cpu_flags: BTreeSet<String>,
    /// The filesystem type /var/lib/longhorn is (or would be) on.
    pub longhorn_fs: Option<String>,
}

impl Default for Inventory {
    fn default() -> Self {
        Inventory {
            family: Family::Unknown,
            os_id: String::new(),
            kernel_version: String::new(),
            units: Ok(BTreeMap::new()),
            packages: Ok(BTreeMap::new()),
            container: None,
            modules_listed: true,
            loaded_modules: BTreeSet::new(),
            builtin_modules: BTreeSet::new(),
            kernel_config: None,
            nfsmount_conf: None,
            missing_tools: Vec::new(),
            hugepages_total: None,
            cpu_flags: BTreeSet::new(),
            longhorn_fs: None,
        }
    }
}

impl Inventory {
    /// A module is there if loaded or built in (names with '-' or '_' alike).
    pub fn has_module(&self, name: &str) -> bool {
        let name = name.replace('-', "_");
        self.loaded_modules.contains(&name) || self.builtin_modules.contains(&name)
    }

    pub fn unit_running(&self, unit: &str) -> bool {
        self.units.as_ref().is_ok_and(|units| {
            units
                .get(unit)
                .is_some_and(|s| crate::host::systemd::is_running(s))
        })
    }
}

pub async fn gather(root: &HostRoot, tools: &HostTools, facts: &HostFacts) -> Inventory {
    let family = Family::of(&facts.os_id, &facts.os_id_like);
    let kernel = facts.kernel_version.clone();
    let read = |path: &str| std::fs::read_to_string(root.path(path)).ok();
    let units: Vec<&str> = ISCSID_UNITS
        .iter()
        .chain(&MULTIPATHD_UNITS)
        .copied()
        .collect();
    let systemctl = Systemctl(tools);
    let (unit_states, packages) = tokio::join!(
        systemctl.active_states(&units),
        query_packages(tools, family)
    );
    let units = unit_states
        .map(|states| {
            units
                .iter()
                .map(|u| u.to_string())
                .zip(states)
                .collect::<BTreeMap<_, _>>()
        })
        .map_err(|err| display_error(&err));
    let proc_modules = read("/proc/modules");
    Inventory {
        family,
        os_id: facts.os_id.clone(),
        kernel_version: kernel.clone(),
        units,
        packages,
        container: facts.container.clone(),
        modules_listed: proc_modules.is_some(),
        loaded_modules: proc_modules
            .map(|text| {
                text.lines()
                    .filter_map(|l| l.split_whitespace().next())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        builtin_modules: read(&format!("/lib/modules/{kernel}/modules.builtin"))
            .map(|text| {
                text.lines()
                    .filter_map(|l| l.rsplit('/').next())
                    .map(|f| f.trim_end_matches(".ko").replace('-', "_"))
                    .collect()
            })
            .unwrap_or_default(),
        kernel_config: read(&format!("/boot/config-{kernel}")),
        nfsmount_conf: read("/etc/nfsmount.conf"),
        missing_tools: HOST_TOOLS
            .iter()
            .filter(|tool| {
                !TOOL_DIRS
                    .iter()
                    .any(|dir| root.path(format!("{dir}/{tool}")).is_file())
            })
            .map(|tool| tool.to_string())
            .collect(),
        hugepages_total: read("/proc/meminfo").and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("HugePages_Total:"))
                .and_then(|v| v.trim().parse().ok())
        }),
        cpu_flags: read("/proc/cpuinfo")
            .map(|text| {
                text.lines()
                    .filter(|l| l.starts_with("flags") || l.starts_with("Features"))
                    .filter_map(|l| l.split_once(':'))
                    .flat_map(|(_, v)| v.split_whitespace().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        longhorn_fs: read("/proc/1/mountinfo").and_then(|text| {
            let mounts = mountinfo::parse(&text);
            mountinfo::mount_of(&mounts, Path::new(LONGHORN_DATA_PATH)).map(|m| m.fs_type.clone())
        }),
    }
}

/// Asks the package database about the family's Longhorn packages, in one call.
async fn query_packages(
    tools: &HostTools,
    family: Family,
) -> Result<BTreeMap<String, bool>, String> {
    let packages = family.longhorn_packages();
    if packages.is_empty() {
        return Ok(BTreeMap::new());
    }
    let output = match family.package_tool() {
        Tool::DpkgQuery => {
            let mut args = vec!["-W", "--showformat=${Package} ${db:Status-Abbrev}\\n"];
            args.extend_from_slice(packages);
            tools.run(Tool::DpkgQuery, &args).await
        }
        tool => {
            let mut args = vec!["-q", "--qf", "%{NAME}\\n"];
            args.extend_from_slice(packages);
            tools.run(tool, &args).await
        }
    }
    .map_err(|err: ToolError| display_error(&err))?;
    let installed: BTreeSet<&str> = match family.package_tool() {
        // `<name> ii ` per installed or known package; unknown ones only on stderr.
        Tool::DpkgQuery => output
            .stdout
            .lines()
            .filter_map(|l| {
                let mut fields = l.split_whitespace();
                let name = fields.next()?;
                fields
                    .next()
                    .is_some_and(|s| s.starts_with("ii"))
                    .then_some(name)
            })
            .map(|name| name.split(':').next().unwrap_or(name))
            .collect(),
        // `<name>` per installed package, "package X is not installed" otherwise.
        _ => output
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.contains(' '))
            .collect(),
    };
    Ok(packages
        .iter()
        .map(|p| (p.to_string(), installed.contains(p)))
        .collect())
}
