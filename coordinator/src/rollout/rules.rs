//! The rules a rollout must satisfy before it may start. Each refusal names
//! its rule, so an operator knows exactly which promise a plan would break.
//!
//! From the K3s upgrade docs: upgrade servers first, one at a time, then
//! agents; never skip an intermediate minor version. From Kubernetes' skew
//! policy: HA API servers stay within one minor of each other and a kubelet
//! is never newer than its API servers.

use std::fmt;

use super::version::K3sVersion;

/// What the rules need to know about one node.
#[derive(Debug, Clone)]
pub struct NodeVersion {
    pub name: String,
    pub server: bool,
    /// None when K3s is not installed (or its version is unknown).
    pub current: Option<K3sVersion>,
    /// Whether the rollout includes this node.
    pub selected: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    NoMinorSkip,
    NoDowngrade,
    ServersFirst,
    ServersConverge,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::NoMinorSkip => "no-minor-skip",
            Rule::NoDowngrade => "no-downgrade",
            Rule::ServersFirst => "servers-first",
            Rule::ServersConverge => "servers-converge",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rule: Rule,
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (rule {})", self.message, self.rule.name())
    }
}

/// Every rule the plan breaks; empty when it may go ahead.
pub fn check(target: &K3sVersion, nodes: &[NodeVersion], allow_downgrade: bool) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    for node in nodes.iter().filter(|n| n.selected) {
        let Some(current) = &node.current else {
            continue;
        };
        let (from, to) = (current.minor_line(), target.minor_line());
        let skips = from.0 != to.0 || to.1 > from.1 + 1;
        if to > from && skips {
            refusals.push(Refusal {
                rule: Rule::NoMinorSkip,
                message: format!(
                    "{} runs {current}; {target} skips a minor version: upgrade one minor at a time",
                    node.name
                ),
            });
        }
        if target < current && !allow_downgrade {
            refusals.push(Refusal {
                rule: Rule::NoDowngrade,
                message: format!(
                    "{} runs {current}, newer than {target}; pass --allow-downgrade if you mean it",
                    node.name
                ),
            });
        }
    }

    // The versions the servers will run once the rollout is done.
    let servers_after: Vec<(&str, Option<&K3sVersion>)> = nodes
        .iter()
        .filter(|n| n.server)
        .map(|n| {
            (
                n.name.as_str(),
                if n.selected {
                    Some(target)
                } else {
                    n.current.as_ref()
                },
            )
        })
        .collect();
    let upgrades_agents = nodes.iter().any(|n| n.selected && !n.server);
    if upgrades_agents {
        for (name, version) in &servers_after {
            if version.is_some_and(|v| v < target) {
                refusals.push(Refusal {
                    rule: Rule::ServersFirst,
                    message: format!(
                        "agents would run {target} while server {name} stays at {}: include the servers",
                        version.expect("checked")
                    ),
                });
            }
        }
    }
    let mut distinct: Vec<&K3sVersion> = servers_after.iter().filter_map(|(_, v)| *v).collect();
    distinct.sort();
    distinct.dedup();
    if distinct.len() > 1 {
        let listed: Vec<String> = servers_after
            .iter()
            .map(|(name, v)| format!("{name}={}", v.map_or("?".to_string(), ToString::to_string)))
            .collect();
        refusals.push(Refusal {
            rule: Rule::ServersConverge,
            message: format!(
                "the servers would still run different versions afterwards ({}): select every server",
                listed.join(", ")
            ),
        });
    }
    refusals
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, server: bool, current: &str, selected: bool) -> NodeVersion {
        NodeVersion {
            name: name.into(),
            server,
            current: (!current.is_empty()).then(|| current.parse().unwrap()),
            selected,
        }
    }

    fn fleet(version: &str) -> Vec<NodeVersion> {
        vec![
            node("server-1", true, version, true),
            node("server-2", true, version, true),
            node("worker-01", false, version, true),
        ]
    }

    fn rules(target: &str, nodes: &[NodeVersion], allow_downgrade: bool) -> Vec<Rule> {
        check(&target.parse().unwrap(), nodes, allow_downgrade)
            .into_iter()
            .map(|r| r.rule)
            .collect()
    }

    #[test]
    fn a_patch_or_next_minor_upgrade_passes() {
        assert!(rules("v1.31.5+k3s1", &fleet("v1.31.4+k3s1"), false).is_empty());
        assert!(rules("v1.32.0+k3s1", &fleet("v1.31.4+k3s1"), false).is_empty());
        // Re-running on an upgraded fleet is fine too.
        assert!(rules("v1.31.5+k3s1", &fleet("v1.31.5+k3s1"), false).is_empty());
    }

    #[test]
    fn skipping_a_minor_is_refused() {
        let refused = check(
            &"v1.33.1+k3s1".parse().unwrap(),
            &fleet("v1.31.4+k3s1"),
            false,
        );
        assert!(refused.iter().all(|r| r.rule == Rule::NoMinorSkip) && refused.len() == 3);
        assert!(
            refused[0].to_string().contains("rule no-minor-skip"),
            "{}",
            refused[0]
        );
    }

    #[test]
    fn downgrades_need_permission() {
        assert_eq!(
            rules("v1.31.3+k3s1", &fleet("v1.31.4+k3s1"), false),
            [Rule::NoDowngrade; 3]
        );
        assert!(rules("v1.31.3+k3s1", &fleet("v1.31.4+k3s1"), true).is_empty());
    }

    #[test]
    fn agents_never_go_past_servers() {
        let nodes = vec![
            node("server-1", true, "v1.31.4+k3s1", false),
            node("worker-01", false, "v1.31.4+k3s1", true),
        ];
        assert_eq!(rules("v1.31.5+k3s1", &nodes, false), [Rule::ServersFirst]);
    }

    #[test]
    fn a_mixed_server_set_must_converge() {
        let nodes = vec![
            node("server-1", true, "v1.31.4+k3s1", true),
            node("server-2", true, "v1.31.3+k3s1", false),
        ];
        assert_eq!(
            rules("v1.31.5+k3s1", &nodes, false),
            [Rule::ServersConverge]
        );
        let all = vec![
            node("server-1", true, "v1.31.4+k3s1", true),
            node("server-2", true, "v1.31.3+k3s1", true),
        ];
        assert!(rules("v1.31.5+k3s1", &all, false).is_empty());
    }
}
