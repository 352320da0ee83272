//! Stand-in hosts: a real `k3sfleet-agent` runs against a temporary host root
//! in which small scripts take the place of systemctl, tailscale, smartctl,
//! dpkg-query, rpm, modprobe and chcon, and a shell script plays the K3s
//! binary. The agent's code paths are the production ones; only its
//! `[host]` config points at the sandbox.
//!
//! The pattern, for tests and the demo:
//! 1. [`StandinHost::create`] lays out a host root (os-release, /proc files,
//!    mountinfo, sysfs for SMART, Longhorn's host tools) prepared so every
//!    check passes, and writes the tool scripts with the root baked in;
//! 2. [`HostToml::render`] gives the `[host]` config section to append to
//!    the agent's config;
//! 3. the test changes the host through the setters (stop a unit, remove a
//!    package, unload a module) and reads what the agent did through
//!    [`StandinHost::calls`] and the files under the root.
//!
//! The stand-in state lives under `<root>/.standin/` (see each script's
//! header comment for its files). [`k3s_binary`] and [`write_release`] make
//! K3s "releases" (shell scripts that answer `--version` with their version)
//! laid out like the real ones, and [`Mirror`] serves them over HTTP with
//! injectable slowness and failures. [`real`] is the real test tier's K3s:
//! etcd, the upstream control plane and KWOK, driven by the same script.

mod host;
mod k3s;
pub mod kubelet;
mod mirror;
pub mod real;

pub use host::{Distro, HostToml, StandinHost};
pub use k3s::{K3sBehaviour, arch_assets, k3s_binary, k3s_unit, write_release};
pub use mirror::{Mirror, MirrorBehaviour};
