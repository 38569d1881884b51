//! The checkpoint store: where snapshot files and checkpoint metadata are kept durably.
//!
//! Why a trait with this contract: checkpoint n may only count as complete when every snapshot
//! file of it *and* its metadata are durable, and recovery must find the newest complete, intact
//! checkpoint even after a crash at any instant (Flink's
//! [checkpoint storage](https://nightlies.apache.org/flink/flink-docs-stable/docs/ops/state/checkpoints/#checkpoint-storage)
//! has the same rule: the `_metadata` file is written last and marks completion). The contract
//! only needs *put a whole object*, *get*, *list* and *delete* — no rename, no append — so an
//! S3-compatible object store (whose PUT is atomic per object) can implement it later; the local
//! directory store gets the same atomicity from write-to-temporary + fsync + rename + fsync of
//! the directory.
//!
//! The store is synchronous: the runtime calls it from `tokio::task::spawn_blocking`.
//!
//! # Layout of [`LocalDirStore`]
//!
//! ```text
//! dir/chk-00000000000000000042/<file>        one per snapshot file, e.g. "keyed-0"
//! dir/chk-00000000000000000042/_metadata     written last: the checkpoint is complete
//! dir/chk-00000000000000000042/.tmp-...      a write in progress (or left by a crash)
//! ```
//!
//! The metadata file uses the same framing as snapshot files (header, crc32c of the body) with
//! one section holding [`CheckpointMetadata`] as JSON (small, and readable with `tail -c`).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::keygroup::StableHash;
use super::snapshot::{header_summary, SnapshotFile, SnapshotWriter};
use crate::runtime::RuntimeError;

/// The name of the metadata file in a checkpoint directory (Flink's name too).
pub const METADATA_FILE: &str = "_metadata";
/// A second copy of the metadata, written after the first: a checkpoint whose metadata file is
/// lost or damaged still tells its positions and committables (whose transactions may already be
/// committed), so that restoring an older checkpoint cannot duplicate output.
pub const METADATA_COPY_FILE: &str = "_metadata.copy";
/// The section of the metadata file that holds the JSON.
const METADATA_SECTION: &str = "metadata";
/// The prefix of temporary files.
const TMP_PREFIX: &str = ".tmp-";
/// The longest file name a checkpoint may hold.
pub const FILE_NAME_BYTES_MAX: usize = 200;

fn metadata_schema() -> u64 {
    // Fixed (not `type_fingerprint`, which may change with the compiler): bump the suffix when
    // the metadata's JSON changes incompatibly.
    "exactly::runtime::state::CheckpointMetadata/v1".stable_hash()
}

/// One file of a checkpoint, as listed in its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointFile {
    /// The file's name inside the checkpoint.
    pub name: String,
    /// Its length in bytes.
    pub bytes: u64,
    /// The crc32c of its body, as in its header.
    pub crc32c: u32,
    /// The schema hash in its header.
    pub schema_hash: u64,
}

/// What a complete checkpoint is: written last, verified first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// The checkpoint's id (increasing).
    pub checkpoint_id: u64,
    /// When it was triggered, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The job's schema hash: a checkpoint of another job (version) is not restored.
    pub job_schema_hash: u64,
    /// The parallelism of the keyed operators when it was taken.
    pub parallelism: u32,
    /// The number of key groups.
    pub key_groups: u16,
    /// Every file of the checkpoint (the descriptors [`CheckpointStore::put`] returned).
    pub files: Vec<CheckpointFile>,
    /// Anything else the runtime keeps with the checkpoint (e.g. the sink's owner map as JSON).
    pub properties: BTreeMap<String, String>,
}

/// A checkpoint that was found but not used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedCheckpoint {
    /// The checkpoint.
    pub checkpoint_id: u64,
    /// The file (or directory) at fault.
    pub path: PathBuf,
    /// What is wrong, for a person.
    pub reason: String,
    /// True when the checkpoint simply never completed (no metadata: a crash while it was
    /// being taken) rather than being damaged.
    pub incomplete: bool,
}

