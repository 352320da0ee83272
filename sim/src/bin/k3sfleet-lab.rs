//! `k3sfleet-lab`: a fleet to play with by hand. `up` starts the lab (kubesim
//! or, with `--real`, the real tier) in the background and prints the
//! environment for kubectl and k3sfleet; `env` prints it again; `down` stops
//! everything and removes what the lab made, namespaces included.
//!
//!   k3sfleet-lab up [--real] [--scenario small|demo|FILE] [--dir DIR]
//!   eval "$(k3sfleet-lab env)"; kubectl get nodes; k3sfleet nodes
//!   k3sfleet-lab down

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use k3sfleet_sim::lab::{Lab, LabSpec, Network};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A k3sfleet fleet on this machine, left running for you.
#[derive(Debug, Parser)]
#[command(name = "k3sfleet-lab")]
struct Args {
    #[command(subcommand)]
    command: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Start the fleet in the background and print its environment
    Up {
        #[command(flatten)]
        lab: LabArgs,
    },
    /// Print the environment of the running fleet (for `eval`)
    Env {
        #[arg(long, default_value_os_t = default_dir())]
        dir: PathBuf,
    },
    /// Stop the fleet and remove everything it made
    Down {
        #[arg(long, default_value_os_t = default_dir())]
        dir: PathBuf,
        /// Keep the directory (logs, state)
        #[arg(long)]
        keep: bool,
    },
    /// (internal) run the fleet in the foreground until SIGTERM
    #[command(hide = true)]
    Serve {
        #[command(flatten)]
        lab: LabArgs,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct LabArgs {
    /// Run upstream Kubernetes (etcd, kube-apiserver, ...) instead of kubesim (root; scripts/build-testbed.sh)
    #[arg(long)]
    real: bool,
    /// small (3 servers, 4 workers), demo (3 and 15) or a scenario file
    #[arg(long, default_value = "small")]
    scenario: String,
    /// Where the lab lives
    #[arg(long, default_value_os_t = default_dir())]
    dir: PathBuf,
}

fn default_dir() -> PathBuf {
    std::env::temp_dir().join("k3sfleet-lab")
}

fn spec(args: &LabArgs) -> anyhow::Result<LabSpec> {
    let spec = match args.scenario.as_str() {
        "small" => LabSpec::small()?,
        "demo" => LabSpec::demo()?,
        path => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading scenario {path}"))?;
            LabSpec::new(&text, path)?
        }
    };
    Ok(if args.real { spec.real() } else { spec })
}

const PID_FILE: &str = "lab.pid";
const ENV_FILE: &str = "lab.env";

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("k3sfleet-lab: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Action::Up { lab } => up(&lab),
        Action::Env { dir } => {
            print!("{}", read_env(&dir)?);
            Ok(ExitCode::SUCCESS)
        }
        Action::Down { dir, keep } => down(&dir, keep),
        Action::Serve { lab } => serve(&lab),
    }
}

fn read_env(dir: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(dir.join(ENV_FILE))
        .with_context(|| format!("no lab running in {} (k3sfleet-lab up)", dir.display()))
}

fn running_pid(dir: &Path) -> Option<Pid> {
    let pid: i32 = std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let pid = Pid::from_raw(pid);
    kill(pid, None).is_ok().then_some(pid)
}

fn up(args: &LabArgs) -> anyhow::Result<ExitCode> {
    spec(args)?;
    if let Some(pid) = running_pid(&args.dir) {
        bail!(
            "a lab (pid {pid}) already runs in {}: k3sfleet-lab down --dir {0}",
            args.dir.display()
        );
    }
    std::fs::create_dir_all(&args.dir)?;
    let _ = std::fs::remove_file(args.dir.join(ENV_FILE));
    let log = args.dir.join("lab.log");
    let out = std::fs::File::create(&log)?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("serve")
        .arg("--scenario")
        .arg(&args.scenario)
        .arg("--dir")
        .arg(&args.dir);
    if args.real {
        command.arg("--real");
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()?;
    std::fs::write(args.dir.join(PID_FILE), child.id().to_string())?;
    eprintln!(
        "starting the {} lab in {} (log: {})",
        if args.real { "real-tier" } else { "kubesim" },
        args.dir.display(),
        log.display()
    );
    let started = Instant::now();
    loop {
        if let Ok(env) = read_env(&args.dir) {
            eprintln!("up after {:.0}s\n", started.elapsed().as_secs_f64());
            print!("{env}");
            eprintln!(
                "\nUse it:  eval \"$(k3sfleet-lab env --dir {})\"; kubectl get nodes; k3sfleet nodes\n\
                 Stop it: k3sfleet-lab down --dir {0}",
                args.dir.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("the lab exited ({status}) while starting:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn down(dir: &Path, keep: bool) -> anyhow::Result<ExitCode> {
    match running_pid(dir) {
        Some(pid) => {
            kill(pid, Signal::SIGTERM)?;
            let deadline = Instant::now() + Duration::from_secs(90);
            while kill(pid, None).is_ok() {
                if Instant::now() >= deadline {
                    eprintln!("the lab did not stop within 90s; killing it");
                    let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            eprintln!("stopped the lab in {}", dir.display());
        }
        None => eprintln!("no lab running in {}", dir.display()),
    }
    if !keep && dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(args: &LabArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut spec = spec(args)?;
        if spec.cluster == k3sfleet_sim::lab::ClusterKind::KubeSim {
            spec.network = Network::Loopback;
        }
        let lab = Lab::start(&args.dir, spec).await?;
        let env = environment(&lab)?;
        let tmp = args.dir.join(format!("{ENV_FILE}.tmp"));
        std::fs::write(&tmp, env)?;
        std::fs::rename(&tmp, args.dir.join(ENV_FILE))?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("stopping");
        let _ = std::fs::remove_file(args.dir.join(ENV_FILE));
        lab.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn environment(lab: &Lab) -> anyhow::Result<String> {
    let (ca, cert, key) = lab.admin_credentials();
    let coordinator = if lab.is_real() {
        lab.real().tunnel_to(lab.coordinator_addr)?.local
    } else {
        lab.coordinator_addr
    };
    let bin = k3sfleet_sim::process::bin_dir()?;
    let mut env = format!(
        "export KUBECONFIG={kubeconfig}\nexport K3SFLEET_COORDINATOR={coordinator}\n\
         export K3SFLEET_CA={ca}\nexport K3SFLEET_CERT={cert}\nexport K3SFLEET_KEY={key}\n\
         export PATH={bin}:$PATH\n",
        kubeconfig = lab.operator_kubeconfig().display(),
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
        bin = bin.display(),
    );
    if lab.is_real() {
        let kubectl = &lab.real().testbed.kubectl;
        env.push_str(&format!("alias kubectl={}\n", kubectl.display()));
    }
    Ok(env)
}
