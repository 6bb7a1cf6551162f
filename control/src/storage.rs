//! Where checkpoints and savepoints are kept: a local or shared filesystem path, or an
//! S3-compatible object store (`s3://bucket/prefix`, Flink's scheme), behind the few
//! operations checkpoint storage needs: write a file, write one atomically, read one,
//! list a directory, remove a directory.
//!
//! Object stores are reached with the `object_store` crate from a small runtime of
//! their own (one worker thread), off the slots and off the JobManager's event loop's
//! own I/O; every call blocks its caller until the store answered. An object `PUT` is
//! atomic, so `_metadata` written last marks a complete checkpoint there as the
//! rename does on a filesystem. The store's address and credentials are Flink's keys
//! (`s3.endpoint`, `s3.access-key`, `s3.secret-key`, `s3.path.style.access`, and
//! `s3.region`), read from the process's configuration when it starts; unset keys fall
//! back to the standard `AWS_*` environment variables.

use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// The scheme of object-store locations.
pub const S3_SCHEME: &str = "s3://";

/// How to reach the S3-compatible store (Flink's `s3.*` keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// `s3.endpoint`: the store's URL (e.g. `http://127.0.0.1:9000`; unset: AWS).
    pub endpoint: Option<String>,
    /// `s3.access-key`.
    pub access_key: Option<String>,
    /// `s3.secret-key`.
    pub secret_key: Option<String>,
    /// `s3.region` (default `us-east-1`).
    pub region: Option<String>,
    /// `s3.path.style.access`: `http://host/bucket/key` rather than
    /// `http://bucket.host/key` (what most self-hosted stores need).
    pub path_style: bool,
}

impl S3Settings {
    /// Whether any key was set.
    pub fn is_set(&self) -> bool {
        *self != Self::default()
    }
}

static SETTINGS: RwLock<Option<S3Settings>> = RwLock::new(None);
static CLIENTS: Mutex<Option<HashMap<String, Arc<dyn ObjectStore>>>> = Mutex::new(None);
static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();

/// Sets how this process reaches object stores (from its configuration). Clients made
/// under other settings are dropped.
pub fn configure(settings: &S3Settings) {
    let mut s = SETTINGS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if s.as_ref() != Some(settings) {
        *s = Some(settings.clone());
        *CLIENTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

/// Whether `path` names an object-store location.
pub fn is_remote(path: &Path) -> bool {
    path.to_str().is_some_and(|p| p.starts_with(S3_SCHEME))
}

/// Whether `path` is absolute: a filesystem path from the root, or an object-store URL.
pub fn is_absolute(path: &Path) -> bool {
    is_remote(path) || path.is_absolute()
}

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// The bucket and key of an `s3://bucket/key` location.
fn split(path: &Path) -> std::io::Result<(String, object_store::path::Path)> {
    let s = path
        .to_str()
        .and_then(|p| p.strip_prefix(S3_SCHEME))
        .ok_or_else(|| other("not an s3:// location"))?;
    let (bucket, key) = s.split_once('/').unwrap_or((s, ""));
    if bucket.is_empty() {
        return Err(other(format!(
            "{}: no bucket (s3://BUCKET/PREFIX)",
            path.display()
        )));
    }
    let key = object_store::path::Path::parse(key.trim_matches('/'))
        .map_err(|e| other(format!("{}: {e}", path.display())))?;
    Ok((bucket.to_string(), key))
}

fn client(bucket: &str) -> std::io::Result<Arc<dyn ObjectStore>> {
    let mut clients = CLIENTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let clients = clients.get_or_insert_with(HashMap::new);
    if let Some(c) = clients.get(bucket) {
        return Ok(c.clone());
    }
    let s = SETTINGS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .unwrap_or_default();
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(e) = &s.endpoint {
        b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
    }
    if let Some(k) = &s.access_key {
        b = b.with_access_key_id(k);
    }
    if let Some(k) = &s.secret_key {
        b = b.with_secret_access_key(k);
    }
    b = b.with_region(s.region.as_deref().unwrap_or("us-east-1"));
    b = b.with_virtual_hosted_style_request(!s.path_style);
    // A store that does not answer fails the checkpoint within a minute (it counts as a
    // failed checkpoint), not after the client's default of several.
    b = b.with_retry(object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(30),
        ..Default::default()
    });
    let c: Arc<dyn ObjectStore> = Arc::new(b.build().map_err(other)?);
    clients.insert(bucket.to_string(), c.clone());
    Ok(c)
}

/// Runs `f` on the object-store runtime and waits for it (from any thread, inside
/// another runtime or not).
fn run<T: Send + 'static>(
    f: impl std::future::Future<Output = std::io::Result<T>> + Send + 'static,
) -> std::io::Result<T> {
    let rt = RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("spate-object-store")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| other(format!("starting the object-store runtime: {e}")))?;
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv()
        .map_err(|_| other("the object-store request was dropped"))?
}

