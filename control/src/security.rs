//! Authentication of peers with shared secrets (spate's analogue of Flink's
//! `security.ssl.internal.*` and `security.ssl.rest.*` mutual authentication).
//!
//! - `security.internal.secret` (or `security.internal.secret-file`): JobManagers and
//!   TaskManagers prove to each other that they know it on every RPC connection and on
//!   every data connection between TaskManagers, by HMAC-SHA256 challenge and response
//!   over fresh nonces from both sides: the secret never travels, and a recorded
//!   handshake cannot be replayed.
//! - `security.rest.secret` (or `security.rest.secret-file`): REST requests carry it
//!   as `Authorization: Bearer <secret>` (the CLI does; the web UI asks for it once
//!   and keeps it in a cookie).
//!
//! Without a secret the handshakes run the same way under an empty key: a peer that
//! has a secret and one that has none do not connect, and say why.

use ring::hmac;

/// The length of a proof (HMAC-SHA256).
pub const PROOF_LEN: usize = 32;
/// The length of a nonce.
pub const NONCE_LEN: usize = 16;

/// A secret as configured (its `Debug` does not show it).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "none" } else { "******" })
    }
}

impl SecretBytes {
    /// Whether one is set.
    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `offered` is it (compared in constant time).
    pub fn matches(&self, offered: &[u8]) -> bool {
        ct_eq(&self.0, offered)
    }
}

/// A cluster secret: the key of the handshakes' proofs.
#[derive(Clone)]
pub struct Secret {
    key: hmac::Key,
    set: bool,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.set {
            "Secret(******)"
        } else {
            "Secret(none)"
        })
    }
}

impl Secret {
    /// No secret (an empty key).
    pub fn none() -> Self {
        Self::new(b"")
    }

    /// The secret `bytes` (empty: none).
    pub fn new(bytes: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
            set: !bytes.is_empty(),
        }
    }

    /// Whether a secret is set.
    pub fn is_set(&self) -> bool {
        self.set
    }

    /// The proof of knowing the secret over `parts` (a label first, then nonces).
    pub fn prove(&self, parts: &[&[u8]]) -> [u8; PROOF_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        for p in parts {
            ctx.update(&(p.len() as u32).to_le_bytes());
            ctx.update(p);
        }
        let tag = ctx.sign();
        let mut out = [0u8; PROOF_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether `proof` proves the secret over `parts` (compared in constant time).
    pub fn verify(&self, parts: &[&[u8]], proof: &[u8]) -> bool {
        let want = self.prove(parts);
        ct_eq(&want, proof)
    }

    /// The data plane's form: a function from message to proof.
    pub fn data_mac(&self) -> spate_dataplane::net::Mac {
        let s = self.clone();
        spate_dataplane::net::Mac(std::sync::Arc::new(move |parts: &[&[u8]]| s.prove(parts)))
    }
}

/// Whether `a` and `b` are equal, in time that depends on their lengths only.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// A fresh random nonce.
pub fn nonce() -> [u8; NONCE_LEN] {
    use ring::rand::SecureRandom as _;
    let mut n = [0u8; NONCE_LEN];
    if ring::rand::SystemRandom::new().fill(&mut n).is_err() {
        // The OS refused randomness (it does not, on Linux): fall back to hashes of
        // the clock with per-process random keys; unique, if less unpredictable.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(spate_dataplane::sys::monotonic_ns());
        let a = h.finish();
        h.write_u64(a);
        n[..8].copy_from_slice(&a.to_le_bytes());
        n[8..].copy_from_slice(&h.finish().to_le_bytes());
    }
    n
}

/// Reads a secret given inline or as a file (`-file` keys); a file's trailing newline
/// is not part of it.
pub fn read_secret_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_need_the_same_secret_and_the_same_nonces() {
        let a = Secret::new(b"s3cret");
        let (n1, n2) = (nonce(), nonce());
        assert_ne!(n1, n2);
        let p = a.prove(&[b"label", &n1, &n2]);
        assert!(a.verify(&[b"label", &n1, &n2], &p));
        assert!(!a.verify(&[b"label", &n2, &n1], &p), "nonces in order");
        assert!(!Secret::new(b"other").verify(&[b"label", &n1, &n2], &p));
        assert!(!Secret::none().verify(&[b"label", &n1, &n2], &p));
        assert!(!a.verify(&[b"label", &n1, &n2], &p[..31]));
        // Parts are length-prefixed: moving a byte between them changes the proof.
        assert_ne!(a.prove(&[b"ab", b"c"]), a.prove(&[b"a", b"bc"]));
        assert!(!format!("{a:?}").contains("s3cret"));
    }
}
