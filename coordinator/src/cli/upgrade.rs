//! `k3sfleet upgrade plan|start|status|watch|pause|resume|abort|retry|skip`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use k3sfleet_proto::v1::rollout_service_client::RolloutServiceClient;
use k3sfleet_proto::v1::{
    ArtifactSource, ControlRolloutRequest, FromCoordinator, GetRolloutRequest, PermanentBlockers,
    RolloutAction, RolloutStatus, UpgradeOptions, artifact_source,
};
use tonic::transport::Channel;

use super::connection::ConnectionArgs;
use super::output::{self, OutputFormat};
use super::rollout_view;

#[derive(Debug, Subcommand)]
pub enum UpgradeCommand {
    /// Show what an upgrade would do and what blocks it; change nothing.
    Plan {
        #[command(flatten)]
        options: OptionsArgs,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Start a rolling upgrade (refused if the plan breaks a rule).
    Start {
        #[command(flatten)]
        options: OptionsArgs,
        /// Follow it live until it ends or pauses (exit status as for `watch`)
        #[arg(long)]
        watch: bool,
    },
    /// The rollout's state now.
    Status {
        /// Rollout id [default: the newest]
        #[arg(long, default_value_t = 0)]
        id: u64,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Follow the rollout live: a table on a terminal, one line per change when piped.
    ///
    /// Exit status: 0 when it completed, 2 when it paused (waiting for
    /// resume, retry, skip or abort), 1 otherwise.
    Watch {
        #[arg(long, default_value_t = 0)]
        id: u64,
    },
    /// Stop starting nodes and disruptive steps (nodes mid-upgrade finish their checks).
    Pause,
    /// Continue a paused rollout.
    Resume,
    /// Stop; lift k3sfleet's cordons; nodes already upgraded stay upgraded.
    Abort,
    /// Try a failed node again.
    Retry { node: String },
    /// Leave a node out of this rollout (its cordon is lifted).
    Skip { node: String },
}

#[derive(Debug, Args)]
pub struct OptionsArgs {
    /// Target K3s release, e.g. v1.31.5+k3s1
    #[arg(long = "to", value_name = "VERSION")]
    target: String,
    /// Workers down at once: a count or a percentage of the workers
    #[arg(long, default_value = "1")]
    max_unavailable: String,
    /// Allow going to an older version
    #[arg(long)]
    allow_downgrade: bool,
    /// Only nodes matching these globs (repeatable) [default: every node]
    #[arg(long = "nodes", value_name = "GLOB")]
    nodes: Vec<String>,
    /// How long a node must stay healthy after its upgrade
    #[arg(long, default_value = "30s", value_parser = k3sfleet_daemon::duration::parse)]
    settle: Duration,
    /// Give up draining a node after this long
    #[arg(long, default_value = "10m", value_parser = k3sfleet_daemon::duration::parse)]
    drain_timeout: Duration,
    /// How long K3s may take to come up before the agent rolls back
    #[arg(long, default_value = "5m", value_parser = k3sfleet_daemon::duration::parse)]
    health_timeout: Duration,
    /// Maintenance window, e.g. "Mon-Fri 22:00-06:00 Europe/Berlin" (repeatable)
    #[arg(long = "window")]
    windows: Vec<String>,
    /// Hosts download from this mirror (<url>/<version>/<asset>) [default: streamed from the coordinator]
    #[arg(long, conflicts_with = "local_dir")]
    mirror: Option<String>,
    /// Hosts read artifacts from this directory on themselves
    #[arg(long)]
    local_dir: Option<String>,
    /// The alerting engine's URL (Prometheus, vmalert, or VictoriaMetrics with
    /// -vmalert.proxyURL): while an alert fires, no new node starts; held past
    /// --alerts-hold-timeout, the rollout pauses naming the alerts
    #[arg(long)]
    alerts_url: Option<String>,
    /// Alert names to ignore, as regular expressions (repeatable) [default:
    /// ^Watchdog$, ^InfoInhibitor$, ^K3sfleetRollout, ^K3sfleetNodeStuckCordoned$]
    #[arg(long = "alerts-ignore", value_name = "REGEX")]
    alerts_ignore: Vec<String>,
    /// Only alerts whose names match count (repeatable) [default: every alert]
    #[arg(long = "alerts-match", value_name = "REGEX")]
    alerts_match: Vec<String>,
    /// PromQL whose series are the firing alerts, asked of /api/v1/query
    /// instead of the engine's /api/v1/alerts [default: the engine's list]
    #[arg(long)]
    alerts_query: Option<String>,
    /// How long alerts may hold the rollout before it pauses
    #[arg(long, default_value = "15m", value_parser = k3sfleet_daemon::duration::parse)]
    alerts_hold_timeout: Duration,
    /// Evict pods with emptyDir volumes (their data is lost)
    #[arg(long)]
    delete_emptydir_data: bool,
    /// Evict pods no controller recreates (they are gone for good)
    #[arg(long)]
    force: bool,
    /// A pod still terminating this long counts as gone [default: wait for every pod]
    #[arg(long, value_parser = k3sfleet_daemon::duration::parse)]
    skip_wait_for_delete_timeout: Option<Duration>,
    /// Before draining a Longhorn node, have Longhorn move its replicas off and wait for it
    #[arg(long)]
    longhorn_evict_replicas: bool,
    /// How long Longhorn's rebuilds may keep every node from starting before the rollout pauses
    #[arg(long, default_value = "30m", value_parser = k3sfleet_daemon::duration::parse)]
    longhorn_rebuild_timeout: Duration,
    /// Nodes whose drain could never finish as things stand: refuse to start, skip them, or wait
    #[arg(long, value_enum, default_value_t = PermanentBlockersArg::Refuse)]
    permanent_blockers: PermanentBlockersArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PermanentBlockersArg {
    /// Refuse to start, naming each blocker and what would fix it
    Refuse,
    /// Leave those nodes out of the rollout
    Skip,
    /// Start anyway; their drains wait until someone fixes it, or time out
    Wait,
}

impl OptionsArgs {
    fn to_proto(&self) -> UpgradeOptions {
        let kind = match (&self.mirror, &self.local_dir) {
            (Some(url), _) => artifact_source::Kind::MirrorUrl(url.clone()),
            (_, Some(dir)) => artifact_source::Kind::LocalDir(dir.clone()),
            _ => artifact_source::Kind::Coordinator(FromCoordinator {}),
        };
        UpgradeOptions {
            target_version: self.target.clone(),
            max_unavailable: self.max_unavailable.clone(),
            allow_downgrade: self.allow_downgrade,
            nodes: self.nodes.clone(),
            settle_seconds: self.settle.as_secs() as u32,
            drain_timeout_seconds: self.drain_timeout.as_secs() as u32,
            health_timeout_seconds: self.health_timeout.as_secs() as u32,
            windows: self.windows.clone(),
            source: Some(ArtifactSource { kind: Some(kind) }),
            alerts_url: self.alerts_url.clone().unwrap_or_default(),
            alerts_ignore: self.alerts_ignore.clone(),
            alerts_match: self.alerts_match.clone(),
            alerts_query: self.alerts_query.clone().unwrap_or_default(),
            alerts_hold_timeout_seconds: self.alerts_hold_timeout.as_secs() as u32,
            delete_emptydir_data: self.delete_emptydir_data,
            force: self.force,
            skip_wait_for_delete_timeout_seconds: self
                .skip_wait_for_delete_timeout
                .map_or(0, |d| d.as_secs().max(1) as u32),
            longhorn_evict_replicas: self.longhorn_evict_replicas,
            longhorn_rebuild_timeout_seconds: self.longhorn_rebuild_timeout.as_secs() as u32,
            permanent_blockers: match self.permanent_blockers {
                PermanentBlockersArg::Refuse => PermanentBlockers::Refuse,
                PermanentBlockersArg::Skip => PermanentBlockers::Skip,
                PermanentBlockersArg::Wait => PermanentBlockers::Wait,
            } as i32,
        }
    }
}

pub async fn run(connection: &ConnectionArgs, command: UpgradeCommand) -> anyhow::Result<ExitCode> {
    let mut client = RolloutServiceClient::new(connection.connect().await?);
    let control = |action: RolloutAction, node: &str| ControlRolloutRequest {
        action: action as i32,
        node: node.to_string(),
        expected_generation: 0,
    };
    let request = match command {
        UpgradeCommand::Plan {
            options,
            output: format,
        } => {
            let plan = client.plan_upgrade(options.to_proto()).await?.into_inner();
            match format {
                OutputFormat::Json => print!("{}", output::json(&plan)?),
                OutputFormat::Table => print!("{}", rollout_view::plan(&plan)),
            }
            return Ok(if plan.refusals.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        UpgradeCommand::Start { options, watch } => {
            let plan = client.plan_upgrade(options.to_proto()).await?.into_inner();
            print!("{}", rollout_view::plan(&plan));
            let status = client.start_upgrade(options.to_proto()).await?.into_inner();
            println!("Rollout {} started.", status.id);
            if watch {
                return follow(&mut client, status.id).await;
            }
            return Ok(ExitCode::SUCCESS);
        }
        UpgradeCommand::Status { id, output: format } => {
            let status = client
                .get_rollout(GetRolloutRequest { id })
                .await?
                .into_inner();
            match format {
                OutputFormat::Json => print!("{}", output::json(&status)?),
                OutputFormat::Table if matches!(status.phase.as_str(), "completed" | "aborted") => {
                    print!("{}", rollout_view::summary(&status))
                }
                OutputFormat::Table => print!("{}", rollout_view::table(&status)),
            }
            return Ok(ExitCode::SUCCESS);
        }
        UpgradeCommand::Watch { id } => return follow(&mut client, id).await,
        UpgradeCommand::Pause => control(RolloutAction::Pause, ""),
        UpgradeCommand::Resume => control(RolloutAction::Resume, ""),
        UpgradeCommand::Abort => control(RolloutAction::Abort, ""),
        UpgradeCommand::Retry { node } => control(RolloutAction::Retry, &node),
        UpgradeCommand::Skip { node } => control(RolloutAction::Skip, &node),
    };
    let status = client.control_rollout(request).await?.into_inner();
    println!("Rollout {} is {}.", status.id, status.phase);
    Ok(ExitCode::SUCCESS)
}

/// Follows a rollout until it ends: redraws a table on a terminal, prints one
/// line per change otherwise. Exit status: success only if it completed.
async fn follow(client: &mut RolloutServiceClient<Channel>, id: u64) -> anyhow::Result<ExitCode> {
    let mut stream = client
        .watch_rollout(GetRolloutRequest { id })
        .await?
        .into_inner();
    let terminal = std::io::stdout().is_terminal();
    let mut previous: Option<RolloutStatus> = None;
    while let Some(status) = stream.message().await? {
        let mut out = std::io::stdout().lock();
        if terminal {
            // Home the cursor and clear the screen, then draw the table again.
            write!(out, "\x1b[H\x1b[2J{}", rollout_view::table(&status))?;
        } else {
            for line in rollout_view::changes(previous.as_ref(), &status) {
                writeln!(out, "{line}")?;
            }
        }
        out.flush()?;
        let paused = status.phase == "paused";
        previous = Some(status);
        // Like `kubectl rollout status`: a paused rollout waits on a person,
        // so following it further would only hang the terminal or the script.
        if paused {
            break;
        }
    }
    let Some(last) = previous else {
        anyhow::bail!("the coordinator closed the watch without a status");
    };
    print!("\n{}", rollout_view::summary(&last));
    Ok(match last.phase.as_str() {
        "completed" => ExitCode::SUCCESS,
        "paused" => {
            println!("{}", rollout_view::paused_hint(&last));
            ExitCode::from(PAUSED_EXIT)
        }
        _ => ExitCode::FAILURE,
    })
}

/// `upgrade watch` (and `start --watch`) exit status for a rollout that
/// paused and waits for an operator's decision.
const PAUSED_EXIT: u8 = 2;
