//! Durations in config files, written the human way: "15s", "5m", "1h 30m".

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// For `#[serde(with = "k3sfleet_daemon::duration")]` on `Duration` fields.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|err| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({err}); write e.g. \"15s\" or \"5m\""
        ))
    })
}

pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&humantime::format_duration(*duration).to_string())
}

/// Parses a duration given on a command line.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("invalid duration {text:?} ({err}); write e.g. \"30s\" or \"5m\""))
}
