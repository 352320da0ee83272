//! Loading TOML configuration files.
//!
//! Config structs use `#[serde(deny_unknown_fields)]`, so a misspelt key is an
//! error that names it instead of a silently ignored setting.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config file {path}: {key}: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// Reads and parses a TOML file. Parse errors carry toml's message, which
/// names the offending key with its line and column.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses TOML text that came from `path`.
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|err| ConfigError::Parse {
        path: path.to_owned(),
        message: err.to_string().trim_end().replace('\n', "\n  "),
    })
}

/// An error about one key's value, found while validating a parsed config.
pub fn invalid(path: &Path, key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        listen: String,
        #[serde(default)]
        nested: Nested,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Nested {
        #[serde(default)]
        interval: u32,
    }

    #[test]
    fn unknown_keys_are_named_with_the_file() {
        let err = parse::<Sample>(
            Path::new("/etc/x.toml"),
            "listen = \"a\"\n[nested]\nintervall = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/etc/x.toml"), "{err}");
        assert!(err.contains("intervall"), "{err}");
    }

    #[test]
    fn missing_files_are_named() {
        let err = load::<Sample>(Path::new("/nonexistent/k3sfleet.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/k3sfleet.toml"));
    }
}
