//! `tailscale status --json --peers=false`, reduced to what reports carry.

use k3sfleet_proto::v1::TailscaleState;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Status {
    version: String,
    backend_state: String,
    #[serde(rename = "Self")]
    self_peer: Option<SelfPeer>,
    health: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct SelfPeer {
    host_name: String,
    #[serde(rename = "DNSName")]
    dns_name: String,
    #[serde(rename = "TailscaleIPs")]
    tailscale_ips: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    online: bool,
    key_expiry: Option<String>,
    expired: bool,
}

/// Parses status JSON; `Err` carries a short reason.
pub fn parse(json: &str) -> Result<TailscaleState, String> {
    let status: Status = serde_json::from_str(json)
        .map_err(|err| format!("cannot parse `tailscale status --json`: {err}"))?;
    let me = status.self_peer.unwrap_or_default();
    Ok(TailscaleState {
        installed: true,
        backend_state: status.backend_state,
        tailscale_ips: me.tailscale_ips.unwrap_or_default(),
        online: me.online,
        hostname: me.host_name,
        dns_name: me.dns_name.trim_end_matches('.').to_string(),
        tags: me.tags.unwrap_or_default(),
        key_expiry_unix_ms: me.key_expiry.as_deref().map_or(0, rfc3339_ms),
        key_expired: me.expired,
        health: status.health.unwrap_or_default(),
        version: status.version,
        error: String::new(),
    })
}

/// Go's time.Time JSON (RFC 3339 in UTC, possibly with fractions) in Unix
/// milliseconds; 0 for the zero time or what does not parse.
fn rfc3339_ms(text: &str) -> i64 {
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_essentials() {
        let json = r#"{
          "Version": "1.76.6-t1234",
          "BackendState": "Running",
          "Self": {
            "HostName": "worker-01",
            "DNSName": "worker-01.tail1234.ts.net.",
            "TailscaleIPs": ["100.101.102.103", "fd7a:115c:a1e0::1"],
            "Tags": ["tag:k3s"],
            "Online": true,
            "KeyExpiry": "2030-01-02T03:04:05Z",
            "Expired": false
          },
          "Health": ["some warning"],
          "CurrentTailnet": {"Name": "example.com"}
        }"#;
        let state = parse(json).unwrap();
        assert_eq!(state.backend_state, "Running");
        assert_eq!(state.hostname, "worker-01");
        assert_eq!(state.dns_name, "worker-01.tail1234.ts.net");
        assert_eq!(state.tailscale_ips.len(), 2);
        assert_eq!(state.tags, ["tag:k3s"]);
        assert!(state.online);
        assert_eq!(state.key_expiry_unix_ms, 1_893_553_445_000);
        assert_eq!(state.health, ["some warning"]);
        assert_eq!(state.version, "1.76.6-t1234");
    }

    #[test]
    fn logged_out_and_odd_inputs() {
        let state =
            parse(r#"{"BackendState":"NeedsLogin","Self":{"KeyExpiry":"0001-01-01T00:00:00Z"}}"#)
                .unwrap();
        assert_eq!(state.backend_state, "NeedsLogin");
        assert_eq!(state.key_expiry_unix_ms, 0);
        assert!(parse("not json").is_err());
        assert_eq!(
            rfc3339_ms("2030-01-02T03:04:05.123456789Z"),
            1_893_553_445_123
        );
    }
}
