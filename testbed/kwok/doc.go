// Package kwok pins KWOK, which plays the kubelet of every node in the real
// test tier: scripts/build-testbed.sh builds sigs.k8s.io/kwok/cmd/kwok from
// the module proxy; stages.yaml is the node and pod lifecycle it runs.
package kwok
