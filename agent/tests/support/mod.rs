//! A stand-in host and the agent's host-side pieces pointed at it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use k3sfleet_agent::config::K3sRole;
use k3sfleet_agent::duties::{Outbox, ProgressSink};
use k3sfleet_agent::host::HostConfig;
use k3sfleet_agent::observe::HostProbe;
use k3sfleet_proto::v1::{AgentMessage, agent_message};
use k3sfleet_standin::{Distro, HostToml, Mirror, StandinHost};
use serde::Deserialize;
use tokio::sync::mpsc;

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub host: StandinHost,
    pub state_dir: PathBuf,
    pub releases: PathBuf,
    /// The stand-in mirrors started so far: plain http, so the agent is told to allow them.
    http_mirrors: std::sync::Mutex<Vec<String>>,
}

impl Sandbox {
    pub fn new(distro: Distro) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        let host = StandinHost::create(&dir.path().join("root"), distro).unwrap();
        let state_dir = dir.path().join("state");
        let releases = dir.path().join("releases");
        std::fs::create_dir_all(&state_dir).unwrap();
        std::fs::create_dir_all(&releases).unwrap();
        Sandbox {
            dir,
            host,
            state_dir,
            releases,
            http_mirrors: Default::default(),
        }
    }

    /// A stand-in mirror of `releases`, allowed over http in every probe made after it.
    pub async fn start_mirror(&self) -> Mirror {
        let mirror = Mirror::start(&self.releases).await.unwrap();
        self.http_mirrors.lock().unwrap().push(mirror.url());
        mirror
    }

    pub fn host_config(&self, toml: &HostToml) -> HostConfig {
        #[derive(Deserialize)]
        struct Wrapper {
            host: HostConfig,
        }
        let mut toml = toml.clone();
        toml.http_mirrors
            .extend(self.http_mirrors.lock().unwrap().iter().cloned());
        let text = toml.render(&self.host);
        let parsed: Wrapper =
            k3sfleet_daemon::config::parse(Path::new("agent.toml"), &text).unwrap();
        parsed.host.validate(Path::new("agent.toml")).unwrap();
        parsed.host
    }

    pub fn probe(&self, role: K3sRole) -> HostProbe {
        self.probe_with(role, &HostToml::default())
    }

    pub fn probe_with(&self, role: K3sRole, toml: &HostToml) -> HostProbe {
        HostProbe::new(&self.host_config(toml), role, self.state_dir.clone(), None)
    }

    /// Files in the K3s binary's directory.
    pub fn bin_dir_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.host.path("/usr/local/bin"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// A progress sink whose steps can be read back.
pub fn recording_progress() -> (ProgressSink, mpsc::Receiver<AgentMessage>) {
    let outbox = Arc::new(Outbox::default());
    let (sender, receiver) = mpsc::channel(256);
    outbox.attach(sender);
    (ProgressSink::new("test".into(), outbox), receiver)
}

/// The step names recorded so far.
pub fn steps(receiver: &mut mpsc::Receiver<AgentMessage>) -> Vec<String> {
    let mut steps = Vec::new();
    while let Ok(message) = receiver.try_recv() {
        if let Some(agent_message::Body::Progress(progress)) = message.body {
            steps.push(progress.step);
        }
    }
    steps
}
