//! The alerts gate end to end, against an alerting engine's HTTP API (as
//! Prometheus and vmalert serve it) that the test serves: the alerts every kube-prometheus or VictoriaMetrics stack fires on
//! purpose never stop a rollout; a real alert holds new nodes back (without
//! failing the nodes under way) and, when it lasts, pauses the rollout naming
//! it; once resolved, the rollout resumes and completes.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k3sfleet_sim::lab::LabSpec;
use k3sfleet_tests::rollout::{
    assert_completes_clean, cli, lab_dir, nodes, phase, small_lab, start, wait_for_rollout,
};

const TO: &str = "v1.31.5+k3s1";

/// An alerting engine's API (`/api/v1/alerts`, `/api/v1/rules`) whose
/// firing alerts are those named in `firing`; anything else is a 404.
fn fake_alerting_engine(firing: Arc<Mutex<Vec<String>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or_default();
            let names = firing.lock().unwrap().clone();
            let data = match path.split('?').next().unwrap_or_default() {
                "/api/v1/alerts" => serde_json::json!({"alerts": names
                    .iter()
                    .map(|name| serde_json::json!({
                        "labels": {"alertname": name, "severity": "critical"},
                        "state": "firing",
                    }))
                    .collect::<Vec<_>>()}),
                "/api/v1/rules" => serde_json::json!({"groups": [{"name": "fleet", "rules": names
                    .iter()
                    .map(|name| serde_json::json!({"name": name, "type": "alerting"}))
                    .collect::<Vec<_>>()}]}),
                _ => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    continue;
                }
            };
            let body = serde_json::json!({"status": "success", "data": data}).to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

fn started_workers(status: &serde_json::Value) -> usize {
    nodes(status)
        .iter()
        .filter(|n| n["role"] != "NODE_ROLE_SERVER" && n["step"] != "pending")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_on_purpose_pass_a_real_alert_holds_then_pauses_and_nodes_are_never_failed_for_it() {
    let firing = Arc::new(Mutex::new(vec![
        "Watchdog".to_string(),
        "InfoInhibitor".to_string(),
        "K3sfleetNodeStuckCordoned".to_string(),
    ]));
    let url = fake_alerting_engine(firing.clone());
    let dir = lab_dir();
    let lab = small_lab(&dir, LabSpec::small().unwrap()).await;
    start(
        &lab,
        TO,
        &[
            "--alerts-url",
            &url,
            "--alerts-hold-timeout",
            "6s",
            "--max-unavailable",
            "1",
        ],
    );

    // The on-purpose alerts do not hold anything: the servers go.
    let status = wait_for_rollout(&lab, "a worker under way", Duration::from_secs(300), |s| {
        started_workers(s) >= 1
    });
    assert_eq!(phase(&status), "running", "{status:#}");

    // A real alert: from the moment it holds the rollout, no worker starts;
    // after the hold timeout the rollout pauses naming it.
    firing.lock().unwrap().push("KubeNodeNotReady".into());
    let held = wait_for_rollout(
        &lab,
        "the alert to hold the rollout",
        Duration::from_secs(120),
        |s| {
            s["pauseReason"]
                .as_str()
                .unwrap_or_default()
                .contains("held for")
        },
    );
    let started_when_held = started_workers(&held);
    let status = wait_for_rollout(
        &lab,
        "the alert to pause the rollout",
        Duration::from_secs(120),
        |s| {
            assert_eq!(
                started_workers(s),
                started_when_held,
                "a worker started while an alert held the rollout: {s:#}"
            );
            phase(s) == "paused"
        },
    );
    let reason = status["pauseReason"].as_str().unwrap_or_default();
    assert!(reason.contains("KubeNodeNotReady"), "{status:#}");
    assert!(!reason.contains("Watchdog"), "{status:#}");
    assert!(
        nodes(&status)
            .iter()
            .all(|n| n["step"] != "failed" && n["step"] != "roll_back"),
        "an alert never fails a node: {status:#}"
    );

    // Resolved: resume, and it completes.
    firing.lock().unwrap().retain(|a| a != "KubeNodeNotReady");
    cli(&lab, &["upgrade", "resume"]);
    assert_completes_clean(&lab, TO);
    lab.shutdown().await;
}
