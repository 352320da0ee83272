//! What this host trusts a K3s binary from: release manifests signed by the
//! operator's keys (`host.k3s.trusted_keys`), https mirrors (plain http only
//! for mirrors named in `host.k3s.http_mirrors`), and local directories only
//! when root owns them and nobody else may write to them.
//!
//! The manifests an install verified are kept in the state directory, so a
//! later rollback can check the binary it returns to against a signature,
//! not against what the coordinator says about it.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use k3sfleet_proto::v1::{CheckResult, Health};
use k3sfleet_release::{TrustedKey, TrustedKeys, Verified};

use crate::checks::check;

/// The check that says whether releases are verified.
pub const CHECK_ID: &str = "k3s.releases";

/// The trust settings of one host, read from `[host.k3s]`.
#[derive(Debug, Clone, Default)]
pub struct ReleaseTrust {
    pub keys: TrustedKeys,
    /// Mirror base URLs (no trailing slash) allowed over plain http.
    http_mirrors: Vec<String>,
    /// Where verified manifests are kept: `<state_dir>/releases`.
    store: PathBuf,
}

impl ReleaseTrust {
    /// `keys` are validated by the config already; a key that fails to parse here is skipped.
    pub fn new(keys: &[String], http_mirrors: &[String], state_dir: &Path) -> Self {
        ReleaseTrust {
            keys: TrustedKeys::new(
                keys.iter()
                    .filter_map(|k| TrustedKey::parse(k).ok())
                    .collect(),
            ),
            http_mirrors: http_mirrors.iter().map(|m| normalize(m)).collect(),
            store: state_dir.join("releases"),
        }
    }

    /// The `k3s.releases` check. Not verifying is how a fleet starts, so it is
    /// said plainly but not as a warning (a warning on every host would hide
    /// the ones that matter); `k3sfleet_releases_verified` alerts on it.
    pub fn check(&self) -> CheckResult {
        if self.keys.enabled() {
            check(
                CHECK_ID,
                Health::Ok,
                format!(
                    "releases are verified: K3s is installed only as signed by key {}",
                    self.keys.ids()
                ),
            )
        } else {
            check(
                CHECK_ID,
                Health::Ok,
                "releases are NOT verified: host.k3s.trusted_keys is empty, so any binary \
                 the coordinator names is installed; see the README's security section",
            )
        }
    }

    /// Refuses a mirror URL that is not https, unless it is named in `http_mirrors`.
    pub fn check_mirror(&self, url: &str) -> Result<(), String> {
        if url.starts_with("https://") {
            return Ok(());
        }
        if url.starts_with("http://") {
            if self.http_mirrors.iter().any(|m| *m == normalize(url)) {
                return Ok(());
            }
            return Err(format!(
                "mirror {url} is plain http, and host.k3s.http_mirrors does not allow it: use https, \
                 or name this mirror there"
            ));
        }
        Err(format!(
            "mirror URL {url:?} must start with https:// (or http:// for a mirror named in host.k3s.http_mirrors)"
        ))
    }

    /// Verifies `version`'s manifest and signature (the files' bytes).
    pub fn verify(
        &self,
        version: &str,
        manifest: &[u8],
        signature: &[u8],
    ) -> Result<Verified, String> {
        let signature = std::str::from_utf8(signature).map_err(|_| {
            format!("the signature of {version}'s release manifest is not minisign text")
        })?;
        self.keys
            .verify(version, manifest, signature)
            .map_err(|err| err.to_string())
    }

    /// Keeps a verified manifest and its signature for later rollbacks.
    pub fn remember(
        &self,
        version: &str,
        manifest: &[u8],
        signature: &[u8],
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.store)?;
        write_atomically(&self.manifest_path(version), manifest)?;
        write_atomically(&self.signature_path(version), signature)
    }

    /// The kept manifest of `version`, verified again (the files are not
    /// trusted for being in the state directory).
    pub fn recall(&self, version: &str) -> Result<Verified, String> {
        let read = |path: PathBuf| {
            std::fs::read(&path).map_err(|err| {
                format!(
                    "no signed release manifest of {version} is kept on this host ({}: {err}); \
                     only versions installed while releases were verified can be rolled back to",
                    path.display()
                )
            })
        };
        let manifest = read(self.manifest_path(version))?;
        let signature = read(self.signature_path(version))?;
        self.verify(version, &manifest, &signature)
    }

    fn manifest_path(&self, version: &str) -> PathBuf {
        self.store.join(format!("{version}.json"))
    }

    fn signature_path(&self, version: &str) -> PathBuf {
        self.store.join(format!("{version}.json.minisig"))
    }
}

