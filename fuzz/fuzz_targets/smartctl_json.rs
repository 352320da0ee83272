//! `smartctl -j` output and exit status, as a failing disk or a broken
//! smartmontools can write them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Option<i32>, &str)| {
    let (exit_code, json) = input;
    let _ = k3sfleet_agent::disks::smart::parse(json, exit_code);
});
