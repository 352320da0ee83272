//! Is this server's etcd member healthy? Asked the way `etcdctl endpoint
//! health` asks: GET /health on the member's client URL with K3s's etcd
//! client certificate, expecting `{"health":"true"}`. The coordinator checks
//! every server's answer before it touches any server, so quorum is never put
//! at risk by an upgrade.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k3sfleet_proto::v1::{CheckResult, Health};
use serde::Deserialize;

use crate::checks::check;
use crate::host::HostRoot;

/// `[host.etcd]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// The local member's health endpoint.
    #[serde(default = "default_url")]
    pub health_url: String,
    /// K3s's etcd client credentials (host paths, under `host.root`), used for https.
    #[serde(default = "default_ca")]
    pub ca: PathBuf,
    #[serde(default = "default_cert")]
    pub cert: PathBuf,
    #[serde(default = "default_key")]
    pub key: PathBuf,
    #[serde(default = "default_timeout", with = "k3sfleet_daemon::duration")]
    pub timeout: Duration,
}

fn default_url() -> String {
    "https://127.0.0.1:2379/health".into()
}

fn default_ca() -> PathBuf {
    PathBuf::from("/var/lib/rancher/k3s/server/tls/etcd/server-ca.crt")
}

fn default_cert() -> PathBuf {
    PathBuf::from("/var/lib/rancher/k3s/server/tls/etcd/client.crt")
}

fn default_key() -> PathBuf {
    PathBuf::from("/var/lib/rancher/k3s/server/tls/etcd/client.key")
}

fn default_timeout() -> Duration {
    Duration::from_secs(3)
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            health_url: default_url(),
            ca: default_ca(),
            cert: default_cert(),
            key: default_key(),
            timeout: default_timeout(),
        }
    }
}

const ID: &str = "etcd.member";

/// Asks the local etcd member how it is.
#[derive(Debug)]
pub struct EtcdProbe {
    config: EtcdConfig,
    root: HostRoot,
}

impl EtcdProbe {
    pub fn new(config: EtcdConfig, root: HostRoot) -> Self {
        EtcdProbe { config, root }
    }

    pub async fn check(&self, k3s_active: bool) -> CheckResult {
        if !k3s_active {
            return check(
                ID,
                Health::Error,
                "K3s is not running, so neither is its etcd member",
            );
        }
        match self.ask().await {
            Ok(answer) => verdict(&answer),
            Err(why) => check(
                ID,
                Health::Error,
                format!(
                    "cannot reach the etcd member at {}: {why}",
                    self.config.health_url
                ),
            ),
        }
    }

    async fn ask(&self) -> Result<String, String> {
        // reqwest needs a TLS configuration even for plain http.
        let tls = if self.config.health_url.starts_with("https:") {
            let roots = k3sfleet_pki::root_store(&self.root.path(&self.config.ca))
                .map_err(|err| err.to_string())?;
            let identity = k3sfleet_pki::certified_key(
                &self.root.path(&self.config.cert),
                &self.root.path(&self.config.key),
            )
            .map_err(|err| err.to_string())?;
            k3sfleet_pki::client_config(
                roots,
                Some(Arc::new(k3sfleet_pki::FixedClientCert(identity))),
            )
        } else {
            k3sfleet_pki::platform_client_config(Vec::new()).map_err(|err| err.to_string())?
        };
        let client = reqwest::Client::builder()
            .timeout(self.config.timeout)
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|err| err.to_string())?;
        let response = client
            .get(&self.config.health_url)
            .send()
            .await
            .map_err(|err| display_chain(&err))?;
        response.text().await.map_err(|err| err.to_string())
    }
}

/// The check from etcd's /health answer.
pub fn verdict(answer: &str) -> CheckResult {
    #[derive(Deserialize)]
    struct Answer {
        health: String,
        #[serde(default)]
        reason: String,
    }
    match serde_json::from_str::<Answer>(answer) {
        Ok(answer) if answer.health == "true" => {
            check(ID, Health::Ok, "the etcd member is healthy")
        }
        Ok(answer) => check(
            ID,
            Health::Error,
            format!(
                "the etcd member reports unhealthy ({}): check `journalctl -u k3s` before upgrading any server",
                if answer.reason.is_empty() {
                    "no reason given"
                } else {
                    answer.reason.as_str()
                }
            ),
        ),
        Err(_) => check(
            ID,
            Health::Error,
            format!("unexpected answer from etcd's /health: {answer:.200}"),
        ),
    }
}

fn display_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_etcd_health_answers() {
        assert_eq!(
            verdict(r#"{"health":"true","reason":""}"#).status,
            Health::Ok as i32
        );
        let sick = verdict(r#"{"health":"false","reason":"RAFT NO LEADER"}"#);
        assert_eq!(sick.status, Health::Error as i32);
        assert!(sick.message.contains("RAFT NO LEADER"), "{}", sick.message);
        assert_eq!(verdict("<html>").status, Health::Error as i32);
    }

    #[tokio::test]
    async fn an_unreachable_member_is_an_error_that_names_the_url() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let probe = EtcdProbe::new(
            EtcdConfig {
                health_url: format!("http://127.0.0.1:{port}/health"),
                ..Default::default()
            },
            HostRoot::new("/"),
        );
        let result = probe.check(true).await;
        assert_eq!(result.status, Health::Error as i32);
        assert!(
            result.message.contains(&port.to_string()),
            "{}",
            result.message
        );
        assert_eq!(probe.check(false).await.status, Health::Error as i32);
    }
}
