//! A `TailscaleUp` request checked against the host's config, and the
//! settings it asks for.

use k3sfleet_proto::v1::TailscaleUp;
use serde::{Deserialize, Serialize};

use super::config::TailscaleConfig;
use super::flags;

/// The settings of one `up` (never the key). The last applied ones are
/// remembered for idempotency: `tailscale status` shows the hostname and
/// tags but not the login server or the other flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub hostname: String,
    /// Sorted. Empty: the key (or the control server) decides the tags.
    pub tags: Vec<String>,
    /// Empty: Tailscale's own control server.
    pub login_server: String,
    /// Sorted.
    pub extra_flags: Vec<String>,
}

impl Settings {
    pub fn of(request: &TailscaleUp) -> Settings {
        let mut tags = request.advertise_tags.clone();
        tags.sort();
        tags.dedup();
        let mut extra_flags = request.extra_flags.clone();
        extra_flags.sort();
        Settings {
            hostname: request.hostname.trim().to_string(),
            tags,
            login_server: request
                .login_server
                .trim()
                .trim_end_matches('/')
                .to_string(),
            extra_flags,
        }
    }

    /// Every flag but the auth key, for progress lines and logs.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("hostname {}", self.hostname)];
        parts.push(match self.tags.is_empty() {
            true => "tags from the key".to_string(),
            false => format!("tags {}", self.tags.join(",")),
        });
        if !self.login_server.is_empty() {
            parts.push(format!("login server {}", self.login_server));
        }
        if !self.extra_flags.is_empty() {
            parts.push(format!("flags {}", self.extra_flags.join(" ")));
        }
        parts.join(", ")
    }
}

/// Checks a request against the host's config; `Err` says what is wrong
/// (never with the key in it).
pub fn validate(request: &TailscaleUp, config: &TailscaleConfig) -> Result<(), String> {
    let key = request.auth_key.trim();
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the auth key contains whitespace or control characters".into());
    }
    let hostname = request.hostname.trim();
    let label = |c: char| c.is_ascii_alphanumeric() || c == '-';
    if hostname.is_empty()
        || hostname.len() > 63
        || hostname.starts_with('-')
        || !hostname.chars().all(label)
    {
        return Err(format!(
            "invalid hostname {hostname:?}: use 1-63 letters, digits and '-'"
        ));
    }
    for tag in &request.advertise_tags {
        let name = tag.strip_prefix("tag:").unwrap_or_default();
        if name.is_empty() || !name.chars().all(label) {
            return Err(format!("invalid tag {tag:?}: write tags as tag:name"));
        }
    }
    validate_login_server(request.login_server.trim(), config)?;
    for flag in &request.extra_flags {
        flags::check(flag, &config.allow_flags)?;
        if !key.is_empty() && flag.contains(key) {
            return Err("an extra flag contains the auth key".into());
        }
    }
    Ok(())
}

fn validate_login_server(server: &str, config: &TailscaleConfig) -> Result<(), String> {
    if server.is_empty() {
        return Ok(());
    }
    let rest = if let Some(rest) = server.strip_prefix("https://") {
        rest
    } else if let Some(rest) = server.strip_prefix("http://") {
        if !config.allow_http_login_server {
            return Err(format!(
                "login server {server:?} is plain http: the node's registration would cross the network unencrypted \
                 (set host.tailscale.allow_http_login_server = true in the agent's config where that network is trusted)"
            ));
        }
        rest
    } else {
        return Err(format!(
            "invalid login server {server:?}: expected an https:// URL"
        ));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '@') {
        return Err(format!(
            "invalid login server {server:?}: expected https://HOST[:PORT]"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> TailscaleUp {
        TailscaleUp {
            auth_key: "tskey-auth-abc123".into(),
            hostname: "worker-01".into(),
            advertise_tags: vec!["tag:k3s".into()],
            login_server: String::new(),
            extra_flags: vec!["--accept-routes".into()],
        }
    }

    /// Spoils one field of a good request.
    type Spoil = fn(&mut TailscaleUp);

    #[test]
    fn validation_names_what_is_wrong() {
        let config = TailscaleConfig::default();
        validate(&request(), &config).unwrap();
        let cases: [(Spoil, &str); 8] = [
            (|r| r.auth_key = "a b".into(), "whitespace"),
            (|r| r.hostname = "bad name".into(), "invalid hostname"),
            (|r| r.advertise_tags = vec!["k3s".into()], "invalid tag"),
            (
                |r| r.extra_flags = vec!["--authkey=x".into()],
                "--authkey is not allowed",
            ),
            (|r| r.extra_flags = vec!["ssh".into()], "invalid flag"),
            (|r| r.extra_flags = vec!["--ssh".into()], "--ssh is refused"),
            (
                |r| r.login_server = "ftp://x".into(),
                "invalid login server",
            ),
            (
                |r| r.login_server = "http://10.0.0.1:8080".into(),
                "allow_http_login_server",
            ),
        ];
        for (change, expected) in cases {
            let mut r = request();
            change(&mut r);
            let err = validate(&r, &config).unwrap_err();
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains("abc123"), "{err}");
        }
    }

    #[test]
    fn the_hosts_config_opens_what_it_names() {
        let config = TailscaleConfig {
            allow_flags: vec!["--ssh".into()],
            allow_http_login_server: true,
            ..TailscaleConfig::default()
        };
        let mut r = request();
        r.extra_flags = vec!["--ssh".into()];
        r.login_server = "http://10.77.0.1:8080".into();
        validate(&r, &config).unwrap();
        r.extra_flags = vec!["--advertise-exit-node".into()];
        assert!(validate(&r, &config).is_err());
    }

    #[test]
    fn settings_are_normalized_and_described_without_the_key() {
        let mut r = request();
        r.advertise_tags = vec!["tag:b".into(), "tag:a".into(), "tag:b".into()];
        r.extra_flags = vec!["--shields-up".into(), "--accept-routes".into()];
        r.login_server = "https://hs.example/".into();
        let settings = Settings::of(&r);
        assert_eq!(settings.tags, ["tag:a", "tag:b"]);
        assert_eq!(settings.extra_flags, ["--accept-routes", "--shields-up"]);
        assert_eq!(settings.login_server, "https://hs.example");
        let text = settings.describe();
        assert!(text.contains("login server https://hs.example"), "{text}");
        assert!(!text.contains("abc123"), "{text}");
    }
}
