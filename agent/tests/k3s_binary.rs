//! K3s binary management against a stand-in host: upgrades from a mirror and
//! a local directory, no-ops, rollback on an unhealthy start, and the
//! failures that must never leave the installed binary missing, truncated or
//! unverified (bad checksum, network error, disk full).

mod support;

use std::process::Command;

use k3sfleet_agent::config::K3sRole;
use k3sfleet_agent::duties::ProgressSink;
use k3sfleet_proto::v1::{
    ArtifactSource, CommandOutcome, CommandResult, EtcdSnapshot, InstallK3s, InstallK3sResult,
    RollbackK3s, artifact_source, command_result,
};
use k3sfleet_standin::{
    Distro, HostToml, K3sBehaviour, Mirror, MirrorBehaviour, k3s_binary, write_release,
};
use support::{Sandbox, recording_progress, steps};

const OLD: &str = "v1.31.4+k3s1";
const NEW: &str = "v1.31.5+k3s1";
/// Big enough that downloads take several chunks.
const SIZE: usize = 2 * 1024 * 1024;

fn healthy(version: &str) -> Vec<u8> {
    k3s_binary(version, K3sBehaviour::Healthy, SIZE)
}

/// A server host running OLD, with NEW (built by `new`) on a mirror.
async fn upgrade_setup(new: Vec<u8>) -> (Sandbox, Mirror, String) {
    let sandbox = Sandbox::new(Distro::Debian);
    sandbox.host.install_k3s(&healthy(OLD)).unwrap();
    sandbox.host.set_unit("k3s.service", "active").unwrap();
    let digest = write_release(&sandbox.releases, NEW, &new).unwrap();
    let mirror = sandbox.start_mirror().await;
    (sandbox, mirror, digest)
}

fn from_mirror(mirror: &Mirror, version: &str) -> InstallK3s {
    InstallK3s {
        version: version.into(),
        source: Some(ArtifactSource {
            kind: Some(artifact_source::Kind::MirrorUrl(mirror.url())),
        }),
        health_timeout_seconds: 0,
    }
}

fn outcome(result: &CommandResult) -> CommandOutcome {
    CommandOutcome::try_from(result.outcome).unwrap()
}

fn detail(result: &CommandResult) -> InstallK3sResult {
    match &result.detail {
        Some(command_result::Detail::InstallK3s(detail)) => detail.clone(),
        other => panic!(
            "expected install detail, got {other:?} ({})",
            result.message
        ),
    }
}

/// The installed binary is the old one, whole, and nothing else was left beside it.
fn assert_untouched(sandbox: &Sandbox) {
    assert_eq!(
        sandbox.host.k3s().unwrap(),
        healthy(OLD),
        "the installed binary changed"
    );
    assert_eq!(
        sandbox.bin_dir_entries(),
        ["k3s"],
        "leftovers beside the binary"
    );
}

#[tokio::test]
async fn upgrade_from_a_mirror_verifies_swaps_restarts_and_keeps_the_previous_binary() {
    let (sandbox, mirror, digest) = upgrade_setup(healthy(NEW)).await;
    let probe = sandbox.probe(K3sRole::Server);
    let (progress, mut messages) = recording_progress();

    let result = probe
        .k3s
        .install(from_mirror(&mirror, NEW), &progress)
        .await;

    assert_eq!(
        outcome(&result),
        CommandOutcome::Succeeded,
        "{}",
        result.message
    );
    let detail = detail(&result);
    assert_eq!(detail.previous_version, OLD);
    assert_eq!(detail.installed_version, NEW);
    assert_eq!(detail.sha256, digest);
    assert!(!detail.rolled_back);
    assert_eq!(sandbox.host.k3s().unwrap(), healthy(NEW));
    assert_eq!(sandbox.host.previous_k3s().unwrap(), healthy(OLD));
    assert_eq!(sandbox.bin_dir_entries(), ["k3s", "k3s.previous"]);
    assert!(
        sandbox
            .host
            .calls()
            .contains(&"systemctl restart k3s.service".to_string())
    );
    assert_eq!(sandbox.host.unit("k3s.service"), "active");
    assert_eq!(
        steps(&mut messages),
        [
            "checksums",
            "download",
            "verify",
            "swap",
            "restart",
            "verified"
        ]
    );
    // The checksum file is fetched before the binary.
    let (asset, checksums) = k3sfleet_standin::arch_assets();
    assert_eq!(
        mirror.requests(),
        [format!("/{NEW}/{checksums}"), format!("/{NEW}/{asset}")]
    );

    // The same install again: nothing to do, and it says so.
    let again = probe
        .k3s
        .install(from_mirror(&mirror, NEW), &ProgressSink::discard())
        .await;
    assert_eq!(outcome(&again), CommandOutcome::NoOp, "{}", again.message);
    assert!(
        again.message.contains("already at v1.31.5+k3s1"),
        "{}",
        again.message
    );
    assert_eq!(sandbox.host.previous_k3s().unwrap(), healthy(OLD));

    let state = probe.k3s.state().await;
    assert_eq!(state.installed_version, NEW);
    assert_eq!(state.previous_version, OLD);
    assert!(state.service_active);
}

