//! Distribution families: which package names and tools apply.

use crate::host::Tool;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Family {
    Debian,
    Rhel,
    Suse,
    #[default]
    Unknown,
}

impl Family {
    /// From os-release ID and ID_LIKE.
    pub fn of(id: &str, id_like: &[String]) -> Family {
        let ids = std::iter::once(id).chain(id_like.iter().map(String::as_str));
        for id in ids {
            match id {
                "debian" | "ubuntu" | "raspbian" | "linuxmint" => return Family::Debian,
                "rhel" | "centos" | "fedora" | "rocky" | "almalinux" | "ol" | "amzn" => {
                    return Family::Rhel;
                }
                "suse" | "sles" | "opensuse" | "opensuse-leap" | "opensuse-tumbleweed" => {
                    return Family::Suse;
                }
                _ => {}
            }
        }
        Family::Unknown
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Debian => "Debian",
            Family::Rhel => "RHEL",
            Family::Suse => "SUSE",
            Family::Unknown => "unknown",
        }
    }

    /// The packages Longhorn needs (longhornctl check preflight).
    pub fn longhorn_packages(self) -> &'static [&'static str] {
        match self {
            Family::Debian => &["nfs-common", "open-iscsi", "cryptsetup", "dmsetup"],
            Family::Rhel => &[
                "nfs-utils",
                "iscsi-initiator-utils",
                "cryptsetup",
                "device-mapper",
            ],
            Family::Suse => &["nfs-client", "open-iscsi", "cryptsetup", "device-mapper"],
            Family::Unknown => &[],
        }
    }

    pub fn iscsi_package(self) -> &'static str {
        match self {
            Family::Rhel => "iscsi-initiator-utils",
            _ => "open-iscsi",
        }
    }

    pub fn package_tool(self) -> Tool {
        match self {
            Family::Debian => Tool::DpkgQuery,
            _ => Tool::Rpm,
        }
    }

    /// The command an operator runs to install `packages`.
    pub fn install_command(self, packages: &[&str]) -> String {
        let list = packages.join(" ");
        match self {
            Family::Debian => format!("apt-get install -y {list}"),
            Family::Rhel => format!("dnf install -y {list}"),
            Family::Suse => format!("zypper install -y {list}"),
            Family::Unknown => format!("install {list}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_from_os_release() {
        assert_eq!(Family::of("ubuntu", &["debian".into()]), Family::Debian);
        assert_eq!(
            Family::of("rocky", &["rhel".into(), "centos".into(), "fedora".into()]),
            Family::Rhel
        );
        assert_eq!(Family::of("mycorp", &["rhel".into()]), Family::Rhel);
        assert_eq!(Family::of("sles", &[]), Family::Suse);
        assert_eq!(Family::of("alpine", &[]), Family::Unknown);
    }
}
