//! The Longhorn preflight checks (after `longhornctl check preflight` and the
//! Longhorn docs), each ok / warning / error with what to do about it.

use k3sfleet_proto::v1::{CheckResult, Health};

use super::family::Family;
use super::inventory::{ISCSID_UNITS, Inventory, MULTIPATHD_UNITS};
use super::{LonghornConfig, check};

/// Modules the V1 data engine needs (nfs is covered by the NFS check).
pub const REQUIRED_MODULES: [&str; 2] = ["dm_crypt", "iscsi_tcp"];
/// What `--fix-modules` loads and persists.
pub const FIX_MODULES: [&str; 3] = ["iscsi_tcp", "dm_crypt", "nfs"];
const V2_MODULES: [&str; 3] = ["nvme_tcp", "uio_pci_generic", "vfio_pci"];
const V2_HUGEPAGES: u64 = 1024;

pub fn run(inventory: &Inventory, config: &LonghornConfig) -> Vec<CheckResult> {
    let mut checks = vec![
        iscsid(inventory),
        multipathd(inventory),
        packages(inventory),
        modules(inventory),
        nfs_client(inventory),
        nfs_version(inventory),
        data_path(inventory.longhorn_fs.as_deref()),
        host_tools(inventory),
        kernel_version(&inventory.kernel_version),
    ];
    if config.v2_data_engine {
        checks.extend(v2_engine(inventory));
    }
    checks
}

fn iscsid(inv: &Inventory) -> CheckResult {
    const ID: &str = "longhorn.iscsid";
    if let Err(reason) = &inv.units {
        return check(
            ID,
            Health::Warning,
            format!("cannot ask systemd about iscsid: {reason}"),
        );
    }
    match ISCSID_UNITS.iter().find(|u| inv.unit_running(u)) {
        Some(unit) => check(ID, Health::Ok, format!("{unit} is active")),
        None => check(
            ID,
            Health::Error,
            format!(
                "neither iscsid.service nor iscsid.socket is active; Longhorn attaches volumes over iSCSI. \
                 Install {} if needed, then run `systemctl enable --now iscsid.socket` (or `k3sfleet-agent check --fix-iscsid`)",
                inv.family.iscsi_package()
            ),
        ),
    }
}

fn multipathd(inv: &Inventory) -> CheckResult {
    const ID: &str = "longhorn.multipathd";
    match MULTIPATHD_UNITS.iter().find(|u| inv.unit_running(u)) {
        Some(unit) => check(
            ID,
            Health::Warning,
            format!(
                "{unit} is active and may claim Longhorn's block devices; add \
                 `blacklist {{ devnode \"^sd[a-z0-9]+\" }}` to /etc/multipath.conf and restart multipathd, \
                 or disable it if unused"
            ),
        ),
        None => check(ID, Health::Ok, "multipathd is not running"),
    }
}

fn packages(inv: &Inventory) -> CheckResult {
    const ID: &str = "longhorn.packages";
    if inv.family == Family::Unknown {
        return check(
            ID,
            Health::Warning,
            format!(
                "unknown distribution {:?}: check by hand that the NFS client, open-iscsi, cryptsetup and device-mapper are installed",
                inv.os_id
            ),
        );
    }
    let packages = match &inv.packages {
        Ok(packages) => packages,
        Err(reason) => {
            return check(
                ID,
                Health::Warning,
                format!("cannot query installed packages: {reason}"),
            );
        }
    };
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, installed)| !**installed)
        .map(|(name, _)| name.as_str())
        .collect();
    if missing.is_empty() {
        check(
            ID,
            Health::Ok,
            format!("installed: {}", inv.family.longhorn_packages().join(", ")),
        )
    } else {
        check(
            ID,
            Health::Error,
            format!(
                "missing {} packages: {}; install them with `{}`",
                inv.family.name(),
                missing.join(", "),
                inv.family.install_command(&missing)
            ),
        )
    }
}

