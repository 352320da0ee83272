//! `tailscale status --json`, from whatever tailscale binary the host has.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|json: &str| {
    let _ = k3sfleet_agent::tailscale::status::parse(json);
});