#[tokio::test]
async fn agents_install_from_a_local_directory_and_restart_their_own_unit() {
    let sandbox = Sandbox::new(Distro::Rocky);
    sandbox.host.install_k3s(&healthy(OLD)).unwrap();
    sandbox
        .host
        .set_unit("k3s-agent.service", "active")
        .unwrap();
    // The artifact directory is a host path, under the host root.
    write_release(&sandbox.host.path("/srv/k3s-artifacts"), NEW, &healthy(NEW)).unwrap();
    let probe = sandbox.probe(K3sRole::Agent);
    let request = InstallK3s {
        version: NEW.into(),
        source: Some(ArtifactSource {
            kind: Some(artifact_source::Kind::LocalDir("/srv/k3s-artifacts".into())),
        }),
        health_timeout_seconds: 0,
    };
    let result = probe.k3s.install(request, &ProgressSink::discard()).await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Succeeded,
        "{}",
        result.message
    );
    assert_eq!(sandbox.host.k3s().unwrap(), healthy(NEW));
    let calls = sandbox.host.calls();
    assert!(
        calls.contains(&"systemctl restart k3s-agent.service".to_string()),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c.contains("restart k3s.service")),
        "{calls:?}"
    );
}

#[tokio::test]
async fn a_bad_checksum_is_refused_and_nothing_changes() {
    let (sandbox, mirror, _) = upgrade_setup(healthy(NEW)).await;
    // The mirror's binary is not the one its checksum file describes.
    let (asset, _) = k3sfleet_standin::arch_assets();
    let mut tampered = healthy(NEW);
    tampered[100] ^= 0xff;
    std::fs::write(sandbox.releases.join(NEW).join(asset), &tampered).unwrap();
    let probe = sandbox.probe(K3sRole::Server);

    let result = probe
        .k3s
        .install(from_mirror(&mirror, NEW), &ProgressSink::discard())
        .await;

    assert_eq!(outcome(&result), CommandOutcome::Failed);
    assert!(
        result.message.contains("checksum mismatch"),
        "{}",
        result.message
    );
    assert!(result.message.contains("not touched"), "{}", result.message);
    assert!(!result.retryable, "the same bytes would fail the same way");
    assert_eq!(detail(&result).installed_version, OLD);
    assert_untouched(&sandbox);
    assert!(!sandbox.host.calls().iter().any(|c| c.contains("restart")));
}

