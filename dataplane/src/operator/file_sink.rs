//! The exactly-once file sink (Flink's `FileSink` with a row format, rolling on every
//! checkpoint): records become lines in part files under a directory, and a part
//! becomes visible only once the checkpoint that closed it has completed (two-phase
//! commit).
//!
//! Subtask `s` writes `.part-s-n.inprogress` (hidden). When barrier `c` passes, the
//! part is flushed, synced and renamed `.part-s-n.pending`, and its name goes into the
//! checkpoint's state with `c`; when the coordinator says checkpoint `c` completed, the
//! pending parts of checkpoints up to `c` are renamed `part-s-n`: committed, and never
//! touched again. A subtask that resumes from checkpoint `c` commits the pending parts
//! its state lists (they belong to a completed checkpoint) and deletes its other hidden
//! files (written after the checkpoint: their records will be written again). At the
//! end of input, with periodic checkpoints, the task takes a final checkpoint whose
//! completion commits the rest; without checkpoints everything is committed at once.
//!
//! So readers of the directory see each record once, whatever failed in between,
//! provided they ignore hidden files (as Flink's readers do). Without checkpoints,
//! parts are committed at the end of input only.

use super::sink::{Counter, SinkMetrics};
use super::{report_failure, Emit, Event, SubtaskInfo};
use crate::checkpoint::{decode_state, encode_state, put_state, StateError};
use std::fmt::Debug;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a file sink subtask keeps in checkpoints: the next part's number, and the parts
/// closed by checkpoints not yet known to be complete, as (checkpoint, bucket, part).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct SinkState {
    next_part: u64,
    pending: Vec<(u64, String, u64)>,
}

/// Which bucket (a directory under the sink's, as `dt=2024-01-01/hm=10:00`) a
/// record goes to (Flink's `BucketAssigner`).
pub type BucketFn<T> = Box<dyn Fn(&T) -> String + Send>;

/// Parts (files, with their buffers) a sink subtask keeps open at most: writing to
/// more buckets between two checkpoints closes the part opened longest ago.
pub const MAX_OPEN_PARTS: usize = 64;

/// A part being written: its bucket, number and writer.
struct OpenPart {
    bucket: String,
    part: u64,
    w: std::io::BufWriter<std::fs::File>,
}

/// The exactly-once file sink of one subtask.
pub struct FileSink<T> {
    dir: PathBuf,
    subtask: usize,
    uid: Option<u32>,
    /// The open parts, one per bucket written since the last checkpoint (at most
    /// [`MAX_OPEN_PARTS`]), the most recently opened last.
    open: Vec<OpenPart>,
    /// Parts closed before the next barrier to stay under [`MAX_OPEN_PARTS`]: pending
    /// on that barrier's checkpoint.
    closed_early: Vec<(String, u64)>,
    state: SinkState,
    counter: Counter,
    failed: bool,
    line: String,
    bucket_of: Option<BucketFn<T>>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

impl<T> FileSink<T> {
    /// The sink of subtask `info.index` writing under `dir` (created if missing). With
    /// `uid`, it takes part in checkpoints as that operator, resuming from `restored`
    /// (its state in the checkpoint being restored) if given.
    pub fn new(
        dir: &Path,
        info: SubtaskInfo,
        uid: Option<u32>,
        restored: Option<&[u8]>,
        metrics: Arc<SinkMetrics>,
    ) -> Result<Self, String> {
        Self::with_buckets(dir, info, uid, restored, metrics, None)
    }

