//! Which workers go down together.
//!
//! Workers start as soon as a slot is free (at most `max_unavailable` are
//! under way) and the budgets allow: a worker is admitted only if, for every
//! PodDisruptionBudget covering pods on it, those pods together with the
//! covered pods still on the workers already draining fit in what the budget
//! allows now. A worker whose budgets no other draining worker touches is
//! always allowed (its drain then waits on the Eviction API, which is safe,
//! just slow). Candidates are tried most constrained first, which packs
//! tightly and stays deterministic.
//!
//! The budgets and placement are what the cluster shows now; the rollout asks
//! again before it admits more, as evicted pods land on other nodes. `upgrade
//! plan` shows the batches this rule gives if pods stayed where they are.

use std::collections::BTreeMap;

/// One PDB as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// "namespace/name", for messages.
    pub name: String,
    /// Pods it may lose at once.
    pub allowed: u32,
    /// Pods it covers, per node.
    pub pods_on: BTreeMap<String, u32>,
    /// Why it can never allow a disruption while its pods are all healthy
    /// (it will not recover by waiting), if it cannot.
    pub permanent: Option<String>,
}

impl Budget {
    pub fn pods_on(&self, node: &str) -> u32 {
        self.pods_on.get(node).copied().unwrap_or(0)
    }
}

/// "3" or "20%" of the workers, at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxUnavailable {
    Count(u32),
    Percent(u32),
}

impl MaxUnavailable {
    /// The number of nodes for a pool of `workers`; percentages round down
    /// (as Kubernetes rounds maxUnavailable) but never below one.
    pub fn resolve(self, workers: usize) -> usize {
        let n = match self {
            MaxUnavailable::Count(n) => n as usize,
            MaxUnavailable::Percent(p) => workers * p as usize / 100,
        };
        n.max(1)
    }
}