#[tokio::test]
async fn a_connection_cut_mid_download_leaves_the_binary_intact() {
    let (sandbox, mirror, _) = upgrade_setup(healthy(NEW)).await;
    mirror.set_behaviour(MirrorBehaviour::CutAfter { bytes: SIZE / 3 });
    let probe = sandbox.probe(K3sRole::Server);

    let result = probe
        .k3s
        .install(from_mirror(&mirror, NEW), &ProgressSink::discard())
        .await;

    assert_eq!(outcome(&result), CommandOutcome::Failed);
    assert!(
        result.message.contains("cannot download"),
        "{}",
        result.message
    );
    assert!(result.retryable, "a broken connection is worth another try");
    assert_untouched(&sandbox);

    // Once the mirror works again, the same install completes.
    mirror.set_behaviour(MirrorBehaviour::Normal);
    let result = probe
        .k3s
        .install(from_mirror(&mirror, NEW), &ProgressSink::discard())
        .await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Succeeded,
        "{}",
        result.message
    );
}

#[tokio::test]
async fn a_stalled_download_gives_up_after_the_stall_timeout() {
    let (sandbox, mirror, _) = upgrade_setup(healthy(NEW)).await;
    let probe = sandbox.probe_with(
        K3sRole::Server,
        &HostToml {
            k3s_download_stall_timeout: "1s",
            ..HostToml::default()
        },
    );
    mirror.set_behaviour(MirrorBehaviour::StallAfter { bytes: SIZE / 2 });
    let result = probe
        .k3s
        .install(from_mirror(&mirror, NEW), &ProgressSink::discard())
        .await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Failed,
        "{}",
        result.message
    );
    assert!(
        result.message.contains("cannot download"),
        "{}",
        result.message
    );
    assert_untouched(&sandbox);
}

/// A tiny tmpfs over the binary's directory, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the test machines run tests as root)"
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_download_and_leaves_the_binary_intact() {
    let (sandbox, mirror, _) = upgrade_setup(healthy(NEW)).await;
    let bin = sandbox.host.path("/usr/local/bin");
    let _tmpfs = Tmpfs::mount(&bin, "3m");
    // The old binary (2 MiB) fits; the new one (2 MiB more) does not.
    sandbox.host.install_k3s(&healthy(OLD)).unwrap();
    let probe = sandbox.probe(K3sRole::Server);

    let result = probe
        .k3s
        .install(from_mirror(&mirror, NEW), &ProgressSink::discard())
        .await;

    assert_eq!(outcome(&result), CommandOutcome::Failed);
    assert!(
        result.message.contains("cannot write the download"),
        "{}",
        result.message
    );
    assert!(
        result.message.contains("No space left on device"),
        "{}",
        result.message
    );
    assert_untouched(&sandbox);
}

#[tokio::test]
async fn a_release_that_fails_to_start_is_rolled_back() {
    let broken = k3s_binary(NEW, K3sBehaviour::FailsToStart, SIZE);
    let (sandbox, mirror, _) = upgrade_setup(broken).await;
    let probe = sandbox.probe(K3sRole::Server);
    let (progress, mut messages) = recording_progress();

    let result = probe
        .k3s
        .install(from_mirror(&mirror, NEW), &progress)
        .await;

    assert_eq!(outcome(&result), CommandOutcome::Failed);
    let detail = detail(&result);
    assert!(detail.rolled_back);
    assert_eq!(detail.installed_version, OLD);
    assert!(
        result.message.contains("did not come up healthy"),
        "{}",
        result.message
    );
    assert!(
        result
            .message
            .contains("systemctl restart k3s.service failed"),
        "{}",
        result.message
    );
    assert!(
        result.message.contains("rolled back to v1.31.4+k3s1"),
        "{}",
        result.message
    );
    assert_eq!(sandbox.host.k3s().unwrap(), healthy(OLD));
    assert_eq!(sandbox.host.previous_k3s().unwrap(), healthy(OLD));
    assert_eq!(sandbox.host.unit("k3s.service"), "active");
    assert!(steps(&mut messages).contains(&"rollback".to_string()));
    // A second attempt does not mistake the rolled-back host for "already there".
    let again = probe
        .k3s
        .install(from_mirror(&mirror, NEW), &ProgressSink::discard())
        .await;
    assert_eq!(outcome(&again), CommandOutcome::Failed);
    assert!(detail_of(&again).rolled_back);
}

fn detail_of(result: &CommandResult) -> InstallK3sResult {
    detail(result)
}

