//! The seed's monitoring stack as child processes of a test: Prometheus,
//! vmagent writing to single-node VictoriaMetrics, vmalert, and an
//! Alertmanager for each rule engine whose webhook lands in the test. Every
//! daemon listens on a 127.0.0.1 port picked here, keeps its data in the
//! test's directory and is killed when the [`Stack`] is dropped.
//!
//! They run with the packaged assets of packaging/monitoring: the scrape
//! configs with only their targets changed ([`scrape_config`]), and the alert
//! rules with their time parameters divided by a time scale
//! ([`scale_rules`]; a scale of 1 gives the shipped file back).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::process::{Daemon, free_port};

/// The packaged monitoring assets.
pub fn packaging_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/monitoring")
}

pub fn packaged(relative: &str) -> String {
    let path = packaging_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The programs the stack runs (Debian's names), and where apt has them.
pub const TOOLS: [(&str, &str); 5] = [
    ("prometheus", "prometheus"),
    ("prometheus-alertmanager", "prometheus-alertmanager"),
    ("victoria-metrics", "victoria-metrics"),
    ("vmagent", "victoria-metrics"),
    ("vmalert", "victoria-metrics"),
];

/// Why the stack cannot run here (a tool missing), if it cannot.
pub fn missing_tools() -> Option<String> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(tool, package)| format!("{tool} (apt {package})"))
        .collect();
    (!missing.is_empty()).then(|| format!("not installed: {}", missing.join(", ")))
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|path| path.is_file())
    })
}

/// Each package's version as dpkg has it (Debian's VictoriaMetrics build
/// prints no version of its own), for the test's output and the README.
pub fn versions() -> Vec<String> {
    let mut packages: Vec<&str> = TOOLS.iter().map(|(_, package)| *package).collect();
    packages.dedup();
    packages
        .into_iter()
        .map(|package| {
            let version = Command::new("dpkg-query")
                .args(["-W", "-f=${Version}", package])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            format!("{package} {version}")
        })
        .collect()
}

/// Where the packaged scrape configs point, replaced by the lab's own.
pub struct Targets<'a> {
    pub agents: &'a [SocketAddr],
    pub coordinator: SocketAddr,
    /// The file_sd file the agent job reads (the test writes it).
    pub agents_file: &'a Path,
}

/// A packaged scrape config (prometheus.yml or scrape.yml) with only its
/// targets changed: each job's example hosts become the lab's, the agents'
/// file_sd path the test's file. With `time_scale` > 1 the global scrape and
/// evaluation intervals are divided by it too (the alert tests' faster
/// clock). Fails if the file no longer has the shape this edit expects.
pub fn scrape_config(packaged: &str, targets: &Targets, time_scale: u32) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut job = String::new();
    let mut replaced: BTreeMap<String, bool> = BTreeMap::new();
    let mut file_sd = false;
    for line in packaged.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if let Some(name) = trimmed.strip_prefix("- job_name: ") {
            job = name.trim().to_string();
        } else if trimmed.starts_with("- ") && trimmed.contains(".example:") {
            // One of a job's example targets: the first becomes the lab's list.
            if replaced.insert(job.clone(), true).is_none() {
                let addresses: Vec<String> = match job.as_str() {
                    "k3sfleet-agent" => targets.agents.iter().map(|a| a.to_string()).collect(),
                    "k3sfleet-coordinator" => vec![targets.coordinator.to_string()],
                    other => bail!("an unknown job {other} has example targets"),
                };
                for address in addresses {
                    out.push_str(&format!("{indent}- {address}\n"));
                }
            }
            continue;
        } else if trimmed.starts_with("- /") && trimmed.ends_with("/k3sfleet-agents.yml") {
            out.push_str(&format!("{indent}- {}\n", targets.agents_file.display()));
            file_sd = true;
            continue;
        } else if time_scale > 1
            && let Some((key, value)) = trimmed.split_once(": ")
            && matches!(key, "scrape_interval" | "evaluation_interval")
        {
            let scaled = parse_duration(value.trim())? / time_scale;
            out.push_str(&format!("{indent}{key}: {}\n", format_duration(scaled)));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    for wanted in ["k3sfleet-agent", "k3sfleet-coordinator"] {
        if !replaced.contains_key(wanted) {
            bail!("the packaged scrape config has no example targets in job {wanted}");
        }
    }
    if !file_sd {
        bail!("the packaged scrape config reads no k3sfleet-agents.yml file");
    }
    Ok(out)
}