    /// As [`Self::new`], each record written into the bucket `bucket_of` names (a
    /// relative directory under `dir`; `None`: all in `dir`).
    pub fn with_buckets(
        dir: &Path,
        info: SubtaskInfo,
        uid: Option<u32>,
        restored: Option<&[u8]>,
        metrics: Arc<SinkMetrics>,
        bucket_of: Option<BucketFn<T>>,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
        let mut sink = Self {
            dir: dir.to_path_buf(),
            subtask: info.index,
            uid,
            open: Vec::new(),
            closed_early: Vec::new(),
            state: SinkState::default(),
            counter: Counter::new(metrics),
            failed: false,
            line: String::new(),
            bucket_of,
        };
        // The states to resume from, with the subtask that wrote each: the own one, or
        // at another parallelism those of the old subtasks this one takes over (old
        // subtask i's goes to new subtask i mod p, so that no two new subtasks touch
        // the files of one old subtask; see `checkpoint::shares`).
        let bad = |e: StateError| e.to_string();
        let restored: Vec<(usize, &[u8])> = match restored {
            None => Vec::new(),
            Some(bytes) => match crate::checkpoint::shares(bytes).map_err(bad)? {
                None => vec![(info.index, bytes)],
                Some((range, all)) => all
                    .iter()
                    .filter(|s| s.taken_by(range))
                    .map(|s| (s.subtask as usize, s.bytes))
                    .collect(),
            },
        };
        let mut cleaned = vec![info.index];
        for (subtask, bytes) in restored {
            let state: SinkState = decode_state(bytes).map_err(bad)?;
            // The restored checkpoint completed: its pending parts are committed now
            // (a part already committed before the failure stays as it is).
            for (_, bucket, part) in &state.pending {
                sink.commit_of(subtask, bucket, *part)?;
            }
            if subtask == info.index {
                sink.state.next_part = state.next_part;
            } else {
                cleaned.push(subtask);
            }
        }
        // Hidden files of these subtasks not in the restored state were written after
        // the checkpoint (or by a run that never checkpointed): their records come again.
        for subtask in cleaned {
            sink.remove_hidden(&sink.dir, subtask)?;
        }
        Ok(sink)
    }

    fn name(&self, bucket: &str, part: u64, suffix: &str) -> PathBuf {
        self.name_of(self.subtask, bucket, part, suffix)
    }

    /// The file of part `part` of `bucket` written by subtask `subtask`.
    fn name_of(&self, subtask: usize, bucket: &str, part: u64, suffix: &str) -> PathBuf {
        let dir = if bucket.is_empty() {
            self.dir.clone()
        } else {
            self.dir.join(bucket)
        };
        if suffix.is_empty() {
            dir.join(format!("part-{subtask}-{part}"))
        } else {
            dir.join(format!(".part-{subtask}-{part}.{suffix}"))
        }
    }

