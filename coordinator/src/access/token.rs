//! Bootstrap tokens: `k3sfleet.<id>.<secret>`.
//!
//! Like kubeadm's tokens: the id names the token in listings and logs, the
//! secret proves possession. The coordinator stores only the secret's SHA-256,
//! so its database never holds a usable token.

use std::fmt;

use sha2::{Digest, Sha256};

const PREFIX: &str = "k3sfleet";
/// 32 bits: enough to tell tokens apart, never enough to guess one.
const ID_HEX: usize = 8;
/// 128 bits of secret.
const SECRET_HEX: usize = 32;

/// A token as the operator holds it. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    secret: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "malformed token: expected k3sfleet.<8 hex>.<32 hex> as `k3sfleet token create` printed it"
)]
pub struct MalformedToken;

impl Token {
    pub fn generate() -> Token {
        Token {
            id: hex::encode(rand::random::<[u8; ID_HEX / 2]>()),
            secret: hex::encode(rand::random::<[u8; SECRET_HEX / 2]>()),
        }
    }

    pub fn parse(text: &str) -> Result<Token, MalformedToken> {
        let mut parts = text.trim().split('.');
        let (Some(PREFIX), Some(id), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MalformedToken);
        };
        let lower_hex = |s: &str, len| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !lower_hex(id, ID_HEX) || !lower_hex(secret, SECRET_HEX) {
            return Err(MalformedToken);
        }
        Ok(Token {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// The full token text, to show the operator once.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}.{}.{}", self.id, self.secret)
    }

    pub fn secret_hash(&self) -> Vec<u8> {
        Sha256::digest(self.secret.as_bytes()).to_vec()
    }

    /// Whether this token's secret hashes to `stored`, compared in constant time.
    pub fn matches(&self, stored: &[u8]) -> bool {
        let hash = self.secret_hash();
        hash.len() == stored.len()
            && hash
                .iter()
                .zip(stored)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Whether `name` matches a glob where `*` stands for any run of characters.
/// An empty pattern matches every name.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first)
        || !name[first.len()..].ends_with(last)
        || name.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_verify() {
        let token = Token::generate();
        let parsed = Token::parse(&token.reveal()).unwrap();
        assert_eq!(parsed, token);
        assert!(parsed.matches(&token.secret_hash()));
        assert!(!Token::generate().matches(&token.secret_hash()));
        assert!(!format!("{token:?}").contains(&token.secret));
    }

    #[test]
    fn malformed_tokens_are_refused_without_echoing_them() {
        for bad in [
            "",
            "k3sfleet",
            "k3sfleet.abc.def",
            "other.0123abcd.0123456789abcdef0123456789abcdef",
            "k3sfleet.0123ABCD.0123456789abcdef0123456789abcdef",
        ] {
            let err = Token::parse(bad).unwrap_err();
            // Short inputs ("k3sfleet") may match the message's own words;
            // anything secret-sized must not come back.
            assert!(bad.len() < 16 || !err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn globs() {
        assert!(name_matches("", "anything"));
        assert!(name_matches("worker-*", "worker-01"));
        assert!(!name_matches("worker-*", "server-1"));
        assert!(name_matches("*-01", "worker-01"));
        assert!(name_matches("w*r-*1", "worker-01"));
        assert!(!name_matches("worker-0?", "worker-01"));
        assert!(name_matches("server-1", "server-1"));
        assert!(!name_matches("server-1", "server-10"));
        assert!(!name_matches("ab*ba", "aba"));
    }
}
