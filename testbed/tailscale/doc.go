// Package tailscale pins the Tailscale client the tailnet tests run:
// scripts/build-testbed.sh builds the tool packages named in go.mod
// (tailscale.com/cmd/tailscale and tailscale.com/cmd/tailscaled) from the
// module proxy into .cache/testbed. v1.98 is the newest client minor that
// the pinned Headscale (testbed/headscale) lists as supported.
package tailscale