    /// Removes subtask `subtask`'s hidden parts under `dir` and its bucket directories.
    fn remove_hidden(&self, dir: &Path, subtask: usize) -> Result<(), String> {
        let prefix = format!(".part-{subtask}-");
        let rd = std::fs::read_dir(dir).map_err(|e| io_err("listing", dir, e))?;
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                self.remove_hidden(&e.path(), subtask)?;
            } else if n.starts_with(&prefix)
                && (n.ends_with(".inprogress") || n.ends_with(".pending"))
            {
                std::fs::remove_file(e.path()).map_err(|er| io_err("removing", &e.path(), er))?;
            }
        }
        Ok(())
    }

    /// Makes pending part `part` of `bucket` visible.
    fn commit(&self, bucket: &str, part: u64) -> Result<(), String> {
        self.commit_of(self.subtask, bucket, part)
    }

    /// Makes subtask `subtask`'s pending part `part` of `bucket` visible.
    fn commit_of(&self, subtask: usize, bucket: &str, part: u64) -> Result<(), String> {
        let from = self.name_of(subtask, bucket, part, "pending");
        let to = self.name_of(subtask, bucket, part, "");
        match std::fs::rename(&from, &to) {
            Ok(()) => Ok(()),
            // Committed before a failure (the rename happened, the state did not learn).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.exists() => Ok(()),
            Err(e) => Err(io_err("committing", &from, e)),
        }
    }

    /// Opens a part in `bucket`; its position in `open`.
    fn open(&mut self, bucket: String) -> Result<usize, String> {
        if self.open.len() >= MAX_OPEN_PARTS {
            let oldest = self.open.remove(0);
            let closed = self.close(oldest)?;
            self.closed_early.push(closed);
        }
        let dir = self.name(&bucket, 0, "");
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_err("creating", parent, e))?;
        }
        // A number no committed part of an earlier run has (a run restored from an
        // older checkpoint must not overwrite what a later one committed).
        while self.name(&bucket, self.state.next_part, "").exists() {
            self.state.next_part += 1;
        }
        let part = self.state.next_part;
        self.state.next_part += 1;
        let path = self.name(&bucket, part, "inprogress");
        let f = std::fs::File::create(&path).map_err(|e| io_err("creating", &path, e))?;
        self.open.push(OpenPart {
            bucket,
            part,
            w: std::io::BufWriter::with_capacity(1 << 16, f),
        });
        Ok(self.open.len() - 1)
    }

    /// Flushes and syncs a part and renames it `pending`; its bucket and number.
    fn close(&self, p: OpenPart) -> Result<(String, u64), String> {
        let OpenPart { bucket, part, w } = p;
        let path = self.name(&bucket, part, "inprogress");
        let f = w
            .into_inner()
            .map_err(|e| io_err("writing", &path, e.into_error()))?;
        f.sync_data().map_err(|e| io_err("syncing", &path, e))?;
        drop(f);
        let pending = self.name(&bucket, part, "pending");
        std::fs::rename(&path, &pending).map_err(|e| io_err("renaming", &path, e))?;
        Ok((bucket, part))
    }

    /// Closes the open parts (see [`Self::close`]); with those closed early, their
    /// buckets and numbers.
    fn close_parts(&mut self) -> Result<Vec<(String, u64)>, String> {
        let mut closed = std::mem::take(&mut self.closed_early);
        for p in std::mem::take(&mut self.open) {
            closed.push(self.close(p)?);
        }
        Ok(closed)
    }

    fn fail(&mut self, m: String) {
        if !self.failed {
            self.failed = true;
            report_failure(m);
        }
    }

    /// Barrier `id`: the open parts are closed and pending on the checkpoint.
    fn on_barrier(&mut self, id: u64) -> Result<(), String> {
        for (bucket, part) in self.close_parts()? {
            self.state.pending.push((id, bucket, part));
        }
        if let Some(uid) = self.uid {
            let bytes = encode_state(&self.state).map_err(|e| e.to_string())?;
            put_state(uid, bytes);
        }
        Ok(())
    }

    /// Checkpoint `id` completed: its pending parts (and older ones) are committed.
    fn on_complete(&mut self, id: u64) -> Result<(), String> {
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.state.pending)
            .into_iter()
            .partition(|(c, _, _)| *c <= id);
        self.state.pending = keep;
        for (_, bucket, part) in done {
            self.commit(&bucket, part)?;
        }
        Ok(())
    }

    fn on_end(&mut self) -> Result<(), String> {
        if crate::checkpoint::final_checkpoint_follows() {
            // The task takes one more checkpoint: its barrier closes the open parts and
            // its completion commits everything, as for any checkpoint. Committing now
            // would let a failure elsewhere in the job, before that checkpoint, restart
            // this subtask from an older one and write these records again.
            return Ok(());
        }
        for (bucket, part) in self.close_parts()? {
            self.commit(&bucket, part)?;
        }
        for (_, bucket, part) in std::mem::take(&mut self.state.pending) {
            self.commit(&bucket, part)?;
        }
        Ok(())
    }
}

impl<T: Debug> Emit<T> for FileSink<T> {
    fn push(&mut self, batch: &mut Vec<T>) {
        self.counter.unpublished += batch.len() as u64;
        if self.failed {
            batch.clear();
            return;
        }
        let mut err = None;
        // The part written last (records of one bucket tend to come together).
        let mut at: Option<usize> = None;
        for record in batch.drain(..) {
            let bucket = match &self.bucket_of {
                Some(f) => f(&record),
                None => String::new(),
            };
            let found = match at.filter(|&i| self.open.get(i).is_some_and(|p| p.bucket == bucket)) {
                Some(i) => Some(i),
                None => self.open.iter().position(|p| p.bucket == bucket),
            };
            let i = match found {
                Some(i) => i,
                None => match self.open(bucket) {
                    Ok(i) => i,
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                },
            };
            at = Some(i);
            use std::fmt::Write as _;
            self.line.clear();
            let _ = writeln!(self.line, "{record:?}");
            if let Err(e) = self.open[i].w.write_all(self.line.as_bytes()) {
                let p = &self.open[i];
                err = Some(io_err(
                    "writing",
                    &self.name(&p.bucket, p.part, "inprogress"),
                    e,
                ));
                break;
            }
        }
        batch.clear();
        if let Some(e) = err {
            self.fail(e);
        }
    }

