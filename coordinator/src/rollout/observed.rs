//! What the engine saw of the world in one round, and the health rules read
//! from it: the one place that says whether a node is fit to start, upgraded,
//! or settled. Pure: the engine fills an [`Observed`] in
//! ([`super::engine`]), the decision reads it.

use std::collections::{BTreeMap, BTreeSet};

use super::action::OpKey;
use super::cluster::{ClusterError, NodeState};
use super::link::{AgentView, Presence};
use super::planner::Budget;
use crate::longhorn::LonghornView;

#[derive(Debug, Clone)]
pub struct Observed {
    /// Milliseconds since the Unix epoch, when observed.
    pub now_ms: i64,
    pub agents: BTreeMap<String, AgentView>,
    pub nodes: Result<BTreeMap<String, NodeState>, ClusterError>,
    /// Read only when a worker could start this round.
    pub budgets: Option<Result<Vec<Budget>, ClusterError>>,
    /// Longhorn's state, read when a node could start this round; `Ok(None)`
    /// when Longhorn is not installed.
    pub longhorn: Option<Result<Option<LonghornView>, ClusterError>>,
    /// Alert names firing now, after the rollout's ignore and match
    /// patterns; `None` without an alerts gate.
    pub alerts: Option<Result<Vec<String>, String>>,
    /// Operations under way in this process, by node.
    pub running: BTreeMap<String, OpKey>,
    /// Nodes an operator's `k3sfleet drain` works on right now.
    pub draining: BTreeSet<String>,
}

impl Observed {
    /// An empty world at `now_ms` (tests build on it).
    pub fn at(now_ms: i64) -> Observed {
        Observed {
            now_ms,
            agents: BTreeMap::new(),
            nodes: Ok(BTreeMap::new()),
            budgets: None,
            longhorn: None,
            alerts: None,
            running: BTreeMap::new(),
            draining: BTreeSet::new(),
        }
    }

    /// The servers of the fleet, whether in this rollout or not.
    pub fn servers(&self) -> impl Iterator<Item = &str> {
        self.agents
            .iter()
            .filter(|(_, agent)| agent.server)
            .map(|(name, _)| name.as_str())
    }

    fn node(&self, name: &str) -> Result<Option<&NodeState>, &ClusterError> {
        self.nodes.as_ref().map(|nodes| nodes.get(name))
    }

    /// Why `name` is not fit to be upgraded now (empty when it is): its
    /// agent connected with no failing check, its Kubernetes node Ready.
    pub fn node_problems(&self, name: &str) -> Vec<String> {
        let mut problems = Vec::new();
        match self.agents.get(name) {
            Some(agent) if agent.presence == Presence::Connected => {
                for check in &agent.failing_checks {
                    problems.push(format!("{name} check {check}"));
                }
            }
            Some(agent) => problems.push(format!("agent on {name} is {}", agent.presence.word())),
            None => problems.push(format!("no agent on {name} ever connected")),
        }
        match self.node(name) {
            Ok(Some(state)) if state.ready => {}
            Ok(Some(_)) => problems.push(format!("Kubernetes node {name} is not Ready")),
            Ok(None) => problems.push(format!("Kubernetes has no node {name}")),
            Err(err) => problems.push(format!("cannot read the nodes: {err}")),
        }
        problems
    }

    /// The etcd quorum guard, before a server is touched: every server of
    /// the fleet fit (its agent there, its node Ready) and every etcd member
    /// healthy as its own agent reports it.
    pub fn quorum_problems(&self, upgrading: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for server in self.servers() {
            if server != upgrading {
                problems.extend(self.node_problems(server));
            }
            match self.agents.get(server).and_then(|a| a.etcd.as_ref()) {
                Some(Ok(())) => {}
                Some(Err(why)) => {
                    problems.push(format!("etcd member on {server} is not healthy: {why}"))
                }
                None => problems.push(format!("{server} reports no etcd health yet")),
            }
        }
        problems
    }

    /// What still differs from "upgraded to `target` and healthy".
    pub fn upgraded_problems(&self, name: &str, target: &str) -> Vec<String> {
        let mut missing = Vec::new();
        match self.node(name) {
            Ok(Some(state)) => {
                if !state.ready {
                    missing.push("the node to be Ready".to_string());
                }
                if state.kubelet_version != target {
                    missing.push(format!(
                        "kubelet {target} (it reports {})",
                        state.kubelet_version
                    ));
                }
            }
            Ok(None) => missing.push(format!("Kubernetes node {name} to exist")),
            Err(err) => missing.push(format!("the Kubernetes API ({err})")),
        }
        match self.agents.get(name) {
            Some(agent) if agent.presence == Presence::Connected => {
                if agent.k3s_version != target {
                    missing.push(format!(
                        "the agent to report {target} (it reports {:?})",
                        agent.k3s_version
                    ));
                }
            }
            _ => missing.push("the agent to reconnect".to_string()),
        }
        missing
    }

    /// A settling node as seen now: what is wrong with it, and what cannot
    /// be seen (its agent reconnecting, the API not answering), which
    /// restarts the hold rather than failing a node that may be fine.
    pub fn settle_health(&self, name: &str, target: &str) -> SettleHealth {
        let mut health = SettleHealth::default();
        match self.agents.get(name) {
            Some(agent) if agent.presence == Presence::Connected => {
                if agent.k3s_version != target {
                    health.unhealthy.push(format!(
                        "the agent reports K3s {:?}, not {target}",
                        agent.k3s_version
                    ));
                }
                for check in &agent.failing_checks {
                    health.unhealthy.push(format!("{name} check {check}"));
                }
            }
            other => health.unseen.push(format!(
                "the agent on {name} (it is {})",
                other.map_or("not connected", |a| a.presence.word())
            )),
        }
        match self.node(name) {
            Ok(Some(state)) if !state.ready => health
                .unhealthy
                .push(format!("Kubernetes node {name} is not Ready")),
            Ok(Some(state)) if state.kubelet_version != target => health.unhealthy.push(format!(
                "kubelet reports {}, not {target}",
                state.kubelet_version
            )),
            Ok(Some(_)) => {}
            Ok(None) => health
                .unhealthy
                .push(format!("Kubernetes has no node {name}")),
            Err(err) => health.unseen.push(format!("the Kubernetes API ({err})")),
        }
        health
    }
}

/// A settling node as last seen.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SettleHealth {
    pub unhealthy: Vec<String>,
    pub unseen: Vec<String>,
}
