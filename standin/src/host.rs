//! A sandboxed host root with stand-in tools.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const SCRIPTS: [(&str, &str); 7] = [
    ("systemctl", include_str!("../scripts/systemctl")),
    ("tailscale", include_str!("../scripts/tailscale")),
    ("smartctl", include_str!("../scripts/smartctl")),
    ("dpkg-query", include_str!("../scripts/dpkg-query")),
    ("rpm", include_str!("../scripts/rpm")),
    ("modprobe", include_str!("../scripts/modprobe")),
    ("chcon", include_str!("../scripts/chcon")),
];

/// The kernel release every stand-in host runs.
pub const KERNEL: &str = "6.1.0-18-amd64";

/// Which distribution the host pretends to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distro {
    /// Debian 12: dpkg packages nfs-common, open-iscsi, cryptsetup, dmsetup.
    Debian,
    /// Rocky Linux 9: rpm packages nfs-utils, iscsi-initiator-utils, ...
    Rocky,
}

impl Distro {
    fn os_release(self) -> &'static str {
        match self {
            Distro::Debian => {
                "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n"
            }
            Distro::Rocky => {
                "NAME=\"Rocky Linux\"\nVERSION_ID=\"9.4\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n"
            }
        }
    }

    pub fn longhorn_packages(self) -> [&'static str; 4] {
        match self {
            Distro::Debian => ["nfs-common", "open-iscsi", "cryptsetup", "dmsetup"],
            Distro::Rocky => [
                "nfs-utils",
                "iscsi-initiator-utils",
                "cryptsetup",
                "device-mapper",
            ],
        }
    }
}

/// A host root in a directory the caller owns (usually a tempdir).
#[derive(Debug, Clone)]
pub struct StandinHost {
    root: PathBuf,
    distro: Distro,
}

impl StandinHost {
    /// Lays out a host prepared for K3s and Longhorn: packages installed,
    /// modules loaded, iscsid running, /var/lib/longhorn on XFS on a disk
    /// whose SMART status passes; K3s units installed but no K3s binary.
    pub fn create(dir: &Path, distro: Distro) -> io::Result<StandinHost> {
        let root = std::fs::canonicalize(dir)?;
        let host = StandinHost { root, distro };
        for dir in [
            "/etc",
            "/proc/sys/kernel/random",
            "/proc/1",
            "/usr/bin",
            "/usr/local/bin",
            "/var/lib/rancher",
            "/var/lib/longhorn",
            "/boot",
            "/.standin/bin",
            "/.standin/units",
            "/.standin/unit-files",
            "/.standin/packages",
            "/.standin/modules-available",
            "/.standin/smart",
            "/.standin/tailscale",
        ] {
            std::fs::create_dir_all(host.path(dir))?;
        }
        host.write("/etc/os-release", distro.os_release())?;
        host.write("/proc/sys/kernel/osrelease", &format!("{KERNEL}\n"))?;
        host.write(
            "/proc/sys/kernel/random/boot_id",
            "5f0c9a3e-7d3b-4a52-9a52-3b1f2c4d5e6f\n",
        )?;
        host.write(
            "/proc/1/mountinfo",
            "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n\
             40 22 8:17 / /var/lib/longhorn rw,relatime shared:20 - xfs /dev/sdb1 rw,attr2,inode64\n",
        )?;
        host.write(
            "/proc/modules",
            "dm_crypt 61440 0 - Live 0x0000000000000000\n\
             iscsi_tcp 24576 0 - Live 0x0000000000000000\n\
             nfs 458752 0 - Live 0x0000000000000000\n",
        )?;
        host.write(
            &format!("/boot/config-{KERNEL}"),
            "CONFIG_NFS_V4=m\nCONFIG_NFS_V4_1=y\nCONFIG_NFS_V4_2=y\n",
        )?;
        host.write(
            "/proc/meminfo",
            "MemTotal: 16384000 kB\nHugePages_Total: 0\n",
        )?;
        host.write(
            "/proc/cpuinfo",
            "processor\t: 0\nflags\t\t: fpu sse4_2 avx2\n",
        )?;
        for tool in ["bash", "curl", "findmnt", "grep", "awk", "blkid", "lsblk"] {
            host.write_executable(&format!("/usr/bin/{tool}"), "#!/bin/sh\nexit 0\n")?;
        }
        host.block_device("8:1", "sda", Some("sda1"))?;
        host.block_device("8:17", "sdb", Some("sdb1"))?;
        for disk in ["sda", "sdb"] {
            host.set_smart(
                disk,
                r#"{"smartctl":{"exit_status":0},"smart_status":{"passed":true},"temperature":{"current":31},"power_on_time":{"hours":8760}}"#,
                0,
            )?;
        }
        for (name, script) in SCRIPTS {
            host.write_executable(
                &format!("/.standin/bin/{name}"),
                &script.replace("@ROOT@", &host.root.display().to_string()),
            )?;
        }
        for unit in [
            "k3s.service",
            "k3s-agent.service",
            "iscsid.service",
            "iscsid.socket",
            "multipathd.service",
        ] {
            host.install_unit(unit)?;
        }
        host.set_unit("iscsid.socket", "active")?;
        for package in distro.longhorn_packages() {
            host.set_package(package, true)?;
        }
        for module in ["dm_crypt", "iscsi_tcp", "nfs", "nvme_tcp"] {
            host.write(&format!("/.standin/modules-available/{module}"), "")?;
        }
        host.write("/.standin/calls.log", "")?;
        Ok(host)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn distro(&self) -> Distro {
        self.distro
    }

    /// A host path under the root.
    pub fn path(&self, host_path: &str) -> PathBuf {
        self.root.join(host_path.trim_start_matches('/'))
    }

    /// The stand-in for `tool` (systemctl, tailscale, smartctl, ...).
    pub fn tool(&self, tool: &str) -> PathBuf {
        self.path(&format!("/.standin/bin/{tool}"))
    }

    pub fn write(&self, host_path: &str, content: &str) -> io::Result<()> {
        let path = self.path(host_path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, content)
    }

    pub fn write_executable(&self, host_path: &str, content: &str) -> io::Result<()> {
        self.write(host_path, content)?;
        std::fs::set_permissions(self.path(host_path), std::fs::Permissions::from_mode(0o755))
    }

    /// Installs `binary` as the host's K3s (`/usr/local/bin/k3s`, 0755).
    pub fn install_k3s(&self, binary: &[u8]) -> io::Result<()> {
        let path = self.path("/usr/local/bin/k3s");
        std::fs::write(&path, binary)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
    }

    /// The K3s binary now installed, if any.
    pub fn k3s(&self) -> Option<Vec<u8>> {
        std::fs::read(self.path("/usr/local/bin/k3s")).ok()
    }

    /// The previous K3s binary the agent keeps for rollback, if any.
    pub fn previous_k3s(&self) -> Option<Vec<u8>> {
        std::fs::read(self.path("/usr/local/bin/k3s.previous")).ok()
    }

    /// Makes systemd know `unit` (its unit file exists).
    pub fn install_unit(&self, unit: &str) -> io::Result<()> {
        self.write(&format!("/.standin/unit-files/{unit}"), "")
    }

    pub fn remove_unit(&self, unit: &str) -> io::Result<()> {
        let _ = std::fs::remove_file(self.path(&format!("/.standin/unit-files/{unit}")));
        self.set_unit(unit, "inactive")
    }

    /// Sets a unit's `is-active` state ("active", "inactive", "failed").
    pub fn set_unit(&self, unit: &str, state: &str) -> io::Result<()> {
        self.write(&format!("/.standin/units/{unit}"), &format!("{state}\n"))
    }

    pub fn unit(&self, unit: &str) -> String {
        std::fs::read_to_string(self.path(&format!("/.standin/units/{unit}")))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "inactive".into())
    }

