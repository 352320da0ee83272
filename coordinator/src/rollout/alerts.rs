//! The optional health gate on Prometheus or VictoriaMetrics: a node settles
//! only while no alert fires.

use std::time::Duration;

/// The PromQL both Prometheus and VictoriaMetrics answer for firing alerts.
const FIRING: &str = "ALERTS{alertstate=\"firing\"}";

/// Names of the alerts firing now, from `<base>/api/v1/query`.
pub async fn firing(base: &str) -> Result<Vec<String>, String> {
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let response = crate::http::client()
        .map_err(|err| err.to_string())?
        .get(&url)
        .query(&[("query", FIRING)])
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
}
