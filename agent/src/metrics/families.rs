//! The metric families the agent exposes, set from an observation at scrape
//! time. Names follow the Prometheus guides: one `k3sfleet_` prefix, base
//! units (`_bytes`, `_seconds`, `_ratio`), `*_info` gauges of value 1 for
//! versions, enum states as one 0/1 series per state, and a failed
//! collection as a 0/1 gauge rather than a failed scrape.

use k3sfleet_proto::v1::{Health, HostFigures};
use prometheus::{Gauge, GaugeVec, IntCounterVec, Opts, Registry};

use crate::checks::status_name;
use crate::observe::Observation;

/// Tailscale's backend states (ipn.State).
const TAILSCALE_STATES: [&str; 6] = [
    "NoState",
    "NeedsLogin",
    "NeedsMachineAuth",
    "Stopped",
    "Starting",
    "Running",
];
const STATUSES: [Health; 3] = [Health::Ok, Health::Warning, Health::Error];

pub struct Families {
    pub registry: Registry,
    agent_info: GaugeVec,
    agent_cert_expiry: GaugeVec,
    commands: IntCounterVec,
    host_cpus: Gauge,
    host_cpu_usage: Gauge,
    host_memory_total: Gauge,
    host_memory_available: Gauge,
    host_load: GaugeVec,
    host_uptime: Gauge,
    k3s_info: GaugeVec,
    k3s_installed: Gauge,
    k3s_releases_verified: Gauge,
    k3s_active: Gauge,
    k3s_rollback_available: Gauge,
    tailscale_info: GaugeVec,
    tailscale_state: GaugeVec,
    tailscale_online: Gauge,
    tailscale_key_expiry: Gauge,
    disk_info: GaugeVec,
    disk_statfs_success: GaugeVec,
    disk_size: GaugeVec,
    disk_available: GaugeVec,
    disk_inodes: GaugeVec,
    disk_inodes_free: GaugeVec,
    disk_read_only: GaugeVec,
    disk_smart_available: GaugeVec,
    disk_smart_passed: GaugeVec,
    disk_smart_temperature: GaugeVec,
    disk_smart_power_on: GaugeVec,
    disk_nvme_used: GaugeVec,
    disk_nvme_media_errors: GaugeVec,
    check_status: GaugeVec,
    host_health: GaugeVec,
    checks_timestamp: Gauge,
    checks_duration: Gauge,
}

impl std::fmt::Debug for Families {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Families")
    }
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    let gauge = Gauge::with_opts(Opts::new(name, help)).expect("valid metric");
    registry
        .register(Box::new(gauge.clone()))
        .expect("unique metric");
    gauge
}

fn gauges(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let vec = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(vec.clone()))
        .expect("unique metric");
    vec
}

fn bool_value(value: bool) -> f64 {
    if value { 1.0 } else { 0.0 }
}

