//! SHA-256 fingerprints of certificates, written `sha256:<64 hex>`.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fingerprint {given:?}: expected sha256: followed by 64 hex digits")]
pub struct FingerprintError {
    pub given: String,
}

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || FingerprintError {
            given: s.to_string(),
        };
        let digits = s.trim().strip_prefix("sha256:").ok_or_else(err)?;
        // Accept the colon-separated form openssl prints, too.
        let digits: String = digits.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(digits.to_ascii_lowercase()).map_err(|_| err())?;
        Ok(Fingerprint(bytes.try_into().map_err(|_| err())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let fp = Fingerprint::of_der(b"certificate");
        assert_eq!(fp.to_string().parse::<Fingerprint>().unwrap(), fp);
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in ["", "sha256:", "sha1:abcd", "sha256:zz", "sha256:abcd"] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?} accepted");
        }
    }
}