fn normalize(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Refuses `path` unless root owns it and neither its group nor others may
/// write it. Directories above it must be root's and not writable by others
/// either, except sticky ones (like /tmp), where others cannot rename what
/// root owns.
pub fn check_owned_by_root(path: &Path) -> Result<(), String> {
    check_one(path, false)?;
    let mut ancestor = path.parent();
    while let Some(dir) = ancestor {
        check_one(dir, true)?;
        ancestor = dir.parent();
    }
    Ok(())
}

/// [`check_owned_by_root`] for a file already open (its metadata from the
/// open file, so it cannot be swapped between the check and the read).
pub fn check_opened_file(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    check_metadata(path, meta, false)?;
    match path.parent() {
        Some(dir) => check_owned_by_root(dir),
        None => Ok(()),
    }
}

fn check_one(path: &Path, above: bool) -> Result<(), String> {
    let meta = std::fs::metadata(path)
        .map_err(|err| format!("cannot inspect {}: {err}", path.display()))?;
    check_metadata(path, &meta, above)
}

fn check_metadata(path: &Path, meta: &std::fs::Metadata, above: bool) -> Result<(), String> {
    let what = if above { "above the artifacts, " } else { "" };
    if meta.uid() != 0 {
        return Err(format!(
            "{what}{} is owned by uid {}, not root; a local artifact source must be root's",
            path.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode();
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !(above && sticky) {
        return Err(format!(
            "{what}{} is writable by its group or by everyone (mode {:04o}); a local artifact \
             source must be writable by root alone",
            path.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn trust(http: &[&str]) -> ReleaseTrust {
        let http: Vec<String> = http.iter().map(|s| s.to_string()).collect();
        ReleaseTrust::new(&[], &http, Path::new("/nonexistent"))
    }

    #[test]
    fn plain_http_only_for_named_mirrors() {
        let t = trust(&["http://mirror.lan:8080/k3s/"]);
        t.check_mirror("https://github.com/k3s-io/k3s/releases/download")
            .unwrap();
        t.check_mirror("http://mirror.lan:8080/k3s").unwrap();
        let refused = t.check_mirror("http://other.lan/k3s").unwrap_err();
        assert!(refused.contains("http_mirrors"), "{refused}");
        assert!(t.check_mirror("ftp://x").unwrap_err().contains("https://"));
    }

    #[test]
    fn without_keys_the_check_warns() {
        let check = trust(&[]).check();
        assert_eq!(check.status, Health::Ok as i32);
        assert!(check.message.contains("NOT verified"), "{}", check.message);
    }

    #[test]
    fn local_sources_must_be_roots_alone() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = dir.path().join("artifacts");
        std::fs::create_dir(&artifacts).unwrap();
        std::fs::set_permissions(&artifacts, std::fs::Permissions::from_mode(0o755)).unwrap();
        if !running_as_root() {
            // What a user made is not root's (CI runs as root and sees the rest).
            let refused = check_owned_by_root(&artifacts).unwrap_err();
            assert!(refused.contains("not root"), "{refused}");
            return;
        }
        check_owned_by_root(&artifacts).unwrap();
        std::fs::set_permissions(&artifacts, std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = check_owned_by_root(&artifacts).unwrap_err();
        assert!(refused.contains("mode 0777"), "{refused}");
        std::fs::set_permissions(&artifacts, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(check_owned_by_root(&artifacts).is_err());
        std::fs::set_permissions(&artifacts, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&artifacts, Some(1000), None).unwrap();
        let refused = check_owned_by_root(&artifacts).unwrap_err();
        assert!(refused.contains("uid 1000"), "{refused}");
        // A group-writable directory above it lets others swap it out.
        std::os::unix::fs::chown(&artifacts, Some(0), None).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            check_owned_by_root(&artifacts)
                .unwrap_err()
                .contains("above")
        );
    }

    fn running_as_root() -> bool {
        std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(1)
            == 0
    }
}