impl Default for Families {
    fn default() -> Self {
        let r = Registry::new();
        let commands = IntCounterVec::new(
            Opts::new(
                "k3sfleet_agent_commands_total",
                "Commands from the coordinator this agent process ran, by kind and outcome.",
            ),
            &["command", "outcome"],
        )
        .expect("valid metric");
        r.register(Box::new(commands.clone()))
            .expect("unique metric");
        Families {
            agent_info: gauges(
                &r,
                "k3sfleet_agent_info",
                "The k3sfleet agent's version; always 1.",
                &["version", "role"],
            ),
            agent_cert_expiry: gauges(
                &r,
                "k3sfleet_agent_certificate_expiry_timestamp_seconds",
                "When the agent's client certificate expires (notAfter), as a Unix timestamp; absent when the certificate cannot be read.",
                &[],
            ),
            commands,
            host_cpus: gauge(&r, "k3sfleet_host_cpus", "Number of logical CPUs."),
            host_cpu_usage: gauge(
                &r,
                "k3sfleet_host_cpu_usage_ratio",
                "Share of CPU time in use since the previous sample (0-1).",
            ),
            host_memory_total: gauge(&r, "k3sfleet_host_memory_total_bytes", "Total memory."),
            host_memory_available: gauge(
                &r,
                "k3sfleet_host_memory_available_bytes",
                "Memory available for new work.",
            ),
            host_load: gauges(
                &r,
                "k3sfleet_host_load",
                "Load average over the window.",
                &["window"],
            ),
            host_uptime: gauge(
                &r,
                "k3sfleet_host_uptime_seconds",
                "Time since the host booted.",
            ),
            k3s_info: gauges(
                &r,
                "k3sfleet_k3s_info",
                "The installed K3s version and its unit; always 1.",
                &["version", "unit"],
            ),
            k3s_installed: gauge(
                &r,
                "k3sfleet_k3s_installed",
                "Whether a K3s binary is installed (1) or not (0).",
            ),
            k3s_releases_verified: gauge(
                &r,
                "k3sfleet_k3s_releases_verified",
                "Whether K3s installs and rollbacks must match a release manifest signed by a trusted key (1) or are not verified (0).",
            ),
            k3s_active: gauge(
                &r,
                "k3sfleet_k3s_service_active",
                "Whether the K3s unit is active (1) or not (0).",
            ),
            k3s_rollback_available: gauge(
                &r,
                "k3sfleet_k3s_rollback_available",
                "Whether a previous K3s binary is kept for rollback (1) or not (0).",
            ),
            tailscale_info: gauges(
                &r,
                "k3sfleet_tailscale_info",
                "The installed Tailscale version and the node's tailnet name and addresses; always 1.",
                &["version", "hostname", "dns_name", "tailscale_ips"],
            ),
            tailscale_state: gauges(
                &r,
                "k3sfleet_tailscale_backend_state",
                "Tailscale's backend state: 1 for the current one, 0 for the others.",
                &["state"],
            ),
            tailscale_online: gauge(
                &r,
                "k3sfleet_tailscale_online",
                "Whether this node is online in the tailnet (1) or not (0).",
            ),
            tailscale_key_expiry: gauge(
                &r,
                "k3sfleet_tailscale_key_expiry_timestamp_seconds",
                "When the node key expires, as a Unix timestamp; 0 when it does not.",
            ),
            disk_info: gauges(
                &r,
                "k3sfleet_disk_info",
                "The filesystem holding a watched path; always 1.",
                &["path", "mount_point", "device", "fs_type"],
            ),
            disk_statfs_success: gauges(
                &r,
                "k3sfleet_disk_statfs_success",
                "Whether the filesystem of a watched path answered statfs in time (1) or not (0).",
                &["path"],
            ),
            disk_size: gauges(
                &r,
                "k3sfleet_disk_size_bytes",
                "Size of the filesystem holding a watched path.",
                &["path"],
            ),
            disk_available: gauges(
                &r,
                "k3sfleet_disk_available_bytes",
                "Space available to unprivileged users on the filesystem of a watched path.",
                &["path"],
            ),
            disk_inodes: gauges(
                &r,
                "k3sfleet_disk_inodes",
                "Inodes of the filesystem holding a watched path.",
                &["path"],
            ),
            disk_inodes_free: gauges(
                &r,
                "k3sfleet_disk_inodes_free",
                "Free inodes of the filesystem holding a watched path.",
                &["path"],
            ),
            disk_read_only: gauges(
                &r,
                "k3sfleet_disk_read_only",
                "Whether the watched path is on a read-only mount (1) or not (0).",
                &["path"],
            ),
            disk_smart_available: gauges(
                &r,
                "k3sfleet_disk_smart_available",
                "Whether SMART data could be read for the disk under a watched path (1) or not (0).",
                &["path"],
            ),
            disk_smart_passed: gauges(
                &r,
                "k3sfleet_disk_smart_passed",
                "Whether the disk under a watched path passes its SMART health check (1) or not (0).",
                &["path"],
            ),
            disk_smart_temperature: gauges(
                &r,
                "k3sfleet_disk_smart_temperature_celsius",
                "Current temperature of the disk under a watched path.",
                &["path"],
            ),
            disk_smart_power_on: gauges(
                &r,
                "k3sfleet_disk_smart_power_on_seconds",
                "Power-on time of the disk under a watched path.",
                &["path"],
            ),
            disk_nvme_used: gauges(
                &r,
                "k3sfleet_disk_nvme_used_ratio",
                "NVMe wear: the share of the rated life used (0-1, can exceed 1).",
                &["path"],
            ),
            disk_nvme_media_errors: gauges(
                &r,
                "k3sfleet_disk_nvme_media_errors",
                "NVMe media and data integrity errors the drive has recorded.",
                &["path"],
            ),
            check_status: gauges(
                &r,
                "k3sfleet_check_status",
                "Host check results: 1 for each check's current status, 0 for the others.",
                &["check", "status"],
            ),
            host_health: gauges(
                &r,
                "k3sfleet_host_health",
                "The worst status of all host checks: 1 for the current one, 0 for the others.",
                &["status"],
            ),
            checks_timestamp: gauge(
                &r,
                "k3sfleet_checks_last_run_timestamp_seconds",
                "When the host checks last ran, as a Unix timestamp.",
            ),
            checks_duration: gauge(
                &r,
                "k3sfleet_checks_duration_seconds",
                "How long the last run of the host checks took.",
            ),
            registry: r,
        }
    }
}

impl Families {
    pub fn count_command(&self, command: &str, outcome: &str) {
        self.commands.with_label_values(&[command, outcome]).inc();
    }

    /// Sets the client certificate's expiry (Unix seconds), or removes the
    /// series when the certificate could not be read.
    pub fn set_certificate_expiry(&self, not_after: Option<i64>) {
        self.agent_cert_expiry.reset();
        if let Some(not_after) = not_after {
            self.agent_cert_expiry
                .with_label_values::<&str>(&[])
                .set(not_after as f64);
        }
    }