/// The packaged alert rules with their time parameters divided by
/// `time_scale`: every `for:` duration, and every number an expression
/// marks as a duration with a trailing `# seconds` comment (the rules file's
/// header says so). Expressions are otherwise left as they are; a scale of 1
/// returns the text unchanged.
pub fn scale_rules(rules: &str, time_scale: u32) -> anyhow::Result<String> {
    if time_scale == 1 {
        return Ok(rules.to_string());
    }
    let mut out = String::new();
    for line in rules.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if let Some(value) = trimmed.strip_prefix("for: ") {
            let scaled = parse_duration(value.trim())? / time_scale;
            out.push_str(&format!("{indent}for: {}\n", format_duration(scaled)));
        } else if let Some((expr, comment)) = line.split_once(" # seconds") {
            let start = expr
                .rfind(|c: char| !c.is_ascii_digit())
                .map_or(0, |i| i + 1);
            let seconds: u64 = expr[start..]
                .parse()
                .with_context(|| format!("no number before `# seconds` in {line:?}"))?;
            let scaled = seconds as f64 / f64::from(time_scale);
            out.push_str(&format!("{}{scaled} # seconds{comment}\n", &expr[..start]));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// A Prometheus duration ("30s", "5m", "1h", "1h30m", "500ms").
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u64 = rest[..digits]
            .parse()
            .with_context(|| format!("invalid duration {text:?}"))?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        total += match &rest[..unit] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number * 60),
            "h" => Duration::from_secs(number * 3600),
            "d" => Duration::from_secs(number * 86400),
            other => bail!("invalid unit {other:?} in duration {text:?}"),
        };
        rest = &rest[unit..];
    }
    Ok(total)
}

fn format_duration(duration: Duration) -> String {
    format!("{}ms", duration.as_millis().max(1))
}

/// Alertmanager's webhook notifications, as the test's receiver got them.
#[derive(Debug, Clone)]
pub struct Notification {
    /// Which Alertmanager sent it: the path its receiver posts to.
    pub source: String,
    pub received: Instant,
    pub status: String,
    pub labels: BTreeMap<String, String>,
}

