//! `upgrade plan`: what a rollout would do, what blocks it, which rules it
//! breaks. Reads the fleet and the cluster; changes nothing.

use std::collections::BTreeSet;
use std::path::Path;

use k3sfleet_proto::v1::{
    ArtifactSource, NodeRole, PlanBlocker, PlanRefusal, PlannedNode, UpgradeOptions, UpgradePlan,
    Wave, artifact_source,
};
use sha2::{Digest, Sha256};

use super::alerts::AlertGate;
use super::cluster::DrainRequest;
use super::engine::{RolloutEngine, RolloutError};
use super::link::Presence;
use super::planner::{Budget, MaxUnavailable, plan_waves};
use super::rules::{self, NodeVersion};
use super::state::Step;
use super::version::K3sVersion;
use super::window::MaintenanceWindow;
use crate::access::token::name_matches;
use crate::longhorn::LonghornView;
use crate::store::NodeProgress;

/// A node the rollout would touch.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub server: bool,
    pub current: String,
    pub arch: String,
}

/// Options checked and parsed.
#[derive(Debug, Clone)]
pub struct ValidOptions {
    pub options: UpgradeOptions,
    pub target: K3sVersion,
    pub max_unavailable: MaxUnavailable,
}

/// Checks the options and fills in defaults.
pub fn validate(mut options: UpgradeOptions) -> Result<ValidOptions, RolloutError> {
    let target: K3sVersion = options
        .target_version
        .parse()
        .map_err(|err: super::version::BadVersion| RolloutError::Invalid(err.to_string()))?;
    if options.max_unavailable.is_empty() {
        options.max_unavailable = "1".into();
    }
    let max_unavailable = options
        .max_unavailable
        .parse()
        .map_err(RolloutError::Invalid)?;
    for window in &options.windows {
        window
            .parse::<MaintenanceWindow>()
            .map_err(RolloutError::Invalid)?;
    }
    for pattern in &options.nodes {
        if pattern.is_empty()
            || !pattern
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.*".contains(c))
        {
            return Err(RolloutError::Invalid(format!(
                "invalid node pattern {pattern:?}"
            )));
        }
    }
    if options
        .source
        .as_ref()
        .and_then(|s| s.kind.as_ref())
        .is_none()
    {
        options.source = Some(ArtifactSource {
            kind: Some(artifact_source::Kind::Coordinator(Default::default())),
        });
    }
    AlertGate::from_options(&options).map_err(RolloutError::Invalid)?;
    Ok(ValidOptions {
        options,
        target,
        max_unavailable,
    })
}

impl RolloutEngine {
    /// The fleet's nodes the options select, servers first, each list by name.
    pub fn candidates(&self, options: &UpgradeOptions) -> Vec<Candidate> {
        let mut nodes: Vec<Candidate> = self
            .link
            .agents()
            .into_iter()
            .filter(|(name, _)| {
                options.nodes.is_empty() || options.nodes.iter().any(|p| name_matches(p, name))
            })
            .map(|(name, agent)| Candidate {
                arch: agent.arch,
                server: agent.server,
                current: agent.k3s_version,
                name,
            })
            .collect();
        nodes.sort_by(|a, b| (!a.server, &a.name).cmp(&(!b.server, &b.name)));
        nodes
    }

    pub async fn plan(&self, options: UpgradeOptions) -> Result<UpgradePlan, RolloutError> {
        let valid = validate(options)?;
        let target = &valid.target;
        let candidates = self.candidates(&valid.options);
        let selected: BTreeSet<&str> = candidates.iter().map(|c| c.name.as_str()).collect();
        let all_nodes: Vec<NodeVersion> = self
            .candidates(&UpgradeOptions::default())
            .into_iter()
            .map(|c| NodeVersion {
                selected: selected.contains(c.name.as_str()),
                current: c.current.parse().ok(),
                name: c.name,
                server: c.server,
            })
            .collect();
        let refusals = rules::check(target, &all_nodes, valid.options.allow_downgrade)
            .into_iter()
            .map(|r| PlanRefusal {
                rule: r.rule.name().to_string(),
                message: r.message,
            })
            .collect();

        let to_upgrade: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| c.current != target.to_string())
            .collect();
        let mut blockers = self.blockers_for(&to_upgrade, &valid.options).await;
        blockers.extend(self.artifact_blockers(&valid.options, target, &to_upgrade));

