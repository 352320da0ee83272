//! Facts about the host that go into the hello: OS, kernel, architecture, boot id.

use super::HostRoot;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub os_id: String,
    pub os_version: String,
    pub os_id_like: Vec<String>,
    pub kernel_version: String,
    pub boot_id: String,
    /// Kubernetes-style: amd64, arm64, arm, s390x.
    pub arch: String,
    /// The container manager when the host is a container (`systemd-nspawn`,
    /// `docker`, `podman`, ...): it shares the kernel of the machine it runs
    /// on, so kernel modules and the kernel's config are not its own.
    pub container: Option<String>,
}

impl HostFacts {
    /// Reads the facts under `root`; what cannot be read stays empty.
    pub fn read(root: &HostRoot) -> Self {
        let os_release = std::fs::read_to_string(root.path("/etc/os-release"))
            .or_else(|_| std::fs::read_to_string(root.path("/usr/lib/os-release")))
            .unwrap_or_default();
        let field = |key: &str| os_release_field(&os_release, key).unwrap_or_default();
        let read_trimmed = |path: &str| {
            std::fs::read_to_string(root.path(path))
                .map(|text| text.trim().to_string())
                .unwrap_or_default()
        };
        HostFacts {
            os_id: field("ID"),
            os_version: field("VERSION_ID"),
            os_id_like: field("ID_LIKE")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            arch: kubernetes_arch(std::env::consts::ARCH).to_string(),
            container: container_manager(root),
        }
    }
}

/// What systemd-detect-virt --container would say, from the files container
/// managers leave: systemd writes /run/systemd/container in any container it
/// boots in (nspawn, docker, lxc ...); podman and docker mark their own.
fn container_manager(root: &HostRoot) -> Option<String> {
    let written = std::fs::read_to_string(root.path("/run/systemd/container"))
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|name| !name.is_empty());
    written.or_else(|| {
        [("/run/.containerenv", "podman"), ("/.dockerenv", "docker")]
            .iter()
            .find(|(marker, _)| root.path(marker).exists())
            .map(|(_, name)| name.to_string())
    })
}

/// One value of an os-release file, unquoted.
pub fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
    })
}

/// Rust's architecture names as Kubernetes and K3s releases spell them.
pub fn kubernetes_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "s390x" => "s390x",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_facts_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = HostRoot::new(dir.path());
        std::fs::create_dir_all(root.path("/etc")).unwrap();
        std::fs::create_dir_all(root.path("/proc/sys/kernel/random")).unwrap();
        std::fs::write(
            root.path("/etc/os-release"),
            "NAME=\"Rocky Linux\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.4\"\n",
        )
        .unwrap();
        std::fs::write(
            root.path("/proc/sys/kernel/osrelease"),
            "5.14.0-427.el9.x86_64\n",
        )
        .unwrap();
        std::fs::write(root.path("/proc/sys/kernel/random/boot_id"), "1b2c\n").unwrap();
        let facts = HostFacts::read(&root);
        assert_eq!(facts.os_id, "rocky");
        assert_eq!(facts.os_version, "9.4");
        assert_eq!(facts.os_id_like, ["rhel", "centos", "fedora"]);
        assert_eq!(facts.kernel_version, "5.14.0-427.el9.x86_64");
        assert_eq!(facts.boot_id, "1b2c");
        assert_eq!(facts.container, None);
        std::fs::create_dir_all(root.path("/run/systemd")).unwrap();
        std::fs::write(root.path("/run/systemd/container"), "systemd-nspawn\n").unwrap();
        assert_eq!(
            HostFacts::read(&root).container.as_deref(),
            Some("systemd-nspawn")
        );
    }

    #[test]
    fn architectures() {
        assert_eq!(kubernetes_arch("x86_64"), "amd64");
        assert_eq!(kubernetes_arch("aarch64"), "arm64");
    }
}
