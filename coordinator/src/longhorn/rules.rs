//! What Longhorn's state means for a rollout and a drain. Pure.

use super::{DrainPolicy, LonghornView, Volume};

/// Why a node may not start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// A volume it holds a replica of is still rebuilding: touching another
    /// of its replicas now risks the data.
    Rebuilding(String),
    /// Taking this node with the ones already out would leave a volume
    /// without a healthy replica.
    LastReplica(String),
}

impl Hold {
    pub fn volume(&self) -> &str {
        match self {
            Hold::Rebuilding(v) | Hold::LastReplica(v) => v,
        }
    }

    pub fn describe(&self, view: &LonghornView) -> String {
        let described = view
            .volumes
            .iter()
            .find(|v| v.name == self.volume())
            .map_or_else(|| self.volume().to_string(), Volume::describe);
        match self {
            Hold::Rebuilding(_) => format!("Longhorn volume {described} is rebuilding"),
            Hold::LastReplica(_) => {
                format!(
                    "taking it now would leave Longhorn volume {described} without a healthy replica"
                )
            }
        }
    }
}

/// What keeps `node` from starting beside the nodes `out` (under way, or
/// still cordoned): a volume it holds a healthy replica of must be whole
/// (every replica rebuilt since the last node that held one; a node whose
/// own replica is the one missing takes nothing more from the volume), and
/// at least one healthy replica of each must stay on a node that is not out.
pub fn holds(view: &LonghornView, node: &str, out: &[String]) -> Vec<Hold> {
    let mut holds = Vec::new();
    for volume in view.volumes_on(node) {
        let healthy_here = volume.replicas.iter().any(|r| r.node == node && r.healthy);
        if healthy_here && !volume.is_whole() {
            holds.push(Hold::Rebuilding(volume.name.clone()));
            continue;
        }
        let stays = volume
            .replicas
            .iter()
            .filter(|r| r.healthy && r.node != node && !out.contains(&r.node))
            .count();
        if stays == 0 {
            holds.push(Hold::LastReplica(volume.name.clone()));
        }
    }
    holds
}

/// What will keep `node`'s drain from ever finishing under Longhorn's
/// policy while nothing changes, each with what would fix it: a volume whose
/// every healthy replica is on this node.
pub fn permanent_blockers(view: &LonghornView, node: &str, evict_replicas: bool) -> Vec<String> {
    if !view.policy.guards_last_replica() || evict_replicas {
        return Vec::new();
    }
    view.volumes_on(node)
        .filter(|v| {
            v.healthy_replicas() > 0 && v.replicas.iter().filter(|r| r.healthy).all(|r| r.node == node)
        })
        .map(|v| {
            format!(
                "Longhorn volume {} has its only healthy replica on {node}, and Longhorn's node drain \
                 policy {} keeps {node} from draining while it does: give the volume more replicas \
                 (numberOfReplicas 2 or more), set node-drain-policy to allow-if-replica-is-stopped \
                 or always-allow, or start with --longhorn-evict-replicas to have Longhorn move it first",
                v.describe(),
                view.policy
            )
        })
        .collect()
}

