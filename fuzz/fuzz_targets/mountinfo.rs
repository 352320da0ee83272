//! /proc/self/mountinfo, with mount points and options any local user can
//! shape (spaces and octal escapes in paths).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = k3sfleet_agent::disks::mountinfo::parse(text);
});
