//! TEMPORARY stand-ins for `state` (being built in parallel): the smallest key-group, table,
//! timer and checkpoint-store code the core needs to run. Replaced by `state` at integration.
#![allow(missing_docs, dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::path::{Path, PathBuf};

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::Error as RkyvError;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use super::RuntimeError;

pub trait StableHash {
    fn stable_hash(&self) -> u64;
}
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
impl StableHash for u64 {
    fn stable_hash(&self) -> u64 {
        fnv(&self.to_le_bytes())
    }
}
impl StableHash for String {
    fn stable_hash(&self) -> u64 {
        fnv(self.as_bytes())
    }
}
impl StableHash for i64 {
    fn stable_hash(&self) -> u64 {
        fnv(&self.to_le_bytes())
    }
}
impl StableHash for () {
    fn stable_hash(&self) -> u64 {
        0
    }
}
impl<A: StableHash, B: StableHash> StableHash for (A, B) {
    fn stable_hash(&self) -> u64 {
        self.0.stable_hash().rotate_left(17) ^ self.1.stable_hash()
    }
}
pub const DEFAULT_KEY_GROUPS: u16 = 128;
pub fn key_group_of(hash: u64, key_groups: u16) -> u16 {
    let h = hash ^ (hash >> 33);
    let h = h.wrapping_mul(0xff51afd7ed558ccd);
    let h = h ^ (h >> 33);
    (h % u64::from(key_groups)) as u16
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyGroupRange {
    pub start: u16,
    pub end: u16,
}
impl KeyGroupRange {
    pub fn for_subtask(subtask: usize, parallelism: usize, key_groups: u16) -> Self {
        let kg = key_groups as usize;
        let start = (subtask * kg).div_ceil(parallelism);
        let end = ((subtask + 1) * kg).div_ceil(parallelism);
        Self { start: start as u16, end: end as u16 }
    }
    pub fn contains(&self, kg: u16) -> bool {
        kg >= self.start && kg < self.end
    }
    pub fn iter(&self) -> impl Iterator<Item = u16> {
        self.start..self.end
    }
}
pub fn subtask_for_key_group(kg: u16, parallelism: usize, key_groups: u16) -> usize {
    kg as usize * parallelism / key_groups as usize
}

/// The bounds a type needs to be archived in, and restored from, a snapshot.
pub trait Archivable:
    Sized
    + Send
    + 'static
    + rkyv::Archive<
        Archived: rkyv::Deserialize<Self, HighDeserializer<RkyvError>>
                      + for<'a> CheckBytes<HighValidator<'a, RkyvError>>,
    > + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, RkyvError>>
{
}
impl<T> Archivable for T where
    T: Send
        + 'static
        + rkyv::Archive<
            Archived: rkyv::Deserialize<T, HighDeserializer<RkyvError>>
                          + for<'a> CheckBytes<HighValidator<'a, RkyvError>>,
        > + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, RkyvError>>
{
}
pub trait StateKey: Archivable + StableHash + Hash + Eq + Clone {}
impl<T: Archivable + StableHash + Hash + Eq + Clone> StateKey for T {}
pub trait StateValue: Archivable {}
impl<T: Archivable> StateValue for T {}

/// Keyed state of one subtask, per key group.
pub struct StateTable<K, V> {
    range: KeyGroupRange,
    groups: Vec<HashMap<K, V>>,
}
impl<K: StateKey, V: StateValue> StateTable<K, V> {
    pub fn new(_name: &'static str, range: KeyGroupRange, _key_groups: u16) -> Self {
        Self { range, groups: range.iter().map(|_| HashMap::new()).collect() }
    }
    fn g(&mut self, kg: u16) -> &mut HashMap<K, V> {
        &mut self.groups[(kg - self.range.start) as usize]
    }
    pub fn get_or_insert_with(&mut self, kg: u16, key: &K, f: impl FnOnce() -> V) -> &mut V {
        self.g(kg).entry(key.clone()).or_insert_with(f)
    }
    pub fn remove(&mut self, kg: u16, key: &K) -> Option<V> {
        self.g(kg).remove(key)
    }
    pub fn len(&self) -> usize {
        self.groups.iter().map(HashMap::len).sum()
    }
    pub fn snapshot_key_group(&self, kg: u16) -> Vec<u8> {
        let entries: Vec<(K, V)> = self.groups[(kg - self.range.start) as usize]
            .iter()
            .map(|(k, v)| (k.clone(), unsafe_clone(v)))
            .collect();
        rkyv::to_bytes::<RkyvError>(&entries).expect("serialize").to_vec()
    }
    pub fn restore_key_group(&mut self, kg: u16, bytes: &[u8]) -> Result<(), RuntimeError> {
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(bytes);
        let entries = rkyv::from_bytes::<Vec<(K, V)>, RkyvError>(&aligned).map_err(|e| {
            RuntimeError::CorruptCheckpoint { path: PathBuf::new(), reason: e.to_string() }
        })?;
        self.g(kg).extend(entries);
        Ok(())
    }
}
fn unsafe_clone<V: StateValue>(v: &V) -> V {
    let b = rkyv::to_bytes::<RkyvError>(v).expect("serialize");
    rkyv::from_bytes::<V, RkyvError>(&b).expect("round trip")
}

/// Event-time timers of one subtask.
pub struct TimerQueue<K, N> {
    set: BTreeSet<(i64, u16, K, N)>,
}
impl<K: Ord + Clone, N: Ord + Clone> TimerQueue<K, N> {
    pub fn new() -> Self {
        Self { set: BTreeSet::new() }
    }
    pub fn register(&mut self, kg: u16, ts: i64, key: K, ns: N) {
        self.set.insert((ts, kg, key, ns));
    }
    pub fn pop_due(&mut self, watermark: i64) -> Option<(u16, i64, K, N)> {
        let first = self.set.first()?;
        if first.0 > watermark {
            return None;
        }
        let (ts, kg, k, n) = self.set.pop_first()?;
        Some((kg, ts, k, n))
    }
    pub fn snapshot_key_group(&self, kg: u16) -> Vec<(i64, K, N)> {
        self.set.iter().filter(|t| t.1 == kg).map(|t| (t.0, t.2.clone(), t.3.clone())).collect()
    }
    pub fn len(&self) -> usize {
        self.set.len()
    }
}

/// Checkpoint files in a local directory: `chk-<id>/<name>`, `_metadata` last.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CheckpointMetadata {
    pub checkpoint_id: u64,
    pub created_ms: i64,
    pub parallelism: u32,
    pub key_groups: u16,
    pub files: Vec<String>,
    pub properties: BTreeMap<String, String>,
}
pub struct LocalDirStore {
    pub dir: PathBuf,
    pub retain: usize,
}
impl LocalDirStore {
    fn chk(&self, id: u64) -> PathBuf {
        self.dir.join(format!("chk-{id:020}"))
    }
    pub fn write(&self, id: u64, name: &str, bytes: &[u8]) -> Result<(), RuntimeError> {
        let d = self.chk(id);
        std::fs::create_dir_all(&d).map_err(|e| io("mkdir", &d, e))?;
        let p = d.join(name);
        std::fs::write(&p, bytes).map_err(|e| io("write", &p, e))
    }
    pub fn complete(&self, meta: &CheckpointMetadata) -> Result<(), RuntimeError> {
        let p = self.chk(meta.checkpoint_id).join("_metadata");
        std::fs::write(&p, serde_json::to_vec(meta).unwrap()).map_err(|e| io("write", &p, e))
    }
    pub fn latest_complete(&self) -> Result<Option<(CheckpointMetadata, PathBuf)>, RuntimeError> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Ok(None) };
        let mut names: Vec<String> =
            rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        for n in names.iter().rev() {
            let d = self.dir.join(n);
            if let Ok(b) = std::fs::read(d.join("_metadata")) {
                if let Ok(m) = serde_json::from_slice::<CheckpointMetadata>(&b) {
                    return Ok(Some((m, d)));
                }
            }
        }
        Ok(None)
    }
    pub fn read(&self, dir: &Path, name: &str) -> Result<Vec<u8>, RuntimeError> {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| io("read", &p, e))
    }
}
fn io(op: &'static str, p: &Path, source: std::io::Error) -> RuntimeError {
    RuntimeError::Io { op, path: p.to_path_buf(), source }
}