/// What Longhorn waits for before it lets `node`'s instance manager go
/// (in place of "blocked by PDB instance-manager-...").
pub fn why_instance_manager_stays(view: &LonghornView, node: &str) -> String {
    let attached: Vec<&str> = view
        .volumes
        .iter()
        .filter(|v| v.attached_to.as_deref() == Some(node))
        .map(|v| v.name.as_str())
        .collect();
    if !attached.is_empty() {
        return format!(
            "Longhorn keeps its instance manager while volumes are attached here ({}): their pods must go first",
            attached.join(", ")
        );
    }
    let mut reasons = Vec::new();
    for volume in view.volumes_on(node) {
        let guarded = match view.policy {
            DrainPolicy::AlwaysAllow => false,
            DrainPolicy::BlockForEviction => true,
            DrainPolicy::AllowIfReplicaIsStopped => {
                volume.replicas.iter().any(|r| r.node == node && !r.stopped)
            }
            DrainPolicy::BlockIfContainsLastReplica
            | DrainPolicy::BlockForEvictionIfContainsLastReplica => {
                !volume.replicas.iter().any(|r| r.healthy && r.node != node)
            }
        };
        if guarded {
            reasons.push(match view.policy {
                DrainPolicy::BlockForEviction => {
                    format!("{} still has a replica here to be moved", volume.describe())
                }
                _ => format!(
                    "this node holds the last healthy replica of {}",
                    volume.describe()
                ),
            });
        }
    }
    if reasons.is_empty() {
        format!(
            "Longhorn has not yet released its instance manager's budget (policy {})",
            view.policy
        )
    } else {
        format!(
            "Longhorn keeps its instance manager (policy {}): {}",
            view.policy,
            reasons.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::longhorn::Replica;

    fn volume(name: &str, wanted: u32, replicas: &[(&str, bool)]) -> Volume {
        Volume {
            name: name.into(),
            wanted_replicas: wanted,
            robustness: if replicas.iter().filter(|r| r.1).count() >= wanted as usize {
                "healthy".into()
            } else {
                "degraded".into()
            },
            attached_to: None,
            replicas: replicas
                .iter()
                .enumerate()
                .map(|(i, (node, healthy))| Replica {
                    name: format!("{name}-r-{i}"),
                    node: node.to_string(),
                    healthy: *healthy,
                    stopped: false,
                })
                .collect(),
        }
    }

    fn view(volumes: Vec<Volume>) -> LonghornView {
        LonghornView {
            policy: DrainPolicy::DEFAULT,
            nodes: ["w1", "w2", "w3"].map(|n| (n.to_string(), false)).into(),
            volumes,
        }
    }

    #[test]
    fn a_node_waits_while_a_volume_it_holds_rebuilds_or_would_lose_its_last_replica() {
        let v = view(vec![
            volume("three", 3, &[("w1", true), ("w2", true), ("w3", true)]),
            volume("two", 2, &[("w1", true), ("w2", true)]),
        ]);
        assert!(holds(&v, "w1", &[]).is_empty());
        // w2 is out: taking w1 too leaves "two" with nothing.
        assert_eq!(
            holds(&v, "w1", &["w2".into()]),
            [Hold::LastReplica("two".into())]
        );
        // "three" keeps w3.
        assert!(holds(&v, "w3", &["w2".into()]).is_empty());

        let rebuilding = view(vec![volume(
            "three",
            3,
            &[("w1", true), ("w2", false), ("w3", true)],
        )]);
        assert_eq!(
            holds(&rebuilding, "w3", &[]),
            [Hold::Rebuilding("three".into())]
        );
        assert!(
            holds(&rebuilding, "other", &[]).is_empty(),
            "holds no replica of it"
        );
    }

    #[test]
    fn a_volume_with_its_only_replica_on_the_node_blocks_it_for_good_unless_evicted_or_allowed() {
        let mut v = view(vec![volume("solo", 1, &[("w1", true)])]);
        let blockers = permanent_blockers(&v, "w1", false);
        assert_eq!(blockers.len(), 1);
        assert!(blockers[0].contains("solo") && blockers[0].contains("--longhorn-evict-replicas"));
        assert!(permanent_blockers(&v, "w2", false).is_empty());
        assert!(permanent_blockers(&v, "w1", true).is_empty());
        v.policy = DrainPolicy::AlwaysAllow;
        assert!(permanent_blockers(&v, "w1", false).is_empty());
    }

    #[test]
    fn the_instance_manager_waits_are_named() {
        let mut v = view(vec![volume("solo", 1, &[("w1", true)])]);
        v.volumes[0].attached_to = Some("w1".into());
        let why = why_instance_manager_stays(&v, "w1");
        assert!(why.contains("attached here (solo)"), "{why}");
        v.volumes[0].attached_to = None;
        let why = why_instance_manager_stays(&v, "w1");
        assert!(why.contains("last healthy replica of solo"), "{why}");
        v.policy = DrainPolicy::BlockForEviction;
        let why = why_instance_manager_stays(&v, "w1");
        assert!(why.contains("to be moved"), "{why}");
    }
}
