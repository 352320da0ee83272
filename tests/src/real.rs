//! What the real-tier tests share: a lab on upstream Kubernetes (or a
//! recorded skip saying why there cannot be one here), kubectl as the
//! operator, etcdctl on a server, and the auditor's verdict.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k3sfleet_sim::lab::{Lab, LabSpec};
use k3sfleet_standin::real::K3sLayout;

use crate::rollout::lab_dir;

/// A real-tier lab from `spec`, or `None` once the test is recorded as
/// skipped (no root, testbed binaries or kubectl missing, no haproxy). Says
/// how long the cluster took to come up.
pub async fn real_lab(dir: &tempfile::TempDir, spec: LabSpec) -> Option<Lab> {
    if !k3sfleet_sim::skip::runnable(k3sfleet_sim::lab::real::unavailable_reason()) {
        return None;
    }
    let started = Instant::now();
    let lab = Lab::start(dir.path(), spec.real())
        .await
        .unwrap_or_else(|err| {
            panic!(
                "the real-tier lab starts: {err:#}\nlogs in {}",
                dir.path().display()
            )
        });
    eprintln!(
        "real-tier lab with {} hosts up in {:.1}s ({})",
        lab.hosts.len(),
        started.elapsed().as_secs_f64(),
        dir.path().display()
    );
    Some(lab)
}

/// Where a real-tier test's lab lives (kept with K3SFLEET_KEEP_LABS).
pub fn real_lab_dir() -> tempfile::TempDir {
    lab_dir()
}

/// The current kubectl as the lab's operator.
pub fn kubectl(lab: &Lab) -> Command {
    lab.real().kubectl_as(&lab.real().operator_kubeconfig)
}

/// Runs kubectl as the operator and fails unless it succeeds; returns stdout.
pub fn kubectl_ok(lab: &Lab, args: &[&str]) -> String {
    let output =
        tokio::task::block_in_place(|| kubectl(lab).args(args).output()).expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `kubectl apply -f -` of `yaml` as the operator.
pub fn apply(lab: &Lab, yaml: &str) {
    use std::io::Write;
    let mut child = kubectl(lab)
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let output = tokio::task::block_in_place(|| child.wait_with_output()).unwrap();
    assert!(
        output.status.success(),
        "kubectl apply failed: {}\n{yaml}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// etcdctl against `server`'s local member, from inside its namespace, with
/// K3s's etcd client certificate.
pub fn etcdctl(lab: &Lab, server: &str, args: &[&str]) -> Output {
    let host = lab
        .hosts
        .iter()
        .find(|h| h.name == server)
        .expect("a server of the lab");
    let tls = K3sLayout::new(host.host.root()).etcd_tls();
    let program = lab.real().testbed.bin.join("etcdctl");
    let mut command = match &host.netns {
        Some(netns) => netns.command(&program),
        None => Command::new(&program),
    };
    command
        .arg("--endpoints=https://127.0.0.1:2379")
        .arg(format!("--cacert={}", tls.join("server-ca.crt").display()))
        .arg(format!("--cert={}", tls.join("client.crt").display()))
        .arg(format!("--key={}", tls.join("client.key").display()))
        .arg("--command-timeout=5s")
        .args(args);
    tokio::task::block_in_place(|| command.output()).expect("etcdctl runs")
}

/// The etcd members `server` sees healthy: `etcdctl endpoint health --cluster`.
pub fn healthy_members(lab: &Lab, server: &str) -> Vec<String> {
    let output = etcdctl(
        lab,
        server,
        &["endpoint", "health", "--cluster", "-w", "json"],
    );
    let answers: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    let mut healthy: Vec<String> = answers
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["health"] == true)
        .filter_map(|a| a["endpoint"].as_str().map(str::to_string))
        .collect();
    healthy.sort();
    healthy
}

/// Polls `condition` (blocking the test's worker) until it holds.
pub fn wait(what: &str, timeout: Duration, condition: impl FnMut() -> bool) {
    tokio::task::block_in_place(|| crate::wait_until(what, timeout, condition));
}

/// The auditor's verdict now, printed, asserted clean.
pub fn assert_audit_clean(lab: &Lab) -> k3sfleet_sim::audit::Verdict {
    let verdict = tokio::task::block_in_place(|| lab.real().auditor().verdict());
    eprintln!("auditor: {verdict}");
    assert!(
        verdict.is_clean(),
        "{verdict}\nlogs in {}",
        lab.dir.display()
    );
    verdict
}