/// A verified complete checkpoint, its files open.
#[derive(Debug)]
pub struct RestoredCheckpoint {
    /// Its metadata.
    pub metadata: CheckpointMetadata,
    /// Its files by name, opened and verified (header, length, checksum, schema).
    pub files: BTreeMap<String, SnapshotFile>,
}

impl RestoredCheckpoint {
    /// The file named `name`.
    pub fn file(&self, name: &str) -> Option<&SnapshotFile> {
        self.files.get(name)
    }
}

/// The outcome of looking for the checkpoint to restore.
#[derive(Debug, Default)]
pub struct LatestCheckpoint {
    /// The newest complete checkpoint that verified, if any.
    pub restored: Option<RestoredCheckpoint>,
    /// Newer checkpoints that were skipped, newest first, with the reason. When `restored` is
    /// `None` but this holds damaged (not merely incomplete) checkpoints, starting from scratch
    /// would lose state: the caller should usually fail rather than start empty.
    pub rejected: Vec<RejectedCheckpoint>,
}

/// Durable storage of checkpoints (see the module docs for the contract).
pub trait CheckpointStore: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` (a complete snapshot file, from [`SnapshotWriter::finish`]) as file `name`
    /// of checkpoint `checkpoint_id`, durably, replacing a file of that name; returns the
    /// descriptor to list in the metadata.
    fn put(
        &self,
        checkpoint_id: u64,
        name: &str,
        bytes: &[u8],
    ) -> Result<CheckpointFile, RuntimeError>;

    /// Marks checkpoint `metadata.checkpoint_id` complete by storing its metadata durably — only
    /// after every file it lists was `put` — and then drops checkpoints beyond the retention.
    fn complete(&self, metadata: &CheckpointMetadata) -> Result<(), RuntimeError>;

    /// Finds the newest complete checkpoint whose metadata and files verify and whose job schema
    /// hash is `job_schema_hash`, newest first, reporting every newer one it skips. Call it at
    /// start, before any checkpoint is written: it also removes temporary files left by a crash.
    fn latest_complete(&self, job_schema_hash: u64) -> Result<LatestCheckpoint, RuntimeError>;

    /// The ids of the stored checkpoints, complete or not, ascending.
    fn list(&self) -> Result<Vec<u64>, RuntimeError>;

    /// The metadata of checkpoint `checkpoint_id`, verified on its own (its files are not
    /// opened): what a damaged checkpoint still tells — its positions and committables.
    fn read_metadata(
        &self,
        checkpoint_id: u64,
        job_schema_hash: u64,
    ) -> Result<CheckpointMetadata, RuntimeError>;

    /// Deletes checkpoint `checkpoint_id` (metadata first, so that a crash midway leaves it
    /// incomplete rather than complete with files missing).
    fn delete(&self, checkpoint_id: u64) -> Result<(), RuntimeError>;
}

/// A [`CheckpointStore`] in a local directory (see the module docs for the layout).
#[derive(Debug)]
pub struct LocalDirStore {
    dir: PathBuf,
    retain: usize,
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_owned();
    move |source| RuntimeError::Io { op, path, source }
}

fn fsync_dir(dir: &Path) -> Result<(), RuntimeError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync", dir))
}

/// Writes `bytes` to `dir/name` atomically and durably: a temporary file, fsync, rename, fsync
/// of the directory.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), RuntimeError> {
    static UNIQUE: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        "{TMP_PREFIX}{name}-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_error("create", &tmp))?;
        file.write_all(bytes).map_err(io_error("write", &tmp))?;
        file.sync_all().map_err(io_error("fsync", &tmp))?;
        let path = dir.join(name);
        fs::rename(&tmp, &path).map_err(io_error("rename", &tmp))?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn check_name(name: &str) -> Result<(), RuntimeError> {
    let ok = !name.is_empty()
        && name.len() <= FILE_NAME_BYTES_MAX
        && name != METADATA_FILE
        && name != METADATA_COPY_FILE
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::SnapshotWrite {
            what: name.to_owned(),
            reason: format!(
                "a checkpoint file name is 1..={FILE_NAME_BYTES_MAX} of [A-Za-z0-9._-], not starting with '.', not {METADATA_FILE}"
            ),
        })
    }
}

impl LocalDirStore {
    /// A store in `dir` (created if missing) that keeps the newest `retain` complete checkpoints
    /// (at least 1; keep 2 or more so that a damaged newest one has a fallback).
    pub fn new(dir: impl Into<PathBuf>, retain: usize) -> Result<Self, RuntimeError> {
        let dir = dir.into();
        if retain == 0 {
            return Err(RuntimeError::Config {
                key: "checkpoint.retain",
                reason: "must keep at least one complete checkpoint".to_owned(),
            });
        }
        fs::create_dir_all(&dir).map_err(io_error("create directory", &dir))?;
        Ok(LocalDirStore { dir, retain })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of checkpoint `checkpoint_id`.
    pub fn checkpoint_dir(&self, checkpoint_id: u64) -> PathBuf {
        self.dir.join(format!("chk-{checkpoint_id:020}"))
    }

    fn ensure_checkpoint_dir(&self, checkpoint_id: u64) -> Result<PathBuf, RuntimeError> {
        let dir = self.checkpoint_dir(checkpoint_id);
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(io_error("create directory", &dir))?;
            // The new directory entry must survive a crash too.
            fsync_dir(&self.dir)?;
        }
        Ok(dir)
    }

    fn is_complete(&self, checkpoint_id: u64) -> bool {
        let dir = self.checkpoint_dir(checkpoint_id);
        dir.join(METADATA_FILE).is_file() || dir.join(METADATA_COPY_FILE).is_file()
    }

    /// Removes temporary files (left by a crash) from checkpoint `checkpoint_id`'s directory.
    fn remove_temporaries(&self, checkpoint_id: u64) -> Result<(), RuntimeError> {
        let dir = self.checkpoint_dir(checkpoint_id);
        for entry in fs::read_dir(&dir).map_err(io_error("list", &dir))? {
            let entry = entry.map_err(io_error("list", &dir))?;
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let path = entry.path();
                tracing::info!(path = %path.display(), "removing a temporary checkpoint file left by a crash");
                fs::remove_file(&path).map_err(io_error("remove", &path))?;
            }
        }
        Ok(())
    }

    /// Verifies checkpoint `checkpoint_id`; on failure the path at fault and the reason.
    /// Reads and checks the metadata of checkpoint `checkpoint_id` (framing, checksum, JSON, id,
    /// job schema hash), without opening its files.
    fn read_meta(
        &self,
        checkpoint_id: u64,
        job_schema_hash: u64,
    ) -> Result<CheckpointMetadata, (PathBuf, String)> {
        match self.read_meta_file(checkpoint_id, job_schema_hash, METADATA_FILE) {
            Ok(m) => Ok(m),
            Err(first) => {
                match self.read_meta_file(checkpoint_id, job_schema_hash, METADATA_COPY_FILE) {
                    Ok(m) => {
                        tracing::warn!(path = %first.0.display(), reason = %first.1, "checkpoint metadata damaged; its copy is intact");
                        Ok(m)
                    }
                    Err(_) => Err(first),
                }
            }
        }
    }

    fn read_meta_file(
        &self,
        checkpoint_id: u64,
        job_schema_hash: u64,
        file: &str,
    ) -> Result<CheckpointMetadata, (PathBuf, String)> {
        let dir = self.checkpoint_dir(checkpoint_id);
        let meta_path = dir.join(file);
        let reason_of = |e: RuntimeError| match e {
            RuntimeError::CorruptCheckpoint { reason, .. } => reason,
            other => other.to_string(),
        };
        let meta_file = SnapshotFile::open_expecting(&meta_path, metadata_schema())
            .map_err(|e| (meta_path.clone(), reason_of(e)))?;
        let section = meta_file
            .section(METADATA_SECTION, None)
            .ok_or_else(|| (meta_path.clone(), format!("no {METADATA_SECTION} section")))?;
        let metadata: CheckpointMetadata =
            serde_json::from_slice(section.bytes()).map_err(|e| {
                (
                    meta_path.clone(),
                    format!("metadata is not valid JSON: {e}"),
                )
            })?;
        if metadata.checkpoint_id != checkpoint_id {
            return Err((
                meta_path,
                format!(
                    "metadata of checkpoint {} in the directory of checkpoint {checkpoint_id}",
                    metadata.checkpoint_id
                ),
            ));
        }
        if metadata.job_schema_hash != job_schema_hash {
            return Err((
                meta_path,
                format!(
                    "job schema hash {:#018x}, expected {job_schema_hash:#018x}: written by a different job or job version",
                    metadata.job_schema_hash
                ),
            ));
        }
        Ok(metadata)
    }

    fn verify(
        &self,
        checkpoint_id: u64,
        job_schema_hash: u64,
    ) -> Result<RestoredCheckpoint, (PathBuf, String)> {
        let dir = self.checkpoint_dir(checkpoint_id);
        let meta_path = dir.join(METADATA_FILE);
        let reason_of = |e: RuntimeError| match e {
            RuntimeError::CorruptCheckpoint { reason, .. } => reason,
            other => other.to_string(),
        };
        let metadata = self.read_meta(checkpoint_id, job_schema_hash)?;
        let mut files = BTreeMap::new();
        for listed in &metadata.files {
            if check_name(&listed.name).is_err() {
                return Err((meta_path, format!("invalid file name {:?}", listed.name)));
            }
            let path = dir.join(&listed.name);
            if !path.exists() {
                return Err((path, "missing: listed in the metadata".to_owned()));
            }
            let file = SnapshotFile::open(&path).map_err(|e| (path.clone(), reason_of(e)))?;
            if file.len() != listed.bytes {
                return Err((
                    path,
                    format!("{} bytes, the metadata says {}", file.len(), listed.bytes),
                ));
            }
            if file.body_crc32c() != listed.crc32c || file.schema_hash() != listed.schema_hash {
                return Err((
                    path,
                    "not the file the metadata lists (checksum or schema hash differs)".to_owned(),
                ));
            }
            files.insert(listed.name.clone(), file);
        }
        Ok(RestoredCheckpoint { metadata, files })
    }
}

impl CheckpointStore for LocalDirStore {
    fn put(
        &self,
        checkpoint_id: u64,
        name: &str,
        bytes: &[u8],
    ) -> Result<CheckpointFile, RuntimeError> {
        check_name(name)?;
        // Describe the file from its own header (the writer filled it in); a buffer that is not
        // a finished snapshot file is refused rather than stored.
        let (schema_hash, crc32c) =
            header_summary(bytes).map_err(|reason| RuntimeError::SnapshotWrite {
                what: name.to_owned(),
                reason: format!("not a finished snapshot file: {reason}"),
            })?;
        let dir = self.ensure_checkpoint_dir(checkpoint_id)?;
        write_durably(&dir, name, bytes)?;
        Ok(CheckpointFile {
            name: name.to_owned(),
            bytes: bytes.len() as u64,
            crc32c,
            schema_hash,
        })
    }

    fn complete(&self, metadata: &CheckpointMetadata) -> Result<(), RuntimeError> {
        let id = metadata.checkpoint_id;
        let json = serde_json::to_vec(metadata).map_err(|e| RuntimeError::SnapshotWrite {
            what: METADATA_FILE.to_owned(),
            reason: e.to_string(),
        })?;
        let mut w = SnapshotWriter::new(metadata_schema());
        w.add_bytes(METADATA_SECTION, None, &json)?;
        let bytes = w.finish()?;
        let dir = self.ensure_checkpoint_dir(id)?;
        write_durably(&dir, METADATA_FILE, &bytes)?;
        write_durably(&dir, METADATA_COPY_FILE, &bytes)?;

        // Retention: the newest `retain` complete checkpoints stay; incomplete ones older than
        // the newest complete one can never complete (at most one checkpoint is in flight, and
        // it is newer).
        let ids = self.list()?;
        let complete: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|&i| self.is_complete(i))
            .collect();
        let newest_complete = complete.last().copied().unwrap_or(id);
        let keep_from = complete
            .len()
            .checked_sub(self.retain)
            .map_or(0, |drop| complete[drop]);
        for old in ids {
            let drop_complete = complete.binary_search(&old).is_ok() && old < keep_from;
            let drop_incomplete = complete.binary_search(&old).is_err() && old < newest_complete;
            if drop_complete || drop_incomplete {
                self.delete(old)?;
            }
        }
        Ok(())
    }

    fn read_metadata(
        &self,
        checkpoint_id: u64,
        job_schema_hash: u64,
    ) -> Result<CheckpointMetadata, RuntimeError> {
        self.read_meta(checkpoint_id, job_schema_hash)
            .map_err(|(path, reason)| RuntimeError::CorruptCheckpoint { path, reason })
    }

    fn latest_complete(&self, job_schema_hash: u64) -> Result<LatestCheckpoint, RuntimeError> {
        let mut latest = LatestCheckpoint::default();
        let mut ids = self.list()?;
        ids.reverse();
        for id in ids {
            self.remove_temporaries(id)?;
            let dir = self.checkpoint_dir(id);
            if !self.is_complete(id) {
                tracing::info!(path = %dir.display(), "skipping checkpoint {id}: no metadata, it never completed");
                latest.rejected.push(RejectedCheckpoint {
                    checkpoint_id: id,
                    path: dir,
                    reason: format!("no {METADATA_FILE} file: the checkpoint never completed"),
                    incomplete: true,
                });
                continue;
            }
            match self.verify(id, job_schema_hash) {
                Ok(restored) => {
                    latest.restored = Some(restored);
                    break;
                }
                Err((path, reason)) => {
                    tracing::warn!(path = %path.display(), %reason, "rejecting checkpoint {id}, falling back to the previous one");
                    latest.rejected.push(RejectedCheckpoint {
                        checkpoint_id: id,
                        path,
                        reason,
                        incomplete: false,
                    });
                }
            }
        }
        Ok(latest)
    }

    fn list(&self) -> Result<Vec<u64>, RuntimeError> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error("list", &self.dir))? {
            let entry = entry.map_err(io_error("list", &self.dir))?;
            let name = entry.file_name();
            let Some(digits) = name.to_str().and_then(|n| n.strip_prefix("chk-")) else {
                continue;
            };
            if digits.len() == 20 && entry.path().is_dir() {
                if let Ok(id) = digits.parse::<u64>() {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn delete(&self, checkpoint_id: u64) -> Result<(), RuntimeError> {
        let dir = self.checkpoint_dir(checkpoint_id);
        for name in [METADATA_FILE, METADATA_COPY_FILE] {
            let meta = dir.join(name);
            match fs::remove_file(&meta) {
                Ok(()) => fsync_dir(&dir)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("remove", &meta)(e)),
            }
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => fsync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("remove", &dir)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: u64 = 0x1234;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "exactly-store-{name}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            let _ = fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn snapshot_bytes(value: u64) -> Vec<u8> {
        let mut w = SnapshotWriter::new(JOB);
        w.add_archived("numbers", Some(0), &vec![value; 100])
            .unwrap();
        w.finish().unwrap().to_vec()
    }

    /// Takes checkpoint `id` with two files and completes it.
    fn take(store: &LocalDirStore, id: u64) {
        let files = vec![
            store.put(id, "keyed-0", &snapshot_bytes(id)).unwrap(),
            store
                .put(id, "keyed-1", &snapshot_bytes(id + 1000))
                .unwrap(),
        ];
        let mut properties = BTreeMap::new();
        properties.insert("sink.owners".to_owned(), "{\"0\":[0,1]}".to_owned());
        store
            .complete(&CheckpointMetadata {
                checkpoint_id: id,
                created_ms: 1_700_000_000_000 + id,
                job_schema_hash: JOB,
                parallelism: 2,
                key_groups: 128,
                files,
                properties,
            })
            .unwrap();
    }

    fn restored_id(latest: &LatestCheckpoint) -> Option<u64> {
        latest.restored.as_ref().map(|r| r.metadata.checkpoint_id)
    }

    #[test]
    fn round_trip() {
        let tmp = TempDir::new("round-trip");
        let store = LocalDirStore::new(&tmp.0, 2).unwrap();
        assert!(store.latest_complete(JOB).unwrap().restored.is_none());
        take(&store, 1);
        let latest = store.latest_complete(JOB).unwrap();
        assert!(latest.rejected.is_empty());
        let restored = latest.restored.unwrap();
        assert_eq!(restored.metadata.checkpoint_id, 1);
        assert_eq!(restored.metadata.properties["sink.owners"], "{\"0\":[0,1]}");
        let file = restored.file("keyed-1").unwrap();
        let section = file.section("numbers", Some(0)).unwrap();
        let numbers =
            rkyv::access::<rkyv::Archived<Vec<u64>>, rkyv::rancor::Error>(section.bytes()).unwrap();
        assert_eq!(numbers[0], 1001);
        assert!(tmp
            .0
            .join("chk-00000000000000000001")
            .join(METADATA_FILE)
            .is_file());
    }

    /// Damages checkpoint 3 (the newest of 1..=3) with `damage`, checks that 2 is restored and
    /// that the rejection names `expected_path` (relative to checkpoint 3's dir) and contains
    /// `expected_reason`.
    fn falls_back(
        name: &str,
        damage: impl FnOnce(&Path),
        expected_path: &str,
        expected_reason: &str,
        incomplete: bool,
    ) {
        let tmp = TempDir::new(name);
        let store = LocalDirStore::new(&tmp.0, 3).unwrap();
        for id in 1..=3 {
            take(&store, id);
        }
        let dir3 = store.checkpoint_dir(3);
        damage(&dir3);
        let latest = store.latest_complete(JOB).unwrap();
        assert_eq!(restored_id(&latest), Some(2));
        assert_eq!(latest.rejected.len(), 1, "{:?}", latest.rejected);
        let rejected = &latest.rejected[0];
        assert_eq!(rejected.checkpoint_id, 3);
        assert_eq!(rejected.incomplete, incomplete);
        let expected = if expected_path.is_empty() {
            dir3.clone()
        } else {
            dir3.join(expected_path)
        };
        assert_eq!(rejected.path, expected);
        assert!(
            rejected.reason.contains(expected_reason),
            "{}",
            rejected.reason
        );
    }

    #[test]
    fn truncated_file_falls_back() {
        falls_back(
            "truncated",
            |dir| {
                let path = dir.join("keyed-1");
                let len = fs::metadata(&path).unwrap().len();
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(len - 10)
                    .unwrap();
            },
            "keyed-1",
            "truncated or appended",
            false,
        );
    }

    #[test]
    fn flipped_byte_falls_back() {
        falls_back(
            "flipped",
            |dir| {
                let path = dir.join("keyed-0");
                let mut bytes = fs::read(&path).unwrap();
                bytes[200] ^= 1;
                fs::write(&path, bytes).unwrap();
            },
            "keyed-0",
            "body checksum mismatch",
            false,
        );
    }

    fn flip_metadata(path: &Path) {
        let mut bytes = fs::read(path).unwrap();
        let last = bytes.len() - 70;
        bytes[last] ^= 0x20;
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn flipped_metadata_and_copy_fall_back() {
        falls_back(
            "flipped-meta",
            |dir| {
                flip_metadata(&dir.join(METADATA_FILE));
                flip_metadata(&dir.join(METADATA_COPY_FILE));
            },
            METADATA_FILE,
            "checksum mismatch",
            false,
        );
    }

    #[test]
    fn deleted_metadata_and_copy_fall_back() {
        falls_back(
            "no-meta",
            |dir| {
                fs::remove_file(dir.join(METADATA_FILE)).unwrap();
                fs::remove_file(dir.join(METADATA_COPY_FILE)).unwrap();
            },
            "",
            "no _metadata file: the checkpoint never completed",
            true,
        );
    }

    /// One damaged or lost metadata file is not a damaged checkpoint: its copy stands in.
    #[test]
    fn one_metadata_file_damaged_or_lost_is_covered_by_the_other() {
        for (name, damage) in [
            (
                "flip-main",
                Box::new(|d: &Path| flip_metadata(&d.join(METADATA_FILE))) as Box<dyn Fn(&Path)>,
            ),
            (
                "flip-copy",
                Box::new(|d: &Path| flip_metadata(&d.join(METADATA_COPY_FILE))),
            ),
            (
                "rm-main",
                Box::new(|d: &Path| fs::remove_file(d.join(METADATA_FILE)).unwrap()),
            ),
        ] {
            let tmp = TempDir::new(name);
            let store = LocalDirStore::new(&tmp.0, 3).unwrap();
            for id in 1..=3 {
                take(&store, id);
            }
            damage(&store.checkpoint_dir(3));
            let latest = store.latest_complete(JOB).unwrap();
            assert_eq!(
                restored_id(&latest),
                Some(3),
                "{name}: {:?}",
                latest.rejected
            );
            assert_eq!(
                store.read_metadata(3, JOB).unwrap().checkpoint_id,
                3,
                "{name}"
            );
        }
    }

    #[test]
    fn missing_file_falls_back() {
        falls_back(
            "missing",
            |dir| fs::remove_file(dir.join("keyed-0")).unwrap(),
            "keyed-0",
            "missing: listed in the metadata",
            false,
        );
    }

    #[test]
    fn swapped_file_falls_back() {
        falls_back(
            "swapped",
            |dir| fs::write(dir.join("keyed-0"), snapshot_bytes(77)).unwrap(),
            "keyed-0",
            "not the file the metadata lists",
            false,
        );
    }

    #[test]
    fn other_job_is_rejected() {
        let tmp = TempDir::new("schema");
        let store = LocalDirStore::new(&tmp.0, 2).unwrap();
        take(&store, 1);
        let latest = store.latest_complete(JOB + 1).unwrap();
        assert!(latest.restored.is_none());
        assert!(latest.rejected[0]
            .reason
            .contains("written by a different job"));
    }

    #[test]
    fn retains_the_newest_k_and_drops_stale_incomplete_ones() {
        let tmp = TempDir::new("retain");
        let store = LocalDirStore::new(&tmp.0, 2).unwrap();
        take(&store, 1);
        // Checkpoint 2 never completes (a file was written, then the process died).
        store.put(2, "keyed-0", &snapshot_bytes(2)).unwrap();
        take(&store, 3);
        assert_eq!(
            store.list().unwrap(),
            [1, 3],
            "incomplete 2 < newest complete 3 is dropped"
        );
        // An in-flight newer checkpoint is kept when an older one completes.
        store.put(5, "keyed-0", &snapshot_bytes(5)).unwrap();
        take(&store, 4);
        assert_eq!(store.list().unwrap(), [3, 4, 5]);
        take(&store, 5);
        take(&store, 6);
        assert_eq!(store.list().unwrap(), [5, 6]);
        assert_eq!(restored_id(&store.latest_complete(JOB).unwrap()), Some(6));
    }

    #[test]
    fn temporary_files_are_ignored_and_cleaned() {
        let tmp = TempDir::new("tmp-files");
        let store = LocalDirStore::new(&tmp.0, 2).unwrap();
        take(&store, 1);
        let dir = store.checkpoint_dir(1);
        let leftover = dir.join(".tmp-keyed-0-999-0");
        fs::write(&leftover, b"half a file").unwrap();
        // A crash while writing checkpoint 2's first file: only a temporary exists.
        fs::create_dir_all(store.checkpoint_dir(2)).unwrap();
        fs::write(store.checkpoint_dir(2).join(".tmp-keyed-0-999-1"), b"half").unwrap();
        let latest = store.latest_complete(JOB).unwrap();
        assert_eq!(restored_id(&latest), Some(1));
        assert!(latest.rejected[0].incomplete);
        assert!(!leftover.exists());
        assert!(fs::read_dir(store.checkpoint_dir(2))
            .unwrap()
            .next()
            .is_none());
    }

    #[test]
    fn refuses_bad_names_and_non_snapshots() {
        let tmp = TempDir::new("names");
        let store = LocalDirStore::new(&tmp.0, 1).unwrap();
        for name in ["", "_metadata", ".tmp-x", "a/b", "../x"] {
            assert!(
                matches!(
                    store.put(1, name, &snapshot_bytes(1)),
                    Err(RuntimeError::SnapshotWrite { .. })
                ),
                "{name}"
            );
        }
        match store.put(1, "x", b"hello") {
            Err(RuntimeError::SnapshotWrite { reason, .. }) => {
                assert!(
                    reason.starts_with("not a finished snapshot file: truncated"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            LocalDirStore::new(&tmp.0, 0),
            Err(RuntimeError::Config { .. })
        ));
    }
}
