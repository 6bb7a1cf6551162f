//! The rows a lookup join meets: a table's rows by key, read when the job is planned
//! and read again each time the cache's time to live (`'lookup.join.cache.ttl'`) has
//! passed, as Flink's filesystem lookup source does.
//!
//! A cache belongs to one lookup join of one plan of a job: on the MiniCluster all
//! the join's subtasks share it; on a cluster each deployment plans the job and reads
//! its own. One thread per cache, started by the first row that looks something up
//! (off the pinned cores), sleeps out the time to live, reads the files, builds the
//! new index and publishes it; it ends once no running subtask reads the cache. A
//! subtask's reader keeps the index it last took: a row costs one atomic load to
//! learn whether a newer one exists, and the lock is taken only once per reload. A
//! reload that fails (a line that does not parse, a file that cannot be read) keeps
//! the rows read before and says so in the log.

use super::connector::LookupSource;
use super::types::{Row, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A lookup table's rows by their key columns' values.
pub type Index = HashMap<Vec<Value>, Vec<Row>>;

/// Turns a table's rows into an index.
pub type BuildIndex = Box<dyn Fn(Vec<Row>) -> Index + Send + Sync>;

/// The longest the reload thread sleeps between looks at whether its cache is still
/// in use (its job may end long before the time to live has passed).
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// A lookup table's current index, shared by the subtasks of one plan.
pub struct LookupCache {
    index: Mutex<Arc<Index>>,
    /// How many reloads have replaced `index`.
    version: AtomicU64,
    /// Readers in use and whether the reload thread runs (touched when a subtask
    /// starts or ends, and by the thread between sleeps: never per row).
    readers: Mutex<Readers>,
    source: LookupSource,
    build: BuildIndex,
}

#[derive(Default)]
struct Readers {
    /// Readers that looked something up and are not dropped yet.
    active: usize,
    /// Whether a reload thread runs.
    reloading: bool,
}

/// Locks `m`, taking its value even if a thread panicked while holding it (the
/// values here are whole after any step).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LookupCache {
    /// A cache holding `rows` (the table as read when the job was planned).
    pub fn new(source: LookupSource, build: BuildIndex, rows: Vec<Row>) -> Arc<Self> {
        Arc::new(Self {
            index: Mutex::new(Arc::new(build(rows))),
            version: AtomicU64::new(0),
            readers: Mutex::new(Readers::default()),
            source,
            build,
        })
    }

    /// A reader for one subtask.
    pub fn reader(self: &Arc<Self>) -> LookupReader {
        // The version first: a reload between the two reads leaves the reader with
        // the newer index under the older version, which it takes again (never the
        // other way round).
        let seen = self.version.load(Ordering::Acquire);
        LookupReader {
            current: self.current(),
            seen,
            cache: self.clone(),
            started: false,
        }
    }

    fn current(&self) -> Arc<Index> {
        lock(&self.index).clone()
    }

    /// A reader starts: the reload thread runs from now on (if it does not already).
    fn start(self: &Arc<Self>) {
        let mut readers = lock(&self.readers);
        readers.active += 1;
        if readers.reloading {
            return;
        }
        let cache = self.clone();
        let spawned = std::thread::Builder::new()
            .name("lookup-reload".into())
            .spawn(move || {
                // The first row comes on a pinned slot thread, whose mask a new thread
                // inherits: reading files is no work for that core.
                if let Err(e) = spate_dataplane::sys::unpin_current() {
                    tracing::debug!("lookup reload thread stays on its parent's cores: {e}");
                }
                cache.reload_loop();
            });
        match spawned {
            Ok(_) => readers.reloading = true,
            Err(e) => tracing::warn!(
                "cannot start the lookup table's reload thread ({e}); its rows stay as read"
            ),
        }
    }

    /// A reader that started is dropped (its subtask ended).
    fn stop(&self) {
        let mut readers = lock(&self.readers);
        readers.active = readers.active.saturating_sub(1);
    }

    /// Whether a reader still uses the cache; if none does, the reload thread ends
    /// (and says so under the same lock, so that a reader starting later starts a
    /// new one).
    fn in_use(&self) -> bool {
        let mut readers = lock(&self.readers);
        if readers.active == 0 {
            readers.reloading = false;
        }
        readers.active > 0
    }

    /// Sleeps out the time to live and reloads, again and again, while the cache is
    /// in use.
    fn reload_loop(&self) {
        let ttl = self.source.ttl();
        loop {
            let mut waited = Duration::ZERO;
            while waited < ttl {
                let step = (ttl - waited).min(CHECK_EVERY);
                std::thread::sleep(step);
                waited += step;
                if !self.in_use() {
                    return;
                }
            }
            self.reload();
        }
    }

    /// Reads the table again and publishes its new index; on failure the previous
    /// one stays.
    fn reload(&self) {
        match self.source.read() {
            Ok(rows) => {
                let index = Arc::new((self.build)(rows));
                *lock(&self.index) = index;
                // Release: a reader that sees the new version (Acquire) and then
                // takes the lock finds the new index (the lock orders that too; the
                // pair makes the version's meaning stand on its own).
                self.version.fetch_add(1, Ordering::Release);
                tracing::debug!("lookup table reloaded");
            }
            Err(e) => tracing::warn!("{e}; the rows read before stay in use"),
        }
    }
}

