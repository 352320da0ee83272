//! Hosts with their own network: one Linux network namespace per host, each
//! with one address on a private /24, all cabled to a switch (a bridge in a
//! namespace of its own, so the machine's own network is never touched).
//!
//! Cutting a host pulls its cable at the switch: its packets vanish without a
//! FIN or RST, as when a host drops off the network, and the host keeps its
//! address so healing is plugging the cable back in. Needs root (CI runs as
//! root); [`NetLab::create`] says why when it cannot.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sched::CloneFlags;

/// The private network inside a lab; nothing outside the namespaces sees it.
const SUBNET: [u8; 3] = [10, 77, 0];

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A switch and the hosts cabled to it.
#[derive(Debug)]
pub struct NetLab {
    prefix: String,
    switch: String,
    hosts: Vec<NetHost>,
}

/// One host: a namespace with `eth0` at `address`.
#[derive(Debug, Clone)]
pub struct NetHost {
    pub name: String,
    pub netns: String,
    pub address: Ipv4Addr,
    /// Its cable's end at the switch.
    port: String,
}

/// Why network namespaces cannot be used here, or `None` if they can.
pub fn unavailable_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root for network namespaces (CI runs as root)".into());
    }
    let probe = format!("k3sf-probe-{}", std::process::id());
    match ip(&["netns", "add", &probe]) {
        Ok(()) => {
            let _ = ip(&["netns", "del", &probe]);
            None
        }
        Err(err) => Some(format!("cannot create a network namespace: {err:#}")),
    }
}

/// Removes what labs of processes that are gone left behind: a process
/// killed outright (SIGKILL, a test runner's timeout) runs no destructor, so
/// its namespaces stay, and every process still inside them (agents, a real
/// cluster's etcd members and API servers) keeps running. Each lab's
/// namespaces are named after the process that made it (`k3sf<pid>-...`):
/// those of a dead pid are emptied (SIGKILL to what runs in them) and
/// deleted. Labs of live processes are left alone.
pub fn sweep_orphans() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(owner) = name
            .strip_prefix("k3sf")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = ip(&["netns", "del", name]);
    }
}

impl NetLab {
    /// Creates the switch; hosts are added with [`NetLab::add_host`].
    /// Sweeps up after labs whose process died first ([`sweep_orphans`]).
    pub fn create() -> anyhow::Result<NetLab> {
        sweep_orphans();
        let prefix = format!(
            "k3sf{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("{prefix}-sw");
        ip(&["netns", "add", &switch])?;
        let lab = NetLab {
            prefix,
            switch,
            hosts: Vec::new(),
        };
        lab.in_switch(&["link", "add", "br0", "type", "bridge"])?;
        lab.in_switch(&["link", "set", "br0", "up"])?;
        Ok(lab)
    }

    /// Adds a host at 10.77.0.`octet`, cabled to the switch and up.
    pub fn add_host(&mut self, name: &str, octet: u8) -> anyhow::Result<NetHost> {
        let netns = format!("{}-{octet}", self.prefix);
        let port = format!("p{octet}");
        let address = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], octet);
        ip(&["netns", "add", &netns])?;
        let host = NetHost {
            name: name.to_string(),
            netns: netns.clone(),
            address,
            port: port.clone(),
        };
        // Pushed before anything can fail, so Drop removes the namespace.
        self.hosts.push(host.clone());
        ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            &netns,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.switch,
        ])?;
        self.in_switch(&["link", "set", &port, "master", "br0"])?;
        self.in_switch(&["link", "set", &port, "up"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        Ok(host)
    }

    pub fn host(&self, name: &str) -> &NetHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in the lab"))
    }

    /// Pulls the host's cable at the switch: its traffic vanishes silently.
    pub fn cut(&self, name: &str) -> anyhow::Result<()> {
        self.in_switch(&["link", "set", &self.host(name).port, "down"])
    }

    /// Plugs the host's cable back in.
    pub fn heal(&self, name: &str) -> anyhow::Result<()> {
        self.in_switch(&["link", "set", &self.host(name).port, "up"])
    }

    fn in_switch(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", self.switch.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl NetHost {
    /// `program args...` run inside this host's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]).arg(program);
        command
    }

    /// Runs `work` on a thread that has entered this host's namespace.
    /// Network namespaces are per thread, and a socket stays in the
    /// namespace it was created in whichever thread uses it later: this is
    /// how the test process itself serves or connects inside a host.
    pub fn inside<R: Send>(&self, work: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
        let path = format!("/run/netns/{}", self.netns);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let namespace =
                        std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                    nix::sched::setns(&namespace, CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("entering {path}"))?;
                    Ok(work())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A listener on this host's address, created inside its namespace.
    pub fn listen(&self, port: u16) -> anyhow::Result<TcpListener> {
        let addr = SocketAddr::new(self.address.into(), port);
        self.inside(|| TcpListener::bind(addr))?
            .with_context(|| format!("listening on {addr} in {}", self.netns))
    }

    /// A connection from inside this host's namespace.
    pub fn connect(&self, addr: SocketAddr) -> anyhow::Result<TcpStream> {
        self.inside(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))?
            .with_context(|| format!("connecting to {addr} from {}", self.netns))
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        // Processes still inside keep a namespace's network alive but
        // unreachable; their owners kill them (Process kills on drop).
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &host.netns]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (apt package iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