#[tokio::test]
async fn a_release_that_hangs_on_start_is_rolled_back_at_the_health_timeout() {
    let hanging = k3s_binary(NEW, K3sBehaviour::HangsOnStart, SIZE);
    let (sandbox, mirror, _) = upgrade_setup(hanging).await;
    let probe = sandbox.probe(K3sRole::Server);
    let mut request = from_mirror(&mirror, NEW);
    request.health_timeout_seconds = 2;

    let result = probe.k3s.install(request, &ProgressSink::discard()).await;

    assert_eq!(outcome(&result), CommandOutcome::Failed);
    assert!(detail(&result).rolled_back);
    assert!(
        result.message.contains("did not finish within 2s"),
        "{}",
        result.message
    );
    assert_eq!(sandbox.host.k3s().unwrap(), healthy(OLD));
    assert_eq!(sandbox.host.unit("k3s.service"), "active");
}

#[tokio::test]
async fn a_binary_reporting_another_version_is_rolled_back() {
    let liar = k3s_binary(
        NEW,
        K3sBehaviour::ClaimsVersion("v1.30.0+k3s1".into()),
        SIZE,
    );
    let (sandbox, mirror, _) = upgrade_setup(liar).await;
    let probe = sandbox.probe(K3sRole::Server);
    let result = probe
        .k3s
        .install(from_mirror(&mirror, NEW), &ProgressSink::discard())
        .await;
    assert_eq!(outcome(&result), CommandOutcome::Failed);
    assert!(
        result
            .message
            .contains("reports v1.30.0+k3s1, not v1.31.5+k3s1"),
        "{}",
        result.message
    );
    assert_eq!(sandbox.host.k3s().unwrap(), healthy(OLD));
}

#[tokio::test]
async fn selinux_enforcing_hosts_get_the_binary_relabeled_before_the_swap() {
    let (sandbox, mirror, _) = upgrade_setup(healthy(NEW)).await;
    sandbox.host.set_selinux_enforcing(true).unwrap();
    let probe = sandbox.probe(K3sRole::Server);
    let result = probe
        .k3s
        .install(from_mirror(&mirror, NEW), &ProgressSink::discard())
        .await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Succeeded,
        "{}",
        result.message
    );
    let calls = sandbox.host.calls();
    let chcon = calls
        .iter()
        .position(|c| c.starts_with("chcon"))
        .expect("chcon ran");
    let restart = calls
        .iter()
        .position(|c| c == "systemctl restart k3s.service")
        .unwrap();
    assert!(chcon < restart);
    let label = "chcon -u system_u -r object_r -t container_runtime_exec_t ";
    assert!(calls[chcon].starts_with(label), "{}", calls[chcon]);
    // The temporary file was labeled, so the target never lacks the label.
    assert!(
        calls[chcon].contains("/usr/local/bin/.k3sfleet-download-"),
        "{}",
        calls[chcon]
    );

    // Not enforcing: no relabel.
    let (plain, mirror, _) = upgrade_setup(healthy(NEW)).await;
    plain.host.set_selinux_enforcing(false).unwrap();
    let probe = plain.probe(K3sRole::Server);
    probe
        .k3s
        .install(from_mirror(&mirror, NEW), &ProgressSink::discard())
        .await;
    assert!(!plain.host.calls().iter().any(|c| c.starts_with("chcon")));
}

fn rollback_to(version: &str, binary: Option<&[u8]>) -> RollbackK3s {
    RollbackK3s {
        version: version.into(),
        sha256: binary
            .map(|b| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b)))
            .unwrap_or_default(),
    }
}