fn modules(inv: &Inventory) -> CheckResult {
    const ID: &str = "longhorn.kernel_modules";
    let missing: Vec<&str> = REQUIRED_MODULES
        .iter()
        .copied()
        .filter(|m| !inv.has_module(m))
        .collect();
    if missing.is_empty() {
        return check(
            ID,
            Health::Ok,
            format!("loaded: {}", REQUIRED_MODULES.join(", ")),
        );
    }
    if let Some(caveat) = module_caveat(inv) {
        return check(
            ID,
            Health::Warning,
            format!("{} not seen loaded; {caveat}", missing.join(", ")),
        );
    }
    // longhornctl treats a missing iscsi_tcp as fatal on the RHEL family,
    // where iscsid does not load it by itself.
    let status = if inv.family == Family::Rhel && missing.contains(&"iscsi_tcp") {
        Health::Error
    } else {
        Health::Warning
    };
    check(
        ID,
        status,
        format!(
            "not loaded: {}; load with `modprobe <module>` and list them in /etc/modules-load.d/ \
             (or run `k3sfleet-agent check --fix-modules`)",
            missing.join(", ")
        ),
    )
}

/// Why "load it with modprobe" would be wrong advice here, if it would: a
/// container shares the kernel of the machine it runs on and cannot load
/// modules into it; without /proc/modules nothing says what is loaded.
pub fn module_caveat(inv: &Inventory) -> Option<String> {
    match (&inv.container, inv.modules_listed) {
        (Some(container), true) => Some(format!(
            "this host is a container ({container}): kernel modules belong to the kernel of the \
             machine it runs on and cannot be loaded from inside; load them there"
        )),
        (Some(container), false) => Some(format!(
            "this host is a container ({container}) and its kernel lists no modules (no \
             /proc/modules): which ones the kernel of the machine it runs on has cannot be told \
             from inside; check there"
        )),
        (None, false) => Some(
            "the kernel lists no modules (no /proc/modules: built without loadable modules?) \
             and does not name them as built in: cannot tell whether it has them"
                .to_string(),
        ),
        (None, true) => None,
    }
}

fn nfs_client(inv: &Inventory) -> CheckResult {
    const ID: &str = "longhorn.nfs_client";
    let Some(config) = &inv.kernel_config else {
        let why = match &inv.container {
            Some(container) => format!(
                "this host is a container ({container}), which does not see the /boot of the \
                 machine it runs on: check there whether the kernel has an NFSv4 client"
            ),
            None => "cannot tell whether the kernel has an NFSv4 client".to_string(),
        };
        return check(
            ID,
            Health::Warning,
            format!(
                "cannot read /boot/config-{}: {why} (RWX volumes need one)",
                inv.kernel_version
            ),
        );
    };
    let mut as_module = None;
    for option in ["CONFIG_NFS_V4_2", "CONFIG_NFS_V4_1", "CONFIG_NFS_V4"] {
        match kernel_option(config, option) {
            Some("y") => {
                return check(
                    ID,
                    Health::Ok,
                    format!("NFSv4 client built in ({option}=y)"),
                );
            }
            Some("m") if inv.has_module("nfs") => {
                return check(
                    ID,
                    Health::Ok,
                    format!("NFSv4 client module loaded ({option}=m)"),
                );
            }
            Some("m") => as_module = as_module.or(Some(option)),
            _ => {}
        }
    }
    match (as_module, module_caveat(inv)) {
        (Some(option), Some(caveat)) => check(
            ID,
            Health::Warning,
            format!(
                "the NFSv4 client is a module ({option}=m) but nfs is not seen loaded; RWX volumes need it; {caveat}"
            ),
        ),
        (Some(option), None) => check(
            ID,
            Health::Warning,
            format!(
                "the NFSv4 client is a module ({option}=m) but nfs is not loaded; RWX volumes need it: \
                 `modprobe nfs` (or `k3sfleet-agent check --fix-modules`)"
            ),
        ),
        (None, _) => check(
            ID,
            Health::Warning,
            "the kernel has no NFSv4 client (CONFIG_NFS_V4*); RWX volumes will not work on this host",
        ),
    }
}

fn kernel_option<'a>(config: &'a str, option: &str) -> Option<&'a str> {
    config.lines().find_map(|line| {
        let (key, value) = line.trim().split_once('=')?;
        (key == option).then_some(value.trim())
    })
}

fn nfs_version(inv: &Inventory) -> CheckResult {
    const ID: &str = "longhorn.nfs_mount_config";
    let Some(conf) = &inv.nfsmount_conf else {
        return check(ID, Health::Ok, "no /etc/nfsmount.conf; NFS defaults apply");
    };
    let set_version = conf.lines().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let (key, value) = line.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        (key == "defaultvers" || key == "nfsvers").then(|| value.trim().to_string())
    });
    match set_version {
        Some(version) if !version.starts_with('4') => check(
            ID,
            Health::Warning,
            format!(
                "/etc/nfsmount.conf sets NFS version {version}; Longhorn's RWX volumes need 4.x: \
                 set Defaultvers=4.2 or remove the line"
            ),
        ),
        Some(version) => check(
            ID,
            Health::Ok,
            format!("/etc/nfsmount.conf sets NFS version {version}"),
        ),
        None => check(
            ID,
            Health::Ok,
            "/etc/nfsmount.conf does not pin an NFS version",
        ),
    }
}