    /// Sets every gauge from the latest observation and fresh host figures.
    pub fn set(&self, role: &str, observation: Option<&Observation>, figures: &HostFigures) {
        self.agent_info.reset();
        self.agent_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), role])
            .set(1.0);
        self.host_cpus.set(f64::from(figures.cpu_count));
        self.host_cpu_usage.set(figures.cpu_usage_ratio);
        self.host_memory_total
            .set(figures.memory_total_bytes as f64);
        self.host_memory_available
            .set(figures.memory_available_bytes as f64);
        for (window, value) in [
            ("1m", figures.load1),
            ("5m", figures.load5),
            ("15m", figures.load15),
        ] {
            self.host_load.with_label_values(&[window]).set(value);
        }
        self.host_uptime.set(figures.uptime_seconds as f64);
        let Some(observation) = observation else {
            return;
        };
        self.set_k3s(observation);
        self.set_tailscale(observation);
        self.set_disks(observation);
        self.check_status.reset();
        for check in &observation.checks {
            let current = Health::try_from(check.status).unwrap_or(Health::Unspecified);
            for status in STATUSES {
                self.check_status
                    .with_label_values(&[check.id.as_str(), status_name(status)])
                    .set(bool_value(status == current));
            }
        }
        let overall = observation.overall();
        for status in STATUSES {
            self.host_health
                .with_label_values(&[status_name(status)])
                .set(bool_value(status == overall));
        }
        self.checks_timestamp
            .set(observation.observed_at_unix_ms as f64 / 1000.0);
        self.checks_duration.set(observation.duration.as_secs_f64());
    }

    fn set_k3s(&self, observation: &Observation) {
        let k3s = &observation.k3s;
        let installed = !k3s.binary_sha256.is_empty();
        self.k3s_info.reset();
        if installed {
            let version = if k3s.installed_version.is_empty() {
                "unknown"
            } else {
                &k3s.installed_version
            };
            self.k3s_info
                .with_label_values(&[version, k3s.service_unit.as_str()])
                .set(1.0);
        }
        self.k3s_installed.set(bool_value(installed));
        self.k3s_releases_verified
            .set(bool_value(observation.releases_verified));
        self.k3s_active.set(bool_value(k3s.service_active));
        self.k3s_rollback_available
            .set(bool_value(!k3s.previous_version.is_empty()));
    }

    fn set_tailscale(&self, observation: &Observation) {
        let ts = &observation.tailscale;
        self.tailscale_info.reset();
        self.tailscale_state.reset();
        if !ts.installed {
            return;
        }
        if !ts.version.is_empty() {
            let ips = ts.tailscale_ips.join(",");
            self.tailscale_info
                .with_label_values(&[
                    ts.version.as_str(),
                    ts.hostname.as_str(),
                    ts.dns_name.as_str(),
                    ips.as_str(),
                ])
                .set(1.0);
        }
        for state in TAILSCALE_STATES {
            self.tailscale_state
                .with_label_values(&[state])
                .set(bool_value(ts.backend_state == state));
        }
        self.tailscale_online.set(bool_value(ts.online));
        self.tailscale_key_expiry
            .set(ts.key_expiry_unix_ms as f64 / 1000.0);
    }

    fn set_disks(&self, observation: &Observation) {
        for vec in [
            &self.disk_info,
            &self.disk_statfs_success,
            &self.disk_size,
            &self.disk_available,
            &self.disk_inodes,
            &self.disk_inodes_free,
            &self.disk_read_only,
            &self.disk_smart_available,
            &self.disk_smart_passed,
            &self.disk_smart_temperature,
            &self.disk_smart_power_on,
            &self.disk_nvme_used,
            &self.disk_nvme_media_errors,
        ] {
            vec.reset();
        }
        for disk in &observation.disks {
            let path = [disk.path.as_str()];
            self.disk_info
                .with_label_values(&[
                    disk.path.as_str(),
                    disk.mount_point.as_str(),
                    disk.device.as_str(),
                    disk.fs_type.as_str(),
                ])
                .set(1.0);
            let measured = disk.error.is_empty();
            self.disk_statfs_success
                .with_label_values(&path)
                .set(bool_value(measured));
            self.disk_read_only
                .with_label_values(&path)
                .set(bool_value(disk.read_only));
            if measured {
                self.disk_size
                    .with_label_values(&path)
                    .set(disk.size_bytes as f64);
                self.disk_available
                    .with_label_values(&path)
                    .set(disk.available_bytes as f64);
                self.disk_inodes
                    .with_label_values(&path)
                    .set(disk.inodes_total as f64);
                self.disk_inodes_free
                    .with_label_values(&path)
                    .set(disk.inodes_free as f64);
            }
            let Some(smart) = &disk.smart else { continue };
            self.disk_smart_available
                .with_label_values(&path)
                .set(bool_value(smart.available));
            if smart.available {
                self.disk_smart_passed
                    .with_label_values(&path)
                    .set(bool_value(smart.passed));
                self.disk_smart_temperature
                    .with_label_values(&path)
                    .set(f64::from(smart.temperature_celsius));
                self.disk_smart_power_on
                    .with_label_values(&path)
                    .set(smart.power_on_hours as f64 * 3600.0);
                self.disk_nvme_used
                    .with_label_values(&path)
                    .set(f64::from(smart.nvme_percentage_used) / 100.0);
                self.disk_nvme_media_errors
                    .with_label_values(&path)
                    .set(smart.nvme_media_errors as f64);
            }
        }
    }
}