#[tokio::test]
async fn rollback_is_declarative_so_running_it_again_changes_nothing() {
    let (sandbox, mirror, _) = upgrade_setup(healthy(NEW)).await;
    let probe = sandbox.probe(K3sRole::Server);
    probe
        .k3s
        .install(from_mirror(&mirror, NEW), &ProgressSink::discard())
        .await;

    let old = healthy(OLD);
    let result = probe
        .k3s
        .rollback(rollback_to(OLD, Some(&old)), &ProgressSink::discard())
        .await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Succeeded,
        "{}",
        result.message
    );
    assert_eq!(detail(&result).installed_version, OLD);
    assert_eq!(sandbox.host.k3s().unwrap(), old);
    assert_eq!(sandbox.host.previous_k3s().unwrap(), healthy(NEW));

    // The same rollback again (a coordinator re-running an interrupted one):
    // the old binary runs already, nothing is swapped back to the failed one.
    let result = probe
        .k3s
        .rollback(rollback_to(OLD, Some(&old)), &ProgressSink::discard())
        .await;
    assert_eq!(outcome(&result), CommandOutcome::NoOp, "{}", result.message);
    assert_eq!(sandbox.host.k3s().unwrap(), old);

    // Going forward again is a rollback to the other binary, asked by name.
    let result = probe
        .k3s
        .rollback(rollback_to(NEW, None), &ProgressSink::discard())
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
async fn rollback_to_a_binary_the_host_does_not_have_fails_and_changes_nothing() {
    let sandbox = Sandbox::new(Distro::Debian);
    sandbox.host.install_k3s(&healthy(OLD)).unwrap();
    let probe = sandbox.probe(K3sRole::Server);
    let result = probe
        .k3s
        .rollback(rollback_to(NEW, None), &ProgressSink::discard())
        .await;
    assert_eq!(outcome(&result), CommandOutcome::Failed);
    assert!(
        result
            .message
            .contains(&format!("cannot roll back to {NEW}"))
            && result.message.contains("is missing"),
        "{}",
        result.message
    );
    assert_eq!(sandbox.host.k3s().unwrap(), healthy(OLD));
    // A rollback naming nothing is refused.
    let result = probe
        .k3s
        .rollback(RollbackK3s::default(), &ProgressSink::discard())
        .await;
    assert_eq!(outcome(&result), CommandOutcome::Rejected);
}

#[tokio::test]
async fn an_install_interrupted_after_the_swap_is_finished_not_skipped() {
    let (sandbox, mirror, digest) = upgrade_setup(healthy(NEW)).await;
    // What a crash right after the swap leaves: the new binary in place, the
    // old one kept, the intent recorded, the service still on the old process.
    std::fs::copy(
        sandbox.host.path("/usr/local/bin/k3s"),
        sandbox.host.path("/usr/local/bin/k3s.previous"),
    )
    .unwrap();
    sandbox.host.install_k3s(&healthy(NEW)).unwrap();
    std::fs::write(
        sandbox.state_dir.join("k3s-install.json"),
        format!(r#"{{"version":"{NEW}","sha256":"{digest}"}}"#),
    )
    .unwrap();
    let probe = sandbox.probe(K3sRole::Server);
    let result = probe
        .k3s
        .install(from_mirror(&mirror, NEW), &ProgressSink::discard())
        .await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Succeeded,
        "{}",
        result.message
    );
    assert!(
        sandbox
            .host
            .calls()
            .contains(&"systemctl restart k3s.service".to_string())
    );
    assert!(!sandbox.state_dir.join("k3s-install.json").exists());
    // Only the checksum file was fetched: the binary was already in place.
    assert_eq!(mirror.requests().len(), 1);
}

/// What a host killed right after the swap has: the new binary in place,
/// the old one kept, the intent recorded (with the binary it replaced).
fn cut_after_the_swap(sandbox: &Sandbox, new: &[u8], digest: &str) {
    let old_digest = sha256_hex(&healthy(OLD));
    std::fs::copy(
        sandbox.host.path("/usr/local/bin/k3s"),
        sandbox.host.path("/usr/local/bin/k3s.previous"),
    )
    .unwrap();
    sandbox.host.install_k3s(new).unwrap();
    write_intent(sandbox, digest, &old_digest);
}

