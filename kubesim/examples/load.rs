//! Load figures for the simulator on the demo scenario (18 nodes, ~140 pods):
//! list and get throughput with and without concurrent watchers, and watch fan-out latency.
//!
//! `cargo run --release -p k3sfleet-kubesim --example load`
//! Compare the ratios printed in one run; absolute numbers depend on the machine.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k3sfleet_kubesim::{KubeSim, Scenario};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};

const REQUESTS: usize = 400;
const CONCURRENCY: usize = 8;
const WATCHERS: usize = 8;

async fn throughput(label: &str, pods: &Api<Pod>) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let pods = pods.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for i in 0..REQUESTS / CONCURRENCY {
                let t = Instant::now();
                if (i + worker) % 2 == 0 {
                    pods.list(&ListParams::default()).await.expect("list");
                } else {
                    pods.list(&ListParams::default().fields("spec.nodeName=worker-07"))
                        .await
                        .expect("list");
                }
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("task"));
    }
    latencies.sort();
    let elapsed = started.elapsed();
    let rate = REQUESTS as f64 / elapsed.as_secs_f64();
    println!(
        "{label:<32} {rate:8.0} lists/s  p50 {:6.2} ms  p99 {:6.2} ms",
        latencies[latencies.len() / 2].as_secs_f64() * 1e3,
        latencies[latencies.len() * 99 / 100].as_secs_f64() * 1e3
    );
    rate
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/demo.toml");
    let scenario = Scenario::from_file(path.as_ref())?;
    let sim = KubeSim::start(&scenario, "127.0.0.1:0").await?;
    let mut config = kube::Config::new(sim.url().parse()?);
    config.default_retry = false;
    let client = kube::Client::try_from(config)?;
    let pods: Api<Pod> = Api::all(client.clone());
    println!(
        "{} nodes, {} pods",
        sim.inspect(|c| c.nodes.len()),
        sim.inspect(|c| c.pods.len())
    );

    throughput("warm-up", &pods).await;
    let alone = throughput("lists, no watchers", &pods).await;

    let nodes: Api<Node> = Api::all(client.clone());
    let mut watchers = Vec::new();
    let mut pod_watchers = Vec::new();
    for _ in 0..WATCHERS {
        let rv = pods
            .list(&ListParams::default().limit(1))
            .await?
            .metadata
            .resource_version
            .unwrap_or_default();
        watchers.push(Box::pin(
            nodes
                .watch(&WatchParams::default().timeout(120), &rv)
                .await?,
        ));
        // Pod watchers run alongside, consuming whatever comes.
        let mut stream = Box::pin(
            pods.watch(&WatchParams::default().timeout(120), &rv)
                .await?,
        );
        pod_watchers.push(tokio::spawn(async move {
            while let Some(Ok(
                WatchEvent::Added(_)
                | WatchEvent::Modified(_)
                | WatchEvent::Deleted(_)
                | WatchEvent::Bookmark(_),
            )) = stream.next().await
            {}
        }));
    }
    let watched = throughput(&format!("lists, {} watchers", WATCHERS * 2), &pods).await;
    println!("throughput with watchers / without: {:.2}", watched / alone);

    // Fan-out: time from a node patch to its event at every node watcher.
    let mut fanout = Vec::new();
    for round in 0..20 {
        let started = Instant::now();
        nodes
            .patch(
                "worker-01",
                &PatchParams::default(),
                &Patch::Merge(
                    serde_json::json!({"metadata": {"labels": {"round": round.to_string()}}}),
                ),
            )
            .await?;
        for watcher in watchers.iter_mut() {
            tokio::time::timeout(Duration::from_secs(10), watcher.next()).await?;
        }
        fanout.push(started.elapsed());
    }
    fanout.sort();
    println!(
        "patch -> event at all {WATCHERS} node watchers: p50 {:.2} ms, max {:.2} ms",
        fanout[fanout.len() / 2].as_secs_f64() * 1e3,
        fanout[fanout.len() - 1].as_secs_f64() * 1e3
    );
    drop(watchers);
    for task in pod_watchers {
        task.abort();
    }
    sim.shutdown().await;
    Ok(())
}
