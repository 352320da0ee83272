//! Signed releases on a stand-in host: with trusted keys the agent installs
//! and rolls back to only what a trusted key signed, whatever the source
//! says; plain http and writable local directories are refused; without keys
//! the checks say releases are not verified.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use k3sfleet_agent::config::K3sRole;
use k3sfleet_agent::duties::ProgressSink;
use k3sfleet_agent::observe::{HostProbe, unix_ms_now};
use k3sfleet_proto::v1::{
    ArtifactSource, CommandOutcome, CommandResult, Health, InstallK3s, RollbackK3s, artifact_source,
};
use k3sfleet_release::sign::{self, Protection};
use k3sfleet_release::{MANIFEST_NAME, SIGNATURE_NAME};
use k3sfleet_standin::{Distro, HostToml, K3sBehaviour, Mirror, k3s_binary, write_release};
use support::Sandbox;

const OLD: &str = "v1.31.4+k3s1";
const NEW: &str = "v1.31.5+k3s1";

fn healthy(version: &str) -> Vec<u8> {
    k3s_binary(version, K3sBehaviour::Healthy, 256 * 1024)
}

/// An operator's key pair: (secret key file text, public key line).
fn operator_key() -> (String, String) {
    let (secret, public) = sign::generate(Protection::None).unwrap();
    let line = sign::public_key_line(&public).unwrap().to_string();
    (secret, line)
}

/// Signs the release in `dir/<version>` as `k3sfleet release sign` does.
fn sign_release(dir: &Path, version: &str, secret: &str) {
    let release = dir.join(version);
    let manifest = sign::manifest_of_dir(&release, version).unwrap();
    let json = manifest.to_json();
    let signature = sign::sign(secret, None, json.as_bytes(), version).unwrap();
    std::fs::write(release.join(MANIFEST_NAME), json).unwrap();
    std::fs::write(release.join(SIGNATURE_NAME), signature).unwrap();
}

fn trusting(key: &str) -> HostToml {
    HostToml {
        trusted_keys: vec![key.to_string()],
        ..HostToml::default()
    }
}

fn install_from(url: String, version: &str) -> InstallK3s {
    InstallK3s {
        version: version.into(),
        source: Some(ArtifactSource {
            kind: Some(artifact_source::Kind::MirrorUrl(url)),
        }),
        health_timeout_seconds: 0,
    }
}

fn outcome(result: &CommandResult) -> CommandOutcome {
    CommandOutcome::try_from(result.outcome).unwrap()
}

/// A server running OLD (not installed through k3sfleet, so no manifest of it is kept).
fn server_on_old() -> Sandbox {
    let sandbox = Sandbox::new(Distro::Debian);
    sandbox.host.install_k3s(&healthy(OLD)).unwrap();
    sandbox.host.set_unit("k3s.service", "active").unwrap();
    sandbox
}

fn assert_refused(result: &CommandResult, sandbox: &Sandbox, wanted: &[&str]) {
    assert_eq!(
        outcome(result),
        CommandOutcome::Failed,
        "{}",
        result.message
    );
    for part in wanted {
        assert!(
            result.message.contains(part),
            "{part:?} not in: {}",
            result.message
        );
    }
    assert_eq!(
        sandbox.host.k3s().unwrap(),
        healthy(OLD),
        "the binary changed"
    );
    assert!(
        !sandbox.host.calls().iter().any(|c| c.contains("restart")),
        "something was restarted"
    );
}

