//! Checks of a parsed scenario that TOML typing cannot express; each error names the field.

use std::collections::HashSet;

use super::{IntOrPercent, Scenario, ScenarioError};

struct Checker<'a> {
    origin: &'a str,
}

impl Checker<'_> {
    fn fail(
        &self,
        field: impl Into<String>,
        value: impl std::fmt::Debug,
        why: impl Into<String>,
    ) -> ScenarioError {
        ScenarioError::Invalid {
            origin: self.origin.to_owned(),
            field: field.into(),
            value: format!("{value:?}"),
            why: why.into(),
        }
    }

    fn dns_name(&self, field: String, name: &str) -> Result<(), ScenarioError> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !name.starts_with(['-', '.'])
            && !name.ends_with(['-', '.']);
        if ok {
            Ok(())
        } else {
            Err(self.fail(
                field,
                name,
                "must be a lowercase DNS-1123 name (a-z, 0-9, '-', '.'; at most 63)",
            ))
        }
    }

    fn seconds(&self, field: &str, value: f64) -> Result<(), ScenarioError> {
        if value.is_finite() && value >= 0.0 {
            Ok(())
        } else {
            Err(self.fail(
                field,
                value,
                "must be a non-negative number of cluster seconds",
            ))
        }
    }

    fn unique<'b>(
        &self,
        seen: &mut HashSet<(&'b str, &'b str)>,
        field: String,
        ns: &'b str,
        name: &'b str,
    ) -> Result<(), ScenarioError> {
        if seen.insert((ns, name)) {
            Ok(())
        } else {
            Err(self.fail(field, format!("{ns}/{name}"), "defined twice"))
        }
    }
}

