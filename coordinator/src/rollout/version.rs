//! K3s release versions: `v1.31.5+k3s1`, `v1.32.0-rc1+k3s2`.
//!
//! Ordered by Kubernetes version, then pre-release (a release candidate sorts
//! before its release), then the K3s build number.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct K3sVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// e.g. "rc1"; empty for a release.
    pub pre: String,
    /// The N of `+k3sN`.
    pub build: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not a K3s version like v1.31.5+k3s1")]
pub struct BadVersion {
    pub given: String,
}

impl FromStr for K3sVersion {
    type Err = BadVersion;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadVersion {
            given: text.to_string(),
        };
        let rest = text.strip_prefix('v').ok_or_else(bad)?;
        let (semver, build) = rest.split_once('+').ok_or_else(bad)?;
        let build = build
            .strip_prefix("k3s")
            .ok_or_else(bad)?
            .parse()
            .map_err(|_| bad())?;
        let (core, pre) = semver.split_once('-').unwrap_or((semver, ""));
        let mut numbers = core.split('.').map(|n| n.parse::<u32>().map_err(|_| bad()));
        let (Some(major), Some(minor), Some(patch), None) = (
            numbers.next(),
            numbers.next(),
            numbers.next(),
            numbers.next(),
        ) else {
            return Err(bad());
        };
        if !pre.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') {
            return Err(bad());
        }
        Ok(K3sVersion {
            major: major?,
            minor: minor?,
            patch: patch?,
            pre: pre.to_string(),
            build,
        })
    }
}

impl fmt::Display for K3sVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre)?;
        }
        write!(f, "+k3s{}", self.build)
    }
}

impl Ord for K3sVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
            .then_with(|| self.build.cmp(&other.build))
    }
}

impl PartialOrd for K3sVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl K3sVersion {
    /// "1.31": the minor line, for skew rules.
    pub fn minor_line(&self) -> (u32, u32) {
        (self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> K3sVersion {
        text.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_release_tags() {
        for tag in ["v1.31.5+k3s1", "v1.32.0-rc1+k3s2", "v1.30.10+k3s12"] {
            assert_eq!(v(tag).to_string(), tag);
        }
        for bad in [
            "1.31.5+k3s1",
            "v1.31+k3s1",
            "v1.31.5",
            "v1.31.5+k3s",
            "v1.31.5+rke2r1",
            "v1.31.5.1+k3s1",
        ] {
            assert!(bad.parse::<K3sVersion>().is_err(), "{bad}");
        }
    }

    #[test]
    fn orders_like_releases() {
        assert!(v("v1.31.5+k3s1") > v("v1.31.4+k3s1"));
        assert!(v("v1.31.4+k3s2") > v("v1.31.4+k3s1"));
        assert!(v("v1.32.0+k3s1") > v("v1.32.0-rc1+k3s1"));
        assert!(v("v1.32.0-rc2+k3s1") > v("v1.32.0-rc1+k3s1"));
        assert!(v("v1.31.10+k3s1") > v("v1.31.9+k3s1"));
        assert!(v("v2.0.0+k3s1") > v("v1.99.0+k3s1"));
    }
}