#[tokio::test]
async fn with_trusted_keys_only_a_release_signed_by_one_of_them_installs() {
    let sandbox = server_on_old();
    let (secret, public) = operator_key();
    write_release(&sandbox.releases, NEW, &healthy(NEW)).unwrap();
    let mirror = sandbox.start_mirror().await;
    let probe = sandbox.probe_with(K3sRole::Server, &trusting(&public));
    let install = || install_from(mirror.url(), NEW);

    // Unsigned: the checksum file on the mirror is not enough.
    let result = probe.k3s.install(install(), &ProgressSink::discard()).await;
    assert_refused(
        &result,
        &sandbox,
        &[
            "refusing v1.31.5+k3s1",
            "only signed releases",
            MANIFEST_NAME,
        ],
    );

    // Signed, but by a key this host does not trust.
    let (stranger, _) = operator_key();
    sign_release(&sandbox.releases, NEW, &stranger);
    let result = probe.k3s.install(install(), &ProgressSink::discard()).await;
    assert_refused(
        &result,
        &sandbox,
        &["refusing v1.31.5+k3s1", "does not trust"],
    );

    // Signed by the operator, then binary and checksum file both replaced on the mirror.
    sign_release(&sandbox.releases, NEW, &secret);
    let evil = k3s_binary(NEW, K3sBehaviour::Healthy, 256 * 1024 + 1);
    write_release(&sandbox.releases, NEW, &evil).unwrap();
    let result = probe.k3s.install(install(), &ProgressSink::discard()).await;
    assert_refused(
        &result,
        &sandbox,
        &["v1.31.5+k3s1", "the release manifest signed by key"],
    );

    // The manifest altered after signing.
    write_release(&sandbox.releases, NEW, &healthy(NEW)).unwrap();
    let manifest = sandbox.releases.join(NEW).join(MANIFEST_NAME);
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"size\": ", "\"size\": 1")).unwrap();
    let result = probe.k3s.install(install(), &ProgressSink::discard()).await;
    assert_refused(
        &result,
        &sandbox,
        &["refusing v1.31.5+k3s1", "does not match its signature"],
    );

    // Signed for another version.
    sign_release(&sandbox.releases, NEW, &secret);
    std::fs::create_dir_all(sandbox.releases.join("v1.31.6+k3s1")).unwrap();
    for name in [
        MANIFEST_NAME,
        SIGNATURE_NAME,
        k3sfleet_standin::arch_assets().0,
    ] {
        std::fs::copy(
            sandbox.releases.join(NEW).join(name),
            sandbox.releases.join("v1.31.6+k3s1").join(name),
        )
        .unwrap();
    }
    let result = probe
        .k3s
        .install(
            install_from(mirror.url(), "v1.31.6+k3s1"),
            &ProgressSink::discard(),
        )
        .await;
    assert_refused(
        &result,
        &sandbox,
        &["is for v1.31.5+k3s1, not v1.31.6+k3s1"],
    );

    // What the operator signed installs, checked against the manifest only.
    let result = probe.k3s.install(install(), &ProgressSink::discard()).await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Succeeded,
        "{}",
        result.message
    );
    assert_eq!(sandbox.host.k3s().unwrap(), healthy(NEW));
    let requests = mirror.requests();
    let last: Vec<_> = requests[requests.len() - 3..].to_vec();
    assert_eq!(
        last,
        [
            format!("/{NEW}/{MANIFEST_NAME}"),
            format!("/{NEW}/{SIGNATURE_NAME}"),
            format!("/{NEW}/{}", k3sfleet_standin::arch_assets().0),
        ]
    );
}

#[tokio::test]
async fn with_trusted_keys_a_rollback_needs_a_signed_manifest_of_its_target() {
    let sandbox = server_on_old();
    let (secret, public) = operator_key();
    write_release(&sandbox.releases, NEW, &healthy(NEW)).unwrap();
    sign_release(&sandbox.releases, NEW, &secret);
    let mirror = sandbox.start_mirror().await;
    let probe = sandbox.probe_with(K3sRole::Server, &trusting(&public));
    let result = probe
        .k3s
        .install(install_from(mirror.url(), NEW), &ProgressSink::discard())
        .await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Succeeded,
        "{}",
        result.message
    );

    // OLD was never verified on this host: no rollback to it.
    let rollback = |version: &str| RollbackK3s {
        version: version.into(),
        sha256: String::new(),
    };
    let result = probe
        .k3s
        .rollback(rollback(OLD), &ProgressSink::discard())
        .await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Failed,
        "{}",
        result.message
    );
    assert!(
        result
            .message
            .contains("refusing to roll back to v1.31.4+k3s1")
            && result
                .message
                .contains("no signed release manifest of v1.31.4+k3s1"),
        "{}",
        result.message
    );
    assert_eq!(
        sandbox.host.k3s().unwrap(),
        healthy(NEW),
        "the host changed"
    );

    // Once OLD is signed and installed, going back to NEW is allowed: its manifest was kept.
    write_release(&sandbox.releases, OLD, &healthy(OLD)).unwrap();
    sign_release(&sandbox.releases, OLD, &secret);
    let result = probe
        .k3s
        .install(install_from(mirror.url(), OLD), &ProgressSink::discard())
        .await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Succeeded,
        "{}",
        result.message
    );
    let result = probe
        .k3s
        .rollback(rollback(NEW), &ProgressSink::discard())
        .await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Succeeded,
        "{}",
        result.message
    );
    assert_eq!(sandbox.host.k3s().unwrap(), healthy(NEW));
}

