//! A mirror's sha256sum file and a K3s binary's `--version` output: both
//! come from outside the host.
#![no_main]

use k3sfleet_agent::k3s::release::{checksum_for, parse_version_output};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str)| {
    let (text, asset) = input;
    if let Ok(sum) = checksum_for(text, asset) {
        // A checksum the agent will compare against is 64 hex digits.
        assert!(
            sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()),
            "{sum:?}"
        );
    }
    let _ = parse_version_output(text);
});
