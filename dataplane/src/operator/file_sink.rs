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
/// closed by checkpoints not yet known to be complete, as (checkpoint, part).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct SinkState {
    next_part: u64,
    pending: Vec<(u64, u64)>,
}

/// The exactly-once file sink of one subtask.
pub struct FileSink {
    dir: PathBuf,
    subtask: usize,
    uid: Option<u32>,
    w: Option<std::io::BufWriter<std::fs::File>>,
    /// Lines in the open part.
    lines: u64,
    state: SinkState,
    counter: Counter,
    failed: bool,
    line: String,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

impl FileSink {
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
        if restored.is_some_and(crate::checkpoint::is_redistributed) {
            return Err(format!(
                "the file sink's pending parts cannot be redistributed to parallelism {} \
                 (keep the sink's parallelism when resuming)",
                info.parallelism
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
        let mut sink = Self {
            dir: dir.to_path_buf(),
            subtask: info.index,
            uid,
            w: None,
            lines: 0,
            state: SinkState::default(),
            counter: Counter::new(metrics),
            failed: false,
            line: String::new(),
        };
        if let Some(bytes) = restored {
            sink.state = decode_state(bytes).map_err(|e: StateError| e.to_string())?;
            // The restored checkpoint completed: its pending parts are committed now
            // (a part already committed before the failure stays as it is).
            let pending = std::mem::take(&mut sink.state.pending);
            for (_, part) in pending {
                sink.commit(part)?;
            }
        }
        // Hidden files of this subtask not in the restored state were written after the
        // checkpoint (or by a run that never checkpointed): their records come again.
        sink.remove_hidden()?;
        Ok(sink)
    }

    fn name(&self, part: u64, suffix: &str) -> PathBuf {
        if suffix.is_empty() {
            self.dir.join(format!("part-{}-{part}", self.subtask))
        } else {
            self.dir
                .join(format!(".part-{}-{part}.{suffix}", self.subtask))
        }
    }

    fn remove_hidden(&self) -> Result<(), String> {
        let prefix = format!(".part-{}-", self.subtask);
        let rd = std::fs::read_dir(&self.dir).map_err(|e| io_err("listing", &self.dir, e))?;
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) && (n.ends_with(".inprogress") || n.ends_with(".pending")) {
                std::fs::remove_file(e.path()).map_err(|er| io_err("removing", &e.path(), er))?;
            }
        }
        Ok(())
    }

    /// Makes pending part `part` visible.
    fn commit(&self, part: u64) -> Result<(), String> {
        let from = self.name(part, "pending");
        let to = self.name(part, "");
        match std::fs::rename(&from, &to) {
            Ok(()) => Ok(()),
            // Committed before a failure (the rename happened, the state did not learn).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.exists() => Ok(()),
            Err(e) => Err(io_err("committing", &from, e)),
        }
    }

    fn open(&mut self) -> Result<(), String> {
        // A number no committed part of an earlier run has (a run restored from an
        // older checkpoint must not overwrite what a later one committed).
        while self.name(self.state.next_part, "").exists() {
            self.state.next_part += 1;
        }
        let path = self.name(self.state.next_part, "inprogress");
        let f = std::fs::File::create(&path).map_err(|e| io_err("creating", &path, e))?;
        self.w = Some(std::io::BufWriter::with_capacity(1 << 16, f));
        self.lines = 0;
        Ok(())
    }

    /// Flushes and syncs the open part and renames it `pending`; returns its number.
    fn close_part(&mut self) -> Result<Option<u64>, String> {
        let Some(w) = self.w.take() else {
            return Ok(None);
        };
        let part = self.state.next_part;
        let path = self.name(part, "inprogress");
        let f = w
            .into_inner()
            .map_err(|e| io_err("writing", &path, e.into_error()))?;
        f.sync_data().map_err(|e| io_err("syncing", &path, e))?;
        drop(f);
        let pending = self.name(part, "pending");
        std::fs::rename(&path, &pending).map_err(|e| io_err("renaming", &path, e))?;
        self.state.next_part += 1;
        Ok(Some(part))
    }

    fn fail(&mut self, m: String) {
        if !self.failed {
            self.failed = true;
            report_failure(m);
        }
    }

    /// Barrier `id`: the open part is closed and pending on the checkpoint.
    fn on_barrier(&mut self, id: u64) -> Result<(), String> {
        if let Some(part) = self.close_part()? {
            self.state.pending.push((id, part));
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
            .partition(|&(c, _)| c <= id);
        self.state.pending = keep;
        for (_, part) in done {
            self.commit(part)?;
        }
        Ok(())
    }

    fn on_end(&mut self) -> Result<(), String> {
        if crate::checkpoint::final_checkpoint_follows() {
            // The task takes one more checkpoint: its barrier closes the open part and
            // its completion commits everything, as for any checkpoint. Committing now
            // would let a failure elsewhere in the job, before that checkpoint, restart
            // this subtask from an older one and write these records again.
            return Ok(());
        }
        if let Some(part) = self.close_part()? {
            self.commit(part)?;
        }
        for (_, part) in std::mem::take(&mut self.state.pending) {
            self.commit(part)?;
        }
        Ok(())
    }
}

impl<T: Debug> Emit<T> for FileSink {
    fn push(&mut self, batch: &mut Vec<T>) {
        self.counter.unpublished += batch.len() as u64;
        if self.failed {
            batch.clear();
            return;
        }
        if self.w.is_none() {
            if let Err(e) = self.open() {
                self.fail(e);
                batch.clear();
                return;
            }
        }
        let mut err = None;
        if let Some(w) = self.w.as_mut() {
            for record in batch.drain(..) {
                use std::fmt::Write as _;
                self.line.clear();
                let _ = writeln!(self.line, "{record:?}");
                if let Err(e) = w.write_all(self.line.as_bytes()) {
                    err = Some(e);
                    break;
                }
                self.lines += 1;
            }
        }
        batch.clear();
        if let Some(e) = err {
            let path = self.name(self.state.next_part, "inprogress");
            self.fail(io_err("writing", &path, e));
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

    fn sink(dir: &Path, restored: Option<&[u8]>) -> FileSink {
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
    fn a_foreign_state_is_refused() {
        let d = tempfile::tempdir().unwrap();
        assert!(FileSink::new(d.path(), info(), Some(1), Some(b"nope"), Arc::default()).is_err());
    }
}
