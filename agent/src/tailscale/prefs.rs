//! tailscaled's preferences (`tailscale debug prefs`), read before an `up`
//! so a failed one can be undone.
//!
//! A failed `up` leaves tailscaled with the new settings and a control
//! client that keeps retrying the refused key in the background (and would
//! join on its own once a control server that was down answers, behind the
//! operator's back). `tailscale down` and `logout` stop neither on a node
//! that never logged in; LocalAPI's `start` with the earlier preferences
//! replaces the control client and puts every setting back, which is what
//! "nothing half-configured" takes. The CLI reaches it as
//! `tailscale debug localapi POST start BODY` (no secret in the body).

use serde_json::Value;

/// The Tailscale control server tailscaled means by an empty ControlURL.
const DEFAULT_CONTROL_URL: &str = "https://controlplane.tailscale.com";

#[derive(Debug, Clone)]
pub struct Prefs(pub Value);

impl Prefs {
    pub fn parse(json: &str) -> Result<Prefs, String> {
        let value: Value = serde_json::from_str(json)
            .map_err(|err| format!("cannot parse `tailscale debug prefs`: {err}"))?;
        if !value.is_object() {
            return Err("`tailscale debug prefs` printed no object".into());
        }
        Ok(Prefs(value))
    }

    /// The control server, "" for Tailscale's own.
    pub fn control_url(&self) -> String {
        let url = self.0["ControlURL"].as_str().unwrap_or_default();
        let url = url.trim_end_matches('/');
        if url == DEFAULT_CONTROL_URL || url == "https://login.tailscale.com" {
            String::new()
        } else {
            url.to_string()
        }
    }

    /// The tags this node asked for, sorted.
    pub fn advertise_tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = self.0["AdvertiseTags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        tags.sort();
        tags
    }

    /// The LocalAPI `start` body that puts these preferences back.
    pub fn restore_body(&self) -> String {
        serde_json::json!({ "UpdatePrefs": self.0 }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_up_compares() {
        let prefs = Prefs::parse(
            r#"{"ControlURL":"http://10.77.0.1:8080/","AdvertiseTags":["tag:b","tag:a"],"WantRunning":true}"#,
        )
        .unwrap();
        assert_eq!(prefs.control_url(), "http://10.77.0.1:8080");
        assert_eq!(prefs.advertise_tags(), ["tag:a", "tag:b"]);
        assert!(prefs.restore_body().starts_with(r#"{"UpdatePrefs":{"#));
        let fresh = Prefs::parse(r#"{"ControlURL":"","AdvertiseTags":null}"#).unwrap();
        assert_eq!(fresh.control_url(), "");
        assert!(fresh.advertise_tags().is_empty());
        let saas = Prefs::parse(r#"{"ControlURL":"https://controlplane.tailscale.com"}"#).unwrap();
        assert_eq!(saas.control_url(), "");
        assert!(Prefs::parse("[]").is_err());
    }
}
