//! `k3sfleet drain` and `k3sfleet uncordon`: live progress, one line per step,
//! and an exit status by outcome.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use k3sfleet_proto::v1::drain_service_client::DrainServiceClient;
use k3sfleet_proto::v1::{
    DrainOutcome, DrainPlan, DrainRequest, DrainResult, PodBlocked, PodRef, SkippedPod,
    TimeoutPolicy, UncordonRequest, drain_event,
};

use super::connection::ConnectionArgs;
use crate::drain::go_duration;

/// Exit status of a drain that ran out of time (failures exit 1).
const EXIT_TIMED_OUT: u8 = 2;

#[derive(Debug, Args)]
#[command(after_help = "\
Exit status: 0 drained (or a dry run that found nothing refused), 1 failed (or a dry run with
refused pods), 2 timed out. A node that was cordoned before the drain is never uncordoned.")]
pub struct DrainArgs {
    node: String,
    /// Give up after this long [default: the coordinator's, 5m unless configured]
    #[arg(long, value_parser = k3sfleet_daemon::duration::parse)]
    timeout: Option<Duration>,
    /// Show what would be evicted, skipped, refused, and which budgets block now; change nothing
    #[arg(long)]
    dry_run: bool,
    /// Evict pods with emptyDir volumes (their data is lost)
    #[arg(long)]
    delete_emptydir_data: bool,
    /// Evict pods no controller recreates, and DaemonSet pods whose DaemonSet is gone
    #[arg(long)]
    force: bool,
    /// Grace period for evicted pods, in seconds [default: each pod's own]
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    grace_period: Option<i32>,
    /// What to do with the node if the drain does not finish
    #[arg(long, value_enum, default_value_t = OnTimeout::LeaveCordoned)]
    on_timeout: OnTimeout,
    /// Eviction requests in flight at once [default: the coordinator's, 8]
    #[arg(long)]
    concurrency: Option<u32>,
    /// A pod still terminating this long counts as gone (as kubectl's flag;
    /// it does not get past a PodDisruptionBudget) [default: wait for every pod]
    #[arg(long, value_parser = k3sfleet_daemon::duration::parse)]
    skip_wait_for_delete_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnTimeout {
    /// Leave it cordoned, to look before pods come back
    LeaveCordoned,
    /// Make it schedulable again (only if this drain cordoned it)
    Uncordon,
}

pub async fn drain(connection: &ConnectionArgs, args: DrainArgs) -> anyhow::Result<ExitCode> {
    let timeout_seconds = match args.timeout {
        None => 0,
        Some(timeout) if timeout.is_zero() => anyhow::bail!("--timeout must be more than 0"),
        Some(timeout) => u32::try_from(timeout.as_secs().max(1))
            .map_err(|_| anyhow::anyhow!("--timeout {timeout:?} is too long"))?,
    };
    if args.grace_period.is_some_and(|seconds| seconds < -1) {
        anyhow::bail!("--grace-period must be 0 or more seconds (or -1 for each pod's own)");
    }
    let request = DrainRequest {
        node: args.node.clone(),
        timeout_seconds,
        dry_run: args.dry_run,
        delete_emptydir_data: args.delete_emptydir_data,
        force: args.force,
        grace_period_seconds: args.grace_period,
        on_timeout: match args.on_timeout {
            OnTimeout::LeaveCordoned => TimeoutPolicy::LeaveCordoned,
            OnTimeout::Uncordon => TimeoutPolicy::Uncordon,
        } as i32,
        concurrency: args.concurrency.unwrap_or(0),
        skip_wait_for_delete_timeout_seconds: args
            .skip_wait_for_delete_timeout
            .map_or(0, |d| d.as_secs().max(1) as u32),
    };
    let mut client = DrainServiceClient::new(connection.connect().await?);
    let mut events = client.drain(request).await?.into_inner();
    let node = args.node;
    let mut plan: Option<DrainPlan> = None;
    while let Some(event) = events.message().await? {
        match event.event {
            Some(drain_event::Event::Cordoned(cordoned)) => {
                if cordoned.was_unschedulable {
                    println!(
                        "node/{node} was already cordoned: it stays cordoned whatever happens"
                    );
                } else {
                    println!("node/{node} cordoned");
                }
            }
            Some(drain_event::Event::Plan(p)) => {
                print!("{}", plan_text(&node, &p));
                plan = Some(p);
            }
            Some(drain_event::Event::Evicting(e)) => println!("evicting {}", pod(&e.pod)),
            Some(drain_event::Event::Blocked(b)) => println!("{}", blocked_line(&b)),
            Some(drain_event::Event::Gone(g)) => println!("gone     {}", pod(&g.pod)),
            Some(drain_event::Event::Result(result)) => {
                print!("{}", result_text(&node, &result));
                return Ok(exit_code(&result, plan.as_ref()));
            }
            None => {}
        }
    }
    anyhow::bail!("the coordinator ended the drain's stream without a result")
}

pub async fn uncordon(connection: &ConnectionArgs, node: String) -> anyhow::Result<ExitCode> {
    let mut client = DrainServiceClient::new(connection.connect().await?);
    let response = client
        .uncordon(UncordonRequest { node: node.clone() })
        .await?
        .into_inner();
    if response.changed {
        println!("node/{node} uncordoned");
    } else {
        println!("node/{node} was already schedulable");
    }
    Ok(ExitCode::SUCCESS)
}

fn exit_code(result: &DrainResult, plan: Option<&DrainPlan>) -> ExitCode {
    match DrainOutcome::try_from(result.outcome).unwrap_or(DrainOutcome::Unspecified) {
        DrainOutcome::Drained => ExitCode::SUCCESS,
        DrainOutcome::DryRun if plan.is_none_or(|p| p.refused.is_empty()) => ExitCode::SUCCESS,
        DrainOutcome::TimedOut => ExitCode::from(EXIT_TIMED_OUT),
        _ => ExitCode::FAILURE,
    }
}

fn pod(pod: &Option<PodRef>) -> String {
    match pod {
        Some(pod) => format!("{}/{}", pod.namespace, pod.name),
        None => "?".into(),
    }
}

fn blocked_line(blocked: &PodBlocked) -> String {
    // The first refusal has no history yet.
    let history = match blocked.attempts {
        0 | 1 => String::new(),
        n => format!(
            " for {}, {n} attempts",
            go_duration(Duration::from_millis(blocked.waiting_ms))
        ),
    };
    if blocked.pdb.is_empty() {
        format!(
            "blocked  {} by the API server{history}: {}",
            pod(&blocked.pod),
            blocked.message
        )
    } else {
        format!(
            "blocked  {} by PDB {} ({}/{} healthy){history}",
            pod(&blocked.pod),
            blocked.pdb,
            blocked.current_healthy,
            blocked.desired_healthy
        )
    }
}

fn plan_text(node: &str, plan: &DrainPlan) -> String {
    let mut text = format!(
        "plan for {node}: evict {}, skip {}, refuse {}\n",
        plan.evict.len(),
        plan.skipped.len(),
        plan.refused.len()
    );
    for evict in &plan.evict {
        text.push_str(&format!("  evict  {}\n", pod(&Some(evict.clone()))));
    }
    let reasons = |label: &str, pods: &[SkippedPod], text: &mut String| {
        for skipped in pods {
            text.push_str(&format!(
                "  {label} {}: {}\n",
                pod(&skipped.pod),
                skipped.reason
            ));
        }
    };
    reasons("skip  ", &plan.skipped, &mut text);
    reasons("refuse", &plan.refused, &mut text);
    for block in &plan.blocking {
        let pods: Vec<String> = block.pods.iter().map(|p| pod(&Some(p.clone()))).collect();
        let when = if block.permanent.is_empty() {
            "blocks now"
        } else {
            "will never allow it"
        };
        text.push_str(&format!(
            "  PDB {} {when} ({} healthy, needs {}, allows {}): {}\n",
            block.pdb,
            block.current_healthy,
            block.desired_healthy,
            block.disruptions_allowed.max(0),
            pods.join(", ")
        ));
        for note in [&block.permanent, &block.longhorn] {
            if !note.is_empty() {
                text.push_str(&format!("    {note}\n"));
            }
        }
    }
    text
}

fn result_text(node: &str, result: &DrainResult) -> String {
    let outcome = crate::api::outcome_name(result.outcome);
    let mut text = format!("{outcome}: {}\n", result.message);
    if !result.waits.is_empty() {
        let waits: Vec<String> = result
            .waits
            .iter()
            .map(|w| {
                format!(
                    "{} {}",
                    w.reason,
                    go_duration(Duration::from_millis(w.millis))
                )
            })
            .collect();
        text.push_str(&format!("waited: {}\n", waits.join(", ")));
    }
    let unfinished = !matches!(
        DrainOutcome::try_from(result.outcome),
        Ok(DrainOutcome::Drained | DrainOutcome::DryRun)
    );
    if unfinished && result.left_cordoned {
        text.push_str(&format!(
            "node/{node} is left cordoned: `k3sfleet uncordon {node}` lets pods back\n"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use k3sfleet_proto::v1::{PdbBlock, WaitTotal};

    fn pod_ref(name: &str) -> PodRef {
        PodRef {
            namespace: "shop".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        }
    }

    #[test]
    fn progress_lines_name_pod_budget_and_counts() {
        let line = blocked_line(&PodBlocked {
            pod: Some(pod_ref("web-1")),
            pdb: "shop/web".into(),
            current_healthy: 3,
            desired_healthy: 3,
            message: "Cannot evict pod".into(),
            waiting_ms: 4200,
            attempts: 3,
        });
        assert_eq!(
            line,
            "blocked  shop/web-1 by PDB shop/web (3/3 healthy) for 4s, 3 attempts"
        );
        let first = blocked_line(&PodBlocked {
            pod: Some(pod_ref("web-2")),
            message: "503 the server is busy".into(),
            attempts: 1,
            ..Default::default()
        });
        assert_eq!(
            first,
            "blocked  shop/web-2 by the API server: 503 the server is busy"
        );
    }

    #[test]
    fn the_plan_and_result_read_well() {
        let plan = DrainPlan {
            evict: vec![pod_ref("web-1")],
            skipped: vec![SkippedPod {
                pod: Some(pod_ref("agent")),
                reason: "DaemonSet pod".into(),
            }],
            refused: vec![],
            blocking: vec![PdbBlock {
                pdb: "shop/web".into(),
                current_healthy: 3,
                desired_healthy: 3,
                disruptions_allowed: 0,
                pods: vec![pod_ref("web-1")],
                permanent: String::new(),
                longhorn: String::new(),
            }],
        };
        assert_eq!(
            plan_text("worker-1", &plan),
            "plan for worker-1: evict 1, skip 1, refuse 0\n  evict  shop/web-1\n  \
             skip   shop/agent: DaemonSet pod\n  PDB shop/web blocks now (3 healthy, needs 3, \
             allows 0): shop/web-1\n"
        );
        let result = DrainResult {
            outcome: DrainOutcome::TimedOut as i32,
            message: "blocked by PDB shop/web for 5m0s (2/3 healthy): shop/web-1".into(),
            left_cordoned: true,
            waits: vec![WaitTotal {
                reason: "pdb shop/web".into(),
                millis: 300_000,
            }],
            ..Default::default()
        };
        assert_eq!(
            result_text("worker-1", &result),
            "TIMED_OUT: blocked by PDB shop/web for 5m0s (2/3 healthy): shop/web-1\n\
             waited: pdb shop/web 5m0s\n\
             node/worker-1 is left cordoned: `k3sfleet uncordon worker-1` lets pods back\n"
        );
        assert_eq!(exit_code(&result, None), ExitCode::from(EXIT_TIMED_OUT));
    }
}
