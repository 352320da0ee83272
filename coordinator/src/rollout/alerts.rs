//! The optional alerts gate on Prometheus or VictoriaMetrics: while an alert
//! that counts fires, no new node starts; after the hold timeout the rollout
//! pauses naming the alerts. An alert never fails a node whose own health is
//! fine (the node's health is its agent's and its kubelet's to tell).
//!
//! The gate asks the alerting engine for its alerts (`/api/v1/alerts`, which
//! Prometheus and vmalert answer alike, and VictoriaMetrics proxies to vmalert
//! with `-vmalert.proxyURL`), as kured does: the engine knows the moment an
//! alert resolves. The `ALERTS` series only tells it as soon in Prometheus;
//! vmalert writes no staleness marker when an alert resolves, so
//! VictoriaMetrics goes on answering the last firing sample for minutes. An
//! operator's own PromQL (`--alerts-query`) is still asked of `/api/v1/query`.
//!
//! Which alerts count, as kured's users configure it: every stack fires some
//! on purpose (kube-prometheus's `Watchdog` is a dead-man's switch that
//! always fires, `InfoInhibitor` routinely), and a rollout sets off
//! k3sfleet's own rollout alerts; those are ignored unless the operator
//! gives patterns of their own.

use std::time::Duration;

use k3sfleet_proto::v1::UpgradeOptions;
use regex::Regex;
use serde_json::Value;

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

/// Where the gate learns which alerts fire.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The alerting engine's list at `/api/v1/alerts`; alerts in state
    /// `firing` count.
    Engine,
    /// An operator's PromQL at `/api/v1/query`: every series it returns is a
    /// firing alert, named by its `alertname` label.
    Query(String),
}

/// The gate's settings, checked.
#[derive(Debug, Clone)]
pub struct AlertGate {
    pub url: String,
    pub source: Source,
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
            source: match options.alerts_query.trim() {
                "" => Source::Engine,
                promql => Source::Query(promql.to_string()),
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
        let firing = match &self.source {
            Source::Engine => engine_alerts(&self.url).await?,
            Source::Query(promql) => query(&self.url, promql).await?,
        };
        let mut names: Vec<String> = firing
            .into_iter()
            .filter(|name| self.counts(name))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// The names of the engine's firing alerts. An engine without a single
/// alerting rule is an error, not a quiet fleet: VictoriaMetrics without
/// `-vmalert.proxyURL` answers every alerts call with an empty list.
async fn engine_alerts(base: &str) -> Result<Vec<String>, String> {
    let alerts = get(base, "/api/v1/alerts", &[]).await?;
    let (listed, firing) = parse_alerts(&alerts)
        .ok_or_else(|| unexpected(base, "/api/v1/alerts", "an alerts list", &alerts))?;
    if listed == 0 {
        let rules = get(base, "/api/v1/rules", &[]).await?;
        let count = alerting_rules(&rules)
            .ok_or_else(|| unexpected(base, "/api/v1/rules", "a rules list", &rules))?;
        if count == 0 {
            return Err(format!(
                "{base} has no alerting rules loaded; the alerts URL must be Prometheus, \
                 vmalert, or VictoriaMetrics started with -vmalert.proxyURL"
            ));
        }
    }
    Ok(firing)
}

/// The `alertname` of every series `promql` returns, from `<base>/api/v1/query`.
async fn query(base: &str, promql: &str) -> Result<Vec<String>, String> {
    let body = get(base, "/api/v1/query", &[("query", promql)]).await?;
    parse_query(&body).ok_or_else(|| unexpected(base, "/api/v1/query", "a query result", &body))
}

/// The error for an answer of the wrong shape, with its start.
fn unexpected(base: &str, path: &str, what: &str, body: &Value) -> String {
    let text = body.to_string();
    let start = match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    };
    format!("{base}{path} did not answer a Prometheus {what}: {start}")
}

/// `<base><path>`'s JSON answer; an error names the URL and what went wrong.
async fn get(base: &str, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let response = crate::http::client()?
        .get(&url)
        .query(params)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|err| format!("{url}: {err}"))?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    response.json().await.map_err(|err| format!("{url}: {err}"))
}

