//! The real tier's K3s process: starts this host's components, readies its
//! Node, starts its kubelet (KWOK), and supervises them.
//!
//! SIGTERM (`systemctl stop`, or a restart) stops every component, the
//! kubelet and the control plane first and etcd last, waiting for each, and
//! exits. A component that dies on its own takes K3s down with it, as it does
//! in K3s (one process); the unit's `Restart=always` / `RestartSec=5s` then
//! brings K3s back, which this process plays itself: it reports the unit
//! `activating`, waits the restart delay, and starts everything again. So a
//! controller-manager that exits on a lost leader election (a server cut off
//! from its peers) costs that host a K3s restart, as on a real server.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};

use super::components::{Component, components};
use super::{K3sLayout, RealHostConfig, log, node};

/// How long a component gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Between attempts to reach the API server while the kubelet starts.
const API_RETRY: Duration = Duration::from_secs(1);
/// How often to look whether the lab that owns this host still runs.
const OWNER_CHECK: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot write {path}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot handle signals")]
    Signals(#[source] std::io::Error),
}

/// Runs K3s of `version` on this host until it is stopped.
pub async fn run(
    config: RealHostConfig,
    layout: K3sLayout,
    version: String,
) -> Result<(), LaunchError> {
    let (stopping_tx, stopping) = watch::channel(false);
    for kind in [
        tokio::signal::unix::SignalKind::terminate(),
        tokio::signal::unix::SignalKind::interrupt(),
    ] {
        let mut signal = tokio::signal::unix::signal(kind).map_err(LaunchError::Signals)?;
        let stopping_tx = stopping_tx.clone();
        tokio::spawn(async move {
            signal.recv().await;
            let _ = stopping_tx.send(true);
        });
    }
    if let Some(owner) = config.owner_pid {
        let stopping_tx = stopping_tx.clone();
        tokio::spawn(async move {
            let owner = std::path::PathBuf::from(format!("/proc/{owner}"));
            while owner.exists() {
                tokio::time::sleep(OWNER_CHECK).await;
            }
            log::warn("the lab this host belongs to is gone; stopping");
            let _ = stopping_tx.send(true);
        });
    }
    let marker = layout.started_marker();
    std::fs::write(&marker, format!("{}\n", std::process::id())).map_err(|source| {
        LaunchError::Write {
            path: marker,
            source,
        }
    })?;
    log::info(&format!(
        "Starting k3s {} {version} on {}",
        if config.server.is_some() {
            "server"
        } else {
            "agent"
        },
        config.node
    ));
    let mut restarted = false;
    loop {
        match run_once(&config, &layout, &version, stopping.clone(), restarted).await {
            Outcome::Stopped => {
                log::info("k3s stopped");
                return Ok(());
            }
            Outcome::Died(why) => {
                log::error(&format!("{why}; k3s exits"));
                if *stopping.borrow() {
                    return Ok(());
                }
                set_unit_state(&layout, config.unit(), "activating");
                let mut stopping = stopping.clone();
                tokio::select! {
                    _ = tokio::time::sleep(config.restart_delay) => {}
                    _ = stopping.wait_for(|stop| *stop) => return Ok(()),
                }
                log::info("systemd starts k3s again (Restart=always)");
                restarted = true;
            }
        }
    }
}

enum Outcome {
    Stopped,
    Died(String),
}

