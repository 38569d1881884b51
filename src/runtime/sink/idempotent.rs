//! Exactly-once output to systems without transactions: idempotent writes.
//!
//! Why: after a restart the job replays every record after the restored checkpoint. A sink
//! that cannot roll back what it wrote can still end up with each output exactly once if
//! every write is keyed by *where the record comes from* — the checkpoint epoch it belongs to,
//! the subtask and its index within that epoch — so that the replay writes to the same keys
//! and upserts instead of duplicating. This needs a deterministic job between checkpoints
//! (the same input after the restored offsets gives the same output in the same order per
//! subtask) and the same parallelism; it is the "idempotent sink" of Flink's end-to-end
//! exactly-once overview
//! (<https://flink.apache.org/2018/02/28/an-overview-of-end-to-end-exactly-once-processing-in-apache-flink-with-apache-kafka-too/>).
//! Readers may see the output of a checkpoint that later fails; the replay rewrites it.
//!
//! [`FileSink`] is the light working example: one file per (subtask, checkpoint), written to a
//! temporary name and renamed into place at the barrier, so a replay overwrites it whole.

use std::fs::{self, File};
use std::future::Future;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::runtime::RuntimeError;

/// Where an output record comes from: the key of an idempotent write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordPosition {
    /// The checkpoint whose barrier ends the record's epoch (the restored checkpoint + 1 for
    /// the first epoch after a restart).
    pub checkpoint_id: u64,
    /// The sink subtask.
    pub subtask: u32,
    /// The record's index among the subtask's records of that epoch, from 0.
    pub index: u64,
}

impl RecordPosition {
    /// The first position of `subtask`'s epoch ending with `checkpoint_id`.
    pub fn first(subtask: u32, checkpoint_id: u64) -> Self {
        Self {
            checkpoint_id,
            subtask,
            index: 0,
        }
    }

    /// The position after this one.
    pub fn next(self) -> Self {
        Self {
            index: self.index + 1,
            ..self
        }
    }
}

/// A sink whose writes are keyed by [`RecordPosition`], so that replaying the records after a
/// restored checkpoint overwrites what the failed run wrote instead of duplicating it. The
/// lifecycle: `restore` once, then `write`* and `checkpoint(n)` on each barrier, and
/// `checkpoint_complete(n)` when the coordinator announces it.
pub trait IdempotentSink: Send {
    /// The record type.
    type Record: Send;

