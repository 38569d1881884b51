//! Keyed state, timers, snapshot files and the checkpoint store of the operator runtime.
//!
//! (module docs: see the end of this work)
#![deny(unsafe_code)]

pub mod keygroup;
mod mmap;
pub mod snapshot;
pub mod store;
pub mod table;
pub mod timers;

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
