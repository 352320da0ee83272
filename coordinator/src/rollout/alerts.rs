//! The optional alerts gate on Prometheus or VictoriaMetrics: while an alert
//! that counts fires, no new node starts; after the hold timeout the rollout
//! pauses naming the alerts. An alert never fails a node whose own health is
//! fine (the node's health is its agent's and its kubelet's to tell).
//!
//! Which alerts count, as kured's users configure it: every stack fires some
//! on purpose (kube-prometheus's `Watchdog` is a dead-man's switch that
//! always fires, `InfoInhibitor` routinely), and a rollout sets off
//! k3sfleet's own rollout alerts; those are ignored unless the operator
//! gives patterns of their own.

use std::time::Duration;

use k3sfleet_proto::v1::UpgradeOptions;
use regex::Regex;

/// The PromQL both Prometheus and VictoriaMetrics answer for firing alerts.
pub const DEFAULT_QUERY: &str = "ALERTS{alertstate=\"firing\"}";

/// Alerts that never hold a rollout unless the operator says otherwise.
pub const DEFAULT_IGNORE: [&str; 4] = [
    "^Watchdog$",
    "^InfoInhibitor$",
    // Raised by the rollout itself: paused, aborted, a node failed, a node
    // cordoned for longer than usual (a slow drain).
    "^K3sfleetRollout",
    "^K3sfleetNodeStuckCordoned$",
];

/// How long alerts may hold the rollout before it pauses, when not given.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The gate's settings, checked.
#[derive(Debug, Clone)]
pub struct AlertGate {
    pub url: String,
    pub query: String,
    ignore: Vec<Regex>,
    only: Vec<Regex>,
    pub hold_timeout: Duration,
}

impl AlertGate {
    /// The gate the rollout's options describe; `Ok(None)` without an alerts
    /// URL. A pattern that does not compile is an error naming it.
    pub fn from_options(options: &UpgradeOptions) -> Result<Option<AlertGate>, String> {
        if options.alerts_url.is_empty() {
            return Ok(None);
        }
        if !options.alerts_url.starts_with("http://") && !options.alerts_url.starts_with("https://")
        {
            return Err(format!(
                "invalid alerts URL {:?}: expected http(s)://host:port",
                options.alerts_url
            ));
        }
        let compile = |what: &str, patterns: &[String]| -> Result<Vec<Regex>, String> {
            patterns
                .iter()
                .map(|p| {
                    Regex::new(p).map_err(|err| format!("invalid {what} pattern {p:?}: {err}"))
                })
                .collect()
        };
        let ignore = if options.alerts_ignore.is_empty() {
            DEFAULT_IGNORE.map(String::from).to_vec()
        } else {
            options.alerts_ignore.clone()
        };
        Ok(Some(AlertGate {
            url: options.alerts_url.clone(),
            query: match options.alerts_query.trim() {
                "" => DEFAULT_QUERY.to_string(),
                query => query.to_string(),
            },
            ignore: compile("alerts-ignore", &ignore)?,
            only: compile("alerts-match", &options.alerts_match)?,
            hold_timeout: match options.alerts_hold_timeout_seconds {
                0 => DEFAULT_HOLD_TIMEOUT,
                seconds => Duration::from_secs(seconds.into()),
            },
        }))
    }

    /// Whether an alert of this name holds the rollout.
    pub fn counts(&self, alert: &str) -> bool {
        (self.only.is_empty() || self.only.iter().any(|p| p.is_match(alert)))
            && !self.ignore.iter().any(|p| p.is_match(alert))
    }

    /// The alerts firing now that count, by name, sorted and without repeats.
    pub async fn firing(&self) -> Result<Vec<String>, String> {
        let mut names: Vec<String> = query(&self.url, &self.query)
            .await?
            .into_iter()
            .filter(|name| self.counts(name))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// The `alertname` of every series `promql` returns, from `<base>/api/v1/query`.
async fn query(base: &str, promql: &str) -> Result<Vec<String>, String> {
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let response = crate::http::client()
        .map_err(|err| err.to_string())?
        .get(&url)
        .query(&[("query", promql)])
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|err| format!("{url}: {err}"))?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|err| format!("{url}: {err}"))?;
    parse(&body).ok_or_else(|| format!("{url} did not answer a Prometheus query result"))
}

/// The alert names in a `/api/v1/query` answer.
pub fn parse(body: &serde_json::Value) -> Option<Vec<String>> {
    if body["status"] != "success" {
        return None;
    }
    let result = body["data"]["result"].as_array()?;
    Some(
        result
            .iter()
            .map(|series| {
                series["metric"]["alertname"]
                    .as_str()
                    .unwrap_or("unnamed")
                    .to_string()
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_alert_names_from_a_query_answer() {
        let body = serde_json::json!({
            "status": "success",
            "data": {"resultType": "vector", "result": [
                {"metric": {"alertname": "KubeNodeNotReady", "alertstate": "firing"}, "value": [1, "1"]}
            ]}
        });
        assert_eq!(parse(&body), Some(vec!["KubeNodeNotReady".to_string()]));
        let quiet = serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert_eq!(parse(&quiet), Some(vec![]));
        assert_eq!(parse(&serde_json::json!({"status": "error"})), None);
    }

    fn gate(ignore: &[&str], only: &[&str]) -> AlertGate {
        AlertGate::from_options(&UpgradeOptions {
            alerts_url: "http://127.0.0.1:9090".into(),
            alerts_ignore: ignore.iter().map(|s| s.to_string()).collect(),
            alerts_match: only.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
        .unwrap()
    }

    #[test]
    fn the_always_firing_and_the_rollouts_own_alerts_do_not_count_by_default() {
        let gate = gate(&[], &[]);
        for quiet in [
            "Watchdog",
            "InfoInhibitor",
            "K3sfleetRolloutPaused",
            "K3sfleetNodeStuckCordoned",
        ] {
            assert!(!gate.counts(quiet), "{quiet}");
        }
        for loud in ["KubeNodeNotReady", "K3sfleetAgentDown", "WatchdogMissing"] {
            assert!(gate.counts(loud), "{loud}");
        }
        assert_eq!(gate.query, DEFAULT_QUERY);
        assert_eq!(gate.hold_timeout, DEFAULT_HOLD_TIMEOUT);
    }

    #[test]
    fn operator_patterns_replace_the_defaults_and_match_narrows() {
        let gate = gate(&["^Noisy"], &["^Kube", "^Noisy"]);
        assert!(gate.counts("KubeNodeNotReady"));
        assert!(!gate.counts("NoisyThing"), "ignored beats matched");
        assert!(!gate.counts("K3sfleetAgentDown"), "not matched");
        assert!(
            gate.counts("KubeWatchdog"),
            "the defaults are replaced, not added to"
        );
    }

    #[test]
    fn bad_gates_are_named_not_defaulted() {
        let err = AlertGate::from_options(&UpgradeOptions {
            alerts_url: "http://x:9090".into(),
            alerts_ignore: vec!["(".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("alerts-ignore pattern \"(\""), "{err}");
        let err = AlertGate::from_options(&UpgradeOptions {
            alerts_url: "prometheus:9090".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("invalid alerts URL"), "{err}");
        assert!(
            AlertGate::from_options(&UpgradeOptions::default())
                .unwrap()
                .is_none()
        );
    }
}
