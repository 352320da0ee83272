//! `k3sfleet-demo`: a rolling K3s upgrade of a fleet on this machine.
//!
//! Starts the cluster (3 servers, 15 workers, a shop with
//! PodDisruptionBudgets): kubesim by default, or with `--real` upstream
//! etcd, kube-apiserver, controller-manager and scheduler on the servers and
//! KWOK kubelets (root; scripts/build-testbed.sh). Then the coordinator and
//! 18 real agents on stand-in hosts; shows the plan, runs the upgrade with
//! the live view, and ends with the summary and the PDB violations counted
//! by the cluster (kubesim) or by the independent auditor (real tier). The
//! fleet runs the simulated Longhorn on both tiers; its controller reports
//! the rebuilds and whether any volume was left without a healthy replica.
//! Options after `--` are added to `k3sfleet upgrade start`.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use k3sfleet_sim::lab::real::COORDINATOR_USER;
use k3sfleet_sim::lab::{Lab, LabSpec};

/// Roll K3s across a fleet on this machine.
#[derive(Debug, Parser)]
#[command(name = "k3sfleet-demo")]
struct Args {
    /// Working directory (kept afterwards, with every log) [default: a fresh temporary one]
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Workers down at once
    #[arg(long, default_value = "25%")]
    max_unavailable: String,
    /// How long each node must stay healthy after its upgrade
    #[arg(long, default_value = "5s")]
    settle: String,
    /// Run the real control plane (etcd, kube-apiserver, ...) instead of kubesim
    #[arg(long)]
    real: bool,
    /// More `k3sfleet upgrade start` options
    #[arg(last = true)]
    upgrade_options: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("k3sfleet-demo-{}", std::process::id())),
    };
    if args.real
        && let Some(reason) = k3sfleet_sim::lab::real::unavailable_reason()
    {
        anyhow::bail!("the real tier cannot run here: {reason}");
    }
    let spec = if args.real {
        LabSpec::demo()?.real()
    } else {
        LabSpec::demo()?
    };
    let (from, to) = (spec.from_version.clone(), spec.to_version.clone());
    println!(
        "Starting {}, a coordinator and {} agents in {}",
        if args.real {
            "the real control plane (3 etcd members, 3 API servers, KWOK kubelets)"
        } else {
            "the simulated cluster"
        },
        spec.scenario.nodes.len(),
        dir.display()
    );
    let started = Instant::now();
    let lab = Lab::start(&dir, spec).await.context("starting the lab")?;
    println!(
        "Ready in {:.1}s; every node runs K3s {from}.\n",
        started.elapsed().as_secs_f64()
    );
    print!("$ k3sfleet nodes\n{}", lab.cli_ok(&["nodes"])?);

    // Options after `--` win over the demo's own.
    let given = |flag: &str| {
        args.upgrade_options
            .iter()
            .any(|o| o == flag || o.starts_with(&format!("{flag}=")))
    };
    let mut options: Vec<String> = vec!["--to".into(), to.clone()];
    for (flag, value) in [
        ("--max-unavailable", &args.max_unavailable),
        ("--settle", &args.settle),
    ] {
        if !given(flag) {
            options.extend([flag.to_string(), value.clone()]);
        }
    }
    // The shop's search indexer keeps scratch data in an emptyDir, and
    // someone left a bare debug pod on worker-07: the plan names both.
    for flag in ["--delete-emptydir-data", "--force"] {
        if !given(flag) {
            options.push(flag.into());
        }
    }
    options.extend(args.upgrade_options.iter().cloned());
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    println!("\n$ k3sfleet upgrade plan {}", options.join(" "));
    print!(
        "{}",
        lab.cli_ok(&[&["upgrade", "plan"][..], &options[..]].concat())?
    );

    println!("\n$ k3sfleet upgrade start {} --watch", options.join(" "));
    let status = lab
        .cli()?
        .args([&["upgrade", "start"][..], &options[..], &["--watch"][..]].concat())
        .status()?;

    let budget_violations = if lab.is_real() {
        let verdict = lab.real().auditor().verdict();
        println!(
            "\nThe API servers' audit logs: {} evictions by the coordinator, {} refused with 429 by a \
             PodDisruptionBudget. The auditor found {verdict}.",
            verdict.evictions_by(COORDINATOR_USER, 201),
            verdict.evictions_by(COORDINATOR_USER, 429),
        );
        usize::from(!verdict.is_clean())
    } else {
        let stats = lab.kubesim().stats();
        let refused: u64 = stats.evictions_refused.values().sum();
        println!(
            "\nThe simulated API server counted {} evictions, {refused} refused with 429 by a PodDisruptionBudget, \
             {} replacement pods, and {} PDB violations.",
            stats.evictions_accepted, stats.pods_recreated, stats.pdb_violations
        );
        stats.pdb_violations as usize
    };
    let mut violations = budget_violations;
    if let Some(longhorn) = lab.longhorn_stats() {
        let fewest = longhorn.lowest_healthy.values().min().copied().unwrap_or(0);
        println!(
            "The simulated Longhorn rebuilt {} replicas of {} volumes; the fewest healthy replicas \
             any volume had at any moment: {fewest}; volumes left without a healthy replica: {}.",
            longhorn.rebuilds,
            longhorn.lowest_healthy.len(),
            longhorn.violations.len()
        );
        violations += longhorn.violations.len();
    }
    let cordoned = lab.cordoned_nodes();
    println!(
        "Nodes still cordoned: {}. Logs and state: {}",
        if cordoned.is_empty() {
            "none".to_string()
        } else {
            cordoned.join(", ")
        },
        dir.display()
    );
    let succeeded = status.success() && violations == 0 && cordoned.is_empty();
    lab.shutdown().await;
    Ok(if succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
