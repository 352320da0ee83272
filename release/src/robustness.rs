//! What an attacker controls (a mirror's manifest and signature, a host's
//! config line) never panics the parsers and is never taken for valid:
//! arbitrary bytes, and valid documents with bytes flipped.

use proptest::prelude::*;

use crate::sign::{self, Protection};
use crate::{Manifest, TrustedKey, TrustedKeys};

const VERSION: &str = "v1.31.5+k3s1";

fn signed() -> (TrustedKeys, String, String) {
    let (secret, public) = sign::generate(Protection::None).unwrap();
    let keys = TrustedKeys::new(vec![TrustedKey::parse(&public).unwrap()]);
    let manifest = Manifest::new(
        VERSION,
        vec![crate::Artifact {
            arch: "amd64".into(),
            name: "k3s".into(),
            size: 1234,
            sha256: "ab".repeat(32),
        }],
    )
    .unwrap()
    .to_json();
    let signature = sign::sign(&secret, None, manifest.as_bytes(), VERSION).unwrap();
    (keys, manifest, signature)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_manifests_keys_and_signatures_are_refused_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        text in ".{0,300}",
    ) {
        let _ = Manifest::parse(&bytes);
        let _ = TrustedKey::parse(&text);
        let (keys, manifest, _) = signed_once();
        prop_assert!(keys.verify(VERSION, manifest.as_bytes(), &text).is_err());
        prop_assert!(keys.verify(VERSION, &bytes, &String::from_utf8_lossy(&bytes)).is_err());
    }

    #[test]
    fn a_flipped_bit_in_the_manifest_or_the_trusted_comment_is_refused(
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        in_comment in any::<bool>(),
    ) {
        // Every signed byte: the manifest, and the trusted comment (the global
        // signature covers it). Not the base64 lines, whose padding bits a
        // decoder may ignore, nor the unsigned first line.
        let (keys, manifest, signature) = signed_once();
        let mut manifest = manifest.into_bytes();
        let mut signature = signature.into_bytes();
        let prefix = "\ntrusted comment: ";
        let comment_at = signature_text_index(&signature, prefix) + prefix.len();
        let (target, from, len) = if in_comment {
            (&mut signature, comment_at, VERSION.len())
        } else {
            let len = manifest.len();
            (&mut manifest, 0, len)
        };
        let i = from + at.index(len);
        target[i] ^= 1 << bit;
        let signature = String::from_utf8_lossy(&signature).into_owned();
        prop_assert!(
            keys.verify(VERSION, &manifest, &signature).is_err(),
            "flipped bit {bit} of byte {i} (trusted comment: {in_comment})"
        );
    }
}

fn signature_text_index(signature: &[u8], needle: &str) -> usize {
    String::from_utf8_lossy(signature)
        .find(needle)
        .expect("a trusted comment line")
}

/// One key pair and signature for all cases (generating is the slow part).
fn signed_once() -> (TrustedKeys, String, String) {
    static SIGNED: std::sync::OnceLock<(TrustedKeys, String, String)> = std::sync::OnceLock::new();
    SIGNED.get_or_init(signed).clone()
}