    fn event(&mut self, event: Event) {
        if self.failed {
            return;
        }
        let r = match event {
            Event::Barrier(b) => self.on_barrier(b.id),
            Event::EndOfInput => {
                let r = self.on_end();
                self.counter.publish(None, false);
                r
            }
            _ => Ok(()),
        };
        if let Err(e) = r {
            self.fail(e);
        }
    }

    fn tick(&mut self, now_ns: u64) {
        if self.counter.due(now_ns) {
            self.counter.publish(None, false);
        }
    }

    fn notify_checkpoint_complete(&mut self, id: u64) {
        if self.failed {
            return;
        }
        if let Err(e) = self.on_complete(id) {
            self.fail(e);
        }
    }
}

/// Reads the committed parts under `dir`: for each subtask in order, its parts in
/// order, as lines (hidden in-progress and pending parts are not output).
pub fn read_committed(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut parts: Vec<(usize, u64, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = n.strip_prefix("part-") else {
            continue;
        };
        let Some((s, p)) = rest.split_once('-') else {
            continue;
        };
        if let (Ok(s), Ok(p)) = (s.parse(), p.parse()) {
            parts.push((s, p, e.path()));
        }
    }
    parts.sort();
    let mut lines = Vec::new();
    for (_, _, p) in parts {
        lines.extend(std::fs::read_to_string(p)?.lines().map(str::to_string));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::checkpoint::{collect_states, finish_states};
    use crate::operator::{Barrier, BarrierKind};

    fn info() -> SubtaskInfo {
        SubtaskInfo {
            index: 0,
            parallelism: 1,
        }
    }

    fn barrier(id: u64) -> Event {
        Event::Barrier(Barrier {
            id,
            timestamp_ns: 0,
            kind: BarrierKind::Checkpoint,
        })
    }

    fn sink(dir: &Path, restored: Option<&[u8]>) -> FileSink<u64> {
        FileSink::new(dir, info(), Some(7), restored, Arc::default()).unwrap()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn parts_become_visible_when_their_checkpoint_completes() {
        let d = tempfile::tempdir().unwrap();
        let mut s = sink(d.path(), None);
        Emit::<u64>::push(&mut s, &mut vec![1, 2]);
        assert_eq!(files(d.path()), [".part-0-0.inprogress"]);
        let st = finish_states(collect_states(|| Emit::<u64>::event(&mut s, barrier(1)))).unwrap();
        assert_eq!(st.len(), 1);
        assert_eq!(files(d.path()), [".part-0-0.pending"]);
        assert!(read_committed(d.path()).unwrap().is_empty());
        Emit::<u64>::push(&mut s, &mut vec![3]);
        Emit::<u64>::notify_checkpoint_complete(&mut s, 1);
        assert_eq!(files(d.path()), [".part-0-1.inprogress", "part-0-0"]);
        assert_eq!(read_committed(d.path()).unwrap(), ["1", "2"]);
        Emit::<u64>::event(&mut s, Event::EndOfInput);
        assert_eq!(read_committed(d.path()).unwrap(), ["1", "2", "3"]);
    }

    #[test]
    fn a_restored_sink_commits_its_checkpoint_and_drops_what_came_after() {
        let d = tempfile::tempdir().unwrap();
        let mut s = sink(d.path(), None);
        Emit::<u64>::push(&mut s, &mut vec![1, 2]);
        let st = finish_states(collect_states(|| Emit::<u64>::event(&mut s, barrier(1)))).unwrap();
        // After barrier 1, before its completion is known, more records, and a
        // second barrier whose checkpoint never completes; then the task dies.
        Emit::<u64>::push(&mut s, &mut vec![3]);
        collect_states(|| Emit::<u64>::event(&mut s, barrier(2)));
        Emit::<u64>::push(&mut s, &mut vec![4]);
        drop(s);
        // Resume from checkpoint 1: part 0 is committed, parts 1 and 2 go.
        let mut s = sink(d.path(), Some(&st[0].1));
        assert_eq!(files(d.path()), ["part-0-0"]);
        Emit::<u64>::push(&mut s, &mut vec![3, 4]);
        Emit::<u64>::event(&mut s, Event::EndOfInput);
        assert_eq!(read_committed(d.path()).unwrap(), ["1", "2", "3", "4"]);
    }

    /// Resumed at another parallelism (3 -> 2), each old subtask's pending parts are
    /// committed by exactly one new subtask, which also drops that old subtask's
    /// parts written after the checkpoint; the new subtasks go on under their own
    /// names, never over a committed part.
    #[test]
    fn pending_parts_are_committed_at_another_parallelism() {
        use crate::checkpoint::{redistributed_state, shares, KeyGroupRange};
        let d = tempfile::tempdir().unwrap();
        let at = |index, parallelism| SubtaskInfo { index, parallelism };
        let mut states = Vec::new();
        for i in 0..3usize {
            let mut s = FileSink::new(d.path(), at(i, 3), Some(7), None, Arc::default()).unwrap();
            Emit::<u64>::push(&mut s, &mut vec![10 * i as u64, 10 * i as u64 + 1]);
            let st = finish_states(collect_states(|| Emit::<u64>::event(&mut s, barrier(1))));
            states.push((i as u32, st.unwrap().remove(0).1));
            // Lost with the failure: written after the checkpoint.
            Emit::<u64>::push(&mut s, &mut vec![99]);
            collect_states(|| Emit::<u64>::event(&mut s, barrier(2)));
        }
        assert_eq!(files(d.path()).len(), 6);
        let mut sinks = Vec::new();
        for j in 0..2u32 {
            let range = KeyGroupRange {
                subtask: j,
                parallelism: 2,
                max_parallelism: 128,
            };
            let state = redistributed_state(range, &states);
            let (r, all) = shares(&state).unwrap().unwrap();
            let taken: Vec<u32> = all
                .iter()
                .filter(|s| s.taken_by(r))
                .map(|s| s.subtask)
                .collect();
            assert_eq!(taken, if j == 0 { vec![0, 2] } else { vec![1] });
            let s = FileSink::<u64>::new(
                d.path(),
                at(j as usize, 2),
                Some(7),
                Some(&state),
                Arc::default(),
            );
            sinks.push(s.unwrap());
        }
        assert_eq!(files(d.path()), ["part-0-0", "part-1-0", "part-2-0"]);
        assert_eq!(
            read_committed(d.path()).unwrap(),
            ["0", "1", "10", "11", "20", "21"]
        );
        for (j, mut s) in sinks.into_iter().enumerate() {
            Emit::<u64>::push(&mut s, &mut vec![100 + j as u64]);
            Emit::<u64>::event(&mut s, Event::EndOfInput);
        }
        assert_eq!(
            files(d.path()),
            ["part-0-0", "part-0-1", "part-1-0", "part-1-1", "part-2-0"]
        );
        let mut all = read_committed(d.path()).unwrap();
        all.sort();
        assert_eq!(all, ["0", "1", "10", "100", "101", "11", "20", "21"]);
    }

    #[test]
    fn with_a_final_checkpoint_the_end_of_input_commits_nothing_until_it_completes() {
        let d = tempfile::tempdir().unwrap();
        let mut s = sink(d.path(), None);
        Emit::<u64>::push(&mut s, &mut vec![1, 2]);
        let st1 = finish_states(collect_states(|| Emit::<u64>::event(&mut s, barrier(1)))).unwrap();
        Emit::<u64>::push(&mut s, &mut vec![3]);
        crate::checkpoint::end_of_input(true, || Emit::<u64>::event(&mut s, Event::EndOfInput));
        assert!(read_committed(d.path()).unwrap().is_empty());
        // Had the job failed here, a restart from checkpoint 1 would write 3 again:
        // nothing of it may be visible.
        let mut again = sink(d.path(), Some(&st1[0].1));
        assert_eq!(read_committed(d.path()).unwrap(), ["1", "2"]);
        Emit::<u64>::push(&mut again, &mut vec![3]);
        crate::checkpoint::end_of_input(true, || Emit::<u64>::event(&mut again, Event::EndOfInput));
        collect_states(|| Emit::<u64>::event(&mut again, barrier(2)));
        assert_eq!(read_committed(d.path()).unwrap(), ["1", "2"]);
        Emit::<u64>::notify_checkpoint_complete(&mut again, 2);
        assert_eq!(read_committed(d.path()).unwrap(), ["1", "2", "3"]);
        drop(s);
    }

    #[test]
    fn records_go_to_their_buckets_each_committed_with_its_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let bucket: BucketFn<u64> = Box::new(|x: &u64| format!("even={}", x.is_multiple_of(2)));
        let mut s = FileSink::with_buckets(
            d.path(),
            info(),
            Some(7),
            None,
            Arc::default(),
            Some(bucket),
        )
        .unwrap();
        Emit::<u64>::push(&mut s, &mut vec![1, 2, 3, 4]);
        let st = finish_states(collect_states(|| Emit::<u64>::event(&mut s, barrier(1)))).unwrap();
        assert!(read_committed(&d.path().join("even=true"))
            .unwrap()
            .is_empty());
        Emit::<u64>::notify_checkpoint_complete(&mut s, 1);
        assert_eq!(
            read_committed(&d.path().join("even=false")).unwrap(),
            ["1", "3"]
        );
        assert_eq!(
            read_committed(&d.path().join("even=true")).unwrap(),
            ["2", "4"]
        );
        // Written after checkpoint 1, then lost: a restore drops it from every bucket.
        Emit::<u64>::push(&mut s, &mut vec![5, 6]);
        drop(s);
        let bucket: BucketFn<u64> = Box::new(|x: &u64| format!("even={}", x.is_multiple_of(2)));
        let mut s = FileSink::with_buckets(
            d.path(),
            info(),
            Some(7),
            Some(&st[0].1),
            Arc::default(),
            Some(bucket),
        )
        .unwrap();
        assert_eq!(files(&d.path().join("even=true")), ["part-0-1"]);
        Emit::<u64>::push(&mut s, &mut vec![6]);
        Emit::<u64>::event(&mut s, Event::EndOfInput);
        assert_eq!(
            read_committed(&d.path().join("even=true")).unwrap(),
            ["2", "4", "6"]
        );
        assert_eq!(
            read_committed(&d.path().join("even=false")).unwrap(),
            ["1", "3"]
        );
    }

    #[test]
    fn a_sink_keeps_a_bounded_number_of_parts_open() {
        let d = tempfile::tempdir().unwrap();
        let n = MAX_OPEN_PARTS as u64 + 10;
        let bucket: BucketFn<u64> = Box::new(|x: &u64| format!("b={x}"));
        let mut s = FileSink::with_buckets(
            d.path(),
            info(),
            Some(7),
            None,
            Arc::default(),
            Some(bucket),
        )
        .unwrap();
        Emit::<u64>::push(&mut s, &mut (0..n).collect());
        assert_eq!(s.open.len(), MAX_OPEN_PARTS);
        // Parts closed early are pending on the next checkpoint, as the others.
        finish_states(collect_states(|| Emit::<u64>::event(&mut s, barrier(1)))).unwrap();
        assert_eq!(s.state.pending.len(), n as usize);
        Emit::<u64>::notify_checkpoint_complete(&mut s, 1);
        for x in 0..n {
            assert_eq!(
                read_committed(&d.path().join(format!("b={x}"))).unwrap(),
                [x.to_string()]
            );
        }
    }

    #[test]
    fn a_foreign_state_is_refused() {
        let d = tempfile::tempdir().unwrap();
        assert!(
            FileSink::<u64>::new(d.path(), info(), Some(1), Some(b"nope"), Arc::default()).is_err()
        );
    }
}
