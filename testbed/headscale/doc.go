// Package headscale pins the Headscale control server the tailnet tests
// run: scripts/build-testbed.sh builds the tool package named in go.mod
// (github.com/juanfont/headscale/cmd/headscale, pure-Go SQLite, no cgo)
// from the module proxy into .cache/testbed. v0.29.1 supports Tailscale
// clients v1.80 and newer (its CHANGELOG and hscontrol/capver).
package headscale