impl std::str::FromStr for MaxUnavailable {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid max-unavailable {text:?}: give a count like 3 or a percentage like 20%"
            )
        };
        match text.strip_suffix('%') {
            Some(percent) => match percent.parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => Ok(MaxUnavailable::Percent(p)),
                _ => Err(bad()),
            },
            None => match text.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(MaxUnavailable::Count(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl std::fmt::Display for MaxUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxUnavailable::Count(n) => write!(f, "{n}"),
            MaxUnavailable::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Which of `candidates` may start now, in at most `free` slots, next to
/// the workers already `draining` (started and still holding their pods).
pub fn admit(
    candidates: &[String],
    draining: &[String],
    budgets: &[Budget],
    free: usize,
) -> Vec<String> {
    admit_where(candidates, draining, budgets, free, |_, _| true)
}

/// [`admit`], where a candidate must also satisfy `may_join(candidate,
/// admitted so far)` (Longhorn's rules, for one).
pub fn admit_where(
    candidates: &[String],
    draining: &[String],
    budgets: &[Budget],
    free: usize,
    mut may_join: impl FnMut(&str, &[String]) -> bool,
) -> Vec<String> {
    let mut order: Vec<&String> = candidates.iter().collect();
    // Most constrained first: nodes holding the most budgeted pods.
    order.sort_by_key(|node| {
        let weight: u32 = budgets.iter().map(|b| b.pods_on(node)).sum();
        (std::cmp::Reverse(weight), (*node).clone())
    });
    // Per budget: covered pods still to go from admitted nodes, and how many
    // admitted nodes hold some.
    let mut used = vec![0u32; budgets.len()];
    let mut holders = vec![0usize; budgets.len()];
    let take = |node: &str, used: &mut [u32], holders: &mut [usize]| {
        for (i, budget) in budgets.iter().enumerate() {
            let pods = budget.pods_on(node);
            if pods > 0 {
                used[i] += pods;
                holders[i] += 1;
            }
        }
    };
    for node in draining {
        take(node, &mut used, &mut holders);
    }
    let mut admitted: Vec<String> = Vec::new();
    for node in order {
        if admitted.len() >= free {
            break;
        }
        let fits = budgets.iter().enumerate().all(|(i, budget)| {
            let pods = budget.pods_on(node);
            pods == 0 || holders[i] == 0 || used[i] + pods <= budget.allowed
        });
        if fits && may_join(node, &admitted) {
            take(node, &mut used, &mut holders);
            admitted.push(node.clone());
        }
    }
    admitted
}

/// The next batch out of `candidates` when nothing is under way.
pub fn next_wave(candidates: &[String], budgets: &[Budget], max_unavailable: usize) -> Vec<String> {
    admit(candidates, &[], budgets, max_unavailable.max(1))
}

/// All waves for `workers` if pods stayed where they are.
pub fn plan_waves(
    workers: &[String],
    budgets: &[Budget],
    max_unavailable: usize,
) -> Vec<Vec<String>> {
    let mut remaining: Vec<String> = workers.to_vec();
    let mut waves = Vec::new();
    while !remaining.is_empty() {
        let wave = next_wave(&remaining, budgets, max_unavailable);
        remaining.retain(|node| !wave.contains(node));
        waves.push(wave);
    }
    waves
}

/// Why a wave of several nodes would break `budget`, if it would.
pub fn overdrawn<'a>(wave: &[String], budgets: &'a [Budget]) -> Option<&'a Budget> {
    if wave.len() < 2 {
        return None;
    }
    budgets.iter().find(|budget| {
        let involved: Vec<u32> = wave
            .iter()
            .map(|n| budget.pods_on(n))
            .filter(|c| *c > 0)
            .collect();
        involved.len() >= 2 && involved.iter().sum::<u32>() > budget.allowed
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("worker-{i:02}")).collect()
    }

    fn budget(name: &str, allowed: u32, pods: &[(&str, u32)]) -> Budget {
        Budget {
            name: name.into(),
            allowed,
            pods_on: pods.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
            permanent: None,
        }
    }

    #[test]
    fn max_unavailable_rounds_down_but_never_to_zero() {
        assert_eq!("20%".parse::<MaxUnavailable>().unwrap().resolve(15), 3);
        assert_eq!("10%".parse::<MaxUnavailable>().unwrap().resolve(5), 1);
        assert_eq!("4".parse::<MaxUnavailable>().unwrap().resolve(15), 4);
        for bad in ["0", "0%", "101%", "-1", "x", ""] {
            assert!(bad.parse::<MaxUnavailable>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nodes_sharing_a_tight_budget_go_in_different_waves() {
        let workers = names(4);
        // shop/web may lose one pod; its pods are on worker-01 and worker-02.
        let budgets = [budget("shop/web", 1, &[("worker-01", 1), ("worker-02", 1)])];
        let waves = plan_waves(&workers, &budgets, 4);
        assert_eq!(waves.len(), 2, "{waves:?}");
        for wave in &waves {
            assert!(!(wave.contains(&"worker-01".into()) && wave.contains(&"worker-02".into())));
        }
    }

    #[test]
    fn a_lone_node_may_exceed_a_budget() {
        let budgets = [budget("db/pg", 1, &[("worker-01", 2)])];
        assert_eq!(next_wave(&names(1), &budgets, 3), ["worker-01"]);
    }

    #[test]
    fn a_free_slot_goes_to_a_node_whose_pods_fit_beside_those_still_draining() {
        // worker-01 is draining and still holds a web pod; web allows one.
        let budgets = [
            budget("shop/web", 1, &[("worker-01", 1), ("worker-02", 1)]),
            budget("shop/api", 2, &[("worker-03", 1)]),
        ];
        let candidates: Vec<String> = ["worker-02", "worker-03", "worker-04"]
            .map(String::from)
            .to_vec();
        let draining = ["worker-01".to_string()];
        assert_eq!(
            admit(&candidates, &draining, &budgets, 2),
            ["worker-03", "worker-04"],
            "worker-02 would take a second web pod"
        );
        // Once worker-01's pods are gone it no longer counts.
        assert_eq!(
            admit(&candidates, &[], &budgets, 3),
            ["worker-02", "worker-03", "worker-04"]
        );
        assert!(admit(&candidates, &draining, &budgets, 0).is_empty());
    }

    #[test]
    fn without_budgets_waves_are_max_unavailable_wide() {
        let waves = plan_waves(&names(15), &[], 4);
        assert_eq!(waves.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 4, 3]);
    }

    fn scenario() -> impl Strategy<Value = (usize, Vec<Budget>, usize)> {
        (1usize..16, 1usize..6).prop_flat_map(|(workers, max)| {
            let budgets = prop::collection::vec(
                (0u32..4, prop::collection::vec(0u32..3, workers)).prop_map(
                    move |(allowed, counts)| Budget {
                        name: "ns/pdb".into(),
                        allowed,
                        pods_on: counts
                            .into_iter()
                            .enumerate()
                            .map(|(i, c)| (format!("worker-{:02}", i + 1), c))
                            .collect(),
                        permanent: None,
                    },
                ),
                0..5,
            );
            (Just(workers), budgets, Just(max))
        })
    }

    proptest! {
        #[test]
        fn no_wave_ever_exceeds_a_budget((workers, budgets, max) in scenario()) {
            let workers = names(workers);
            let waves = plan_waves(&workers, &budgets, max);
            let mut seen: Vec<String> = waves.iter().flatten().cloned().collect();
            seen.sort();
            prop_assert_eq!(&seen, &workers, "every worker exactly once");
            for wave in &waves {
                prop_assert!(!wave.is_empty() && wave.len() <= max);
                // Two or more nodes sharing a budget never take more than it allows.
                for budget in &budgets {
                    let sharing: Vec<u32> = wave.iter().map(|n| budget.pods_on(n)).filter(|c| *c > 0).collect();
                    if sharing.len() >= 2 {
                        let taken: u32 = sharing.iter().sum();
                        prop_assert!(taken <= budget.allowed, "wave {:?} takes {} from a budget of {}", wave, taken, budget.allowed);
                    }
                }
                prop_assert!(overdrawn(wave, &budgets).is_none());
            }
        }
    }
}