        let workers: Vec<String> = to_upgrade
            .iter()
            .filter(|c| !c.server)
            .map(|c| c.name.clone())
            .collect();
        let max = valid
            .max_unavailable
            .resolve(candidates.iter().filter(|c| !c.server).count());
        let budgets = match &self.cluster {
            Some(cluster) => match cluster.budgets().await {
                Ok(budgets) => budgets,
                Err(err) => {
                    blockers.push(blocker(
                        "",
                        "kubernetes",
                        format!("cannot read PodDisruptionBudgets: {err}"),
                    ));
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let upgrading: Vec<&str> = to_upgrade.iter().map(|c| c.name.as_str()).collect();
        blockers.extend(budget_blockers(&budgets, &upgrading));
        let longhorn = match &self.cluster {
            Some(cluster) => match cluster.longhorn().await {
                Ok(view) => view,
                Err(err) => {
                    blockers.push(blocker(
                        "",
                        "longhorn",
                        format!("cannot read Longhorn's volumes: {err}"),
                    ));
                    None
                }
            },
            None => None,
        };
        if let Some(view) = &longhorn {
            blockers.extend(self.longhorn_blockers(view, &upgrading, &valid.options));
        }

        let planned = |candidate: &Candidate| PlannedNode {
            name: candidate.name.clone(),
            role: if candidate.server {
                NodeRole::Server
            } else {
                NodeRole::Agent
            } as i32,
            from_version: candidate.current.clone(),
            to_version: target.to_string(),
            steps: steps_for(candidate.server),
        };
        let mut waves: Vec<Wave> = to_upgrade
            .iter()
            .filter(|c| c.server)
            .map(|server| Wave {
                number: 0,
                nodes: vec![planned(server)],
            })
            .collect();
        for wave in plan_waves(&workers, &budgets, max) {
            waves.push(Wave {
                number: 0,
                nodes: wave
                    .iter()
                    .filter_map(|name| to_upgrade.iter().find(|c| &c.name == name))
                    .map(|c| planned(c))
                    .collect(),
            });
        }
        for (index, wave) in waves.iter_mut().enumerate() {
            wave.number = index as u32 + 1;
        }
        Ok(UpgradePlan {
            target_version: target.to_string(),
            waves,
            refusals,
            blockers,
            waves_one_at_a_time: to_upgrade.len() as u32,
            max_unavailable: max as u32,
            longhorn_policy: longhorn
                .map(|view| view.policy.to_string())
                .unwrap_or_default(),
        })
    }

    /// Longhorn nodes whose drain cannot finish while nothing changes, and
    /// nodes where Longhorn and the agent disagree on whether it runs there.
    fn longhorn_blockers(
        &self,
        view: &LonghornView,
        upgrading: &[&str],
        options: &UpgradeOptions,
    ) -> Vec<PlanBlocker> {
        let mut blockers = Vec::new();
        let agents = self.link.agents();
        for &node in upgrading {
            for why in crate::longhorn::rules::permanent_blockers(
                view,
                node,
                options.longhorn_evict_replicas,
            ) {
                blockers.push(PlanBlocker {
                    permanent: true,
                    ..blocker(node, "longhorn", why)
                });
            }
            let checks_longhorn = agents
                .get(node)
                .is_some_and(|a| a.checks.iter().any(|c| c.starts_with(LONGHORN_CHECKS)));
            if view.is_longhorn_node(node) && !checks_longhorn {
                blockers.push(blocker(
                    node,
                    "longhorn",
                    "Longhorn runs here but the agent does not check Longhorn's prerequisites \
                     ([host.longhorn] checks = false): a missing iscsid or module would only show \
                     when a volume fails to attach after the upgrade"
                        .into(),
                ));
            }
        }
        blockers
    }

    /// What holds up each node now: its agent, its checks, its Kubernetes node.
    async fn blockers_for(
        &self,
        nodes: &[&Candidate],
        options: &UpgradeOptions,
    ) -> Vec<PlanBlocker> {
        let drain = DrainRequest::for_rollout(options);
        let agents = self.link.agents();
        let cluster_nodes = match &self.cluster {
            Some(cluster) => Some(cluster.nodes().await),
            None => None,
        };
        let mut blockers = Vec::new();
        for node in nodes {
            match agents.get(&node.name) {
                Some(agent) if agent.presence == Presence::Connected => {
                    for check in &agent.failing_checks {
                        blockers.push(blocker(&node.name, "health", format!("check {check}")));
                    }
                }
                Some(agent) => blockers.push(blocker(
                    &node.name,
                    "agent",
                    format!("the agent is {}", agent.presence.word()),
                )),
                None => blockers.push(blocker(
                    &node.name,
                    "agent",
                    "the agent is not connected".into(),
                )),
            }
            if let Some(cluster) = &self.cluster {
                match &cluster_nodes {
                    Some(Ok(states)) => match states.iter().find(|s| s.name == node.name) {
                        Some(state) if state.ready => {}
                        Some(_) => blockers.push(blocker(
                            &node.name,
                            "kubernetes",
                            "the node is not Ready".into(),
                        )),
                        None => blockers.push(blocker(
                            &node.name,
                            "kubernetes",
                            "Kubernetes has no such node".into(),
                        )),
                    },
                    Some(Err(err)) => {
                        blockers.push(blocker(&node.name, "kubernetes", err.to_string()))
                    }
                    None => {}
                }
                // Found now rather than as a failed drain halfway through the fleet.
                match cluster
                    .drain_refusals(node.name.clone(), drain.clone())
                    .await
                {
                    Ok(refused) => blockers.extend(refused.into_iter().map(|pod| {
                        blocker(&node.name, "drain", format!("pod {pod} cannot be evicted"))
                    })),
                    Err(err) => blockers.push(blocker(&node.name, "drain", err.to_string())),
                }
            }
        }
        if self.cluster.is_none() {
            blockers.push(blocker(
                "",
                "kubernetes",
                "no Kubernetes access: set [kubernetes] kubeconfig".into(),
            ));
        }
        blockers
    }

    /// When artifacts come from the coordinator: every needed binary and
    /// checksum file is there and they agree.
    fn artifact_blockers(
        &self,
        options: &UpgradeOptions,
        target: &K3sVersion,
        nodes: &[&Candidate],
    ) -> Vec<PlanBlocker> {
        let from_coordinator = matches!(
            options.source.as_ref().and_then(|s| s.kind.as_ref()),
            Some(artifact_source::Kind::Coordinator(_))
        );
        if !from_coordinator || nodes.is_empty() {
            return Vec::new();
        }
        let arches: BTreeSet<&str> = nodes
            .iter()
            .map(|n| {
                if n.arch.is_empty() {
                    "amd64"
                } else {
                    n.arch.as_str()
                }
            })
            .collect();
        arches
            .into_iter()
            .filter_map(|arch| {
                check_artifact(&self.artifacts_dir, &target.to_string(), arch)
                    .err()
                    .map(|why| blocker("", "artifact", why))
            })
            .collect()
    }
}

/// The release asset names for an architecture, as install.sh spells them.
pub fn asset_names(arch: &str) -> (String, String) {
    let binary = match arch {
        "amd64" => "k3s".to_string(),
        "arm" => "k3s-armhf".to_string(),
        other => format!("k3s-{other}"),
    };
    (binary, format!("sha256sum-{arch}.txt"))
}

/// Checks that `<dir>/<version>/` holds the binary and a checksum file whose
/// line for it matches its SHA-256.
pub fn check_artifact(dir: &Path, version: &str, arch: &str) -> Result<(), String> {
    let (binary, sums) = asset_names(arch);
    let base = dir.join(version);
    let sums_text = std::fs::read_to_string(base.join(&sums))
        .map_err(|err| format!("{} cannot be read: {err}", base.join(&sums).display()))?;
    let expected = sums_text
        .lines()
        .find_map(|line| {
            let (hash, name) = line.split_once(char::is_whitespace)?;
            (name.trim().trim_start_matches('*') == binary).then(|| hash.to_ascii_lowercase())
        })
        .ok_or_else(|| format!("{} has no line for {binary}", base.join(&sums).display()))?;
    let mut file = std::fs::File::open(base.join(&binary))
        .map_err(|err| format!("{} cannot be read: {err}", base.join(&binary).display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .map_err(|err| format!("reading {}: {err}", base.join(&binary).display()))?;
    let actual = hex::encode(hasher.finalize());
    if actual != expected {
        return Err(format!(
            "{} has SHA-256 {actual}, but {sums} says {expected}",
            base.join(&binary).display()
        ));
    }
    Ok(())
}

fn steps_for(server: bool) -> Vec<String> {
    let mut steps = Vec::new();
    let mut step = Step::Pending.next(server);
    while step != Step::Done {
        steps.push(step.as_str().to_string());
        step = step.next(server);
    }
    steps
}

fn blocker(node: &str, kind: &str, message: String) -> PlanBlocker {
    PlanBlocker {
        node: node.to_string(),
        kind: kind.to_string(),
        message,
        permanent: false,
    }
}

/// The id prefix of the agent's Longhorn checks (agent/src/checks/longhorn.rs).
const LONGHORN_CHECKS: &str = "longhorn.";

/// Budgets that block the nodes to upgrade: those exhausted now (they
/// recover as replacements turn Ready) and those that can never allow a
/// disruption (named as permanent, with what would fix them).
fn budget_blockers(budgets: &[Budget], upgrading: &[&str]) -> Vec<PlanBlocker> {
    let mut blockers = Vec::new();
    for budget in budgets {
        let on: Vec<&str> = budget
            .pods_on
            .iter()
            .filter(|(n, c)| **c > 0 && upgrading.contains(&n.as_str()))
            .map(|(n, _)| n.as_str())
            .collect();
        if on.is_empty() {
            continue;
        }
        match &budget.permanent {
            Some(why) => {
                for node in on {
                    blockers.push(PlanBlocker {
                        permanent: true,
                        ..blocker(node, "pdb", why.clone())
                    });
                }
            }
            None if budget.allowed == 0 => blockers.push(blocker(
                "",
                "pdb",
                format!(
                    "PDB {} allows no disruption right now (it will once its pods are back) and covers pods on {}",
                    budget.name,
                    on.join(", ")
                ),
            )),
            None => {}
        }
    }
    blockers
}

/// The node records a new rollout starts with.
pub fn initial_nodes(candidates: &[Candidate], target: &str) -> Vec<NodeProgress> {
    candidates
        .iter()
        .filter(|c| c.current != target)
        .map(|c| NodeProgress::new(c.name.clone(), c.server, c.current.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_must_match_their_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("v1.31.5+k3s1");
        std::fs::create_dir_all(&release).unwrap();
        let missing = check_artifact(dir.path(), "v1.31.5+k3s1", "amd64").unwrap_err();
        assert!(missing.contains("sha256sum-amd64.txt"), "{missing}");

        std::fs::write(release.join("k3s"), b"binary").unwrap();
        let hash = hex::encode(Sha256::digest(b"binary"));
        std::fs::write(
            release.join("sha256sum-amd64.txt"),
            format!("{hash}  k3s\n{hash}  k3s-airgap-images-amd64.tar\n"),
        )
        .unwrap();
        check_artifact(dir.path(), "v1.31.5+k3s1", "amd64").unwrap();

        std::fs::write(release.join("k3s"), b"tampered").unwrap();
        let err = check_artifact(dir.path(), "v1.31.5+k3s1", "amd64").unwrap_err();
        assert!(err.contains("says"), "{err}");
    }

    #[test]
    fn options_are_checked() {
        let ok = validate(UpgradeOptions {
            target_version: "v1.31.5+k3s1".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ok.options.max_unavailable, "1");
        assert!(ok.options.source.is_some());
        for bad in [
            UpgradeOptions {
                target_version: "1.31".into(),
                ..Default::default()
            },
            UpgradeOptions {
                target_version: "v1.31.5+k3s1".into(),
                max_unavailable: "0".into(),
                ..Default::default()
            },
            UpgradeOptions {
                target_version: "v1.31.5+k3s1".into(),
                windows: vec!["Someday".into()],
                ..Default::default()
            },
            UpgradeOptions {
                target_version: "v1.31.5+k3s1".into(),
                nodes: vec!["a/b".into()],
                ..Default::default()
            },
        ] {
            assert!(validate(bad).is_err());
        }
    }

    #[test]
    fn asset_names_follow_the_release() {
        assert_eq!(
            asset_names("amd64"),
            ("k3s".into(), "sha256sum-amd64.txt".into())
        );
        assert_eq!(
            asset_names("arm64"),
            ("k3s-arm64".into(), "sha256sum-arm64.txt".into())
        );
        assert_eq!(
            asset_names("arm"),
            ("k3s-armhf".into(), "sha256sum-arm.txt".into())
        );
    }
}
