//! Per-instance MCP tokens: issued at spawn, revoked when the instance ends.
//!
//! A token is 32 random bytes (base64url, prefixed `crl_`). Only its SHA-256 is kept, in
//! memory for lookups and in the store so an adopted instance keeps its token across a daemon
//! restart; the token itself goes only into the agent's private MCP config and environment.
//! A lookup hashes the presented token and finds the digest in a map, so its time does not
//! depend on how much of a token matches.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::task::lock;

pub const PREFIX: &str = "crl_";

/// Hex SHA-256 of a token.
pub fn digest(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Default)]
pub struct TokenRegistry {
    /// digest → instance id
    by_digest: Mutex<HashMap<String, String>>,
}

impl TokenRegistry {
    /// A fresh token for `id`; returns it and its digest (for the store).
    pub fn issue(&self, id: &str) -> (String, String) {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let token = format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        let d = digest(&token);
        lock(&self.by_digest).insert(d.clone(), id.to_string());
        (token, d)
    }

    /// Restores a digest kept in the store (an adopted instance's token).
    pub fn restore(&self, digest: String, id: String) {
        lock(&self.by_digest).insert(digest, id);
    }

    /// The instance a presented token belongs to.
    pub fn lookup(&self, token: &str) -> Option<String> {
        if !token.starts_with(PREFIX) {
            return None;
        }
        lock(&self.by_digest).get(&digest(token)).cloned()
    }

    /// Revokes every token of `id`.
    pub fn revoke(&self, id: &str) {
        lock(&self.by_digest).retain(|_, v| v != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_lookup_revoke() {
        let r = TokenRegistry::default();
        let (t1, d1) = r.issue("a");
        let (t2, _) = r.issue("b");
        assert!(t1.starts_with(PREFIX) && t1.len() == PREFIX.len() + 43);
        assert_ne!(t1, t2);
        assert_eq!(d1, digest(&t1));
        assert_eq!(d1.len(), 64);
        assert_eq!(r.lookup(&t1).as_deref(), Some("a"));
        assert_eq!(r.lookup(&t2).as_deref(), Some("b"));
        assert_eq!(r.lookup("crl_nope"), None);
        assert_eq!(r.lookup(&t1[..t1.len() - 1]), None);
        r.revoke("a");
        assert_eq!(r.lookup(&t1), None);
        assert_eq!(r.lookup(&t2).as_deref(), Some("b"));
        r.restore(d1, "a".into());
        assert_eq!(r.lookup(&t1).as_deref(), Some("a"));
    }
}