/// How many alerts an `/api/v1/alerts` answer lists (pending ones too), and
/// the names of the firing ones.
pub fn parse_alerts(body: &Value) -> Option<(usize, Vec<String>)> {
    if body["status"] != "success" {
        return None;
    }
    let alerts = list(&body["data"]["alerts"])?;
    let firing = alerts
        .iter()
        .filter(|alert| alert["state"] == "firing")
        .map(|alert| alert_name(&alert["labels"]))
        .collect();
    Some((alerts.len(), firing))
}

/// How many alerting rules an `/api/v1/rules` answer holds.
pub fn alerting_rules(body: &Value) -> Option<usize> {
    if body["status"] != "success" {
        return None;
    }
    let groups = list(&body["data"]["groups"])?;
    Some(
        groups
            .iter()
            .filter_map(|group| list(&group["rules"]))
            .flatten()
            .filter(|rule| rule["type"] == "alerting")
            .count(),
    )
}

/// The alert names in a `/api/v1/query` answer.
pub fn parse_query(body: &Value) -> Option<Vec<String>> {
    if body["status"] != "success" {
        return None;
    }
    let result = body["data"]["result"].as_array()?;
    Some(
        result
            .iter()
            .map(|series| alert_name(&series["metric"]))
            .collect(),
    )
}

/// A JSON list; `null` is an empty one (vmalert, in Go, answers
/// `"alerts": null` when nothing is active).
fn list(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Null => Some(&[]),
        Value::Array(items) => Some(items),
        _ => None,
    }
}

