//! A signed-release manifest and a trusted key, as a mirror or an agent's
//! config could hold them.
#![no_main]

use k3sfleet_release::{Manifest, TrustedKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(manifest) = Manifest::parse(bytes) {
        // What was accepted reads back as itself, as it is signed.
        if let Ok(again) = Manifest::parse(manifest.to_json().as_bytes()) {
            assert_eq!(again, manifest);
        }
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = TrustedKey::parse(text);
    }
});
