//! The agent's config file, as an operator's typo or a broken config
//! management run leaves it.
#![no_main]

use std::path::Path;

use k3sfleet_agent::config::AgentConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let path = Path::new("agent.toml");
    if let Ok(config) = k3sfleet_daemon::config::parse::<AgentConfig>(path, text) {
        let _ = config.validate(path);
    }
    let _ = k3sfleet_daemon::duration::parse(text);
});