pub(super) fn validate(s: &Scenario, origin: &str) -> Result<(), ScenarioError> {
    let c = Checker { origin };
    if !(s.cluster.time_scale.is_finite() && s.cluster.time_scale > 0.0) {
        return Err(c.fail(
            "cluster.time_scale",
            s.cluster.time_scale,
            "must be a positive number",
        ));
    }
    if !(s.cluster.bookmark_interval.is_finite() && s.cluster.bookmark_interval > 0.0) {
        return Err(c.fail(
            "cluster.bookmark_interval",
            s.cluster.bookmark_interval,
            "must be a positive number of seconds",
        ));
    }
    if s.cluster.watch_history == 0 {
        return Err(c.fail("cluster.watch_history", 0, "must keep at least one event"));
    }
    if !s.cluster.kubernetes_version.starts_with('v') {
        return Err(c.fail(
            "cluster.kubernetes_version",
            &s.cluster.kubernetes_version,
            "must look like v1.33.5+k3s1",
        ));
    }
    c.seconds("timings.replacement_delay", s.timings.replacement_delay)?;
    c.seconds("timings.ready_delay", s.timings.ready_delay)?;
    c.seconds("timings.termination", s.timings.termination)?;
    c.seconds("timings.pdb_sync_delay", s.timings.pdb_sync_delay)?;
    if let Some(grace) = s.timings.node_monitor_grace {
        c.seconds("timings.node_monitor_grace", grace)?;
    }

    let mut node_names = HashSet::new();
    for (i, node) in s.nodes.iter().enumerate() {
        c.dns_name(format!("nodes[{i}].name"), &node.name)?;
        if !node_names.insert(node.name.as_str()) {
            return Err(c.fail(format!("nodes[{i}].name"), &node.name, "defined twice"));
        }
        for (j, taint) in node.taints.iter().enumerate() {
            if !matches!(
                taint.effect.as_str(),
                "NoSchedule" | "PreferNoSchedule" | "NoExecute"
            ) {
                return Err(c.fail(
                    format!("nodes[{i}].taints[{j}].effect"),
                    &taint.effect,
                    "must be NoSchedule, PreferNoSchedule or NoExecute",
                ));
            }
        }
    }
    for (i, ns) in s.namespaces.iter().enumerate() {
        c.dns_name(format!("namespaces[{i}]"), ns)?;
    }

    let mut seen = HashSet::new();
    for (section, list) in [
        ("deployments", &s.deployments),
        ("statefulsets", &s.statefulsets),
    ] {
        seen.clear();
        for (i, w) in list.iter().enumerate() {
            c.dns_name(format!("{section}[{i}].namespace"), &w.namespace)?;
            c.dns_name(format!("{section}[{i}].name"), &w.name)?;
            c.unique(
                &mut seen,
                format!("{section}[{i}].name"),
                &w.namespace,
                &w.name,
            )?;
            if w.replicas < 0 {
                return Err(c.fail(
                    format!("{section}[{i}].replicas"),
                    w.replicas,
                    "must not be negative",
                ));
            }
            if w.grace_period < 0 {
                return Err(c.fail(
                    format!("{section}[{i}].grace_period"),
                    w.grace_period,
                    "must not be negative",
                ));
            }
        }
    }
    seen.clear();
    for (i, d) in s.daemonsets.iter().enumerate() {
        c.dns_name(format!("daemonsets[{i}].namespace"), &d.namespace)?;
        c.dns_name(format!("daemonsets[{i}].name"), &d.name)?;
        c.unique(
            &mut seen,
            format!("daemonsets[{i}].name"),
            &d.namespace,
            &d.name,
        )?;
    }
    seen.clear();
    for (i, p) in s.pods.iter().enumerate() {
        c.dns_name(format!("pods[{i}].namespace"), &p.namespace)?;
        c.dns_name(format!("pods[{i}].name"), &p.name)?;
        c.unique(&mut seen, format!("pods[{i}].name"), &p.namespace, &p.name)?;
        match &p.node {
            Some(node) if !node_names.contains(node.as_str()) => {
                return Err(c.fail(format!("pods[{i}].node"), node, "no such node in [[nodes]]"));
            }
            None if p.mirror => {
                return Err(c.fail(
                    format!("pods[{i}].mirror"),
                    true,
                    "a mirror pod needs `node`",
                ));
            }
            _ => {}
        }
    }
    seen.clear();
    for (i, pdb) in s.pdbs.iter().enumerate() {
        c.dns_name(format!("pdbs[{i}].namespace"), &pdb.namespace)?;
        c.dns_name(format!("pdbs[{i}].name"), &pdb.name)?;
        c.unique(
            &mut seen,
            format!("pdbs[{i}].name"),
            &pdb.namespace,
            &pdb.name,
        )?;
        if pdb.selector.is_empty() {
            return Err(c.fail(
                format!("pdbs[{i}].selector"),
                "{}",
                "needs at least one label",
            ));
        }
        match (&pdb.min_available, &pdb.max_unavailable) {
            (Some(_), Some(_)) => {
                return Err(c.fail(
                    format!("pdbs[{i}]"),
                    "min_available and max_unavailable",
                    "set only one",
                ));
            }
            (None, None) => {
                return Err(c.fail(
                    format!("pdbs[{i}]"),
                    "neither",
                    "set min_available or max_unavailable",
                ));
            }
            _ => {}
        }
        for (field, value) in [
            ("min_available", &pdb.min_available),
            ("max_unavailable", &pdb.max_unavailable),
        ] {
            match value {
                Some(IntOrPercent::Int(n)) if *n < 0 => {
                    return Err(c.fail(format!("pdbs[{i}].{field}"), n, "must not be negative"));
                }
                Some(IntOrPercent::Percent(p))
                    if crate::controllers::pdb::parse_percent(p).is_none() =>
                {
                    return Err(c.fail(
                        format!("pdbs[{i}].{field}"),
                        p,
                        "must be an integer or a percentage like \"50%\"",
                    ));
                }
                _ => {}
            }
        }
        if let Some(policy) = &pdb.unhealthy_pod_eviction_policy
            && !matches!(policy.as_str(), "IfHealthyBudget" | "AlwaysAllow")
        {
            return Err(c.fail(
                format!("pdbs[{i}].unhealthy_pod_eviction_policy"),
                policy,
                "must be IfHealthyBudget or AlwaysAllow",
            ));
        }
    }
    if let Some(longhorn) = &s.longhorn {
        validate_longhorn(&c, s, longhorn)?;
    }
    Ok(())
}

