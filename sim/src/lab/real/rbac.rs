//! Who may do what in the real cluster: the coordinator's ClusterRole (the
//! one operators install, packaging/kubernetes/coordinator-rbac.yaml), the lab's
//! operator and auditor, and what KWOK needs beyond a kubelet's rights.

/// What the coordinator may do in the cluster, and nothing more.
pub const COORDINATOR_RBAC: &str =
    include_str!("../../../../packaging/kubernetes/coordinator-rbac.yaml");
/// The operator's and the auditor's rights, and the two KWOK needs beyond
/// what the Node authorizer gives a kubelet: it lists nodes without a field
/// selector while it starts, which a node may no longer do on its own
/// (AuthorizeNodeWithSelectors), and it watches its node lease instead of
/// getting it.
pub const LAB_RBAC: &str = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: kwok-kubelet
rules:
- apiGroups: [\"\"]
  resources: [nodes]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: kwok-kubelet-leases
  namespace: kube-node-lease
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: kwok-kubelet-leases
  namespace: kube-node-lease
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: kwok-kubelet-leases
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:nodes
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kwok-kubelet
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: kwok-kubelet
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:nodes
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: lab-operator-cluster-admin
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cluster-admin
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: lab-operator
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: k3sfleet-auditor-view
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: view
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: k3sfleet-auditor
";