#[tokio::test]
async fn plain_http_is_refused_unless_the_mirror_is_named_in_the_config() {
    let sandbox = server_on_old();
    write_release(&sandbox.releases, NEW, &healthy(NEW)).unwrap();
    // Started directly: the sandbox does not allow it in the config.
    let mirror = Mirror::start(&sandbox.releases).await.unwrap();
    let probe = sandbox.probe(K3sRole::Server);
    let result = probe
        .k3s
        .install(install_from(mirror.url(), NEW), &ProgressSink::discard())
        .await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Rejected,
        "{}",
        result.message
    );
    assert!(
        result.message.contains("plain http") && result.message.contains("host.k3s.http_mirrors"),
        "{}",
        result.message
    );
    assert!(
        mirror.requests().is_empty(),
        "the mirror was asked: {:?}",
        mirror.requests()
    );
    assert_eq!(sandbox.host.k3s().unwrap(), healthy(OLD));

    let allowed = HostToml {
        http_mirrors: vec![mirror.url()],
        ..HostToml::default()
    };
    let probe = sandbox.probe_with(K3sRole::Server, &allowed);
    let result = probe
        .k3s
        .install(install_from(mirror.url(), NEW), &ProgressSink::discard())
        .await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Succeeded,
        "{}",
        result.message
    );
}

#[tokio::test]
async fn a_local_directory_others_can_write_is_refused() {
    let sandbox = server_on_old();
    let dir = sandbox.host.path("/srv/k3s-artifacts");
    write_release(&dir, NEW, &healthy(NEW)).unwrap();
    let probe = sandbox.probe(K3sRole::Server);
    let request = || InstallK3s {
        version: NEW.into(),
        source: Some(ArtifactSource {
            kind: Some(artifact_source::Kind::LocalDir("/srv/k3s-artifacts".into())),
        }),
        health_timeout_seconds: 0,
    };
    let chmod = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };

    chmod(&dir, 0o777);
    let result = probe.k3s.install(request(), &ProgressSink::discard()).await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Rejected,
        "{}",
        result.message
    );
    assert!(
        result
            .message
            .contains("refusing local artifact directory /srv/k3s-artifacts")
            && result.message.contains("mode 0777"),
        "{}",
        result.message
    );

    // The directory fine, a world-writable binary inside it is not.
    chmod(&dir, 0o755);
    let binary = dir.join(NEW).join(k3sfleet_standin::arch_assets().0);
    chmod(&binary, 0o666);
    let result = probe.k3s.install(request(), &ProgressSink::discard()).await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Failed,
        "{}",
        result.message
    );
    assert!(result.message.contains("mode 0666"), "{}", result.message);
    assert_eq!(sandbox.host.k3s().unwrap(), healthy(OLD));

    chmod(&binary, 0o644);
    let result = probe.k3s.install(request(), &ProgressSink::discard()).await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Succeeded,
        "{}",
        result.message
    );
}

async fn releases_check(probe: &HostProbe) -> (Health, String) {
    let observation = probe.observe(unix_ms_now()).await;
    let check = observation
        .checks
        .iter()
        .find(|c| c.id == "k3s.releases")
        .expect("a k3s.releases check");
    (
        Health::try_from(check.status).unwrap(),
        check.message.clone(),
    )
}

#[tokio::test]
async fn the_checks_say_whether_releases_are_verified() {
    let sandbox = server_on_old();
    let (status, message) = releases_check(&sandbox.probe(K3sRole::Server)).await;
    assert_eq!(status, Health::Ok, "{message}");
    assert!(message.contains("releases are NOT verified"), "{message}");

    let (_, public) = operator_key();
    let probe = sandbox.probe_with(K3sRole::Server, &trusting(&public));
    let (status, message) = releases_check(&probe).await;
    assert_eq!(status, Health::Ok, "{message}");
    assert!(message.contains("releases are verified"), "{message}");
}