fn data_path(fs_type: Option<&str>) -> CheckResult {
    const ID: &str = "longhorn.data_path";
    match fs_type {
        Some("ext4" | "xfs") => check(
            ID,
            Health::Ok,
            format!("/var/lib/longhorn is on {}", fs_type.unwrap_or_default()),
        ),
        Some(other) => check(
            ID,
            Health::Error,
            format!(
                "/var/lib/longhorn is on {other}; Longhorn supports ext4 and XFS: \
                 mount an ext4 or XFS filesystem there before installing Longhorn"
            ),
        ),
        None => check(
            ID,
            Health::Warning,
            "cannot tell which filesystem /var/lib/longhorn is on (not in the mount table)",
        ),
    }
}

fn host_tools(inv: &Inventory) -> CheckResult {
    const ID: &str = "longhorn.host_tools";
    if inv.missing_tools.is_empty() {
        check(
            ID,
            Health::Ok,
            "bash, curl, findmnt, grep, awk, blkid, lsblk are installed",
        )
    } else {
        check(
            ID,
            Health::Error,
            format!(
                "Longhorn runs these on the host but they are missing: {}; install them \
                 (curl; util-linux has findmnt, blkid, lsblk; gawk has awk)",
                inv.missing_tools.join(", ")
            ),
        )
    }
}

/// Kernels with known Longhorn problems (Longhorn docs, "important notes").
fn kernel_version(release: &str) -> CheckResult {
    const ID: &str = "longhorn.kernel_version";
    let numbers: Vec<u64> = release
        .split(|c: char| !c.is_ascii_digit())
        .take(4)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| numbers.get(i).copied().unwrap_or(0);
    let exactly = |prefix: &str| {
        release
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || !rest.starts_with(|c: char| c.is_ascii_digit()))
    };
    let known_bad = exactly("6.5.6")
        || (release.starts_with("5.15.0-") && (94..100).contains(&at(3)))
        || exactly("6.5.0-21")
        || exactly("6.5.0-1014-aws");
    if release.is_empty() {
        check(ID, Health::Warning, "cannot read the kernel version")
    } else if known_bad {
        check(
            ID,
            Health::Warning,
            format!("kernel {release} has known Longhorn problems; upgrade the kernel"),
        )
    } else if (at(0), at(1)) < (5, 8) {
        check(
            ID,
            Health::Warning,
            format!("kernel {release} is older than 5.8, which Longhorn recommends at least"),
        )
    } else {
        check(ID, Health::Ok, format!("kernel {release}"))
    }
}