fn write_intent(sandbox: &Sandbox, digest: &str, previous: &str) {
    std::fs::write(
        sandbox.state_dir.join("k3s-install.json"),
        format!(r#"{{"version":"{NEW}","sha256":"{digest}","previous_sha256":"{previous}"}}"#),
    )
    .unwrap();
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

async fn settle(probe: &k3sfleet_agent::observe::HostProbe) -> k3sfleet_agent::k3s::Settled {
    probe
        .k3s
        .spawn_settle()
        .expect("an install to settle")
        .await
        .unwrap()
}

#[tokio::test]
async fn at_start_an_install_cut_off_after_the_swap_is_finished() {
    let (sandbox, mirror, digest) = upgrade_setup(healthy(NEW)).await;
    cut_after_the_swap(&sandbox, &healthy(NEW), &digest);
    let probe = sandbox.probe(K3sRole::Server);

    let settled = settle(&probe).await;

    assert!(
        matches!(
            settled,
            k3sfleet_agent::k3s::Settled::AfterSwap {
                succeeded: true,
                ..
            }
        ),
        "{settled:?}"
    );
    assert!(
        settled.message().contains("interrupted after the swap")
            && settled
                .message()
                .contains("k3s.service is active on v1.31.5+k3s1"),
        "{}",
        settled.message()
    );
    assert!(
        sandbox
            .host
            .calls()
            .contains(&"systemctl restart k3s.service".to_string())
    );
    assert!(!sandbox.state_dir.join("k3s-install.json").exists());
    assert!(probe.k3s.spawn_settle().is_none(), "settled once");
    // The install re-sent after the restart finds it done.
    let again = probe
        .k3s
        .install(from_mirror(&mirror, NEW), &ProgressSink::discard())
        .await;
    assert_eq!(outcome(&again), CommandOutcome::NoOp, "{}", again.message);
}

#[tokio::test]
async fn at_start_an_unhealthy_binary_swapped_in_before_the_cut_is_rolled_back() {
    let broken = k3s_binary(NEW, K3sBehaviour::FailsToStart, SIZE);
    let (sandbox, _mirror, digest) = upgrade_setup(broken.clone()).await;
    cut_after_the_swap(&sandbox, &broken, &digest);
    let probe = sandbox.probe(K3sRole::Server);

    let settled = settle(&probe).await;

    assert!(
        matches!(
            settled,
            k3sfleet_agent::k3s::Settled::AfterSwap {
                succeeded: false,
                ..
            }
        ),
        "{settled:?}"
    );
    assert!(
        settled.message().contains("rolled back to v1.31.4+k3s1"),
        "{}",
        settled.message()
    );
    assert_eq!(sandbox.host.k3s().unwrap(), healthy(OLD));
    assert_eq!(sandbox.host.unit("k3s.service"), "active");
    assert!(!sandbox.state_dir.join("k3s-install.json").exists());
}

#[tokio::test]
async fn at_start_an_install_cut_off_before_the_swap_changed_nothing_and_is_forgotten() {
    let (sandbox, _mirror, digest) = upgrade_setup(healthy(NEW)).await;
    write_intent(&sandbox, &digest, &sha256_hex(&healthy(OLD)));
    let probe = sandbox.probe(K3sRole::Server);

    let settled = settle(&probe).await;

    assert!(
        matches!(settled, k3sfleet_agent::k3s::Settled::BeforeSwap { .. }),
        "{settled:?}"
    );
    assert!(
        settled.message().contains("the one before it"),
        "{}",
        settled.message()
    );
    assert_untouched(&sandbox);
    assert!(!sandbox.host.calls().iter().any(|c| c.contains("restart")));
    assert!(!sandbox.state_dir.join("k3s-install.json").exists());
}

#[tokio::test]
async fn at_start_a_binary_someone_else_put_there_is_left_alone() {
    let (sandbox, _mirror, digest) = upgrade_setup(healthy(NEW)).await;
    write_intent(&sandbox, &digest, &"ab".repeat(32));
    let probe = sandbox.probe(K3sRole::Server);

    let settled = settle(&probe).await;

    assert!(
        matches!(settled, k3sfleet_agent::k3s::Settled::Foreign { .. }),
        "{settled:?}"
    );
    assert!(
        settled.message().contains("left as it is"),
        "{}",
        settled.message()
    );
    assert_untouched(&sandbox);
    assert!(!sandbox.host.calls().iter().any(|c| c.contains("restart")));
}

#[tokio::test]
async fn a_host_without_the_unit_gets_the_binary_and_is_told_why_nothing_restarted() {
    let sandbox = Sandbox::new(Distro::Debian);
    sandbox.host.remove_unit("k3s.service").unwrap();
    write_release(&sandbox.releases, NEW, &healthy(NEW)).unwrap();
    let mirror = sandbox.start_mirror().await;
    let probe = sandbox.probe(K3sRole::Server);
    let result = probe
        .k3s
        .install(from_mirror(&mirror, NEW), &ProgressSink::discard())
        .await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Succeeded,
        "{}",
        result.message
    );
    assert!(
        result.message.contains("not set up on this host"),
        "{}",
        result.message
    );
    assert_eq!(sandbox.host.k3s().unwrap(), healthy(NEW));
    assert!(!sandbox.host.calls().iter().any(|c| c.contains("restart")));
}

#[tokio::test]
async fn bad_requests_are_rejected_before_anything_happens() {
    let (sandbox, mirror, _) = upgrade_setup(healthy(NEW)).await;
    let probe = sandbox.probe(K3sRole::Server);
    let cases = [
        (from_mirror(&mirror, "1.31.5"), "not a K3s release tag"),
        (
            InstallK3s {
                version: NEW.into(),
                source: None,
                health_timeout_seconds: 0,
            },
            "names no artifact source",
        ),
        (
            InstallK3s {
                version: NEW.into(),
                source: Some(ArtifactSource {
                    kind: Some(artifact_source::Kind::MirrorUrl("ftp://mirror".into())),
                }),
                health_timeout_seconds: 0,
            },
            "must start with https://",
        ),
        (
            InstallK3s {
                version: NEW.into(),
                source: Some(ArtifactSource {
                    kind: Some(artifact_source::Kind::Coordinator(Default::default())),
                }),
                health_timeout_seconds: 0,
            },
            "no coordinator connection",
        ),
    ];
    for (request, expected) in cases {
        let result = probe.k3s.install(request, &ProgressSink::discard()).await;
        assert_eq!(outcome(&result), CommandOutcome::Rejected);
        assert!(result.message.contains(expected), "{}", result.message);
    }
    assert!(mirror.requests().is_empty());
    assert_untouched(&sandbox);
}

#[tokio::test]
async fn etcd_snapshots_on_servers_report_the_saved_name() {
    let sandbox = Sandbox::new(Distro::Debian);
    sandbox.host.install_k3s(&healthy(OLD)).unwrap();
    let server = sandbox.probe(K3sRole::Server);
    let result = server
        .k3s
        .snapshot(
            EtcdSnapshot {
                name: "pre-upgrade".into(),
            },
            &ProgressSink::discard(),
        )
        .await;
    assert_eq!(
        outcome(&result),
        CommandOutcome::Succeeded,
        "{}",
        result.message
    );
    let Some(command_result::Detail::EtcdSnapshot(snapshot)) = &result.detail else {
        panic!("no snapshot detail");
    };
    assert!(
        snapshot.snapshot_name.starts_with("pre-upgrade-"),
        "{}",
        snapshot.snapshot_name
    );
    assert!(
        snapshot.snapshot_name.ends_with("-1714557600"),
        "{}",
        snapshot.snapshot_name
    );

    let agent = sandbox.probe(K3sRole::Agent);
    let result = agent
        .k3s
        .snapshot(EtcdSnapshot { name: "x".into() }, &ProgressSink::discard())
        .await;
    assert_eq!(outcome(&result), CommandOutcome::Rejected);
    let result = server
        .k3s
        .snapshot(
            EtcdSnapshot {
                name: "../evil".into(),
            },
            &ProgressSink::discard(),
        )
        .await;
    assert_eq!(outcome(&result), CommandOutcome::Rejected);
}