    pub fn set_package(&self, package: &str, installed: bool) -> io::Result<()> {
        let path = format!("/.standin/packages/{package}");
        if installed {
            self.write(&path, "")
        } else {
            let _ = std::fs::remove_file(self.path(&path));
            Ok(())
        }
    }

    /// Removes a module from /proc/modules (it stays available to modprobe).
    pub fn unload_module(&self, module: &str) -> io::Result<()> {
        let path = self.path("/proc/modules");
        let text = std::fs::read_to_string(&path)?;
        let kept: String = text
            .lines()
            .filter(|l| l.split_whitespace().next() != Some(module))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(path, kept)
    }

    pub fn loaded_modules(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("/proc/modules"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// What `smartctl -j -a /dev/<disk>` prints and its exit status.
    pub fn set_smart(&self, disk: &str, json: &str, exit_status: u8) -> io::Result<()> {
        self.write(&format!("/.standin/smart/{disk}.json"), json)?;
        self.write(
            &format!("/.standin/smart/{disk}.exit"),
            &exit_status.to_string(),
        )
    }

    /// Makes SELinux enforcing (or not): `/sys/fs/selinux/enforce`.
    pub fn set_selinux_enforcing(&self, enforcing: bool) -> io::Result<()> {
        self.write(
            "/sys/fs/selinux/enforce",
            if enforcing { "1\n" } else { "0\n" },
        )
    }

    /// Sets what `tailscale status --json` prints.
    pub fn set_tailscale_status(&self, json: &str) -> io::Result<()> {
        self.write("/.standin/tailscale/status.json", json)
    }

    /// The only auth key the stand-in `tailscale up` accepts.
    pub fn set_tailscale_valid_key(&self, key: &str) -> io::Result<()> {
        self.write("/.standin/tailscale/valid-key", key)
    }

    /// Every stand-in tool call so far, one line each ("systemctl restart k3s.service").
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("/.standin/calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// A block device in sysfs: `/sys/dev/block/<major:minor>` -> the
    /// partition (or disk) directory.
    fn block_device(
        &self,
        major_minor: &str,
        disk: &str,
        partition: Option<&str>,
    ) -> io::Result<()> {
        let disk_dir = format!("/sys/devices/pci0000:00/block/{disk}");
        let target = match partition {
            Some(part) => {
                let dir = format!("{disk_dir}/{part}");
                self.write(&format!("{dir}/partition"), "1\n")?;
                dir
            }
            None => {
                std::fs::create_dir_all(self.path(&disk_dir))?;
                disk_dir
            }
        };
        std::fs::create_dir_all(self.path("/sys/dev/block"))?;
        let link = self.path(&format!("/sys/dev/block/{major_minor}"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("../../..{target}"), link)
    }
}

/// The agent's `[host]` configuration for a stand-in host. Fields are the
/// keys most tests tune; render once and append to the agent's config.
#[derive(Debug, Clone)]
pub struct HostToml {
    pub check_interval: &'static str,
    pub tool_timeout: &'static str,
    pub k3s_health_timeout: &'static str,
    pub k3s_download_stall_timeout: &'static str,
    /// Free-space thresholds; 0 by default so the machine running the tests
    /// does not decide the checks' outcome.
    pub disk_free_warning_ratio: f64,
    pub disk_free_error_ratio: f64,
    pub statfs_timeout: &'static str,
    /// Servers: where the stand-in kubelet answers etcd's /health.
    pub etcd_health_url: Option<String>,
    /// `host.k3s.http_mirrors`: the stand-in mirrors are plain http.
    pub http_mirrors: Vec<String>,
    /// `host.k3s.trusted_keys`: minisign public keys.
    pub trusted_keys: Vec<String>,
}

impl Default for HostToml {
    fn default() -> Self {
        HostToml {
            check_interval: "1s",
            tool_timeout: "20s",
            k3s_health_timeout: "20s",
            k3s_download_stall_timeout: "10s",
            disk_free_warning_ratio: 0.0,
            disk_free_error_ratio: 0.0,
            statfs_timeout: "5s",
            etcd_health_url: None,
            http_mirrors: Vec::new(),
            trusted_keys: Vec::new(),
        }
    }
}

impl HostToml {
    pub fn render(&self, host: &StandinHost) -> String {
        let tool = |name: &str| toml_string(&host.tool(name));
        format!(
            "[host]\nroot = {root}\ncheck_interval = \"{}\"\ntool_timeout = \"{}\"\n\n\
             [host.tools]\nsystemctl = {}\ntailscale = {}\nsmartctl = {}\ndpkg_query = {}\nrpm = {}\nmodprobe = {}\nchcon = {}\n\n\
             [host.k3s]\nhealth_timeout = \"{}\"\ndownload_stall_timeout = \"{}\"\nhttp_mirrors = {:?}\ntrusted_keys = {:?}\n\n\
             [host.disks]\nfree_warning_ratio = {:?}\nfree_error_ratio = {:?}\nstatfs_timeout = \"{}\"\n",
            self.check_interval,
            self.tool_timeout,
            tool("systemctl"),
            tool("tailscale"),
            tool("smartctl"),
            tool("dpkg-query"),
            tool("rpm"),
            tool("modprobe"),
            tool("chcon"),
            self.k3s_health_timeout,
            self.k3s_download_stall_timeout,
            self.http_mirrors,
            self.trusted_keys,
            self.disk_free_warning_ratio,
            self.disk_free_error_ratio,
            self.statfs_timeout,
            root = toml_string(host.root()),
        ) + &self
            .etcd_health_url
            .as_ref()
            .map(|url| format!("\n[host.etcd]\nhealth_url = {url:?}\n"))
            .unwrap_or_default()
    }
}

/// A path as a TOML basic string.
fn toml_string(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn the_stand_in_tools_work_on_their_root() {
        let dir = tempfile::tempdir().unwrap();
        let host = StandinHost::create(dir.path(), Distro::Debian).unwrap();
        let run = |tool: &str, args: &[&str]| {
            let out = Command::new(host.tool(tool)).args(args).output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        };
        assert_eq!(
            run(
                "systemctl",
                &["is-active", "iscsid.socket", "iscsid.service"]
            ),
            (Some(3), "active\ninactive\n".into())
        );
        assert_eq!(
            run(
                "systemctl",
                &["show", "-p", "LoadState", "--value", "k3s.service"]
            )
            .1,
            "loaded\n"
        );
        assert_eq!(
            run(
                "systemctl",
                &["show", "-p", "LoadState", "--value", "nope.service"]
            )
            .1,
            "not-found\n"
        );
        host.set_package("dmsetup", false).unwrap();
        let (code, out) = run(
            "dpkg-query",
            &["-W", "--showformat=x", "open-iscsi", "dmsetup"],
        );
        assert_eq!((code, out.as_str()), (Some(1), "open-iscsi ii \n"));
        host.unload_module("dm_crypt").unwrap();
        assert!(!host.loaded_modules().contains(&"dm_crypt".to_string()));
        assert_eq!(run("modprobe", &["dm_crypt"]).0, Some(0));
        assert!(host.loaded_modules().contains(&"dm_crypt".to_string()));
        assert_eq!(run("modprobe", &["nonexistent"]).0, Some(1));
        assert!(host.calls().contains(&"modprobe dm_crypt".to_string()));
    }
}