async fn run_once(
    config: &RealHostConfig,
    layout: &K3sLayout,
    version: &str,
    mut stopping: watch::Receiver<bool>,
    restarted: bool,
) -> Outcome {
    let mut group = Group::new();
    let all = components(config, layout);
    let (kubelet, control_plane) = all.split_last().expect("every host runs a kubelet");
    for component in control_plane {
        if let Err(why) = group.spawn(component, layout) {
            group.stop().await;
            return Outcome::Died(why);
        }
    }

    // Ready the Node, for as long as it takes the API server to answer (a
    // server's own needs etcd quorum; an agent may be cut off).
    let client = match node::kubelet_client(&layout.kubelet_kubeconfig()).await {
        Ok(client) => client,
        Err(err) => {
            group.stop().await;
            return Outcome::Died(format!("kubelet: {}", chain(&err)));
        }
    };
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => {
                group.stop().await;
                return Outcome::Stopped;
            }
            Some((name, status)) = group.exits.recv() => {
                group.stop().await;
                return Outcome::Died(format!("{name} exited ({status})"));
            }
            result = tokio::time::timeout(Duration::from_secs(15), node::prepare(&client, config, version)) => {
                match result {
                    Ok(Ok(())) => break,
                    Ok(Err(err)) => {
                        let why = chain(&err);
                        if why != last_error {
                            log::warn(&format!("kubelet: {why}; retrying"));
                            last_error = why;
                        }
                    }
                    Err(_) => log::warn("kubelet: the API server did not answer within 15s; retrying"),
                }
                tokio::time::sleep(API_RETRY).await;
            }
        }
    }
    if let Err(why) = group.spawn(kubelet, layout) {
        group.stop().await;
        return Outcome::Died(why);
    }
    if restarted && !*stopping.borrow() {
        set_unit_state(layout, config.unit(), "active");
    }
    log::info(&format!(
        "k3s {version} is up: kubelet started for {}",
        config.node
    ));
    tokio::select! {
        _ = stopping.wait_for(|stop| *stop) => {
            group.stop().await;
            Outcome::Stopped
        }
        Some((name, status)) = group.exits.recv() => {
            group.stop().await;
            Outcome::Died(format!("{name} exited ({status})"))
        }
    }
}

/// The error and its causes, on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What the stand-in systemctl's `is-active` prints for `unit`.
fn set_unit_state(layout: &K3sLayout, unit: &str, state: &str) {
    let path = layout.unit_state(unit);
    if let Err(err) = std::fs::write(&path, format!("{state}\n")) {
        log::warn(&format!("cannot write {}: {err}", path.display()));
    }
}

/// The running components and a channel of their exits.
struct Group {
    running: Vec<Running>,
    exits_tx: mpsc::UnboundedSender<(&'static str, ExitStatus)>,
    exits: mpsc::UnboundedReceiver<(&'static str, ExitStatus)>,
}

struct Running {
    name: &'static str,
    pid: Pid,
    exited: watch::Receiver<bool>,
}

impl Group {
    fn new() -> Group {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        Group {
            running: Vec::new(),
            exits_tx,
            exits,
        }
    }

    fn spawn(&mut self, component: &Component, layout: &K3sLayout) -> Result<(), String> {
        let log_path = layout.component_log(component.name);
        let log = open_log(&log_path)
            .map_err(|err| format!("cannot open {}: {err}", log_path.display()))?;
        let stderr = log
            .try_clone()
            .map_err(|err| format!("cannot open {}: {err}", log_path.display()))?;
        let mut child = tokio::process::Command::new(&component.program)
            .args(&component.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", component.program.display()))?;
        let pid = Pid::from_raw(child.id().map_or(0, |id| id as i32));
        let pid_file = layout.component_pid(component.name);
        if let Some(parent) = pid_file.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(&pid_file, format!("{pid}\n"));
        let (exited_tx, exited) = watch::channel(false);
        let exits = self.exits_tx.clone();
        let name = component.name;
        tokio::spawn(async move {
            if let Ok(status) = child.wait().await {
                let _ = exits.send((name, status));
            }
            let _ = std::fs::remove_file(pid_file);
            let _ = exited_tx.send(true);
        });
        self.running.push(Running { name, pid, exited });
        Ok(())
    }

    /// Stops everything: the kubelet and control plane together, then etcd
    /// (the API server needs it to shut down cleanly).
    async fn stop(&mut self) {
        let (etcd, rest): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|r| r.name == "etcd");
        futures::future::join_all(rest.into_iter().map(stop_one)).await;
        futures::future::join_all(etcd.into_iter().map(stop_one)).await;
    }
}

async fn stop_one(mut running: Running) {
    if *running.exited.borrow() {
        return;
    }
    let _ = kill(running.pid, Signal::SIGTERM);
    let exited = tokio::time::timeout(STOP_GRACE, running.exited.wait_for(|done| *done))
        .await
        .is_ok();
    if !exited {
        log::warn(&format!(
            "{} did not stop within {STOP_GRACE:?}; killing it",
            running.name
        ));
        let _ = kill(running.pid, Signal::SIGKILL);
        let _ = running.exited.wait_for(|done| *done).await;
    }
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}