fn v2_engine(inv: &Inventory) -> Vec<CheckResult> {
    let hugepages = match inv.hugepages_total {
        Some(total) if total >= V2_HUGEPAGES => check(
            "longhorn.v2.hugepages",
            Health::Ok,
            format!("{total} huge pages"),
        ),
        total => check(
            "longhorn.v2.hugepages",
            Health::Error,
            format!(
                "{} huge pages; the V2 data engine needs at least {V2_HUGEPAGES} of 2 MiB: \
                 `echo 1024 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages` and persist vm.nr_hugepages",
                total.unwrap_or(0)
            ),
        ),
    };
    let flag = if inv.cpu_flags.contains("asimd") || std::env::consts::ARCH == "aarch64" {
        "asimd"
    } else {
        "sse4_2"
    };
    let cpu = if inv.cpu_flags.contains(flag) {
        check("longhorn.v2.cpu", Health::Ok, format!("the CPU has {flag}"))
    } else {
        check(
            "longhorn.v2.cpu",
            Health::Error,
            format!("the CPU lacks {flag}, which the V2 data engine (SPDK) needs"),
        )
    };
    let missing: Vec<&str> = V2_MODULES
        .iter()
        .copied()
        .filter(|m| !inv.has_module(m))
        .collect();
    let modules = if missing.is_empty() {
        check(
            "longhorn.v2.kernel_modules",
            Health::Ok,
            format!("loaded: {}", V2_MODULES.join(", ")),
        )
    } else if let Some(caveat) = module_caveat(inv) {
        check(
            "longhorn.v2.kernel_modules",
            Health::Warning,
            format!(
                "{} not seen loaded (the V2 data engine needs them); {caveat}",
                missing.join(", ")
            ),
        )
    } else {
        check(
            "longhorn.v2.kernel_modules",
            Health::Error,
            format!(
                "not loaded: {}; the V2 data engine needs them: `modprobe <module>` and persist in /etc/modules-load.d/",
                missing.join(", ")
            ),
        )
    };
    vec![hugepages, cpu, modules]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn healthy_debian() -> Inventory {
        Inventory {
            family: Family::Debian,
            os_id: "debian".into(),
            kernel_version: "6.1.0-18-amd64".into(),
            units: Ok(BTreeMap::from([
                ("iscsid.service".to_string(), "inactive".to_string()),
                ("iscsid.socket".to_string(), "active".to_string()),
                ("multipathd.service".to_string(), "inactive".to_string()),
                ("multipathd.socket".to_string(), "inactive".to_string()),
            ])),
            packages: Ok(Family::Debian
                .longhorn_packages()
                .iter()
                .map(|p| (p.to_string(), true))
                .collect()),
            loaded_modules: ["dm_crypt", "iscsi_tcp", "nfs"].map(String::from).into(),
            kernel_config: Some("CONFIG_NFS_V4=m\nCONFIG_NFS_V4_1=y\n".into()),
            ..Default::default()
        }
    }

    fn on(mut inv: Inventory, fs: &str) -> Inventory {
        inv.longhorn_fs = Some(fs.to_string());
        inv
    }

    fn status_of(checks: &[CheckResult], id: &str) -> (Health, String) {
        let c = checks.iter().find(|c| c.id == id).unwrap();
        (Health::try_from(c.status).unwrap(), c.message.clone())
    }

    #[test]
    fn a_prepared_debian_host_passes() {
        let checks = run(&on(healthy_debian(), "ext4"), &LonghornConfig::default());
        for c in &checks {
            assert_eq!(c.status, Health::Ok as i32, "{}: {}", c.id, c.message);
        }
    }

    #[test]
    fn each_problem_is_reported_with_advice() {
        let mut inv = healthy_debian();
        inv.units
            .as_mut()
            .unwrap()
            .insert("iscsid.socket".into(), "inactive".into());
        inv.units
            .as_mut()
            .unwrap()
            .insert("multipathd.service".into(), "active".into());
        inv.packages
            .as_mut()
            .unwrap()
            .insert("open-iscsi".into(), false);
        inv.loaded_modules.remove("dm_crypt");
        inv.missing_tools = vec!["lsblk".into()];
        inv.nfsmount_conf = Some("[ NFSMount_Global_Options ]\nDefaultvers=3\n".into());
        let checks = run(&on(inv.clone(), "btrfs"), &LonghornConfig::default());
        let (status, message) = status_of(&checks, "longhorn.iscsid");
        assert_eq!(status, Health::Error);
        assert!(
            message.contains("systemctl enable --now iscsid"),
            "{message}"
        );
        assert_eq!(status_of(&checks, "longhorn.multipathd").0, Health::Warning);
        let (status, message) = status_of(&checks, "longhorn.packages");
        assert_eq!(status, Health::Error);
        assert!(
            message.contains("apt-get install -y open-iscsi"),
            "{message}"
        );
        let (status, message) = status_of(&checks, "longhorn.kernel_modules");
        assert_eq!(status, Health::Warning);
        assert!(message.contains("dm_crypt"), "{message}");
        assert_eq!(status_of(&checks, "longhorn.host_tools").0, Health::Error);
        assert_eq!(status_of(&checks, "longhorn.data_path").0, Health::Error);
        assert_eq!(
            status_of(&checks, "longhorn.nfs_mount_config").0,
            Health::Warning
        );
    }

    #[test]
    fn rhel_needs_iscsi_tcp_and_uses_rhel_package_names() {
        let mut inv = healthy_debian();
        inv.family = Family::Rhel;
        inv.loaded_modules.remove("iscsi_tcp");
        inv.packages = Ok(BTreeMap::from([(
            "iscsi-initiator-utils".to_string(),
            false,
        )]));
        let checks = run(&on(inv.clone(), "xfs"), &LonghornConfig::default());
        assert_eq!(
            status_of(&checks, "longhorn.kernel_modules").0,
            Health::Error
        );
        let (_, message) = status_of(&checks, "longhorn.packages");
        assert!(
            message.contains("dnf install -y iscsi-initiator-utils"),
            "{message}"
        );
    }

    #[test]
    fn builtin_modules_count_and_nfs_needs_its_module() {
        let mut inv = healthy_debian();
        inv.loaded_modules.clear();
        inv.builtin_modules = ["dm_crypt", "iscsi_tcp"].map(String::from).into();
        inv.kernel_config = Some("CONFIG_NFS_V4=m\n".into());
        let checks = run(&on(inv.clone(), "ext4"), &LonghornConfig::default());
        assert_eq!(status_of(&checks, "longhorn.kernel_modules").0, Health::Ok);
        let (status, message) = status_of(&checks, "longhorn.nfs_client");
        assert_eq!(status, Health::Warning);
        assert!(message.contains("modprobe nfs"), "{message}");
    }

    #[test]
    fn in_a_container_module_and_kernel_config_advice_says_what_cannot_be_done_here() {
        let mut inv = healthy_debian();
        inv.container = Some("systemd-nspawn".into());
        inv.modules_listed = false;
        inv.loaded_modules.clear();
        inv.kernel_config = None;
        let checks = run(&on(inv.clone(), "ext4"), &LonghornConfig::default());
        let (status, message) = status_of(&checks, "longhorn.kernel_modules");
        assert_eq!(status, Health::Warning);
        assert!(message.contains("container (systemd-nspawn)"), "{message}");
        assert!(!message.contains("--fix-modules"), "{message}");
        let (status, message) = status_of(&checks, "longhorn.nfs_client");
        assert_eq!(status, Health::Warning);
        assert!(message.contains("/boot/config-6.1.0-18-amd64"), "{message}");
        assert!(message.contains("container (systemd-nspawn)"), "{message}");
        // Modules the host kernel has loaded are seen from inside too.
        inv.modules_listed = true;
        inv.loaded_modules = ["dm_crypt", "iscsi_tcp"].map(String::from).into();
        let checks = run(&on(inv, "ext4"), &LonghornConfig::default());
        assert_eq!(status_of(&checks, "longhorn.kernel_modules").0, Health::Ok);
    }

    #[test]
    fn a_kernel_without_loadable_modules_is_not_told_to_modprobe() {
        let mut inv = healthy_debian();
        inv.modules_listed = false;
        inv.loaded_modules.clear();
        inv.family = Family::Rhel;
        let checks = run(&on(inv, "ext4"), &LonghornConfig::default());
        let (status, message) = status_of(&checks, "longhorn.kernel_modules");
        assert_eq!(status, Health::Warning);
        assert!(message.contains("cannot tell"), "{message}");
        assert!(!message.contains("modprobe"), "{message}");
    }

    #[test]
    fn kernels() {
        let status = |k: &str| Health::try_from(kernel_version(k).status).unwrap();
        assert_eq!(status("6.5.6"), Health::Warning);
        assert_eq!(status("6.5.6-300.fc39.x86_64"), Health::Warning);
        assert_eq!(status("6.5.60"), Health::Ok);
        assert_eq!(status("5.15.0-94-generic"), Health::Warning);
        assert_eq!(status("5.15.0-99-generic"), Health::Warning);
        assert_eq!(status("5.15.0-100-generic"), Health::Ok);
        assert_eq!(status("6.5.0-21-generic"), Health::Warning);
        assert_eq!(status("6.5.0-1014-aws"), Health::Warning);
        assert_eq!(status("5.4.0-150-generic"), Health::Warning);
        assert_eq!(status("6.1.0-18-amd64"), Health::Ok);
    }

    #[test]
    fn v2_engine_only_when_asked() {
        let config = LonghornConfig {
            v2_data_engine: true,
            ..Default::default()
        };
        let mut inv = healthy_debian();
        inv.hugepages_total = Some(0);
        let checks = run(&on(inv.clone(), "ext4"), &config);
        assert_eq!(status_of(&checks, "longhorn.v2.hugepages").0, Health::Error);
        assert!(
            !run(&on(inv.clone(), "ext4"), &LonghornConfig::default())
                .iter()
                .any(|c| c.id.starts_with("longhorn.v2"))
        );
    }
}
