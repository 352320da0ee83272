//! The simulator's controllers. `Cluster::reconcile` runs them all until nothing changes and
//! returns when it next needs to run (the earliest pending delay). Each controller is level
//! triggered: it compares desired and observed state, writes only real changes, and gets `now`
//! passed in.

mod daemonset;
mod deployment;
mod kubelet;
mod nodes;
pub mod pdb;
mod replicaset;
mod scheduler;
mod statefulset;
mod status;
mod templates;

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::time::Now;

/// Upper bound on reconcile passes per call; each pass only writes changes, so this is
/// reached only if two controllers fight, which would be a bug worth a warning.
const MAX_PASSES: usize = 10;

/// Deadlines of the simulated pod lifecycle, keyed by pod UID.
#[derive(Debug, Default, Clone)]
pub(crate) struct PodTimers {
    /// When a scheduled pod's containers are up (Running, and Ready unless `never_ready`).
    pub ready_at: Option<Instant>,
    /// When a terminating pod's containers have stopped and it disappears.
    pub remove_at: Option<Instant>,
    /// Runs but never turns Ready (a crash-looping pod).
    pub never_ready: bool,
}

#[derive(Debug, Default)]
pub struct SimState {
    pod_timers: HashMap<String, PodTimers>,
    /// When a delayed controller action is due: (owner uid, slot) -> due time. Used for
    /// replacing lost pods and for the PDB controller's observation lag.
    replacement_due: HashMap<(String, String), Instant>,
    /// Last heartbeat of nodes whose kubelet runs outside the simulator.
    external_kubelets: HashMap<String, Instant>,
    /// True while building the scenario's initial state: no delays.
    pub(crate) bootstrapping: bool,
    next_wake: Option<Instant>,
    pod_ip_counter: u32,
}

impl SimState {
    pub(crate) fn pod_timers(&mut self, uid: &str) -> &mut PodTimers {
        self.pod_timers.entry(uid.to_owned()).or_default()
    }

    pub(crate) fn forget_pod(&mut self, uid: &str) {
        self.pod_timers.remove(uid);
    }

    /// Marks `node` as heartbeated from outside, now.
    pub(crate) fn kubelet_heartbeat(&mut self, node: &str, now: &Now) {
        self.external_kubelets.insert(node.to_owned(), now.instant);
    }

    pub(crate) fn wake_at(&mut self, at: Instant) {
        self.next_wake = Some(self.next_wake.map_or(at, |w| w.min(at)));
    }

    /// Whether the replacement for `slot` of owner `uid` is due; arms the delay on first call.
    fn replacement_is_due(
        &mut self,
        owner_uid: &str,
        slot: &str,
        delay: Duration,
        now: &Now,
    ) -> bool {
        let key = (owner_uid.to_owned(), slot.to_owned());
        let due = *self
            .replacement_due
            .entry(key.clone())
            .or_insert(now.instant + delay);
        if self.bootstrapping || now.instant >= due {
            self.replacement_due.remove(&key);
            true
        } else {
            self.wake_at(due);
            false
        }
    }

    fn replacement_not_needed(&mut self, owner_uid: &str, slot: &str) {
        self.replacement_due
            .remove(&(owner_uid.to_owned(), slot.to_owned()));
    }

    fn next_pod_ip(&mut self) -> String {
        self.pod_ip_counter += 1;
        let n = self.pod_ip_counter;
        format!("10.42.{}.{}", n / 250, n % 250 + 2)
    }
}

impl Cluster {
    /// Runs every controller until the state is stable; returns when to run again.
    pub fn reconcile(&mut self, now: &Now) -> Option<Instant> {
        self.sim.next_wake = None;
        for _ in 0..MAX_PASSES {
            let mut changed = false;
            changed |= deployment::sync(self, now);
            changed |= replicaset::sync(self, now);
            changed |= statefulset::sync(self, now);
            changed |= daemonset::sync(self, now);
            changed |= scheduler::schedule(self, now);
            changed |= kubelet::sync_pods(self, now);
            changed |= nodes::monitor_heartbeats(self, now);
            changed |= crate::longhorn::sync(self, now);
            changed |= status::sync(self);
            changed |= pdb::sync(self, now);
            if !changed {
                return self.sim.next_wake;
            }
        }
        tracing::warn!("controllers did not settle after {MAX_PASSES} passes");
        Some(now.instant + Duration::from_millis(100))
    }

    /// The wall-clock duration of the replacement delay (zero while bootstrapping).
    fn replacement_delay(&self) -> Duration {
        self.config
            .scale
            .wall(self.config.timings.replacement_delay)
    }
}
