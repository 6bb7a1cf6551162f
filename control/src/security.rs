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

/// `security.job.allowed-dirs` of this process (a JobManager or TaskManager of a
/// cluster), with the cluster's own checkpoint and savepoint directories: the only
/// directories a submitted job may name. Unset: any.
static ALLOWED_DIRS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Confines the paths jobs name to `dirs` (for the rest of the process).
pub fn confine_job_paths(dirs: Vec<String>) {
    let _ = ALLOWED_DIRS.set(dirs);
}

/// Whether a job may use `path` (what it is for goes into the refusal).
pub fn check_job_path(path: &std::path::Path, what: &str) -> Result<(), String> {
    match ALLOWED_DIRS.get() {
        Some(roots) => path_within(roots, path).map_err(|why| {
            format!(
                "{what} {}: {why} (security.job.allowed-dirs: {})",
                path.display(),
                roots.join(", ")
            )
        }),
        None => Ok(()),
    }
}

/// Whether a job may write the file `path` (and, when its sink is parallel, the
/// `path.N` beside it): its directory must lie within the allowed ones.
pub fn check_job_file(path: &std::path::Path, what: &str) -> Result<(), String> {
    let Some(roots) = ALLOWED_DIRS.get() else {
        return Ok(());
    };
    let text = path.to_string_lossy();
    let local = std::path::Path::new(text.strip_prefix("file://").unwrap_or(&text));
    let dir = local.parent().filter(|d| !d.as_os_str().is_empty());
    match dir {
        Some(d) if local.file_name().is_some() => check_job_path(d, what),
        _ => Err(format!(
            "{what} {}: not a file in a directory (security.job.allowed-dirs: {})",
            path.display(),
            roots.join(", ")
        )),
    }
}

/// Whether `path` lies within one of `roots`: no `..`, absolute (or an object-store
/// URI), and, once the longest part of it that exists has its symbolic links
/// resolved, under a root whose own links are resolved alike.
pub fn path_within(roots: &[String], path: &std::path::Path) -> Result<(), String> {
    use std::path::{Component, Path, PathBuf};
    let text = path.to_string_lossy();
    let text = text.strip_prefix("file://").unwrap_or(&text);
    if text.split('/').any(|c| c == "..") {
        return Err("a path with '..' is not allowed here".into());
    }
    if crate::storage::is_remote(Path::new(text)) {
        // An object store: its keys are plain strings, under object-store roots only.
        let under = |root: &&String| {
            let r = root.trim_end_matches('/');
            text == r || text.starts_with(&format!("{r}/"))
        };
        return if roots
            .iter()
            .filter(|r| crate::storage::is_remote(Path::new(r.as_str())))
            .any(|r| under(&r))
        {
            Ok(())
        } else {
            Err("outside the directories jobs may use".into())
        };
    }
    if text.contains("://") {
        return Err("not a path of a filesystem or of an S3-compatible store".into());
    }
    let p = Path::new(text);
    if !p.is_absolute() {
        return Err("a relative path is not allowed here (it would resolve against a server's working directory)".into());
    }
    // Resolve the links of the longest prefix that exists; what follows cannot be a
    // link yet.
    fn resolved(p: &Path) -> PathBuf {
        let mut existing = p.to_path_buf();
        let mut rest = Vec::new();
        loop {
            if let Ok(c) = existing.canonicalize() {
                let mut out = c;
                for part in rest.iter().rev() {
                    out.push(part);
                }
                return out;
            }
            match (
                existing.file_name().map(|n| n.to_owned()),
                existing.parent(),
            ) {
                (Some(name), Some(parent)) => {
                    rest.push(name);
                    existing = parent.to_path_buf();
                }
                _ => return p.to_path_buf(),
            }
        }
    }
    let real = resolved(p);
    let inside = roots.iter().filter(|r| !r.contains("://")).any(|r| {
        let root = resolved(Path::new(r.strip_prefix("file://").unwrap_or(r)));
        real.starts_with(&root)
            && real
                .components()
                .all(|c| !matches!(c, Component::ParentDir))
    });
    if inside {
        Ok(())
    } else {
        Err("outside the directories jobs may use".into())
    }
}

#[cfg(test)]
mod path_tests {
    use super::path_within;
    use std::path::Path;

    #[test]
    fn paths_are_confined_to_the_allowed_directories() {
        let base = std::env::temp_dir().join(format!("spate-paths-{}", std::process::id()));
        let allowed = base.join("data");
        let outside = base.join("etc");
        std::fs::create_dir_all(&allowed).unwrap_or(());
        std::fs::create_dir_all(&outside).unwrap_or(());
        let roots = vec![
            allowed.display().to_string(),
            "s3://bucket/jobs".to_string(),
        ];
        let ok = |p: &Path| path_within(&roots, p).is_ok();
        assert!(ok(&allowed.join("out")));
        assert!(ok(&allowed.join("new/deeper/dir")), "not yet created");
        assert!(ok(&allowed));
        assert!(!ok(&outside.join("x")));
        assert!(!ok(&allowed.join("../etc/x")), "no '..'");
        assert!(!ok(Path::new("relative/dir")));
        assert!(
            !ok(Path::new(&format!("{}x", allowed.display()))),
            "a sibling sharing the prefix"
        );
        // A link inside the allowed directory that leads out of it.
        let link = allowed.join("escape");
        let _ = std::fs::remove_file(&link);
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&outside, &link).unwrap_or(());
            assert!(!ok(&link.join("x")), "a symbolic link out");
        }
        assert!(ok(Path::new("s3://bucket/jobs/out")));
        assert!(ok(Path::new("s3://bucket/jobs")));
        assert!(!ok(Path::new("s3://bucket/jobsx/out")));
        assert!(!ok(Path::new("s3://other/jobs")));
        assert!(!ok(Path::new("s3://bucket/jobs/../secrets")));
        // "://" in a local path is not an object store, and no scheme but s3 and file.
        assert!(!ok(&allowed.join("a://b")));
        assert!(!ok(Path::new("http://bucket/jobs/x")));
        let with_file_scheme = format!("file://{}", allowed.join("x").display());
        assert!(ok(Path::new(&with_file_scheme)));
        // A local root does not admit an object-store path of the same text.
        let local_only = vec![allowed.display().to_string()];
        let as_s3 = format!("s3:/{}", allowed.display());
        assert!(path_within(&local_only, Path::new(&as_s3)).is_err());
        let _ = std::fs::remove_dir_all(&base);
    }
}
