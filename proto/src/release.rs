//! K3s release tags, the form `InstallK3s.version` and the coordinator's
//! artifact directory share.

/// Whether `version` looks like a K3s release tag (v1.31.5+k3s1, v1.32.0-rc1+k3s2).
pub fn is_release_tag(version: &str) -> bool {
    let Some(rest) = version.strip_prefix('v') else {
        return false;
    };
    let Some((semver, build)) = rest.split_once('+') else {
        return false;
    };
    let (core, pre) = semver.split_once('-').unwrap_or((semver, ""));
    let numbers: Vec<_> = core.split('.').collect();
    numbers.len() == 3
        && numbers
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        && pre.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
        && build
            .strip_prefix("k3s")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}
