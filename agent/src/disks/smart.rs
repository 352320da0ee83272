//! SMART health through `smartctl -j -a /dev/X`, and finding the whole
//! disk under a mounted partition or device-mapper volume through sysfs.

use std::path::{Path, PathBuf};

use k3sfleet_proto::v1::SmartHealth;
use serde::Deserialize;

use crate::host::HostRoot;

/// smartctl's exit status bits (smartctl(8) "EXIT STATUS").
pub const EXIT_COMMAND_LINE: u32 = 1 << 0;
pub const EXIT_OPEN_FAILED: u32 = 1 << 1;
pub const EXIT_DISK_FAILING: u32 = 1 << 3;
pub const EXIT_PREFAIL_AT_THRESHOLD: u32 = 1 << 4;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Report {
    smartctl: Smartctl,
    smart_status: Option<SmartStatus>,
    temperature: Option<Temperature>,
    power_on_time: Option<PowerOnTime>,
    nvme_smart_health_information_log: Option<NvmeLog>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Smartctl {
    exit_status: u32,
    messages: Vec<Message>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Message {
    string: String,
}

#[derive(Debug, Default, Deserialize)]
struct SmartStatus {
    passed: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Temperature {
    current: i32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PowerOnTime {
    hours: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NvmeLog {
    critical_warning: u32,
    percentage_used: u32,
    media_errors: u64,
}

/// Reads smartctl's JSON. `exit_code` is the process's exit status, used
/// when the JSON lacks one.
pub fn parse(json: &str, exit_code: Option<i32>) -> SmartHealth {
    let report: Report = match serde_json::from_str(json) {
        Ok(report) => report,
        Err(err) => {
            return SmartHealth {
                error: format!("cannot parse smartctl's JSON output: {err}"),
                exit_status: exit_code.unwrap_or(0) as u32,
                ..Default::default()
            };
        }
    };
    let exit_status = if report.smartctl.exit_status != 0 {
        report.smartctl.exit_status
    } else {
        exit_code.unwrap_or(0).max(0) as u32
    };
    let Some(status) = report.smart_status else {
        let reason = report
            .smartctl
            .messages
            .first()
            .map(|m| m.string.clone())
            .unwrap_or_else(|| "the device reports no SMART status".into());
        return SmartHealth {
            exit_status,
            error: reason,
            ..Default::default()
        };
    };
    let nvme = report.nvme_smart_health_information_log.unwrap_or_default();
    SmartHealth {
        available: exit_status & (EXIT_COMMAND_LINE | EXIT_OPEN_FAILED) == 0,
        passed: status.passed && exit_status & EXIT_DISK_FAILING == 0,
        temperature_celsius: report.temperature.map_or(0, |t| t.current),
        power_on_hours: report.power_on_time.map_or(0, |p| p.hours),
        exit_status,
        nvme_critical_warning: nvme.critical_warning,
        nvme_percentage_used: nvme.percentage_used,
        nvme_media_errors: nvme.media_errors,
        error: String::new(),
    }
}

/// The whole disk behind a block device given as "major:minor": the parent
/// of a partition, the first underlying device of a device-mapper or md
/// volume. `None` for what is not a block device (tmpfs, overlay, NFS).
pub fn whole_disk(root: &HostRoot, major_minor: &str) -> Option<PathBuf> {
    let mut dir = std::fs::canonicalize(root.path(format!("/sys/dev/block/{major_minor}"))).ok()?;
    // Device-mapper on device-mapper on a partition is as deep as it gets.
    for _ in 0..4 {
        if dir.join("partition").exists() {
            dir = dir.parent()?.to_path_buf();
            break;
        }
        let first_slave = std::fs::read_dir(dir.join("slaves"))
            .ok()
            .and_then(|entries| {
                let mut names: Vec<_> = entries.flatten().map(|e| e.path()).collect();
                names.sort();
                names.into_iter().next()
            });
        match first_slave.and_then(|slave| std::fs::canonicalize(slave).ok()) {
            Some(slave) => dir = slave,
            None => break,
        }
    }
    let name = dir.file_name()?.to_string_lossy().into_owned();
    Some(Path::new("/dev").join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ata_disk() {
        let json = r#"{"smartctl":{"exit_status":0},"smart_status":{"passed":true},
            "temperature":{"current":34},"power_on_time":{"hours":12345}}"#;
        let health = parse(json, Some(0));
        assert!(health.available && health.passed);
        assert_eq!(health.temperature_celsius, 34);
        assert_eq!(health.power_on_hours, 12345);
    }

    #[test]
    fn failing_and_nvme_disks() {
        let json = r#"{"smartctl":{"exit_status":8},"smart_status":{"passed":false}}"#;
        let health = parse(json, Some(8));
        assert!(health.available && !health.passed);
        assert_eq!(health.exit_status & EXIT_DISK_FAILING, EXIT_DISK_FAILING);
        let json = r#"{"smartctl":{"exit_status":0},"smart_status":{"passed":true},
            "nvme_smart_health_information_log":{"critical_warning":4,"percentage_used":91,"media_errors":3}}"#;
        let health = parse(json, Some(0));
        assert_eq!(health.nvme_critical_warning, 4);
        assert_eq!(health.nvme_percentage_used, 91);
        assert_eq!(health.nvme_media_errors, 3);
    }

    #[test]
    fn devices_without_smart() {
        let json = r#"{"smartctl":{"exit_status":2,"messages":[{"string":"Smartctl open device: /dev/vda failed: DELL or MegaRaid controller","severity":"error"}]}}"#;
        let health = parse(json, Some(2));
        assert!(!health.available);
        assert!(health.error.contains("open device"), "{}", health.error);
        assert!(!parse("", Some(1)).error.is_empty());
    }

    #[test]
    fn whole_disks_through_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let root = HostRoot::new(dir.path());
        let mk = |p: &str| std::fs::create_dir_all(root.path(p)).unwrap();
        mk("/sys/devices/pci0/block/sda/sda1");
        std::fs::write(root.path("/sys/devices/pci0/block/sda/sda1/partition"), "1").unwrap();
        mk("/sys/devices/virtual/block/dm-0/slaves");
        std::os::unix::fs::symlink(
            "../../../../pci0/block/sda/sda1",
            root.path("/sys/devices/virtual/block/dm-0/slaves/sda1"),
        )
        .unwrap();
        mk("/sys/dev/block");
        std::os::unix::fs::symlink(
            "../../devices/pci0/block/sda/sda1",
            root.path("/sys/dev/block/8:1"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "../../devices/virtual/block/dm-0",
            root.path("/sys/dev/block/253:0"),
        )
        .unwrap();
        assert_eq!(whole_disk(&root, "8:1"), Some(PathBuf::from("/dev/sda")));
        assert_eq!(whole_disk(&root, "253:0"), Some(PathBuf::from("/dev/sda")));
        assert_eq!(whole_disk(&root, "0:50"), None);
    }
}