fn alert_name(labels: &Value) -> String {
    labels["alertname"]
        .as_str()
        .unwrap_or("unnamed")
        .to_string()
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
        assert_eq!(
            parse_query(&body),
            Some(vec!["KubeNodeNotReady".to_string()])
        );
        let quiet = serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert_eq!(parse_query(&quiet), Some(vec![]));
        assert_eq!(parse_query(&serde_json::json!({"status": "error"})), None);
    }

    #[test]
    fn reads_firing_alerts_from_an_engines_list_and_counts_pending_as_listed() {
        // Prometheus' and vmalert's answers share these fields.
        let body = serde_json::json!({"status": "success", "data": {"alerts": [
            {"labels": {"alertname": "K3sfleetAgentDown", "node": "worker-01"}, "state": "firing"},
            {"labels": {"alertname": "KubeNodeNotReady"}, "state": "pending"},
            {"labels": {}, "state": "firing"}
        ]}});
        assert_eq!(
            parse_alerts(&body),
            Some((
                3,
                vec!["K3sfleetAgentDown".to_string(), "unnamed".to_string()]
            ))
        );
        let quiet = serde_json::json!({"status": "success", "data": {"alerts": []}});
        assert_eq!(parse_alerts(&quiet), Some((0, vec![])));
        // vmalert's answer with nothing active.
        let none = serde_json::json!({"status": "success", "data": {"alerts": null}});
        assert_eq!(parse_alerts(&none), Some((0, vec![])));
        assert_eq!(parse_alerts(&serde_json::json!({"status": "error"})), None);
        let wrong = serde_json::json!({"status": "success", "data": {"alerts": "none"}});
        assert_eq!(parse_alerts(&wrong), None);
    }

    #[test]
    fn counts_alerting_rules_and_sees_an_engine_without_any() {
        let rules = serde_json::json!({"status": "success", "data": {"groups": [
            {"name": "k3sfleet-agent", "rules": [
                {"name": "K3sfleetAgentDown", "type": "alerting"},
                {"name": "k3sfleet:up", "type": "recording"}
            ]},
            {"name": "k3sfleet-coordinator", "rules": [{"name": "K3sfleetRolloutPaused", "type": "alerting"}]}
        ]}});
        assert_eq!(alerting_rules(&rules), Some(2));
        // What VictoriaMetrics answers without -vmalert.proxyURL.
        let stub = serde_json::json!({"status": "success", "data": {"groups": []}});
        assert_eq!(alerting_rules(&stub), Some(0));
        let nulls = serde_json::json!({"status": "success", "data": {"groups": [{"rules": null}]}});
        assert_eq!(alerting_rules(&nulls), Some(0));
        let wrong = serde_json::json!({"status": "success", "data": {"groups": 3}});
        assert_eq!(alerting_rules(&wrong), None);
    }

    #[test]
    fn an_operators_query_replaces_the_engines_list() {
        let gate = AlertGate::from_options(&UpgradeOptions {
            alerts_url: "http://127.0.0.1:8428".into(),
            alerts_query: " ALERTS{alertstate=\"firing\",severity=\"critical\"} ".into(),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            gate.source,
            Source::Query("ALERTS{alertstate=\"firing\",severity=\"critical\"}".into())
        );
    }

    /// Serves `answers` (path without query, JSON body) over HTTP/1.1 on
    /// 127.0.0.1; any other path is a 404.
    async fn serve(answers: Vec<(&'static str, Value)>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = vec![0; 4096];
                let n = stream.read(&mut request).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..n]).to_string();
                let path = request.split_whitespace().nth(1).unwrap_or_default();
                let path = path.split('?').next().unwrap_or_default();
                let response = match answers.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => {
                        let body = body.to_string();
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    None => {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .into()
                    }
                };
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        url
    }

    fn gate_on(url: &str) -> AlertGate {
        AlertGate::from_options(&UpgradeOptions {
            alerts_url: url.into(),
            ..Default::default()
        })
        .unwrap()
        .unwrap()
    }

    #[tokio::test]
    async fn an_engine_with_no_rules_is_an_error_not_a_quiet_fleet() {
        // VictoriaMetrics without -vmalert.proxyURL answers just this.
        let url = serve(vec![
            (
                "/api/v1/alerts",
                serde_json::json!({"status": "success", "data": {"alerts": []}}),
            ),
            (
                "/api/v1/rules",
                serde_json::json!({"status": "success", "data": {"groups": []}}),
            ),
        ])
        .await;
        let err = gate_on(&url).firing().await.unwrap_err();
        assert!(err.contains("has no alerting rules loaded"), "{err}");
        assert!(err.contains("-vmalert.proxyURL"), "{err}");

        let url = serve(vec![
            (
                "/api/v1/alerts",
                serde_json::json!({"status": "success", "data": {"alerts": []}}),
            ),
            (
                "/api/v1/rules",
                serde_json::json!({"status": "success", "data": {"groups": [
                    {"name": "g", "rules": [{"name": "K3sfleetAgentDown", "type": "alerting"}]}
                ]}}),
            ),
        ])
        .await;
        assert_eq!(gate_on(&url).firing().await, Ok(vec![]));
    }

    #[tokio::test]
    async fn the_gate_counts_the_engines_firing_alerts_and_names_what_it_cannot_read() {
        let url = serve(vec![(
            "/api/v1/alerts",
            serde_json::json!({"status": "success", "data": {"alerts": [
                {"labels": {"alertname": "Watchdog"}, "state": "firing"},
                {"labels": {"alertname": "KubeNodeNotReady"}, "state": "firing"},
                {"labels": {"alertname": "KubeNodeNotReady", "node": "w2"}, "state": "firing"},
                {"labels": {"alertname": "K3sfleetAgentDown"}, "state": "pending"}
            ]}}),
        )])
        .await;
        assert_eq!(
            gate_on(&url).firing().await,
            Ok(vec!["KubeNodeNotReady".to_string()])
        );
        // A store without the alerting API (vmagent, a bare exporter).
        let url = serve(vec![]).await;
        let err = gate_on(&url).firing().await.unwrap_err();
        assert!(err.contains("/api/v1/alerts answered 404"), "{err}");
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
        assert_eq!(gate.source, Source::Engine);
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
