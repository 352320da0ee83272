//! Tests that cannot run here say so: a skipped test must not look like a
//! passed one. [`skip`] prints `SKIPPED <test>: <reason>` and, when
//! `$K3SFLEET_SKIP_DIR` is set (scripts/test.sh sets it), records the line
//! in a file there, which the script counts and lists at the end. With
//! `$K3SFLEET_FORBID_SKIPS` set (CI, which has root and every tool), a skip
//! fails the test instead.

use std::path::PathBuf;

/// The running test: `<test binary>::<test>` (the test harness names each
/// test's thread after it; the binary's file name ends in `-<hash>`).
pub fn current_test() -> String {
    let binary = std::env::args()
        .next()
        .and_then(|arg0| {
            PathBuf::from(arg0)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .map(|file| match file.rsplit_once('-') {
            Some((stem, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => stem.to_string(),
            _ => file,
        })
        .unwrap_or_else(|| "a test".into());
    match std::thread::current().name().filter(|name| *name != "main") {
        Some(test) => format!("{binary}::{test}"),
        None => binary,
    }
}

/// Records that the running test is skipped, and why. The caller returns
/// right after.
pub fn skip(reason: &str) {
    let test = current_test();
    if std::env::var_os("K3SFLEET_FORBID_SKIPS").is_some() {
        panic!("{test} cannot run here and skips are forbidden (K3SFLEET_FORBID_SKIPS): {reason}");
    }
    let line = format!("{test}: {reason}");
    eprintln!("SKIPPED {line}");
    if let Some(dir) = std::env::var_os("K3SFLEET_SKIP_DIR") {
        let file: String = test
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = PathBuf::from(dir).join(file);
        if let Err(err) = std::fs::write(&path, format!("{line}\n")) {
            eprintln!("cannot record the skip in {}: {err}", path.display());
        }
    }
}

/// Skips the running test unless `reason` is `None`; returns whether it may run.
pub fn runnable(reason: Option<String>) -> bool {
    match reason {
        Some(reason) => {
            skip(&reason);
            false
        }
        None => true,
    }
}
