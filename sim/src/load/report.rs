//! What a simulated agent says: a hello and health reports shaped like a real
//! agent's on a typical host (two disks, Tailscale up, the usual checks), so
//! the coordinator decodes, stores and serves messages of realistic size.

use k3sfleet_proto::PROTOCOL;
use k3sfleet_proto::v1::{
    CheckResult, DiskHealth, Health, HealthReport, Hello, HostFigures, K3sState, NodeRole,
    SmartHealth, TailscaleState,
};

/// The checks a real agent reports on a worker.
const CHECKS: &[&str] = &[
    "k3s.service",
    "k3s.binary",
    "tailscale",
    "disk:/",
    "disk:/var/lib/longhorn",
    "longhorn.iscsid",
    "longhorn.modules",
    "longhorn.nfs-client",
    "time.sync",
];

pub fn hello(name: &str, role: NodeRole, k3s_version: &str, interval_ms: u32) -> Hello {
    Hello {
        node_name: name.to_string(),
        role: role as i32,
        agent_version: concat!(env!("CARGO_PKG_VERSION"), "-loadgen").to_string(),
        protocol: Some(PROTOCOL),
        k3s_version: k3s_version.to_string(),
        arch: "amd64".into(),
        os_id: "debian".into(),
        os_version: "12".into(),
        boot_id: format!("00000000-0000-4000-8000-{:012x}", fxhash(name)),
        kernel_version: "6.1.0-28-amd64".into(),
        report_interval_ms: interval_ms,
    }
}

pub fn health_report(name: &str, k3s_version: &str, sequence: u64, now_ms: i64) -> HealthReport {
    // Figures move a little from report to report, as on a real host.
    let wobble = ((sequence.wrapping_mul(2_654_435_761) ^ fxhash(name)) % 1000) as f64 / 1000.0;
    let disk = |path: &str, mount: &str, device: &str, size_gib: u64| DiskHealth {
        path: path.into(),
        mount_point: mount.into(),
        device: device.into(),
        fs_type: "ext4".into(),
        size_bytes: size_gib << 30,
        available_bytes: ((size_gib as f64 * (0.4 + wobble * 0.1)) as u64) << 30,
        inodes_total: 6_553_600,
        inodes_free: 5_900_000,
        read_only: false,
        smart: Some(SmartHealth {
            available: true,
            passed: true,
            temperature_celsius: 38,
            power_on_hours: 21_000,
            nvme_percentage_used: 4,
            ..Default::default()
        }),
        error: String::new(),
    };
    HealthReport {
        sequence,
        observed_at_unix_ms: now_ms,
        overall: Health::Ok as i32,
        host: Some(HostFigures {
            cpu_count: 16,
            cpu_usage_ratio: 0.2 + wobble * 0.3,
            memory_total_bytes: 64 << 30,
            memory_available_bytes: (40 << 30) + (wobble * 1e9) as u64,
            load1: 2.0 + wobble,
            load5: 2.1,
            load15: 2.0,
            uptime_seconds: 1_000_000 + sequence * 15,
        }),
        k3s: Some(K3sState {
            installed_version: k3s_version.to_string(),
            binary_sha256: format!("{:064x}", fxhash(k3s_version)),
            service_unit: "k3s-agent.service".into(),
            service_active: true,
            previous_version: String::new(),
        }),
        tailscale: Some(TailscaleState {
            installed: true,
            backend_state: "Running".into(),
            tailscale_ips: vec![format!("100.64.{}.{}", fxhash(name) % 250, sequence % 250)],
            online: true,
            hostname: name.to_string(),
            dns_name: format!("{name}.tail1234.ts.net."),
            tags: vec!["tag:k3s".into()],
            key_expiry_unix_ms: now_ms + 90 * 86_400_000,
            version: "1.76.6".into(),
            ..Default::default()
        }),
        disks: vec![
            disk("/", "/", "/dev/nvme0n1p2", 200),
            disk(
                "/var/lib/longhorn",
                "/var/lib/longhorn",
                "/dev/nvme1n1",
                1800,
            ),
        ],
        checks: CHECKS
            .iter()
            .map(|id| CheckResult {
                id: (*id).to_string(),
                status: Health::Ok as i32,
                message: "ok".into(),
            })
            .collect(),
    }
}

/// A small stable hash (FNV-1a) for per-node figures.
fn fxhash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
