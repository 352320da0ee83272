//! The cluster's fixed registration address: a layer-4 load balancer in
//! front of the three API servers, as K3s's HA documentation sets one up
//! (HAProxy, TCP mode). It checks each API server's /readyz over TLS every
//! second and, when one is marked down, closes the sessions it carried
//! (`on-marked-down shutdown-sessions`), so clients of a dead server
//! reconnect to a live one at once instead of waiting on a silent socket.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context, bail};

use crate::netns::NetHost;
use crate::process::Process;

pub const API_PORT: u16 = 6443;

/// HAProxy's configuration for `servers` (name, address), listening on `listen`.
pub fn haproxy_config(listen: SocketAddr, servers: &[(String, Ipv4Addr)], ca: &Path) -> String {
    let mut config = format!(
        "global\n    maxconn 4096\n    log stderr format raw local0 notice\n\n\
         defaults\n    mode tcp\n    log global\n    timeout connect 2s\n    timeout check 2s\n\
         \x20   # Watches live long; the API server ends them itself.\n\
         \x20   timeout client 1h\n    timeout server 1h\n    timeout tunnel 1h\n\n\
         frontend kubernetes\n    bind {listen}\n    default_backend apiservers\n\n\
         backend apiservers\n    balance leastconn\n    option httpchk GET /readyz\n    http-check expect status 200\n\
         \x20   default-server inter 1s fall 2 rise 2 on-marked-down shutdown-sessions check check-ssl verify required ca-file {ca}\n",
        ca = ca.display(),
    );
    for (name, address) in servers {
        config.push_str(&format!("    server {name} {address}:{API_PORT}\n"));
    }
    config
}

/// Where HAProxy is (Debian's `haproxy` package), or why it cannot be used.
pub fn haproxy() -> anyhow::Result<std::path::PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin"] {
        let path = Path::new(dir).join("haproxy");
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!("haproxy is not installed (apt-get install haproxy; scripts/install-test-deps.sh does)")
}

/// Starts HAProxy in `host`'s namespace with `config` (written to `dir`).
pub fn start(host: &NetHost, dir: &Path, config: &str) -> anyhow::Result<Process> {
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    let check = host
        .command(haproxy()?)
        .arg("-c")
        .arg("-q")
        .arg("-f")
        .arg(&path)
        .output()?;
    if !check.status.success() {
        bail!(
            "haproxy refuses {}: {}",
            path.display(),
            String::from_utf8_lossy(&check.stderr).trim()
        );
    }
    let mut command = host.command(haproxy()?);
    // -db: stay in the foreground, a child of the lab.
    command.arg("-db").arg("-f").arg(&path);
    Process::spawn("haproxy", command, &dir.join("haproxy.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_is_a_checked_backend() {
        let config = haproxy_config(
            "10.77.0.2:6443".parse().unwrap(),
            &[
                ("server-1".into(), Ipv4Addr::new(10, 77, 0, 10)),
                ("server-2".into(), Ipv4Addr::new(10, 77, 0, 11)),
            ],
            Path::new("/lab/ca.crt"),
        );
        assert!(config.contains("bind 10.77.0.2:6443"), "{config}");
        assert!(
            config.contains("server server-2 10.77.0.11:6443\n"),
            "{config}"
        );
        assert!(
            config.contains("on-marked-down shutdown-sessions"),
            "{config}"
        );
        assert!(config.contains("option httpchk GET /readyz"), "{config}");
        assert!(config.contains("ca-file /lab/ca.crt"), "{config}");
    }
}