/// Writes `bytes` to `path` durably (a synced file; an object).
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if !is_remote(path) {
        use std::io::Write;
        let mut f = std::fs::File::create(path)?;
        f.write_all(bytes)?;
        return f.sync_all();
    }
    let (bucket, key) = split(path)?;
    let c = client(&bucket)?;
    let payload = object_store::PutPayload::from(bytes.to_vec());
    run(async move {
        c.put(&key, payload).await.map_err(other)?;
        Ok(())
    })
}

/// Writes `bytes` to `path` so that readers see all of it or nothing: through a
/// synced temporary file renamed over it (then the directory synced), or one `PUT`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if is_remote(path) {
        return write(path, bytes);
    }
    let name = path
        .file_name()
        .ok_or_else(|| other(format!("{}: no file name", path.display())))?;
    let tmp = path.with_file_name(format!("{}.inprogress", name.to_string_lossy()));
    write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    if let Some(d) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads all of `path`.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    if !is_remote(path) {
        return std::fs::read(path);
    }
    let (bucket, key) = split(path)?;
    let c = client(&bucket)?;
    run(async move {
        let got = c.get(&key).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such object")
            }
            e => other(e),
        })?;
        Ok(got.bytes().await.map_err(other)?.to_vec())
    })
}

/// Whether a file (object) exists at `path`.
pub fn exists(path: &Path) -> bool {
    if !is_remote(path) {
        return path.is_file();
    }
    let Ok((bucket, key)) = split(path) else {
        return false;
    };
    let Ok(c) = client(&bucket) else {
        return false;
    };
    run(async move { c.head(&key).await.map(|_| ()).map_err(other) }).is_ok()
}

/// Creates the directory `dir` and its parents (nothing to do in an object store).
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    if is_remote(dir) {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
}

/// The names of the entries (files and directories) directly under `dir`.
pub fn list(dir: &Path) -> std::io::Result<Vec<String>> {
    if !is_remote(dir) {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir)? {
            v.push(e?.file_name().to_string_lossy().into_owned());
        }
        return Ok(v);
    }
    let (bucket, key) = split(dir)?;
    let c = client(&bucket)?;
    run(async move {
        let prefix = (!key.as_ref().is_empty()).then_some(key);
        let l = c
            .list_with_delimiter(prefix.as_ref())
            .await
            .map_err(other)?;
        let mut names: Vec<String> = l
            .common_prefixes
            .iter()
            .chain(l.objects.iter().map(|o| &o.location))
            .filter_map(|p| p.filename().map(String::from))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    })
}

/// Removes one file (one object).
pub fn remove_file(path: &Path) -> std::io::Result<()> {
    if !is_remote(path) {
        return std::fs::remove_file(path);
    }
    let (bucket, key) = split(path)?;
    let c = client(&bucket)?;
    run(async move { c.delete(&key).await.map_err(other) })
}

/// Removes `dir` and everything under it (every object under the prefix).
pub fn remove_dir_all(dir: &Path) -> std::io::Result<()> {
    if !is_remote(dir) {
        return std::fs::remove_dir_all(dir);
    }
    let (bucket, key) = split(dir)?;
    if key.as_ref().is_empty() {
        return Err(other(format!(
            "{}: refusing to empty a whole bucket",
            dir.display()
        )));
    }
    let c = client(&bucket)?;
    run(async move {
        let mut todo = vec![key];
        while let Some(p) = todo.pop() {
            let l = c.list_with_delimiter(Some(&p)).await.map_err(other)?;
            for o in l.objects {
                c.delete(&o.location).await.map_err(other)?;
            }
            todo.extend(l.common_prefixes);
        }
        Ok(())
    })
}
