//! Report-handling latency, measured from outside the coordinator: a probe
//! agent sends a report, and an operator client asks `GetNode` until the
//! coordinator shows that report. The figure includes everything a report
//! goes through (TLS, HTTP/2, the coordinator's scheduler under load, the
//! registry), plus at most one GetNode round trip of polling.

use std::time::{Duration, Instant};

use k3sfleet_proto::v1::GetNodeRequest;
use k3sfleet_proto::v1::admin_service_client::AdminServiceClient;
use tonic::transport::Channel;

use super::LoadFleet;

/// Latencies of `samples` probe reports, `spacing` apart, cycling over the
/// probe agents. Samples whose agent had no session are skipped.
pub async fn report_latencies(
    fleet: &LoadFleet,
    admin: Channel,
    samples: usize,
    spacing: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let mut client = AdminServiceClient::new(admin);
    let mut latencies = Vec::with_capacity(samples);
    let probes = fleet.probe_count().max(1);
    for sample in 0..samples {
        let next = Instant::now() + spacing;
        if let Some((name, sequence, sent)) = fleet.send_probe_report(sample % probes).await
            && let Some(latency) = seen_after(&mut client, &name, sequence, sent).await?
        {
            latencies.push(latency);
        }
        tokio::time::sleep_until(next.into()).await;
    }
    Ok(latencies)
}

/// Polls until the node's last report has `sequence`; `None` after 30 s.
async fn seen_after(
    client: &mut AdminServiceClient<Channel>,
    name: &str,
    sequence: u64,
    sent: Instant,
) -> anyhow::Result<Option<Duration>> {
    while sent.elapsed() < Duration::from_secs(30) {
        let node = client
            .get_node(GetNodeRequest {
                name: name.to_string(),
            })
            .await?
            .into_inner();
        if node.last_report.is_some_and(|r| r.sequence >= sequence) {
            return Ok(Some(sent.elapsed()));
        }
    }
    Ok(None)
}

/// The `q`-quantile (0..=1) of `values`, nearest rank.
pub fn quantile(values: &[Duration], q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&values, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&values, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&values, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