impl Notification {
    /// Whether it is `source`'s about alert `name` with `labels` among its
    /// labels.
    fn is(&self, source: &str, name: &str, labels: &[(&str, &str)]) -> bool {
        self.source == source
            && self.labels.get("alertname").map(String::as_str) == Some(name)
            && labels
                .iter()
                .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

/// An HTTP server taking Alertmanager's webhook posts on 127.0.0.1.
#[derive(Clone)]
pub struct Webhook {
    pub addr: SocketAddr,
    pub notifications: Arc<Mutex<Vec<Notification>>>,
}

impl Webhook {
    pub fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let notifications = Arc::new(Mutex::new(Vec::new()));
        let recorded = notifications.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = receive(stream, &recorded);
            }
        });
        Webhook {
            addr,
            notifications,
        }
    }

    /// The URL one Alertmanager posts to, recorded as `source`.
    pub fn url(&self, source: &str) -> String {
        format!("http://{}/{source}", self.addr)
    }

    /// The status ("firing" or "resolved") `source`'s Alertmanager last
    /// notified for alert `name` with `labels` among its labels.
    pub fn latest(&self, source: &str, name: &str, labels: &[(&str, &str)]) -> Option<String> {
        self.notifications
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|n| n.is(source, name, labels))
            .map(|n| n.status.clone())
    }

    /// Waits for `source`'s Alertmanager to notify `status` ("firing" or
    /// "resolved") of alert `name` with `labels` among its labels, received
    /// after `since`; returns when it came.
    pub fn wait_for(
        &self,
        source: &str,
        status: &str,
        name: &str,
        labels: &[(&str, &str)],
        since: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .notifications
                .lock()
                .unwrap()
                .iter()
                .find(|n| n.status == status && n.received >= since && n.is(source, name, labels))
                .map(|n| n.received);
            if let Some(received) = found {
                return Ok(received);
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = self
                    .notifications
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|n| n.source == source)
                    .map(|n| format!("{} {:?}", n.status, n.labels))
                    .collect();
                bail!(
                    "{source}: no {status} {name} {labels:?} within {timeout:?}; received:\n  {}",
                    seen.join("\n  ")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn receive(stream: TcpStream, recorded: &Mutex<Vec<Notification>>) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    let mut length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? <= 2 {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let received = Instant::now();
    let payload: Value = serde_json::from_slice(&body)?;
    for alert in payload["alerts"].as_array().into_iter().flatten() {
        let labels = alert["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        recorded.lock().unwrap().push(Notification {
            source: path.clone(),
            received,
            status: alert["status"].as_str().unwrap_or_default().to_string(),
            labels,
        });
    }
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    Ok(())
}

/// One HTTP/1.0 GET (so that Go's servers answer without chunking); the
/// status code and body.
pub fn http_get(addr: SocketAddr, path_and_query: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP answer from {addr}: {response}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {head}"))?;
    Ok((code, body.to_string()))
}

/// The names of the alerts the alerting engine at `addr` (Prometheus, or
/// VictoriaMetrics proxying to vmalert) lists as firing.
pub fn firing_alerts(addr: SocketAddr) -> anyhow::Result<Vec<String>> {
    let (code, body) = http_get(addr, "/api/v1/alerts")?;
    if code != 200 {
        bail!("{addr}/api/v1/alerts answered {code}: {body}");
    }
    let body: Value = serde_json::from_str(&body)?;
    // vmalert (Go) answers `"alerts": null` when none is active.
    if body["status"] == "success" && body["data"]["alerts"].is_null() {
        return Ok(Vec::new());
    }
    let alerts = body["data"]["alerts"]
        .as_array()
        .with_context(|| format!("no alerts list from {addr}: {body}"))?;
    Ok(alerts
        .iter()
        .filter(|alert| alert["state"] == "firing")
        .filter_map(|alert| alert["labels"]["alertname"].as_str())
        .map(str::to_string)
        .collect())
}

/// `%`-encodes a query string value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query of the Prometheus API at `addr`: the result vector, or
/// the API's error.
pub fn query(addr: SocketAddr, promql: &str) -> anyhow::Result<Vec<Value>> {
    let (code, body) = http_get(addr, &format!("/api/v1/query?query={}", encode(promql)))?;
    let answer: Value =
        serde_json::from_str(&body).with_context(|| format!("HTTP {code} from {addr}: {body}"))?;
    if answer["status"] != "success" {
        bail!("{promql}: HTTP {code}: {}", answer["error"]);
    }
    Ok(answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// A range query over the last `range` in `step`s: the result series.
pub fn query_range(
    addr: SocketAddr,
    promql: &str,
    range: Duration,
    step: Duration,
) -> anyhow::Result<Vec<Value>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let path = format!(
        "/api/v1/query_range?query={}&start={:.3}&end={now:.3}&step={}",
        encode(promql),
        now - range.as_secs_f64(),
        step.as_secs_f64()
    );
    let (code, body) = http_get(addr, &path)?;
    let answer: Value =
        serde_json::from_str(&body).with_context(|| format!("HTTP {code} from {addr}: {body}"))?;
    if answer["status"] != "success" {
        bail!("{promql}: HTTP {code}: {}", answer["error"]);
    }
    Ok(answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// The scrape targets a Prometheus-compatible `/api/v1/targets` lists as
/// active: (job, address, health).
pub fn active_targets(addr: SocketAddr) -> anyhow::Result<Vec<(String, String, String)>> {
    let (code, body) = http_get(addr, "/api/v1/targets")?;
    let answer: Value =
        serde_json::from_str(&body).with_context(|| format!("HTTP {code} from {addr}: {body}"))?;
    Ok(answer["data"]["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                text(&t["labels"]["job"]),
                text(&t["discoveredLabels"]["__address__"]),
                text(&t["health"]),
            )
        })
        .collect())
}

/// A real Prometheus with `config` (prometheus.yml's text), its files in
/// `dir`, listening on a free port of 127.0.0.1; returned once ready.
pub fn spawn_prometheus(dir: &Path, config: &str) -> anyhow::Result<(Daemon, SocketAddr)> {
    let addr = local();
    let config_file = dir.join("prometheus.yml");
    std::fs::write(&config_file, config)?;
    let mut command = Command::new("prometheus");
    command
        .arg(format!("--config.file={}", config_file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("prometheus-data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg(format!("--web.external-url=http://{addr}/"));
    let mut daemon = Daemon::spawn("prometheus", command, dir.join("prometheus.log"));
    wait_ready(&mut daemon, addr, "/-/ready")?;
    Ok((daemon, addr))
}

/// Waits until `addr` answers HTTP on `path` with 200.
pub fn wait_ready(daemon: &mut Daemon, addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(code) = daemon.exited() {
            bail!("{} exited ({code:?}):\n{}", daemon.name, daemon.log());
        }
        if let Ok((200, _)) = http_get(addr, path) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{} did not answer on {addr}{path} within 30 s", daemon.name);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// What a [`Stack`] runs with.
pub struct StackSpec<'a> {
    pub dir: &'a Path,
    pub targets: Targets<'a>,
    /// 1: the packaged scrape intervals; more: intervals and rules' time
    /// parameters divided by it.
    pub time_scale: u32,
    /// Start the rule engines and Alertmanagers, posting to this receiver.
    pub alerting: Option<&'a Webhook>,
}

/// The running stack.
pub struct Stack {
    pub prometheus: SocketAddr,
    pub victoria_metrics: SocketAddr,
    pub vmagent: SocketAddr,
    pub vmalert: Option<SocketAddr>,
    /// Last, so the rule engines are gone before their Alertmanagers.
    daemons: Vec<Daemon>,
}

/// The webhook paths each rule engine's Alertmanager posts to.
pub const FROM_PROMETHEUS: &str = "prometheus";
pub const FROM_VMALERT: &str = "vmalert";

impl Stack {
    pub fn start(spec: &StackSpec) -> anyhow::Result<Stack> {
        let dir = spec.dir;
        std::fs::create_dir_all(dir)?;
        let scale = spec.time_scale;
        let mut daemons = Vec::new();

        let mut alertmanagers = BTreeMap::new();
        if let Some(webhook) = spec.alerting {
            for source in [FROM_PROMETHEUS, FROM_VMALERT] {
                let addr = local();
                let config = dir.join(format!("alertmanager-{source}.yml"));
                // One group per alert, sent at once, resolved as soon as known:
                // the test times each alert, not Alertmanager's batching.
                std::fs::write(
                    &config,
                    format!(
                        "route:\n  receiver: test\n  group_by: ['...']\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n\
                         receivers:\n  - name: test\n    webhook_configs:\n      - url: {}\n        send_resolved: true\n",
                        webhook.url(source)
                    ),
                )?;
                let mut command = Command::new("prometheus-alertmanager");
                command
                    .arg(format!("--config.file={}", config.display()))
                    .arg(format!(
                        "--storage.path={}",
                        dir.join(format!("alertmanager-{source}")).display()
                    ))
                    .arg(format!("--web.listen-address={addr}"))
                    // No gossip with peers: one Alertmanager each.
                    .arg("--cluster.listen-address=");
                let mut daemon = Daemon::spawn(
                    &format!("alertmanager for {source}"),
                    command,
                    dir.join(format!("alertmanager-{source}.log")),
                );
                wait_ready(&mut daemon, addr, "/-/ready")?;
                daemons.push(daemon);
                alertmanagers.insert(source, addr);
            }
        }

        let rules = scale_rules(&packaged("prometheus/k3sfleet-alerts.yml"), scale)?;
        let rules_file = dir.join("k3sfleet-alerts.yml");
        std::fs::write(&rules_file, &rules)?;

        // Prometheus, with the packaged prometheus.yml.
        let mut config =
            scrape_config(&packaged("prometheus/prometheus.yml"), &spec.targets, scale)?;
        if let Some(addr) = alertmanagers.get(FROM_PROMETHEUS) {
            // The packaged example leaves Alertmanager to the site.
            config.push_str(&format!(
                "\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{addr}']\n"
            ));
        }
        let (daemon, prometheus) = spawn_prometheus(dir, &config)?;
        daemons.push(daemon);

        // VictoriaMetrics, written to by vmagent with the packaged scrape.yml;
        // it answers the alerting API from vmalert, as Grafana and the alerts
        // gate ask it.
        let victoria_metrics = local();
        let vmalert_addr = alertmanagers.get(FROM_VMALERT).map(|_| local());
        let mut command = Command::new("victoria-metrics");
        command
            .arg(format!(
                "-storageDataPath={}",
                dir.join("victoria-metrics-data").display()
            ))
            .arg(format!("-httpListenAddr={victoria_metrics}"))
            .arg("-retentionPeriod=1d")
            // Answer with what was just written (the default hides the last
            // 30 s, for clients whose clocks differ), uncached.
            .arg("-search.latencyOffset=0s")
            .arg("-search.disableCache");
        if let Some(vmalert) = vmalert_addr {
            command.arg(format!("-vmalert.proxyURL=http://{vmalert}"));
        }
        let mut daemon = Daemon::spawn(
            "victoria-metrics",
            command,
            dir.join("victoria-metrics.log"),
        );
        wait_ready(&mut daemon, victoria_metrics, "/health")?;
        daemons.push(daemon);

        let vmagent = local();
        let scrape_file = dir.join("scrape.yml");
        std::fs::write(
            &scrape_file,
            scrape_config(
                &packaged("victoriametrics/scrape.yml"),
                &spec.targets,
                scale,
            )?,
        )?;
        let mut command = Command::new("vmagent");
        command
            .arg(format!("-promscrape.config={}", scrape_file.display()))
            .arg(format!(
                "-remoteWrite.url=http://{victoria_metrics}/api/v1/write"
            ))
            .arg(format!(
                "-remoteWrite.tmpDataPath={}",
                dir.join("vmagent-data").display()
            ))
            .arg("-remoteWrite.flushInterval=100ms")
            .arg(format!("-httpListenAddr={vmagent}"));
        let mut daemon = Daemon::spawn("vmagent", command, dir.join("vmagent.log"));
        wait_ready(&mut daemon, vmagent, "/health")?;
        daemons.push(daemon);

        let vmalert = match (alertmanagers.get(FROM_VMALERT), vmalert_addr) {
            (Some(alertmanager), Some(addr)) => {
                let interval = format_duration(Duration::from_secs(30) / scale);
                let mut command = Command::new("vmalert");
                command
                    .arg(format!("-rule={}", rules_file.display()))
                    .arg(format!("-datasource.url=http://{victoria_metrics}"))
                    .arg(format!("-remoteWrite.url=http://{victoria_metrics}"))
                    .arg(format!("-remoteRead.url=http://{victoria_metrics}"))
                    .arg(format!("-notifier.url=http://{alertmanager}"))
                    .arg(format!("-evaluationInterval={interval}"))
                    .arg("-remoteWrite.flushInterval=100ms")
                    .arg(format!("-httpListenAddr={addr}"))
                    .arg(format!("-external.url=http://{addr}"));
                let mut daemon = Daemon::spawn("vmalert", command, dir.join("vmalert.log"));
                wait_ready(&mut daemon, addr, "/health")?;
                daemons.push(daemon);
                Some(addr)
            }
            _ => None,
        };

        Ok(Stack {
            prometheus,
            victoria_metrics,
            vmagent,
            vmalert,
            daemons,
        })
    }

    /// Fails if a daemon of the stack has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for daemon in &mut self.daemons {
            if let Some(code) = daemon.exited() {
                bail!("{} exited ({code:?}):\n{}", daemon.name, daemon.log());
            }
        }
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Rule engines first, then what they send to.
        while let Some(mut daemon) = self.daemons.pop() {
            daemon.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_prometheus_writes_them() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("5 m").is_err());
    }

    #[test]
    fn scaling_the_rules_changes_only_their_time_parameters() {
        let shipped = packaged("prometheus/k3sfleet-alerts.yml");
        assert_eq!(scale_rules(&shipped, 1).unwrap(), shipped);
        let scaled = scale_rules(&shipped, 60).unwrap();
        let changed: Vec<(&str, &str)> = shipped
            .lines()
            .zip(scaled.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert!(!changed.is_empty());
        for (before, after) in changed {
            let is_for = before.trim_start().starts_with("for: ");
            assert!(
                is_for || before.contains(" # seconds"),
                "changed a line that is no time parameter: {before:?} -> {after:?}"
            );
        }
        assert!(scaled.contains("for: 5000ms"), "{scaled}");
    }
}