    /// Called once before the first write, with the checkpoint the job restored from (`None`
    /// on a fresh start): output of later epochs is about to be written again.
    fn restore(
        &mut self,
        restored_checkpoint: Option<u64>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Writes (upserts) `record` at `position`.
    fn write(
        &mut self,
        position: RecordPosition,
        record: Self::Record,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// On the barrier of `checkpoint_id`: makes the epoch's writes durable.
    fn checkpoint(
        &mut self,
        checkpoint_id: u64,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Checkpoint `checkpoint_id` is complete: its epoch will never be replayed.
    fn checkpoint_complete(
        &mut self,
        checkpoint_id: u64,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
}

/// An idempotent sink writing newline-separated records to one file per (subtask,
/// checkpoint) in a directory: `sub-{subtask}-ckpt-{checkpoint:020}.out`. The epoch's records
/// go to a temporary file, which the barrier fsyncs and renames into place (then fsyncs the
/// directory), so a file is either whole or absent and a replay replaces it. `restore` removes
/// this subtask's files of checkpoints after the restored one. Blocking file I/O: an example
/// for light output, not for a hot path.
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    subtask: u32,
    /// The epoch being written (`None` before `restore`).
    epoch: Option<u64>,
    next_index: u64,
    open: Option<BufWriter<File>>,
}

const OUT: &str = ".out";
const TMP: &str = ".tmp";

impl FileSink {
    /// A sink for `subtask` writing into `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>, subtask: u32) -> Result<Self, RuntimeError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
        Ok(Self {
            dir,
            subtask,
            epoch: None,
            next_index: 0,
            open: None,
        })
    }

    fn path(&self, checkpoint_id: u64, suffix: &str) -> PathBuf {
        self.dir.join(format!(
            "sub-{}-ckpt-{checkpoint_id:020}{suffix}",
            self.subtask
        ))
    }

    /// This subtask's published files: (checkpoint, path), by checkpoint.
    pub fn published(&self) -> Result<Vec<(u64, PathBuf)>, RuntimeError> {
        Ok(self
            .files()?
            .into_iter()
            .filter(|(_, tmp, _)| !tmp)
            .map(|(c, _, p)| (c, p))
            .collect())
    }

    /// This subtask's files: (checkpoint, temporary, path), by checkpoint.
    fn files(&self) -> Result<Vec<(u64, bool, PathBuf)>, RuntimeError> {
        let prefix = format!("sub-{}-ckpt-", self.subtask);
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io("read", &self.dir, e))? {
            let entry = entry.map_err(|e| io("read", &self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let (number, tmp) = match (rest.strip_suffix(OUT), rest.strip_suffix(TMP)) {
                (Some(n), _) => (n, false),
                (_, Some(n)) => (n, true),
                _ => continue,
            };
            if let Ok(c) = number.parse::<u64>() {
                found.push((c, tmp, entry.path()));
            }
        }
        found.sort();
        Ok(found)
    }

    fn epoch(&self, operation: &'static str) -> Result<u64, RuntimeError> {
        self.epoch.ok_or_else(|| RuntimeError::SinkInvalidCall {
            subtask: self.subtask,
            operation,
            reason: "restore was not called".into(),
        })
    }
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> RuntimeError {
    RuntimeError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

impl IdempotentSink for FileSink {
    type Record = Vec<u8>;

    async fn restore(&mut self, restored_checkpoint: Option<u64>) -> Result<(), RuntimeError> {
        let restored = restored_checkpoint.unwrap_or(0);
        // Files of later checkpoints are output the replay writes again (a failed run's, or a
        // checkpoint that never completed): remove them so nothing stale survives.
        for (c, tmp, path) in self.files()? {
            if tmp || c > restored {
                fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
            }
        }
        self.epoch = Some(restored + 1);
        self.next_index = 0;
        self.open = None;
        Ok(())
    }

    async fn write(
        &mut self,
        position: RecordPosition,
        record: Vec<u8>,
    ) -> Result<(), RuntimeError> {
        let epoch = self.epoch("write")?;
        let expected = RecordPosition {
            checkpoint_id: epoch,
            subtask: self.subtask,
            index: self.next_index,
        };
        if position != expected {
            return Err(RuntimeError::SinkInvalidCall {
                subtask: self.subtask,
                operation: "write",
                reason: format!("record at {position:?}, expected {expected:?}"),
            });
        }
        if record.contains(&b'\n') {
            return Err(RuntimeError::SinkInvalidCall {
                subtask: self.subtask,
                operation: "write",
                reason: format!(
                    "record {} contains a newline (one record per line)",
                    position.index
                ),
            });
        }
        if self.open.is_none() {
            // A replay starts the epoch's file over: its earlier attempt is overwritten.
            let path = self.path(epoch, TMP);
            let file = File::create(&path).map_err(|e| io("create", &path, e))?;
            self.open = Some(BufWriter::new(file));
        }
        let path = self.path(epoch, TMP);
        let out = self.open.as_mut().expect("opened above");
        out.write_all(&record)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|e| io("write", &path, e))?;
        self.next_index += 1;
        Ok(())
    }

    async fn checkpoint(&mut self, checkpoint_id: u64) -> Result<(), RuntimeError> {
        let epoch = self.epoch("checkpoint")?;
        if checkpoint_id != epoch {
            return Err(RuntimeError::SinkInvalidCall {
                subtask: self.subtask,
                operation: "checkpoint",
                reason: format!("barrier {checkpoint_id} while writing the epoch of {epoch}"),
            });
        }
        if let Some(out) = self.open.take() {
            let tmp = self.path(epoch, TMP);
            let file = out
                .into_inner()
                .map_err(|e| io("write", &tmp, e.into_error()))?;
            file.sync_all().map_err(|e| io("fsync", &tmp, e))?;
            let done = self.path(epoch, OUT);
            fs::rename(&tmp, &done).map_err(|e| io("rename", &tmp, e))?;
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("fsync", &self.dir, e))?;
        }
        self.epoch = Some(epoch + 1);
        self.next_index = 0;
        Ok(())
    }

    async fn checkpoint_complete(&mut self, _checkpoint_id: u64) -> Result<(), RuntimeError> {
        // Files are published at the barrier; a completed checkpoint's are final. Nothing to do.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "exactly-file-sink-{name}-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    async fn write_epoch(sink: &mut FileSink, checkpoint_id: u64, records: &[&str]) {
        let mut position = RecordPosition::first(sink.subtask, checkpoint_id);
        for r in records {
            sink.write(position, r.as_bytes().to_vec()).await.unwrap();
            position = position.next();
        }
    }

    fn contents(dir: &Path) -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    fs::read_to_string(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    }

    /// A run writes epochs 1 and 2 and crashes in epoch 3 (the checkpoint-2 file is published
    /// but checkpoint 2 never completes); the restart from checkpoint 1 replays epochs 2 and 3:
    /// each record is in exactly one file once.
    #[tokio::test]
    async fn a_replay_after_a_crash_overwrites_instead_of_duplicating() {
        let dir = temp_dir("replay");
        let mut sink = FileSink::new(&dir, 0).unwrap();
        sink.restore(None).await.unwrap();
        write_epoch(&mut sink, 1, &["a", "b"]).await;
        sink.checkpoint(1).await.unwrap();
        sink.checkpoint_complete(1).await.unwrap();
        write_epoch(&mut sink, 2, &["c"]).await;
        sink.checkpoint(2).await.unwrap();
        write_epoch(&mut sink, 3, &["d-partial"]).await;
        drop(sink);

        let mut sink = FileSink::new(&dir, 0).unwrap();
        sink.restore(Some(1)).await.unwrap();
        write_epoch(&mut sink, 2, &["c"]).await;
        sink.checkpoint(2).await.unwrap();
        write_epoch(&mut sink, 3, &["d", "e"]).await;
        sink.checkpoint(3).await.unwrap();
        let files = contents(&dir);
        assert_eq!(
            files,
            vec![
                (
                    "sub-0-ckpt-00000000000000000001.out".into(),
                    "a\nb\n".into()
                ),
                ("sub-0-ckpt-00000000000000000002.out".into(), "c\n".into()),
                (
                    "sub-0-ckpt-00000000000000000003.out".into(),
                    "d\ne\n".into()
                ),
            ]
        );
        assert_eq!(sink.published().unwrap().len(), 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn positions_out_of_order_and_bad_records_are_refused() {
        let dir = temp_dir("order");
        let mut sink = FileSink::new(&dir, 1).unwrap();
        let err = sink
            .write(RecordPosition::first(1, 1), b"x".to_vec())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "sink subtask 1: cannot write: restore was not called"
        );
        sink.restore(Some(4)).await.unwrap();
        let err = sink
            .write(RecordPosition::first(1, 1), b"x".to_vec())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("expected RecordPosition { checkpoint_id: 5, subtask: 1, index: 0 }"),
            "{err}"
        );
        let err = sink
            .write(RecordPosition::first(1, 5), b"two\nlines".to_vec())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("contains a newline"), "{err}");
        let err = sink.checkpoint(7).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("barrier 7 while writing the epoch of 5"),
            "{err}"
        );
        // A checkpoint without records publishes nothing.
        sink.checkpoint(5).await.unwrap();
        assert!(sink.published().unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
