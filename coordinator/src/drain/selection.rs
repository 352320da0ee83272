//! Which of a node's pods a drain evicts, by kubectl's rules
//! (k8s.io/kubectl/pkg/drain/filters.go), with DaemonSet pods always left in
//! place (`--ignore-daemonsets`, the only sane choice before an upgrade).
//!
//! kubectl's filters, first "no" wins:
//! 1. Mirror pods (static pods) stay: the API cannot remove them.
//! 2. DaemonSet pods stay, unless finished; if their DaemonSet is gone they are
//!    an error unless `--force` (then they go).
//! 3. Pods with emptyDir volumes are an error unless `--delete-emptydir-data`,
//!    unless finished.
//! 4. Pods without a controller are an error unless `--force`, unless finished.
//!
//! Unlike kubectl, a refused pod lists every option it lacks, so one retry
//! with the right flags is enough.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// The annotation the kubelet puts on the API's copy of a static pod.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The options that decide the doubtful pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SelectionOptions {
    pub delete_emptydir_data: bool,
    pub force: bool,
}

/// What happens to one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Evict,
    /// Stays on the node, and that is fine.
    Skip(String),
    /// Cannot go without an option; the drain refuses to start.
    Refuse(String),
}

/// A node's pods, sorted by namespace/name within each group.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub evict: Vec<Pod>,
    pub skipped: Vec<(Pod, String)>,
    pub refused: Vec<(Pod, String)>,
}

/// Sorts `pods` by [`verdict`]. `missing_daemonsets` holds the
/// (namespace, name) of DaemonSets that owning pods name but that do not exist.
pub fn select(
    pods: Vec<Pod>,
    options: SelectionOptions,
    missing_daemonsets: &BTreeSet<(String, String)>,
) -> Selection {
    let mut pods = pods;
    pods.sort_by_key(pod_key);
    let mut selection = Selection::default();
    for pod in pods {
        match verdict(&pod, options, missing_daemonsets) {
            Verdict::Evict => selection.evict.push(pod),
            Verdict::Skip(why) => selection.skipped.push((pod, why)),
            Verdict::Refuse(why) => selection.refused.push((pod, why)),
        }
    }
    selection
}

/// The decision for one pod.
pub fn verdict(
    pod: &Pod,
    options: SelectionOptions,
    missing_daemonsets: &BTreeSet<(String, String)>,
) -> Verdict {
    // The API cannot remove a static pod, finished or not.
    if is_mirror(pod) {
        return Verdict::Skip("mirror pod (a static pod; the kubelet owns it)".into());
    }
    // Finished pods always go: they hold nothing, and kubectl removes them.
    if is_finished(pod) {
        return Verdict::Evict;
    }
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    if let Some(owner) = controller(pod).filter(|owner| owner.kind == "DaemonSet") {
        if !missing_daemonsets.contains(&(namespace.clone(), owner.name.clone())) {
            return Verdict::Skip("DaemonSet pod".into());
        }
        if !options.force {
            return Verdict::Refuse(format!(
                "its DaemonSet {namespace}/{} is gone and nothing would recreate it: pass --force",
                owner.name
            ));
        }
        return Verdict::Evict;
    }
    let mut lacking = Vec::new();
    if uses_empty_dir(pod) && !options.delete_emptydir_data {
        lacking.push((
            "uses emptyDir, whose data is lost",
            "--delete-emptydir-data",
        ));
    }
    if controller(pod).is_none() && !options.force {
        lacking.push(("has no controller to recreate it", "--force"));
    }
    if lacking.is_empty() {
        return Verdict::Evict;
    }
    let why: Vec<&str> = lacking.iter().map(|(why, _)| *why).collect();
    let flags: Vec<&str> = lacking.iter().map(|(_, flag)| *flag).collect();
    Verdict::Refuse(format!("{}: pass {}", why.join(" and "), flags.join(" ")))
}

/// DaemonSets (namespace, name) that owning, unfinished pods refer to: the
/// ones whose existence must be checked.
pub fn daemonsets_to_check(pods: &[Pod]) -> BTreeSet<(String, String)> {
    pods.iter()
        .filter(|pod| !is_finished(pod))
        .filter_map(|pod| {
            let owner = controller(pod).filter(|owner| owner.kind == "DaemonSet")?;
            Some((
                pod.metadata.namespace.clone().unwrap_or_default(),
                owner.name.clone(),
            ))
        })
        .collect()
}

/// "namespace/name".
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

pub fn controller(pod: &Pod) -> Option<&OwnerReference> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|owner| owner.controller == Some(true))
}

pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
        .unwrap_or("")
}

pub fn is_finished(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|annotations| annotations.contains_key(MIRROR_ANNOTATION))
}

