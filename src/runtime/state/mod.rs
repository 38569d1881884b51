//! Keyed state, timers, snapshot files and the checkpoint store of the operator runtime.
//!
//! # Why it looks like this
//!
//! - **Key groups are the unit of state.** A key hashes (with [`StableHash`], the same in every
//!   process and Rust version) into one of a fixed number of key groups (default
//!   [`DEFAULT_KEY_GROUPS`] = 128, Flink's default max parallelism); each keyed subtask owns a
//!   contiguous [`KeyGroupRange`]. State tables and timer queues are split per key group and every
//!   key group is its own snapshot section, so restoring at another parallelism (a later issue)
//!   only reassigns whole sections — Flink's design, see
//!   [Flink's docs on max parallelism and key groups](https://nightlies.apache.org/flink/flink-docs-stable/docs/ops/production_ready/#set-an-explicit-max-parallelism).
//! - **One owner, no locks.** A [`StateTable`] belongs to one subtask and is used through
//!   `&mut self`; the hot path is one hash-map probe with a fixed fast hasher.
//! - **Zero-copy restore.** Snapshots are [rkyv](https://rkyv.org) archives. A restore
//!   memory-maps the file, verifies its checksum, validates each section once with rkyv's
//!   checker, and from then on reads entries *in place*: an entry is deserialized only when it is
//!   modified (copy on write). The time to the first record after a restart is the checksum and
//!   the validation, not a deserialization of the whole state (measured in `benches/state.rs`).
//! - **A file format that refuses garbage.** [`snapshot`] frames the archives: magic, format
//!   version, rkyv version and format settings, a schema hash, crc32c of the header and of the
//!   body, 16-byte-aligned sections. Any mismatch is [`RuntimeError::CorruptCheckpoint`] with the
//!   path and a reason; nothing unverified is ever read.
//! - **A store that survives crashes.** [`LocalDirStore`] writes each file to a temporary name,
//!   fsyncs, renames and fsyncs the directory; the metadata file is written last and is what
//!   makes a checkpoint complete. Recovery takes the newest checkpoint that verifies and reports
//!   every newer one it skipped ([`LatestCheckpoint::rejected`]).
//!
//! # How the runtime uses it
//!
//! ```
//! use exactly::runtime::state::*;
//!
//! # fn main() -> Result<(), exactly::runtime::RuntimeError> {
//! let key_groups = DEFAULT_KEY_GROUPS;
//! let range = KeyGroupRange::for_subtask(0, 2, key_groups);
//! let mut counts: StateTable<u64, u64> = StateTable::new("counts", range, key_groups);
//! let mut timers: TimerQueue<u64, i64> = TimerQueue::new("timers", range);
//!
//! // Per record (the key was routed here because its key group is in `range`):
//! let user = (0u64..).find(|u| range.contains(key_group_of(u.stable_hash(), key_groups))).unwrap();
//! let kg = key_group_of(user.stable_hash(), key_groups);
//! *counts.get_or_insert_with(kg, user, || 0) += 1;
//! timers.register(kg, 59_999, user, 60_000);
//!
//! // On barrier n: one file for the subtask, put into the store (from spawn_blocking).
//! let schema = type_fingerprint::<StateTable<u64, u64>>();
//! let mut writer = SnapshotWriter::new(schema);
//! counts.snapshot(&mut writer)?;
//! timers.snapshot(&mut writer)?;
//! let bytes = writer.finish()?;
//! # let dir = std::env::temp_dir().join(format!("exactly-state-doc-{}", std::process::id()));
//! let store = LocalDirStore::new(&dir, 2)?;
//! let file = store.put(1, "keyed-0", &bytes)?;
//! store.complete(&CheckpointMetadata {
//!     checkpoint_id: 1,
//!     created_ms: 0,
//!     job_schema_hash: schema,
//!     parallelism: 2,
//!     key_groups,
//!     files: vec![file],
//!     properties: Default::default(),
//! })?;
//!
//! // After a restart:
//! let latest = store.latest_complete(schema)?;
//! let restored = latest.restored.expect("checkpoint 1");
//! let mut counts: StateTable<u64, u64> = StateTable::new("counts", range, key_groups);
//! counts.restore(restored.file("keyed-0").unwrap())?;
//! assert!(matches!(counts.get(kg, &user), Some(StateRef::Archived(c)) if *c == 1));
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```
//!
//! `unsafe` code exists in one private module (`mmap`: the memory map and the in-place read
//! of an archive validated once); everything else here is `#![deny(unsafe_code)]`.
#![deny(unsafe_code)]

pub mod keygroup;
mod mmap;
pub mod snapshot;
pub mod store;
pub mod table;
pub mod timers;

#[cfg(doc)]
use crate::runtime::RuntimeError;

pub use keygroup::{
    key_group_of, subtask_for_key_group, KeyGroupRange, StableHash, DEFAULT_KEY_GROUPS,
};
pub use snapshot::{
    type_fingerprint, MappedSection, SectionInfo, SnapshotFile, SnapshotWriter, StateSerializer,
};
pub use store::{
    CheckpointFile, CheckpointMetadata, CheckpointStore, LatestCheckpoint, LocalDirStore,
    RejectedCheckpoint, RestoredCheckpoint,
};
pub use table::{
    FxBuildHasher, FxHasher, ListState, MapState, StateKey, StateRef, StateTable, StateValue,
    ValueState,
};
pub use timers::TimerQueue;
