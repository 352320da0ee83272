//! `k3sfleet release keygen` and `release sign` as an operator runs them,
//! checked by a third party: Debian's `minisign` verifies what k3sfleet
//! signed (and refuses it once altered), and k3sfleet signs with a key
//! `minisign -G` made. Passwords come from files and never reach the output.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use k3sfleet_tests::bin;

const VERSION: &str = "v1.31.5+k3s1";
const PASSWORD: &str = "correct horse battery staple";

fn k3sfleet(args: &[&str]) -> Output {
    Command::new(bin("k3sfleet"))
        .args(args)
        .output()
        .expect("run k3sfleet")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `minisign` (apt package minisign; scripts/install-test-deps.sh installs it), or a skip.
fn minisign_available() -> bool {
    let found = Command::new("minisign").arg("-v").output().is_ok();
    k3sfleet_sim::skip::runnable(
        (!found).then(|| "minisign is not installed (apt-get install minisign)".to_string()),
    )
}

fn minisign_verify(dir: &Path, public: &Path) -> Output {
    Command::new("minisign")
        .arg("-V")
        .arg("-m")
        .arg(dir.join("k3sfleet-release.json"))
        .arg("-p")
        .arg(public)
        .output()
        .unwrap()
}

/// A release directory as K3s publishes one: the binary and its checksum file.
fn release_dir(root: &Path) -> std::path::PathBuf {
    let dir = root.join(VERSION);
    std::fs::create_dir_all(&dir).unwrap();
    let binary = b"#!/bin/sh\necho 'k3s version v1.31.5+k3s1 (0000000)'\n".repeat(1000);
    std::fs::write(dir.join("k3s"), &binary).unwrap();
    let digest = hex_sha256(&binary);
    std::fs::write(dir.join("sha256sum-amd64.txt"), format!("{digest}  k3s\n")).unwrap();
    dir
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn debians_minisign_verifies_what_k3sfleet_signed() {
    if !minisign_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let key = dir.path().join("operator");
    let out = k3sfleet(&[
        "release",
        "keygen",
        "--out",
        key.to_str().unwrap(),
        "--password-file",
        password_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let secret = dir.path().join("operator.key");
    let public = dir.path().join("operator.pub");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the secret key's mode");
    assert!(
        text(&out).contains("trusted_keys = [\"RW"),
        "{}",
        text(&out)
    );
    // A second keygen does not overwrite the key.
    let again = k3sfleet(&[
        "release",
        "keygen",
        "--out",
        key.to_str().unwrap(),
        "--no-password",
    ]);
    assert!(
        !again.status.success() && text(&again).contains("--force"),
        "{}",
        text(&again)
    );

    let release = release_dir(dir.path());
    let sign = |password: &Path| {
        k3sfleet(&[
            "release",
            "sign",
            "--key",
            secret.to_str().unwrap(),
            "--version",
            VERSION,
            "--from",
            release.to_str().unwrap(),
            "--password-file",
            password.to_str().unwrap(),
        ])
    };
    // The wrong password: refused, and no password appears in what is printed.
    let wrong_file = dir.path().join("wrong");
    std::fs::write(&wrong_file, "not the password\n").unwrap();
    let wrong = sign(&wrong_file);
    assert!(!wrong.status.success(), "{}", text(&wrong));
    assert!(text(&wrong).contains("Wrong password"), "{}", text(&wrong));
    assert!(
        !text(&wrong).contains("not the password"),
        "{}",
        text(&wrong)
    );

    let signed = sign(&password_file);
    assert!(signed.status.success(), "{}", text(&signed));
    assert!(!text(&signed).contains(PASSWORD), "{}", text(&signed));
    let verified = minisign_verify(&release, &public);
    assert!(
        verified.status.success(),
        "minisign refused: {}",
        text(&verified)
    );
    assert!(
        text(&verified).contains("Trusted comment: k3sfleet release v1.31.5+k3s1"),
        "{}",
        text(&verified)
    );

    // One byte of the manifest changed: minisign refuses it too.
    let manifest = release.join("k3sfleet-release.json");
    let altered = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("\"size\": ", "\"size\": 9");
    std::fs::write(&manifest, altered).unwrap();
    let refused = minisign_verify(&release, &public);
    assert!(!refused.status.success(), "{}", text(&refused));
}

#[test]
fn k3sfleet_signs_with_a_key_minisign_made() {
    if !minisign_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("minisign.key");
    let public = dir.path().join("minisign.pub");
    // minisign reads the password from stdin when it is not a terminal.
    // (Not -W: minisign 0.11 leaves an unencrypted key's checksum empty,
    // which the minisign crate refuses as corrupted.)
    let mut made = Command::new("minisign")
        .args(["-G", "-s"])
        .arg(&secret)
        .arg("-p")
        .arg(&public)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    made.stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n{PASSWORD}\n").as_bytes())
        .unwrap();
    let made = made.wait_with_output().unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let release = release_dir(dir.path());
    let signed = k3sfleet(&[
        "release",
        "sign",
        "--key",
        secret.to_str().unwrap(),
        "--version",
        VERSION,
        "--from",
        release.to_str().unwrap(),
        "--password-file",
        password_file.to_str().unwrap(),
    ]);
    assert!(signed.status.success(), "{}", text(&signed));
    let verified = minisign_verify(&release, &public);
    assert!(
        verified.status.success(),
        "minisign refused: {}",
        text(&verified)
    );

    // A binary that disagrees with its checksum file is not signed.
    std::fs::write(release.join("k3s"), "something else").unwrap();
    let refused = k3sfleet(&[
        "release",
        "sign",
        "--key",
        secret.to_str().unwrap(),
        "--version",
        VERSION,
        "--from",
        release.to_str().unwrap(),
        "--password-file",
        password_file.to_str().unwrap(),
    ]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("does not match sha256sum-amd64.txt"),
        "{}",
        text(&refused)
    );
}