pub fn uses_empty_dir(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.volumes.as_ref())
        .is_some_and(|volumes| volumes.iter().any(|volume| volume.empty_dir.is_some()))
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, PodSpec, PodStatus, Volume};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    /// A running pod in "shop", owned by a ReplicaSet unless changed.
    pub fn pod(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some("shop".into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                owner_references: Some(vec![owner("ReplicaSet", "web-1")]),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        }
    }

    pub fn owner(kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            controller: Some(true),
            ..Default::default()
        }
    }

    fn daemon(name: &str) -> Pod {
        let mut pod = pod(name);
        pod.metadata.owner_references = Some(vec![owner("DaemonSet", "agent")]);
        pod
    }

    fn bare(name: &str) -> Pod {
        let mut pod = pod(name);
        pod.metadata.owner_references = None;
        pod
    }

    fn with_empty_dir(mut pod: Pod) -> Pod {
        pod.spec.as_mut().unwrap().volumes = Some(vec![Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        }]);
        pod
    }

    fn finished(mut pod: Pod, phase: &str) -> Pod {
        pod.status.as_mut().unwrap().phase = Some(phase.into());
        pod
    }

    fn mirror(mut pod: Pod) -> Pod {
        pod.metadata.annotations = Some([(MIRROR_ANNOTATION.to_string(), "x".to_string())].into());
        pod
    }

    const SAFE: SelectionOptions = SelectionOptions {
        delete_emptydir_data: false,
        force: false,
    };
    const ALL: SelectionOptions = SelectionOptions {
        delete_emptydir_data: true,
        force: true,
    };

    fn none() -> BTreeSet<(String, String)> {
        BTreeSet::new()
    }

    fn gone_agent() -> BTreeSet<(String, String)> {
        [("shop".to_string(), "agent".to_string())].into()
    }

    fn is_refused(verdict: &Verdict, needle: &str) -> bool {
        matches!(verdict, Verdict::Refuse(why) if why.contains(needle))
    }

    #[test]
    fn replicated_pods_are_evicted() {
        assert_eq!(verdict(&pod("web"), SAFE, &none()), Verdict::Evict);
    }

    #[test]
    fn daemonset_pods_stay_unless_their_daemonset_is_gone() {
        assert_eq!(
            verdict(&daemon("agent-x"), SAFE, &none()),
            Verdict::Skip("DaemonSet pod".into())
        );
        let orphan = verdict(&daemon("agent-x"), SAFE, &gone_agent());
        assert!(is_refused(&orphan, "shop/agent is gone"), "{orphan:?}");
        assert!(is_refused(&orphan, "--force"), "{orphan:?}");
        assert_eq!(
            verdict(&daemon("agent-x"), ALL, &gone_agent()),
            Verdict::Evict
        );
        // --force does not evict DaemonSet pods whose DaemonSet exists.
        assert!(matches!(
            verdict(&daemon("agent-x"), ALL, &none()),
            Verdict::Skip(_)
        ));
    }

    #[test]
    fn mirror_pods_always_stay() {
        for options in [SAFE, ALL] {
            assert!(matches!(
                verdict(&mirror(bare("etcd-server-1")), options, &none()),
                Verdict::Skip(why) if why.contains("mirror")
            ));
        }
    }

    #[test]
    fn empty_dir_needs_its_option() {
        let cache = with_empty_dir(pod("cache"));
        assert!(is_refused(
            &verdict(&cache, SAFE, &none()),
            "--delete-emptydir-data"
        ));
        let options = SelectionOptions {
            delete_emptydir_data: true,
            force: false,
        };
        assert_eq!(verdict(&cache, options, &none()), Verdict::Evict);
    }

    #[test]
    fn unmanaged_pods_need_force() {
        let refused = verdict(&bare("debug"), SAFE, &none());
        assert!(is_refused(&refused, "no controller"), "{refused:?}");
        assert!(!is_refused(&refused, "--delete-emptydir-data"));
        let options = SelectionOptions {
            delete_emptydir_data: false,
            force: true,
        };
        assert_eq!(verdict(&bare("debug"), options, &none()), Verdict::Evict);
    }

    #[test]
    fn a_refusal_names_every_missing_option() {
        let refused = verdict(&with_empty_dir(bare("scratch")), SAFE, &none());
        let Verdict::Refuse(why) = refused else {
            panic!("{refused:?}")
        };
        assert!(
            why.ends_with("pass --delete-emptydir-data --force"),
            "{why}"
        );
    }

    #[test]
    fn finished_pods_always_go() {
        for phase in ["Succeeded", "Failed"] {
            for pod in [with_empty_dir(bare("job")), daemon("agent-old")] {
                assert_eq!(
                    verdict(&finished(pod, phase), SAFE, &gone_agent()),
                    Verdict::Evict
                );
            }
            // Except a static pod's mirror, which the API cannot remove.
            assert!(matches!(
                verdict(&finished(mirror(bare("static")), phase), SAFE, &none()),
                Verdict::Skip(_)
            ));
        }
    }

    #[test]
    fn selection_sorts_into_groups_in_name_order() {
        let pods = vec![
            pod("web-b"),
            daemon("agent-x"),
            pod("web-a"),
            bare("debug"),
            mirror(bare("etcd")),
        ];
        let selection = select(pods, SAFE, &none());
        let names = |pods: Vec<&Pod>| pods.into_iter().map(pod_key).collect::<Vec<_>>();
        assert_eq!(
            names(selection.evict.iter().collect()),
            ["shop/web-a", "shop/web-b"]
        );
        assert_eq!(
            names(selection.skipped.iter().map(|(p, _)| p).collect()),
            ["shop/agent-x", "shop/etcd"]
        );
        assert_eq!(
            names(selection.refused.iter().map(|(p, _)| p).collect()),
            ["shop/debug"]
        );
    }

    #[test]
    fn only_unfinished_daemonset_pods_need_their_daemonset_checked() {
        let pods = vec![
            daemon("agent-x"),
            finished(daemon("agent-old"), "Failed"),
            pod("web"),
        ];
        assert_eq!(daemonsets_to_check(&pods), gone_agent());
    }
}