fn validate_longhorn(
    c: &Checker<'_>,
    s: &Scenario,
    longhorn: &super::LonghornSection,
) -> Result<(), ScenarioError> {
    if !crate::longhorn::DRAIN_POLICIES.contains(&longhorn.node_drain_policy.as_str()) {
        return Err(c.fail(
            "longhorn.node_drain_policy",
            &longhorn.node_drain_policy,
            format!(
                "must be one of {}",
                crate::longhorn::DRAIN_POLICIES.join(", ")
            ),
        ));
    }
    c.seconds("longhorn.rebuild_seconds", longhorn.rebuild_seconds)?;
    c.seconds(
        "longhorn.replica_replenishment_wait_interval",
        longhorn.replica_replenishment_wait_interval,
    )?;
    let longhorn_nodes: Vec<&str> = s
        .nodes
        .iter()
        .filter(|n| {
            longhorn
                .node_selector
                .iter()
                .all(|(k, v)| n.labels.get(k) == Some(v))
        })
        .map(|n| n.name.as_str())
        .collect();
    let mut names = HashSet::new();
    for (i, volume) in longhorn.volumes.iter().enumerate() {
        let field = |f: &str| format!("longhorn.volumes[{i}].{f}");
        c.dns_name(field("name"), &volume.name)?;
        if !names.insert(volume.name.as_str()) {
            return Err(c.fail(field("name"), &volume.name, "defined twice"));
        }
        if volume.replicas == 0 || volume.replicas as usize > longhorn_nodes.len() {
            return Err(c.fail(
                field("replicas"),
                volume.replicas,
                format!(
                    "must be between 1 and the {} nodes Longhorn runs on",
                    longhorn_nodes.len()
                ),
            ));
        }
        if let Some(consumer) = &volume.consumer
            && !consumer
                .split_once('/')
                .is_some_and(|(ns, pod)| !ns.is_empty() && !pod.is_empty())
        {
            return Err(c.fail(field("consumer"), consumer, "must be namespace/pod"));
        }
        if !volume.nodes.is_empty() {
            let distinct: HashSet<&String> = volume.nodes.iter().collect();
            if volume.nodes.len() != volume.replicas as usize
                || distinct.len() != volume.nodes.len()
            {
                return Err(c.fail(
                    field("nodes"),
                    &volume.nodes,
                    "must name one distinct node per replica",
                ));
            }
            if let Some(stray) = volume
                .nodes
                .iter()
                .find(|n| !longhorn_nodes.contains(&n.as_str()))
            {
                return Err(c.fail(field("nodes"), stray, "is not a node Longhorn runs on"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::*;

    fn err(text: &str) -> String {
        Scenario::from_toml(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn minimal_scenario_parses_with_defaults() {
        let s = Scenario::from_toml("[[nodes]]\nname = \"a\"\n", "t.toml").unwrap();
        assert_eq!(s.nodes[0].role, Role::Agent);
        assert_eq!(s.timings.replacement_delay, 5.0);
        assert!(s.all_namespaces().contains(&"kube-system".to_string()));
    }

    #[test]
    fn errors_name_file_field_and_value() {
        let e = err("[cluster]\ntime_scale = 0\n");
        assert!(
            e.contains("t.toml") && e.contains("cluster.time_scale") && e.contains('0'),
            "{e}"
        );
        let e = err("[[nodes]]\nname = \"a\"\n[[nodes]]\nname = \"a\"\n");
        assert!(
            e.contains("nodes[1].name") && e.contains("defined twice"),
            "{e}"
        );
        let e = err("[[pods]]\nnamespace = \"x\"\nname = \"p\"\nnode = \"ghost\"\n");
        assert!(e.contains("pods[0].node") && e.contains("ghost"), "{e}");
        let e = err(
            "[[pdbs]]\nnamespace = \"x\"\nname = \"p\"\nselector = { app = \"a\" }\nmin_available = \"5x\"\n",
        );
        assert!(
            e.contains("pdbs[0].min_available") && e.contains("5x"),
            "{e}"
        );
        let e = err("[[nodes]]\nname = \"Bad_Name\"\n");
        assert!(e.contains("nodes[0].name"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = Scenario::from_toml("[[nodes]]\nname = \"a\"\nrolle = \"server\"\n", "t.toml")
            .unwrap_err();
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(
            chain.contains("t.toml") && chain.contains("rolle"),
            "{chain}"
        );
    }
}
