//! Checks on the watched disks: free space and inodes, read-only mounts,
//! SMART health.

use k3sfleet_proto::v1::{CheckResult, Health, SmartHealth};

use super::check;
use crate::disks::smart::EXIT_PREFAIL_AT_THRESHOLD;
use crate::disks::{DisksConfig, ProbedDisk};

/// NVMe wear (percentage_used) from which the drive is near its rated life.
const NVME_WORN_PERCENT: u32 = 90;

pub fn run(disks: &[ProbedDisk], config: &DisksConfig) -> Vec<CheckResult> {
    disks
        .iter()
        .flat_map(|disk| {
            let mut checks = vec![space(disk, config), read_only(disk)];
            if config.smart {
                checks.push(smart(disk));
            }
            checks
        })
        .collect()
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn space(disk: &ProbedDisk, config: &DisksConfig) -> CheckResult {
    let h = &disk.health;
    let id = format!("disk.space.{}", h.path);
    if !h.error.is_empty() {
        return check(&id, Health::Error, format!("{}: {}", h.path, h.error));
    }
    let ratio = |free: u64, total: u64| {
        if total == 0 {
            1.0
        } else {
            free as f64 / total as f64
        }
    };
    let space = ratio(h.available_bytes, h.size_bytes);
    let inodes = ratio(h.inodes_free, h.inodes_total);
    let worst = space.min(inodes);
    let status = if worst < config.free_error_ratio {
        Health::Error
    } else if worst < config.free_warning_ratio {
        Health::Warning
    } else {
        Health::Ok
    };
    let mut message = format!(
        "{}{}: {} of {} free ({:.0}%), {:.0}% of inodes free",
        h.path,
        if disk.exists {
            ""
        } else {
            " (not created yet)"
        },
        gib(h.available_bytes),
        gib(h.size_bytes),
        space * 100.0,
        inodes * 100.0
    );
    if status != Health::Ok {
        let what = if inodes < space { "inodes" } else { "space" };
        message.push_str(&format!(
            "; free {what} on {} is below {:.0}%: delete unused images (`k3s crictl rmi --prune`), \
             old snapshots or data, or grow the filesystem",
            if h.mount_point.is_empty() {
                &h.path
            } else {
                &h.mount_point
            },
            if status == Health::Error {
                config.free_error_ratio
            } else {
                config.free_warning_ratio
            } * 100.0
        ));
    }
    check(&id, status, message)
}

fn read_only(disk: &ProbedDisk) -> CheckResult {
    let h = &disk.health;
    let id = format!("disk.read_only.{}", h.path);
    if h.read_only {
        check(
            &id,
            Health::Error,
            format!(
                "{} is on a read-only mount ({}); the kernel may have remounted it after I/O errors: \
                 check `dmesg` and the disk, then remount read-write",
                h.path,
                if h.mount_point.is_empty() {
                    "?"
                } else {
                    &h.mount_point
                }
            ),
        )
    } else {
        check(&id, Health::Ok, format!("{} is writable", h.path))
    }
}

fn smart(disk: &ProbedDisk) -> CheckResult {
    let h = &disk.health;
    let id = format!("disk.smart.{}", h.path);
    let default = SmartHealth::default();
    let s = h.smart.as_ref().unwrap_or(&default);
    if !s.available {
        let reason = if s.error.is_empty() {
            "no SMART data"
        } else {
            &s.error
        };
        return check(
            &id,
            Health::Ok,
            format!("SMART not available for {}: {reason}", h.path),
        );
    }
    if !s.passed {
        return check(
            &id,
            Health::Error,
            format!(
                "the disk under {} ({}) fails its SMART health check: replace it and move data off it",
                h.path, h.device
            ),
        );
    }
    let mut concerns = Vec::new();
    if s.exit_status & EXIT_PREFAIL_AT_THRESHOLD != 0 {
        concerns.push("a pre-failure attribute is at its threshold".to_string());
    }
    if s.nvme_critical_warning != 0 {
        concerns.push(format!(
            "NVMe critical warning 0x{:x}",
            s.nvme_critical_warning
        ));
    }
    if s.nvme_percentage_used >= NVME_WORN_PERCENT {
        concerns.push(format!("NVMe wear at {}%", s.nvme_percentage_used));
    }
    if s.nvme_media_errors > 0 {
        concerns.push(format!("{} NVMe media errors", s.nvme_media_errors));
    }
    if concerns.is_empty() {
        check(
            &id,
            Health::Ok,
            format!("SMART passed for the disk under {}", h.path),
        )
    } else {
        check(
            &id,
            Health::Warning,
            format!(
                "the disk under {} ({}) passes SMART but {}: plan to replace it",
                h.path,
                h.device,
                concerns.join(", ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k3sfleet_proto::v1::DiskHealth;

    fn disk(available: u64, inodes_free: u64) -> ProbedDisk {
        ProbedDisk {
            health: DiskHealth {
                path: "/var/lib/longhorn".into(),
                mount_point: "/var/lib/longhorn".into(),
                device: "/dev/sdb1".into(),
                fs_type: "xfs".into(),
                size_bytes: 100,
                available_bytes: available,
                inodes_total: 100,
                inodes_free,
                smart: Some(SmartHealth {
                    available: true,
                    passed: true,
                    ..Default::default()
                }),
                ..Default::default()
            },
            exists: true,
        }
    }

    fn status(checks: &[CheckResult], prefix: &str) -> Health {
        Health::try_from(
            checks
                .iter()
                .find(|c| c.id.starts_with(prefix))
                .unwrap()
                .status,
        )
        .unwrap()
    }

    #[test]
    fn free_space_and_inode_thresholds() {
        let config = DisksConfig::default();
        assert_eq!(
            status(&run(&[disk(50, 50)], &config), "disk.space"),
            Health::Ok
        );
        assert_eq!(
            status(&run(&[disk(15, 50)], &config), "disk.space"),
            Health::Warning
        );
        assert_eq!(
            status(&run(&[disk(50, 5)], &config), "disk.space"),
            Health::Error
        );
        let checks = run(&[disk(5, 50)], &config);
        assert_eq!(checks[0].id, "disk.space./var/lib/longhorn");
        assert!(
            checks[0].message.contains("below 10%"),
            "{}",
            checks[0].message
        );
    }

    #[test]
    fn read_only_statfs_errors_and_smart() {
        let config = DisksConfig::default();
        let mut d = disk(50, 50);
        d.health.read_only = true;
        d.health.smart.as_mut().unwrap().passed = false;
        let checks = run(&[d.clone()], &config);
        assert_eq!(status(&checks, "disk.read_only"), Health::Error);
        assert_eq!(status(&checks, "disk.smart"), Health::Error);
        d.health.error = "statfs /var/lib/longhorn did not return within 5s".into();
        d.health.smart.as_mut().unwrap().passed = true;
        d.health.smart.as_mut().unwrap().nvme_percentage_used = 95;
        let checks = run(&[d], &config);
        assert_eq!(status(&checks, "disk.space"), Health::Error);
        assert_eq!(status(&checks, "disk.smart"), Health::Warning);
    }
}
