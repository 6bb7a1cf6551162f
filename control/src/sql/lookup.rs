//! The rows a lookup join meets: a table's rows by key, read when the job is planned
//! and read again each time the cache's time to live (`'lookup.join.cache.ttl'`) has
//! passed, as Flink's filesystem lookup source does.
//!
//! One thread per cache (started by the first row that looks something up, off the
//! pinned cores) sleeps out the time to live, reads the files, builds the new index
//! and publishes it. A subtask's reader keeps the index it last took: a row costs one
//! atomic load to learn whether a newer one exists, and the lock is taken only once
//! per reload. A reload that fails (a file half-written, a line that does not parse)
//! keeps the rows read before and says so in the log.

use super::connector::LookupSource;
use super::types::{Row, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::Duration;

/// A lookup table's rows by their key columns' values.
pub type Index = HashMap<Vec<Value>, Vec<Row>>;

/// Turns a table's rows into an index.
pub type BuildIndex = Box<dyn Fn(Vec<Row>) -> Index + Send + Sync>;

/// The longest the reload thread sleeps between looks at whether its cache is still
/// in use (its job may end long before the time to live has passed).
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// A lookup table's current index, shared by the subtasks of one process.
pub struct LookupCache {
    index: Mutex<Arc<Index>>,
    /// How many reloads have replaced `index`.
    version: AtomicU64,
    reloader: Once,
    source: LookupSource,
    build: BuildIndex,
}

impl LookupCache {
    /// A cache holding `rows` (the table as read when the job was planned).
    pub fn new(source: LookupSource, build: BuildIndex, rows: Vec<Row>) -> Arc<Self> {
        Arc::new(Self {
            index: Mutex::new(Arc::new(build(rows))),
            version: AtomicU64::new(0),
            reloader: Once::new(),
            source,
            build,
        })
    }

    /// A reader for one subtask.
    pub fn reader(self: &Arc<Self>) -> LookupReader {
        LookupReader {
            current: self.current(),
            seen: self.version.load(Ordering::Acquire),
            cache: self.clone(),
            started: false,
        }
    }

    fn current(&self) -> Arc<Index> {
        // A poisoned lock only means a reader panicked while cloning an Arc: the
        // index in it is whole.
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Starts the reload thread, once per cache.
    fn start(self: &Arc<Self>) {
        self.reloader.call_once(|| {
            let weak = Arc::downgrade(self);
            let ttl = self.source.ttl();
            let spawned = std::thread::Builder::new()
                .name("lookup-reload".into())
                .spawn(move || {
                    // The first row comes on a pinned slot thread, whose mask a new
                    // thread inherits: reading files is no work for that core.
                    if let Err(e) = spate_dataplane::sys::unpin_current() {
                        tracing::debug!("lookup reload thread stays on its parent's cores: {e}");
                    }
                    reload_loop(&weak, ttl);
                });
            if let Err(e) = spawned {
                tracing::warn!(
                    "cannot start the lookup table's reload thread ({e}); its rows stay as read"
                );
            }
        });
    }

    /// Reads the table again and publishes its new index; on failure the previous
    /// one stays.
    fn reload(&self) {
        match self.source.read() {
            Ok(rows) => {
                let index = Arc::new((self.build)(rows));
                *self
                    .index
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = index;
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

/// Sleeps out `ttl`, reloads, and again, while the cache is in use.
fn reload_loop(weak: &Weak<LookupCache>, ttl: Duration) {
    loop {
        let mut waited = Duration::ZERO;
        while waited < ttl {
            let step = (ttl - waited).min(CHECK_EVERY);
            std::thread::sleep(step);
            waited += step;
            if weak.strong_count() == 0 {
                return;
            }
        }
        match weak.upgrade() {
            Some(cache) => cache.reload(),
            None => return,
        }
    }
}

/// One subtask's view of a lookup cache.
#[derive(Clone)]
pub struct LookupReader {
    cache: Arc<LookupCache>,
    current: Arc<Index>,
    seen: u64,
    started: bool,
}

impl LookupReader {
    /// The newest index published.
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
