// Package kube pins the Kubernetes control plane the real test tier runs:
// scripts/build-testbed.sh builds kube-apiserver, kube-controller-manager and
// kube-scheduler from the tool packages named in go.mod (update.sh writes it
// from k8s.io/kubernetes' own go.mod, whose staging replaces `go install`
// cannot follow), with the version ldflags hack/lib/version.sh sets.
package kube
