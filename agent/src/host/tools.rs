//! The host tools the agent runs (systemctl, tailscale, smartctl, ...): found
//! through configuration, always with a timeout, never with a secret on the
//! command line.
//!
//! [`HostTools`] is what the rest of the agent calls. It runs programs through
//! a [`ToolRunner`]; the real one ([`ProcessRunner`]) is the default, and
//! tests point the configured paths at stand-in scripts instead of faking it.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;

/// A host tool the agent knows how to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tool {
    Systemctl,
    Tailscale,
    Smartctl,
    DpkgQuery,
    Rpm,
    Modprobe,
    Chcon,
    /// The installed K3s binary itself (`k3s --version`, `k3s etcd-snapshot`).
    K3s,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Systemctl => "systemctl",
            Tool::Tailscale => "tailscale",
            Tool::Smartctl => "smartctl",
            Tool::DpkgQuery => "dpkg-query",
            Tool::Rpm => "rpm",
            Tool::Modprobe => "modprobe",
            Tool::Chcon => "chcon",
            Tool::K3s => "k3s",
        }
    }
}

impl std::fmt::Display for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `[host.tools]`: the program to run for each tool. A bare name is looked up
/// in PATH; tests point these at stand-in scripts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolPaths {
    #[serde(default = "default_systemctl")]
    pub systemctl: PathBuf,
    #[serde(default = "default_tailscale")]
    pub tailscale: PathBuf,
    #[serde(default = "default_smartctl")]
    pub smartctl: PathBuf,
    #[serde(default = "default_dpkg_query")]
    pub dpkg_query: PathBuf,
    #[serde(default = "default_rpm")]
    pub rpm: PathBuf,
    #[serde(default = "default_modprobe")]
    pub modprobe: PathBuf,
    #[serde(default = "default_chcon")]
    pub chcon: PathBuf,
}

fn default_systemctl() -> PathBuf {
    "systemctl".into()
}
fn default_tailscale() -> PathBuf {
    "tailscale".into()
}
fn default_smartctl() -> PathBuf {
    "smartctl".into()
}
fn default_dpkg_query() -> PathBuf {
    "dpkg-query".into()
}
fn default_rpm() -> PathBuf {
    "rpm".into()
}
fn default_modprobe() -> PathBuf {
    "modprobe".into()
}
fn default_chcon() -> PathBuf {
    "chcon".into()
}

impl Default for ToolPaths {
    fn default() -> Self {
        ToolPaths {
            systemctl: default_systemctl(),
            tailscale: default_tailscale(),
            smartctl: default_smartctl(),
            dpkg_query: default_dpkg_query(),
            rpm: default_rpm(),
            modprobe: default_modprobe(),
            chcon: default_chcon(),
        }
    }
}

