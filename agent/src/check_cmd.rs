//! `k3sfleet-agent check`: every host check once, printed for people (or as
//! JSON for machines), with an exit status that says whether anything is an
//! error. Works without a coordinator: only the `[host]` section (and
//! `role`) of the config file is read, and a missing default config file
//! means all defaults.

use std::path::{Path, PathBuf};

use k3sfleet_daemon::config::{self, ConfigError};
use k3sfleet_proto::v1::{Health, HealthReport, Remediate};
use serde::Deserialize;

use crate::checks::{self, severity, status_name};
use crate::config::{DEFAULT_CONFIG_PATH, K3sRole};
use crate::duties::ProgressSink;
use crate::host::HostConfig;
use crate::host::systemd::Systemctl;
use crate::observe::{HostProbe, Observation, unix_ms_now};
use crate::remediate::{self, Remediation};

/// Exit status: no check is an error (warnings allowed).
pub const EXIT_OK: u8 = 0;
/// Exit status: at least one check is an error.
pub const EXIT_ERRORS: u8 = 1;
/// Exit status: the checks could not run (bad config).
pub const EXIT_CANNOT_RUN: u8 = 2;

/// The parts of the agent config the checks need; the rest (coordinator,
/// TLS) is validated by `run`, not here.
#[derive(Debug, Deserialize)]
struct CheckView {
    #[serde(default)]
    role: Option<K3sRole>,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default)]
    host: HostConfig,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/k3sfleet/agent")
}

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    pub config: Option<PathBuf>,
    pub json: bool,
    pub fix_modules: bool,
    pub fix_iscsid: bool,
}

/// The checks' configuration: the given file, else the default file if it
/// exists, else defaults.
fn load(options: &CheckOptions) -> Result<CheckView, ConfigError> {
    let path = options
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    if options.config.is_none() && !path.exists() {
        return config::parse(Path::new("(defaults)"), "");
    }
    let view: CheckView = config::load(&path)?;
    view.host.validate(&path)?;
    Ok(view)
}

/// Runs the checks and prints them to stdout; returns the exit status.
pub async fn run(options: CheckOptions) -> u8 {
    let view = match load(&options) {
        Ok(view) => view,
        Err(err) => {
            eprintln!(
                "k3sfleet-agent check: {}",
                crate::session::display_error(&err)
            );
            return EXIT_CANNOT_RUN;
        }
    };
    let role = match view.role {
        Some(role) => role,
        None => detect_role(&view.host).await,
    };
    let probe = HostProbe::new(&view.host, role, view.state_dir, None);
    let remediation = if options.fix_modules || options.fix_iscsid {
        let request = Remediate {
            load_modules: options.fix_modules,
            enable_iscsid: options.fix_iscsid,
        };
        Some(
            remediate::remediate(
                &probe.root,
                &probe.tools,
                &probe.facts,
                &request,
                &ProgressSink::discard(),
            )
            .await,
        )
    } else {
        None
    };
    let observation = probe.observe(unix_ms_now()).await;
    let output = if options.json {
        json(&observation, remediation.as_ref())
    } else {
        human(&probe, &observation, remediation.as_ref())
    };
    print!("{output}");
    if observation.overall() == Health::Error {
        EXIT_ERRORS
    } else {
        EXIT_OK
    }
}

/// Without a configured role: a server if k3s.service exists.
async fn detect_role(host: &HostConfig) -> K3sRole {
    let tools = host.tools();
    match Systemctl(&tools).exists("k3s.service").await {
        Ok(true) => K3sRole::Server,
        _ => K3sRole::Agent,
    }
}

pub fn json(observation: &Observation, remediation: Option<&Remediation>) -> String {
    let report = HealthReport {
        sequence: 0,
        observed_at_unix_ms: observation.observed_at_unix_ms,
        overall: observation.overall() as i32,
        host: None,
        k3s: Some(observation.k3s.clone()),
        tailscale: Some(observation.tailscale.clone()),
        disks: observation.disks.clone(),
        checks: observation.checks.clone(),
    };
    let mut value = serde_json::to_value(&report).unwrap_or_default();
    if let (Some(object), Some(done)) = (value.as_object_mut(), remediation) {
        object.insert(
            "remediation".into(),
            serde_json::json!({ "changes": done.changes, "failures": done.failures }),
        );
    }
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

pub fn human(
    probe: &HostProbe,
    observation: &Observation,
    remediation: Option<&Remediation>,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let facts = &probe.facts;
    let k3s = &observation.k3s;
    let k3s_line = if k3s.binary_sha256.is_empty() {
        "K3s not installed".to_string()
    } else {
        format!(
            "K3s {} ({} {})",
            if k3s.installed_version.is_empty() {
                "unknown version"
            } else {
                &k3s.installed_version
            },
            k3s.service_unit,
            if k3s.service_active {
                "active"
            } else {
                "not active"
            }
        )
    };
    let _ = writeln!(
        out,
        "k3sfleet-agent check: {} {}, kernel {}, {k3s_line}\n",
        facts.os_id, facts.os_version, facts.kernel_version
    );
    if let Some(done) = remediation {
        let _ = writeln!(out, "Remediation:");
        if done.changes.is_empty() && done.failures.is_empty() {
            let _ = writeln!(out, "  nothing needed fixing");
        }
        for change in &done.changes {
            let _ = writeln!(out, "  changed: {change}");
        }
        for failure in &done.failures {
            let _ = writeln!(out, "  FAILED:  {failure}");
        }
        out.push('\n');
    }
    let mut sorted: Vec<_> = observation.checks.iter().collect();
    sorted.sort_by_key(|c| std::cmp::Reverse(severity(c.status)));
    let width = sorted.iter().map(|c| c.id.len()).max().unwrap_or(0);
    for check in &sorted {
        let status = Health::try_from(check.status).unwrap_or(Health::Unspecified);
        let _ = writeln!(
            out,
            "{:<8} {:<width$}  {}",
            status_name(status).to_uppercase(),
            check.id,
            check.message
        );
    }
    let count = |wanted: Health| {
        observation
            .checks
            .iter()
            .filter(|c| c.status == wanted as i32)
            .count()
    };
    let overall = checks::overall(&observation.checks);
    let _ = writeln!(
        out,
        "\n{}: {} errors, {} warnings, {} ok",
        status_name(overall).to_uppercase(),
        count(Health::Error),
        count(Health::Warning),
        count(Health::Ok)
    );
    out
}