/// One subtask's view of a lookup cache.
pub struct LookupReader {
    cache: Arc<LookupCache>,
    current: Arc<Index>,
    seen: u64,
    /// Whether this reader counts among the cache's active ones.
    started: bool,
}

impl Clone for LookupReader {
    /// A reader for another subtask: it counts once it looks something up.
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            current: self.current.clone(),
            seen: self.seen,
            started: false,
        }
    }
}

impl Drop for LookupReader {
    fn drop(&mut self) {
        if self.started {
            self.cache.stop();
        }
    }
}

impl LookupReader {
    /// The newest index published.
    #[inline]
    pub fn index(&mut self) -> &Index {
        if !self.started {
            self.started = true;
            self.cache.start();
        }
        // Acquire pairs with the reloader's Release increment.
        let v = self.cache.version.load(Ordering::Acquire);
        if v != self.seen {
            self.current = self.cache.current();
            self.seen = v;
        }
        &self.current
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::sql::types::DataType;
    use crate::sql::{Column, TableDef};

    fn cache(dir: &std::path::Path) -> Arc<LookupCache> {
        let def = TableDef {
            name: "names".into(),
            physical: vec![
                Column::new("k", DataType::BigInt),
                Column::new("v", DataType::String),
            ],
            extras: Default::default(),
            options: [
                ("connector", "filesystem"),
                ("format", "csv"),
                ("path", &*dir.display().to_string()),
                ("lookup.join.cache.ttl", "20 ms"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            temporary: false,
            partition_keys: Vec::new(),
        };
        let source = LookupSource::of(&def).unwrap();
        let rows = source.read().unwrap();
        let build: BuildIndex = Box::new(|rows: Vec<Row>| {
            let mut index = Index::new();
            for r in rows {
                index.entry(vec![r.values[0].clone()]).or_default().push(r);
            }
            index
        });
        LookupCache::new(source, build, rows)
    }

    fn value_of(reader: &mut LookupReader) -> Option<String> {
        reader
            .index()
            .get(&vec![Value::Int(1)])
            .and_then(|rows| rows.first())
            .map(|r| match &r.values[1] {
                Value::Str(v) => v.to_string(),
                other => panic!("not a string: {other:?}"),
            })
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The reload thread runs while a reader that looked something up lives, ends
    /// after the last one is dropped, and a reader that starts later starts another.
    #[test]
    fn the_reload_thread_lives_as_long_as_its_readers() {
        let dir = std::env::temp_dir().join(format!("spate-lookup-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("names.csv");
        std::fs::write(&file, "1,a\n").unwrap();
        let cache = cache(&dir);
        let running = || lock(&cache.readers).reloading;
        // A reader that never looked anything up (the plan's own) does not count.
        let planned = cache.reader();
        assert!(!running());
        let mut first = planned.clone();
        assert_eq!(value_of(&mut first).as_deref(), Some("a"));
        assert!(running());
        let mut second = first.clone();
        assert_eq!(value_of(&mut second).as_deref(), Some("a"));
        std::fs::write(&file, "1,b\n").unwrap();
        wait_until("the first reader sees the new row", || {
            value_of(&mut first).as_deref() == Some("b")
        });
        assert_eq!(value_of(&mut second).as_deref(), Some("b"));
        drop(first);
        std::thread::sleep(Duration::from_millis(60));
        assert!(running(), "one reader still reads");
        drop(second);
        wait_until("the thread ends with its last reader", || !running());
        let mut later = planned.clone();
        std::fs::write(&file, "1,c\n").unwrap();
        assert_eq!(value_of(&mut later).as_deref(), Some("b"));
        assert!(running());
        wait_until("a later reader's thread reloads", || {
            value_of(&mut later).as_deref() == Some("c")
        });
        drop(later);
        wait_until("it ends too", || !running());
        std::fs::remove_dir_all(&dir).ok();
    }
}