/// What a finished tool printed and how it exited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolOutput {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ToolOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last non-empty line of stderr (or stdout), for error messages.
    pub fn last_words(&self) -> String {
        [&self.stderr, &self.stdout]
            .iter()
            .find_map(|text| text.lines().rev().find(|l| !l.trim().is_empty()))
            .map(|line| line.trim().chars().take(300).collect())
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{tool} is not installed ({program} not found)")]
    NotFound { tool: Tool, program: PathBuf },
    #[error("cannot run {tool} ({program})")]
    Spawn {
        tool: Tool,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{tool} {args}` did not finish within {}; it was killed", humantime::format_duration(*timeout))]
    TimedOut {
        tool: Tool,
        args: String,
        timeout: Duration,
    },
}

impl ToolError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ToolError::NotFound { .. })
    }
}

/// One program run.
#[derive(Debug, Clone)]
pub struct ToolCall {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub timeout: Duration,
}

/// How a finished run ended, as a runner sees it.
#[derive(Debug)]
pub enum RunOutcome {
    Finished(ToolOutput),
    TimedOut,
}

/// Runs programs. The real implementation is [`ProcessRunner`].
pub trait ToolRunner: Send + Sync + 'static {
    fn run(&self, call: ToolCall) -> BoxFuture<'static, std::io::Result<RunOutcome>>;
}

/// Runs real processes: no stdin, output captured, `LC_ALL=C` so output parses
/// the same everywhere, in their own process group so a timeout kills the
/// whole tree.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessRunner;

impl ToolRunner for ProcessRunner {
    fn run(&self, call: ToolCall) -> BoxFuture<'static, std::io::Result<RunOutcome>> {
        Box::pin(async move {
            let mut command = tokio::process::Command::new(&call.program);
            command
                .args(&call.args)
                .env("LC_ALL", "C")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
            let child = command.spawn()?;
            let group = child.id();
            match tokio::time::timeout(call.timeout, child.wait_with_output()).await {
                Ok(output) => {
                    let output = output?;
                    Ok(RunOutcome::Finished(ToolOutput {
                        code: output.status.code(),
                        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                    }))
                }
                Err(_) => {
                    if let Some(pid) = group {
                        kill_group(pid);
                    }
                    Ok(RunOutcome::TimedOut)
                }
            }
        })
    }
}

fn kill_group(pid: u32) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// The configured tools, run with timeouts.
#[derive(Clone)]
pub struct HostTools {
    paths: ToolPaths,
    /// The K3s binary under the host root.
    k3s: PathBuf,
    timeout: Duration,
    runner: Arc<dyn ToolRunner>,
}

impl std::fmt::Debug for HostTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostTools")
            .field("paths", &self.paths)
            .field("k3s", &self.k3s)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HostTools {
    pub fn new(paths: ToolPaths, k3s_binary: PathBuf, timeout: Duration) -> Self {
        HostTools::with_runner(paths, k3s_binary, timeout, Arc::new(ProcessRunner))
    }

    pub fn with_runner(
        paths: ToolPaths,
        k3s_binary: PathBuf,
        timeout: Duration,
        runner: Arc<dyn ToolRunner>,
    ) -> Self {
        HostTools {
            paths,
            k3s: k3s_binary,
            timeout,
            runner,
        }
    }

    pub fn program(&self, tool: Tool) -> &Path {
        match tool {
            Tool::Systemctl => &self.paths.systemctl,
            Tool::Tailscale => &self.paths.tailscale,
            Tool::Smartctl => &self.paths.smartctl,
            Tool::DpkgQuery => &self.paths.dpkg_query,
            Tool::Rpm => &self.paths.rpm,
            Tool::Modprobe => &self.paths.modprobe,
            Tool::Chcon => &self.paths.chcon,
            Tool::K3s => &self.k3s,
        }
    }

    /// The default timeout of one tool call (`host.tool_timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `tool` with the default timeout. A non-zero exit is not an error
    /// here: many tools report through their exit status.
    pub async fn run<I, S>(&self, tool: Tool, args: I) -> Result<ToolOutput, ToolError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_for(tool, args, self.timeout).await
    }

    pub async fn run_for<I, S>(
        &self,
        tool: Tool,
        args: I,
        timeout: Duration,
    ) -> Result<ToolOutput, ToolError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = self.program(tool).to_path_buf();
        self.run_program(tool, &program, args, timeout).await
    }

    /// Runs another program in the role of `tool` (e.g. the previous K3s
    /// binary for its version).
    pub async fn run_program<I, S>(
        &self,
        tool: Tool,
        program: &Path,
        args: I,
        timeout: Duration,
    ) -> Result<ToolOutput, ToolError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = program.to_path_buf();
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let shown = args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        tracing::debug!(%tool, program = %program.display(), args = shown, "running");
        let call = ToolCall {
            program: program.clone(),
            args,
            timeout,
        };
        match self.runner.run(call).await {
            Ok(RunOutcome::Finished(output)) => Ok(output),
            Ok(RunOutcome::TimedOut) => Err(ToolError::TimedOut {
                tool,
                args: shown,
                timeout,
            }),
            Err(source) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(ToolError::NotFound { tool, program })
            }
            Err(source) => Err(ToolError::Spawn {
                tool,
                program,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tools_with(dir: &Path, name: &str, script: &str) -> HostTools {
        let path = dir.join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let paths = ToolPaths {
            systemctl: path,
            ..ToolPaths::default()
        };
        HostTools::new(paths, dir.join("k3s"), Duration::from_secs(30))
    }

    #[tokio::test]
    async fn captures_output_and_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let tools = tools_with(
            dir.path(),
            "systemctl",
            "#!/bin/sh\necho \"out $1\"\necho err >&2\nexit 3\n",
        );
        let output = tools.run(Tool::Systemctl, ["x"]).await.unwrap();
        assert_eq!(output.code, Some(3));
        assert_eq!(output.stdout, "out x\n");
        assert_eq!(output.last_words(), "err");
        assert!(!output.success());
    }

    #[tokio::test]
    async fn a_hanging_tool_and_its_children_are_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child-pid");
        let tools = tools_with(
            dir.path(),
            "systemctl",
            &format!(
                "#!/bin/sh\nsleep 600 &\necho $! > {}\nwait\n",
                marker.display()
            ),
        );
        let err = tools
            .run_for(Tool::Systemctl, ["hang"], Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, ToolError::TimedOut { .. }), "{err}");
        assert!(err.to_string().contains("systemctl hang"), "{err}");
        let pid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild got SIGKILL with its group; wait until it is reaped or a zombie.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if state.is_empty() || state.contains(") Z ") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "grandchild survived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_missing_tool_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let tools = HostTools::new(
            ToolPaths {
                smartctl: dir.path().join("nope"),
                ..ToolPaths::default()
            },
            dir.path().join("k3s"),
            Duration::from_secs(5),
        );
        let err = tools.run(Tool::Smartctl, ["-j"]).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().contains("smartctl is not installed"));
    }
}
