//! `StateTable`: the keyed state of one subtask, per key group, with a zero-copy restored base.
//!
//! Why this shape:
//!
//! - **One owner, no locks.** A keyed subtask owns its table and calls it with `&mut self` from
//!   one task; the hot path is one hash-map lookup with a fast, fixed hasher ([`FxBuildHasher`],
//!   the multiply-rotate hash rustc uses; keys come from the job's own data and the map is private
//!   to one subtask, so hash flooding is not a concern a per-process random seed would be worth
//!   the cost for).
//! - **Per key group.** Each key group has its own map and its own snapshot section, so a restore
//!   at another parallelism takes whole sections (Flink's
//!   [key groups](https://nightlies.apache.org/flink/flink-docs-stable/docs/dev/datastream/fault-tolerance/state/#using-keyed-state)).
//! - **Zero-copy restore with copy on write.** After a restore a key group's entries stay in the
//!   memory-mapped snapshot section as an rkyv archive (the *base*), validated once and read in
//!   place (see [rkyv's zero-copy deserialization](https://rkyv.org/zero-copy-deserialization.html)):
//!   [`StateTable::get`] returns a reference into the archive ([`StateRef::Archived`]) without
//!   deserializing anything; an entry is deserialized into the live map only when it is modified
//!   ([`StateTable::get_mut`], [`StateTable::get_or_insert_with`]); inserting over or removing a
//!   base entry *shadows* it (one bit per base entry). The time from restore to the first record
//!   is therefore the checksum plus validation, whatever the state size.
//!
//! # Archived layout of one key group
//!
//! `(Vec<u64>, Vec<(K, V)>)`: stable hashes sorted ascending, and the entries in the same
//! order. A native key is found by binary search over the dense hash array, then by
//! comparing the archived key with the native one (`Archived<K>: PartialEq<K>`) among the entries
//! with an equal hash — no other entry is touched.
//!
//! # Snapshots
//!
//! [`StateTable::snapshot_key_group`] writes the merged view (base entries not shadowed, plus live
//! entries). A key group whose base is untouched is copied verbatim (an rkyv archive is
//! position-independent); otherwise the remaining base entries are deserialized for the duration
//! of the snapshot, the entries sorted by hash and serialized from references (no clone of live
//! entries).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::marker::PhantomData;

use rkyv::api::high::{HighDeserializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::{self, Fallible};
use rkyv::ser::{Allocator, Writer};
use rkyv::tuple::ArchivedTuple2;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Archived, Deserialize, Place, Portable, Serialize};

use super::keygroup::{KeyGroupRange, StableHash};
use super::mmap::Validated;
use super::snapshot::{MappedSection, SnapshotFile, SnapshotWriter, StateSerializer};
use crate::runtime::RuntimeError;

/// A type that can be kept in state and snapshotted: rkyv 0.8 `Archive + Serialize`, its archived
/// form validatable (`CheckBytes`) and deserializable back.
///
/// Implemented for every type that qualifies (derive `rkyv::Archive, rkyv::Serialize,
/// rkyv::Deserialize` on your own types). State types must not contain `Rc`/`Arc` (shared
/// pointers are the one thing whose deserialization can fail after validation).
pub trait StateValue:
    Archive<
        Archived: Portable
                      + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
                      + Deserialize<Self, HighDeserializer<rancor::Error>>,
    > + for<'a> Serialize<StateSerializer<'a>>
    + Sized
{
}

impl<T> StateValue for T where
    T: Archive<
            Archived: Portable
                          + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
                          + Deserialize<T, HighDeserializer<rancor::Error>>,
        > + for<'a> Serialize<StateSerializer<'a>>
{
}

/// A type that can key state: a [`StateValue`] with a [`StableHash`], hashable and comparable,
/// and whose archived form compares with the native one (so that a lookup in an archived base
/// deserializes nothing). `u64`, `i64`, `u32`, `i32`, `String`, `Vec<u8>` and pairs of these
/// qualify.
pub trait StateKey:
    StateValue + Archive<Archived: PartialEq<Self>> + StableHash + Eq + Hash + Clone
{
}

impl<T> StateKey for T where
    T: StateValue + Archive<Archived: PartialEq<T>> + StableHash + Eq + Hash + Clone
{
}

/// The multiply-rotate hasher rustc uses (FxHash, as in the `rustc-hash` crate 2.x): fast and
/// fixed. Not resistant to chosen keys; see the module docs for why that is acceptable here.
#[derive(Clone, Copy, Debug, Default)]
pub struct FxHasher {
    hash: u64,
}

const FX_K: u64 = 0xf135_7aea_2e62_a9c5;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = self.hash.wrapping_add(word).wrapping_mul(FX_K);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // The map uses the top bits as tags and the low bits as the bucket: rotate so that both
        // see well-mixed bits (as rustc-hash 2 does).
        self.hash.rotate_left(26)
    }
}

/// A `BuildHasher` for [`FxHasher`].
pub type FxBuildHasher = BuildHasherDefault<FxHasher>;

/// Serializes the items of an iterator as an `ArchivedVec<Archived<T>>` — the same archived
/// type as a `Vec<T>` — so that entries can be written from references, without cloning.
pub(crate) struct SerializeIter<T, I>(pub(crate) I, pub(crate) PhantomData<fn() -> T>);

impl<T: Archive, I: ExactSizeIterator> Archive for SerializeIter<T, I> {
    type Archived = ArchivedVec<T::Archived>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<T, I, S> Serialize<S> for SerializeIter<T, I>
where
    T: Serialize<S>,
    I: ExactSizeIterator + Clone,
    I::Item: std::borrow::Borrow<T>,
    S: Fallible + Allocator + Writer + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedVec::<T::Archived>::serialize_from_iter::<T, _, _>(self.0.clone(), serializer)
    }
}

/// Serializes a slice as an `ArchivedVec<Archived<T>>` (with rkyv's copy optimization: a plain
/// `memcpy` for primitives such as the hashes).
struct SerializeSlice<'a, T>(&'a [T]);

impl<T: Archive> Archive for SerializeSlice<'_, T> {
    type Archived = ArchivedVec<T::Archived>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<T, S> Serialize<S> for SerializeSlice<'_, T>
where
    T: Serialize<S>,
    S: Fallible + Allocator + Writer + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedVec::<T::Archived>::serialize_from_slice(self.0, serializer)
    }
}

/// A key and a value by reference, archived exactly like the tuple `(K, V)`.
struct PairRef<'a, K, V>(&'a K, &'a V);

impl<K: Archive, V: Archive> Archive for PairRef<'_, K, V> {
    type Archived = ArchivedTuple2<K::Archived, V::Archived>;
    type Resolver = (K::Resolver, V::Resolver);

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        rkyv::munge::munge!(let ArchivedTuple2(key, value) = out);
        self.0.resolve(resolver.0, key);
        self.1.resolve(resolver.1, value);
    }
}

impl<K, V, S> Serialize<S> for PairRef<'_, K, V>
where
    K: Serialize<S>,
    V: Serialize<S>,
    S: Fallible + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        Ok((self.0.serialize(serializer)?, self.1.serialize(serializer)?))
    }
}

/// Reusable buffers for sorting entries by hash (allocated once per snapshot, not per key
/// group: large per-group allocations cost page faults).
struct SortScratch<T> {
    sorted: Vec<(u64, T)>,
    starts: Vec<usize>,
    hashes: Vec<u64>,
}

impl<T> SortScratch<T> {
    fn new() -> Self {
        SortScratch {
            sorted: Vec::new(),
            starts: Vec::new(),
            hashes: Vec::new(),
        }
    }
}

/// Sorts `items` by their hash (the first field): a counting sort on the top bits of the hash,
/// which are uniform for a good `StableHash`, into buckets of a few dozen items, then each
/// bucket sorted on its own (in cache). O(n) in the usual case instead of O(n log n); degrades
/// to `sort_unstable` per bucket when hashes collide.
fn sort_by_hash<T: Copy>(items: &mut Vec<(u64, T)>, scratch: &mut SortScratch<T>) {
    let n = items.len();
    if n < 256 {
        items.sort_unstable_by_key(|e| e.0);
        return;
    }
    // About 32 items per bucket, at most 4096 buckets (the counts stay in L1/L2).
    let bits = (usize::BITS - (n - 1).leading_zeros())
        .saturating_sub(5)
        .clamp(1, 12);
    let shift = 64 - bits;
    let starts = &mut scratch.starts;
    starts.clear();
    starts.resize((1 << bits) + 1, 0);
    for e in items.iter() {
        starts[(e.0 >> shift) as usize + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let sorted = &mut scratch.sorted;
    sorted.clear();
    sorted.resize(n, items[0]);
    // `starts[b]` is used as the next free slot of bucket b, and ends as the start of b + 1.
    for e in items.iter() {
        let bucket = (e.0 >> shift) as usize;
        sorted[starts[bucket]] = *e;
        starts[bucket] += 1;
    }
    let mut begin = 0;
    for &end in &starts[..starts.len() - 1] {
        let bucket = &mut sorted[begin..end];
        if bucket.len() > 1 {
            bucket.sort_unstable_by_key(|e| e.0);
        }
        begin = end;
    }
    std::mem::swap(items, sorted);
}

/// The archived form of one key group: hashes (sorted), and the entries in the same order.
type Entries<K, V> = (Vec<u64>, Vec<(K, V)>);
type ArchivedEntries<K, V> = Archived<Entries<K, V>>;

/// Deserializes a validated archived value.
///
/// # Panics
///
/// Only if rkyv fails to deserialize data it validated, which for state types without shared
/// pointers (see [`StateValue`]) does not happen.
pub(crate) fn deserialize<T: StateValue>(archived: &T::Archived) -> T {
    match rkyv::deserialize::<T, rancor::Error>(archived) {
        Ok(value) => value,
        Err(e) => panic!("deserializing validated archived state failed: {e}"),
    }
}

/// A reference to a value in state: in the live map, or archived in a restored snapshot.
#[derive(Debug)]
pub enum StateRef<'a, T: Archive> {
    /// A value in the live map.
    Live(&'a T),
    /// A value read in place from a restored snapshot (not deserialized).
    Archived(&'a T::Archived),
}

impl<T: Archive> Clone for StateRef<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: Archive> Copy for StateRef<'_, T> {}

impl<T: StateValue + Clone> StateRef<'_, T> {
    /// An owned copy: cloned if live, deserialized if archived.
    pub fn to_owned(&self) -> T {
        match self {
            StateRef::Live(v) => (*v).clone(),
            StateRef::Archived(a) => deserialize::<T>(a),
        }
    }
}

/// The archived base of one key group and which of its entries are shadowed.
struct Base<K: StateValue, V: StateValue> {
    entries: Validated<ArchivedEntries<K, V>>,
    /// One bit per base entry: set once the entry was copied into the live map or removed.
    shadowed: Vec<u64>,
    shadowed_count: usize,
}

impl<K: StateKey, V: StateValue> Base<K, V> {
    fn len(&self) -> usize {
        self.entries.get().1.len()
    }

    fn key(&self, i: usize) -> &K::Archived {
        &self.entries.get().1.as_slice()[i].0
    }

    fn find(&self, hash: u64, key: &K) -> Option<usize> {
        let hashes = self.entries.get().0.as_slice();
        let mut i = hashes.partition_point(|h| h.to_native() < hash);
        while i < hashes.len() && hashes[i].to_native() == hash {
            if *self.key(i) == *key {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    /// The index of `key` if it is in the base and not shadowed.
    fn find_visible(&self, hash: u64, key: &K) -> Option<usize> {
        self.find(hash, key).filter(|&i| !self.is_shadowed(i))
    }

    fn is_shadowed(&self, i: usize) -> bool {
        self.shadowed[i / 64] & (1 << (i % 64)) != 0
    }

    fn shadow(&mut self, i: usize) {
        self.shadowed[i / 64] |= 1 << (i % 64);
        self.shadowed_count += 1;
    }

    fn value(&self, i: usize) -> &V::Archived {
        &self.entries.get().1.as_slice()[i].1
    }
}

struct Group<K: StateKey, V: StateValue> {
    live: HashMap<K, V, FxBuildHasher>,
    base: Option<Base<K, V>>,
}

impl<K: StateKey, V: StateValue> Group<K, V> {
    fn new() -> Self {
        Group {
            live: HashMap::default(),
            base: None,
        }
    }

    fn len(&self) -> usize {
        self.live.len() + self.base.as_ref().map_or(0, |b| b.len() - b.shadowed_count)
    }

    /// Drops the base once every entry of it is shadowed: lookups are then one hash-map probe.
    fn drop_base_if_fully_shadowed(&mut self) {
        if self
            .base
            .as_ref()
            .is_some_and(|b| b.shadowed_count == b.len())
        {
            self.base = None;
        }
    }

    /// Copies `key`'s base entry into the live map if it is visible there (copy on write).
    fn copy_up(&mut self, key: &K) {
        if let Some(base) = &mut self.base {
            if let Some(i) = base.find_visible(key.stable_hash(), key) {
                let value = deserialize::<V>(base.value(i));
                base.shadow(i);
                self.live.insert(key.clone(), value);
                self.drop_base_if_fully_shadowed();
            }
        }
    }
}

/// The keyed state of one subtask for its key-group range: a map per key group, over an
/// optional archived base per key group after a restore (see the module docs).
///
/// Every method taking a key group panics if it is not in the table's range: routing a key to
/// the wrong subtask is a bug in the caller, not a condition to recover from.
pub struct StateTable<K: StateKey, V: StateValue> {
    name: &'static str,
    range: KeyGroupRange,
    key_groups: u16,
    groups: Vec<Group<K, V>>,
}

impl<K: StateKey, V: StateValue> std::fmt::Debug for StateTable<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateTable")
            .field("name", &self.name)
            .field("range", &self.range)
            .field("key_groups", &self.key_groups)
            .field("len", &self.len())
            .finish()
    }
}

impl<K: StateKey, V: StateValue> StateTable<K, V> {
    /// An empty table named `name` (the snapshot section name: 1..=40 bytes, unique per file)
    /// for the key groups `range` out of `key_groups`.
    ///
    /// # Panics
    ///
    /// If `range` does not fit in `key_groups`.
    pub fn new(name: &'static str, range: KeyGroupRange, key_groups: u16) -> Self {
        assert!(
            range.end <= key_groups,
            "range {range:?} beyond {key_groups} key groups"
        );
        StateTable {
            name,
            range,
            key_groups,
            groups: (0..range.len()).map(|_| Group::new()).collect(),
        }
    }

    /// The table's name (its sections' name in snapshot files).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The key groups the table holds.
    pub fn range(&self) -> KeyGroupRange {
        self.range
    }

    /// The total number of key groups of the job.
    pub fn key_groups(&self) -> u16 {
        self.key_groups
    }

    #[inline]
    fn group(&self, kg: u16) -> &Group<K, V> {
        assert!(
            self.range.contains(kg),
            "key group {kg} is not in {} range {:?}",
            self.name,
            self.range
        );
        &self.groups[usize::from(kg - self.range.start)]
    }

    #[inline]
    fn group_mut(&mut self, kg: u16) -> &mut Group<K, V> {
        assert!(
            self.range.contains(kg),
            "key group {kg} is not in {} range {:?}",
            self.name,
            self.range
        );
        &mut self.groups[usize::from(kg - self.range.start)]
    }

    /// The value of `key` in key group `kg`, read in place if it is still in the restored base.
    #[inline]
    pub fn get(&self, kg: u16, key: &K) -> Option<StateRef<'_, V>> {
        let group = self.group(kg);
        if let Some(v) = group.live.get(key) {
            return Some(StateRef::Live(v));
        }
        let base = group.base.as_ref()?;
        let i = base.find_visible(key.stable_hash(), key)?;
        Some(StateRef::Archived(base.value(i)))
    }

    /// Whether `key` has a value.
    pub fn contains(&self, kg: u16, key: &K) -> bool {
        self.get(kg, key).is_some()
    }

    /// The value of `key`, mutable; a base entry is deserialized into the live map first.
    #[inline]
    pub fn get_mut(&mut self, kg: u16, key: &K) -> Option<&mut V> {
        let group = self.group_mut(kg);
        if group.base.is_some() && !group.live.contains_key(key) {
            group.copy_up(key);
        }
        group.live.get_mut(key)
    }

    /// The value of `key`, inserting `f()` if it has none (a base entry is deserialized first).
    #[inline]
    pub fn get_or_insert_with(&mut self, kg: u16, key: K, f: impl FnOnce() -> V) -> &mut V {
        let group = self.group_mut(kg);
        match group.live.entry(key) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                let mut value = None;
                if let Some(base) = &mut group.base {
                    if let Some(i) = base.find_visible(v.key().stable_hash(), v.key()) {
                        value = Some(deserialize::<V>(base.value(i)));
                        base.shadow(i);
                    }
                }
                // The base is not dropped here even if fully shadowed (the entry borrows the
                // map); the next `insert`/`remove`/`get_mut` copy-up does it.
                v.insert(value.unwrap_or_else(f))
            }
        }
    }

    /// Sets the value of `key`; returns whether it had one.
    pub fn insert(&mut self, kg: u16, key: K, value: V) -> bool {
        let group = self.group_mut(kg);
        let Some(base) = &mut group.base else {
            return group.live.insert(key, value).is_some();
        };
        // A key in the live map has its base entry shadowed already, so a visible base entry
        // means the key is not live: this insert overrides it.
        let visible = base.find_visible(key.stable_hash(), &key);
        if group.live.insert(key, value).is_some() {
            return true;
        }
        match visible {
            Some(i) => {
                base.shadow(i);
                group.drop_base_if_fully_shadowed();
                true
            }
            None => false,
        }
    }

    /// Removes `key`'s value and returns it (deserialized if it was in the base).
    pub fn remove(&mut self, kg: u16, key: &K) -> Option<V> {
        let group = self.group_mut(kg);
        if let Some(v) = group.live.remove(key) {
            // A live entry shadows its base entry (if any) already.
            return Some(v);
        }
        let base = group.base.as_mut()?;
        let i = base.find_visible(key.stable_hash(), key)?;
        let value = deserialize::<V>(base.value(i));
        base.shadow(i);
        group.drop_base_if_fully_shadowed();
        Some(value)
    }

    /// The number of entries in the table.
    pub fn len(&self) -> usize {
        self.groups.iter().map(Group::len).sum()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of entries in key group `kg`.
    pub fn len_in_group(&self, kg: u16) -> usize {
        self.group(kg).len()
    }

    /// Calls `f` with every entry of key group `kg` (live and archived), in no particular order.
    pub fn for_each_in_group(&self, kg: u16, mut f: impl FnMut(StateRef<'_, K>, StateRef<'_, V>)) {
        let group = self.group(kg);
        for (k, v) in &group.live {
            f(StateRef::Live(k), StateRef::Live(v));
        }
        if let Some(base) = &group.base {
            let archived = base.entries.get();
            for (i, entry) in archived.1.iter().enumerate() {
                if !base.is_shadowed(i) {
                    f(StateRef::Archived(&entry.0), StateRef::Archived(&entry.1));
                }
            }
        }
    }

    /// Removes every entry of key group `kg` (and its base).
    pub fn clear_group(&mut self, kg: u16) {
        let group = self.group_mut(kg);
        group.live.clear();
        group.base = None;
    }

    /// Writes key group `kg` as a section named after the table into `out` (the merged view:
    /// visible base entries and live entries).
    pub fn snapshot_key_group(
        &self,
        kg: u16,
        out: &mut SnapshotWriter,
    ) -> Result<(), RuntimeError> {
        self.snapshot_group_with(kg, out, &mut Vec::new(), &mut SortScratch::new())
    }

    fn snapshot_group_with<'a>(
        &'a self,
        kg: u16,
        out: &mut SnapshotWriter,
        entries: &mut Vec<(u64, (&'a K, &'a V))>,
        scratch: &mut SortScratch<(&'a K, &'a V)>,
    ) -> Result<(), RuntimeError> {
        let group = self.group(kg);
        let Some(base) = &group.base else {
            entries.clear();
            entries.extend(group.live.iter().map(|(k, v)| (k.stable_hash(), (k, v))));
            return self.write_sorted(kg, out, entries, scratch);
        };
        if group.live.is_empty() && base.shadowed_count == 0 {
            // Untouched since the restore: the archive is position-independent, copy it.
            return out.add_bytes(self.name, Some(kg), base.entries.section().bytes());
        }
        // Visible base entries, deserialized for the duration of this snapshot.
        let archived = base.entries.get();
        let mut from_base: Vec<(K, V)> = Vec::with_capacity(base.len() - base.shadowed_count);
        for (i, entry) in archived.1.iter().enumerate() {
            if !base.is_shadowed(i) {
                from_base.push((deserialize::<K>(&entry.0), deserialize::<V>(&entry.1)));
            }
        }
        let mut merged: Vec<(u64, (&K, &V))> =
            Vec::with_capacity(group.live.len() + from_base.len());
        merged.extend(group.live.iter().map(|(k, v)| (k.stable_hash(), (k, v))));
        merged.extend(from_base.iter().map(|(k, v)| (k.stable_hash(), (k, v))));
        self.write_sorted(kg, out, &mut merged, &mut SortScratch::new())
    }

    fn write_sorted<'e>(
        &self,
        kg: u16,
        out: &mut SnapshotWriter,
        entries: &mut Vec<(u64, (&'e K, &'e V))>,
        scratch: &mut SortScratch<(&'e K, &'e V)>,
    ) -> Result<(), RuntimeError> {
        sort_by_hash(entries, scratch);
        let hashes = &mut scratch.hashes;
        hashes.clear();
        hashes.extend(entries.iter().map(|e| e.0));
        let archive = (
            SerializeSlice(hashes),
            SerializeIter::<PairRef<'_, K, V>, _>(
                entries.iter().map(|&(_, (k, v))| PairRef(k, v)),
                PhantomData,
            ),
        );
        out.add_archived(self.name, Some(kg), &archive)
    }

    /// Writes every key group of the range into `out`.
    pub fn snapshot(&self, out: &mut SnapshotWriter) -> Result<(), RuntimeError> {
        let mut entries = Vec::new();
        let mut scratch = SortScratch::new();
        for kg in self.range.iter() {
            self.snapshot_group_with(kg, out, &mut entries, &mut scratch)?;
        }
        Ok(())
    }

    /// Makes `section` (written by [`StateTable::snapshot_key_group`]) the archived base of key
    /// group `kg`, replacing whatever the group held. The section is validated with rkyv's
    /// checker once (see the `snapshot` module docs for why validated and not unchecked); a
    /// section that fails is [`RuntimeError::CorruptCheckpoint`] and the group is left as it was.
    pub fn restore_key_group(
        &mut self,
        kg: u16,
        section: MappedSection,
    ) -> Result<(), RuntimeError> {
        let name = self.name;
        let entries = Validated::<ArchivedEntries<K, V>>::new(section.clone()).map_err(|e| {
            section.corrupt(format!(
                "section {name} key group {kg} is not a valid archive: {e}"
            ))
        })?;
        let archived = entries.get();
        let len = archived.1.len();
        if archived.0.len() != len {
            return Err(section.corrupt(format!(
                "section {name} key group {kg}: {} hashes for {len} entries",
                archived.0.len(),
            )));
        }
        if archived
            .0
            .as_slice()
            .windows(2)
            .any(|w| w[0].to_native() > w[1].to_native())
        {
            return Err(section.corrupt(format!(
                "section {name} key group {kg}: hashes are not sorted"
            )));
        }
        let group = self.group_mut(kg);
        group.live.clear();
        group.base = (len > 0).then(|| Base {
            entries,
            shadowed: vec![0; len.div_ceil(64)],
            shadowed_count: 0,
        });
        Ok(())
    }

    /// Restores every key group of the range that has a section named after the table in
    /// `file`; key groups without one are left empty. Returns how many were restored.
    pub fn restore(&mut self, file: &SnapshotFile) -> Result<usize, RuntimeError> {
        let mut restored = 0;
        for (kg, section) in file.sections_named(self.name) {
            match kg {
                Some(kg) if self.range.contains(kg) => {
                    self.restore_key_group(kg, section)?;
                    restored += 1;
                }
                Some(_) => {}
                None => {
                    return Err(file.corrupt(format!(
                        "section {} has no key group but is keyed state",
                        self.name
                    )))
                }
            }
        }
        Ok(restored)
    }
}

/// Value state: one value per key (a [`StateTable`] with a typed face).
#[derive(Debug)]
pub struct ValueState<K: StateKey, V: StateValue>(pub StateTable<K, V>);

impl<K: StateKey, V: StateValue + Clone> ValueState<K, V> {
    /// Empty value state; see [`StateTable::new`].
    pub fn new(name: &'static str, range: KeyGroupRange, key_groups: u16) -> Self {
        ValueState(StateTable::new(name, range, key_groups))
    }

    /// The value of `key`.
    pub fn value(&self, kg: u16, key: &K) -> Option<StateRef<'_, V>> {
        self.0.get(kg, key)
    }

    /// Sets the value of `key`.
    pub fn update(&mut self, kg: u16, key: K, value: V) {
        self.0.insert(kg, key, value);
    }

    /// Removes the value of `key`.
    pub fn clear(&mut self, kg: u16, key: &K) {
        self.0.remove(kg, key);
    }
}

/// Map state: a map `UK → V` per key, stored as a [`StateTable`] over `(K, UK)`.
///
/// Iterating over one key's entries ([`MapState::for_each_of`]) scans its key group — fine for
/// occasional use (e.g. on a timer), not per record; a job that iterates per record should keep
/// a `ValueState<K, Vec<..>>` or a `BTreeMap` value instead.
#[derive(Debug)]
pub struct MapState<K, UK, V>(pub StateTable<(K, UK), V>)
where
    (K, UK): StateKey,
    V: StateValue;

impl<K, UK, V> MapState<K, UK, V>
where
    K: StateKey,
    UK: StateKey,
    V: StateValue,
    (K, UK): StateKey + Archive<Archived = ArchivedTuple2<K::Archived, UK::Archived>>,
{
    /// Empty map state; see [`StateTable::new`].
    pub fn new(name: &'static str, range: KeyGroupRange, key_groups: u16) -> Self {
        MapState(StateTable::new(name, range, key_groups))
    }

    /// The value under `(key, user_key)`.
    pub fn get(&self, kg: u16, key: K, user_key: UK) -> Option<StateRef<'_, V>> {
        self.0.get(kg, &(key, user_key))
    }

    /// Sets the value under `(key, user_key)`.
    pub fn put(&mut self, kg: u16, key: K, user_key: UK, value: V) {
        self.0.insert(kg, (key, user_key), value);
    }

    /// Removes the value under `(key, user_key)`.
    pub fn remove(&mut self, kg: u16, key: K, user_key: UK) -> Option<V> {
        self.0.remove(kg, &(key, user_key))
    }

    /// Calls `f` with each user key and value of `key` (scans the key group, see the type docs).
    pub fn for_each_of(
        &self,
        kg: u16,
        key: &K,
        mut f: impl FnMut(StateRef<'_, UK>, StateRef<'_, V>),
    ) {
        self.0.for_each_in_group(kg, |k, v| match k {
            StateRef::Live((k, uk)) if k == key => f(StateRef::Live(uk), v),
            StateRef::Archived(a) if a.0 == *key => f(StateRef::Archived(&a.1), v),
            _ => {}
        });
    }
}

/// List state: a list of `T` per key, stored as a [`StateTable`] of `Vec<T>`.
#[derive(Debug)]
pub struct ListState<K: StateKey, T>(pub StateTable<K, Vec<T>>)
where
    Vec<T>: StateValue;

impl<K: StateKey, T> ListState<K, T>
where
    Vec<T>: StateValue,
{
    /// Empty list state; see [`StateTable::new`].
    pub fn new(name: &'static str, range: KeyGroupRange, key_groups: u16) -> Self {
        ListState(StateTable::new(name, range, key_groups))
    }

    /// The list of `key` (read in place if archived).
    pub fn get(&self, kg: u16, key: &K) -> Option<StateRef<'_, Vec<T>>> {
        self.0.get(kg, key)
    }

    /// Appends `item` to the list of `key`.
    pub fn add(&mut self, kg: u16, key: K, item: T) {
        self.0.get_or_insert_with(kg, key, Vec::new).push(item);
    }

    /// Removes and returns the list of `key`.
    pub fn take(&mut self, kg: u16, key: &K) -> Option<Vec<T>> {
        self.0.remove(kg, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::state::keygroup::key_group_of;
    use proptest::prelude::*;
    use std::fmt::Debug;
    use std::path::Path;

    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
    struct Agg {
        count: u64,
        sum: i64,
        last_ts: i64,
    }

    const GROUPS: u16 = 16;

    fn kg<K: StableHash>(key: &K) -> u16 {
        key_group_of(key.stable_hash(), GROUPS)
    }

    fn full() -> KeyGroupRange {
        KeyGroupRange::new(0, GROUPS)
    }

    fn snapshot_and_restore<K: StateKey, V: StateValue>(
        table: &StateTable<K, V>,
    ) -> StateTable<K, V> {
        let mut w = SnapshotWriter::new(1);
        table.snapshot(&mut w).unwrap();
        let bytes = w.finish().unwrap();
        let file = SnapshotFile::from_bytes(Path::new("t.snap"), &bytes).unwrap();
        let mut restored = StateTable::new(table.name(), table.range(), table.key_groups());
        restored.restore(&file).unwrap();
        restored
    }

    fn assert_matches_model<K, V>(table: &StateTable<K, V>, model: &HashMap<K, V>)
    where
        K: StateKey + Debug,
        V: StateValue + Clone + PartialEq + Debug,
    {
        assert_eq!(table.len(), model.len());
        for (k, v) in model {
            let got = table.get(kg(k), k).map(|r| r.to_owned());
            assert_eq!(got.as_ref(), Some(v), "key {k:?}");
        }
        let mut seen = 0;
        for g in full().iter() {
            table.for_each_in_group(g, |_, _| seen += 1);
        }
        assert_eq!(seen, model.len());
    }

    #[test]
    fn live_operations() {
        let mut t: StateTable<u64, Agg> = StateTable::new("aggs", full(), GROUPS);
        let a = Agg {
            count: 1,
            sum: 5,
            last_ts: 10,
        };
        assert!(!t.insert(kg(&1), 1, a.clone()));
        assert!(t.insert(kg(&1), 1, a.clone()));
        assert_eq!(t.get(kg(&1), &1).unwrap().to_owned(), a);
        t.get_mut(kg(&1), &1).unwrap().count += 1;
        assert_eq!(t.get(kg(&1), &1).unwrap().to_owned().count, 2);
        t.get_or_insert_with(kg(&2), 2, || a.clone()).sum = 7;
        assert_eq!(t.len(), 2);
        assert_eq!(t.remove(kg(&2), &2).unwrap().sum, 7);
        assert!(t.remove(kg(&2), &2).is_none());
        assert!(t.get_mut(kg(&3), &3).is_none());
        assert_eq!(t.len(), 1);
    }

    #[test]
    #[should_panic(expected = "key group 3 is not in aggs range")]
    fn key_group_outside_range_panics() {
        let t: StateTable<u64, Agg> = StateTable::new("aggs", KeyGroupRange::new(0, 2), GROUPS);
        t.get(3, &1);
    }

    fn restore_then_modify<K: StateKey + Debug>(keys: Vec<K>, absent: K) {
        let mut t: StateTable<K, Agg> = StateTable::new("aggs", full(), GROUPS);
        let mut model = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            let v = Agg {
                count: i as u64,
                sum: -(i as i64),
                last_ts: 7,
            };
            t.insert(kg(k), k.clone(), v.clone());
            model.insert(k.clone(), v);
        }
        let mut r = snapshot_and_restore(&t);
        // Read in place: every value is archived, nothing is live.
        for k in &keys {
            assert!(matches!(r.get(kg(k), k), Some(StateRef::Archived(_))));
        }
        assert!(r.get(kg(&absent), &absent).is_none());
        assert_matches_model(&r, &model);

        // Copy on write, insert over base, remove from base.
        let (k0, k1, k2) = (&keys[0], &keys[1], &keys[2]);
        r.get_mut(kg(k0), k0).unwrap().count = 100;
        model.get_mut(k0).unwrap().count = 100;
        assert!(matches!(r.get(kg(k0), k0), Some(StateRef::Live(_))));
        let v = Agg {
            count: 9,
            sum: 9,
            last_ts: 9,
        };
        assert!(r.insert(kg(k1), k1.clone(), v.clone()));
        model.insert(k1.clone(), v);
        assert_eq!(r.remove(kg(k2), k2), model.remove(k2));
        assert!(r.get(kg(k2), k2).is_none());
        assert!(r.remove(kg(k2), k2).is_none());
        r.get_or_insert_with(kg(&absent), absent.clone(), || Agg {
            count: 1,
            sum: 1,
            last_ts: 1,
        });
        model.insert(
            absent.clone(),
            Agg {
                count: 1,
                sum: 1,
                last_ts: 1,
            },
        );
        assert_matches_model(&r, &model);

        // The merged view survives another snapshot (and untouched groups are copied verbatim).
        let again = snapshot_and_restore(&r);
        assert_matches_model(&again, &model);
    }

    #[test]
    fn restore_u64_keys() {
        restore_then_modify((0..500u64).collect(), 10_000);
    }

    #[test]
    fn restore_string_keys() {
        restore_then_modify(
            (0..500).map(|i| format!("user-{i}")).collect(),
            "nobody".to_owned(),
        );
    }

    #[test]
    fn restore_tuple_keys() {
        restore_then_modify((0..500u64).map(|i| (i, -(i as i64))).collect(), (1, 1));
    }

    #[test]
    fn colliding_hashes_are_told_apart_by_key() {
        // Force equal hashes: a key type whose StableHash is constant.
        #[derive(
            rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq, Hash,
        )]
        #[rkyv(compare(PartialEq))]
        struct Bad(u64);
        impl StableHash for Bad {
            fn stable_hash(&self) -> u64 {
                42
            }
        }
        let mut t: StateTable<Bad, u64> = StateTable::new("bad", full(), GROUPS);
        for i in 0..50 {
            t.insert(kg(&Bad(i)), Bad(i), i * 10);
        }
        let r = snapshot_and_restore(&t);
        for i in 0..50 {
            assert_eq!(r.get(kg(&Bad(i)), &Bad(i)).unwrap().to_owned(), i * 10);
        }
        assert!(r.get(kg(&Bad(99)), &Bad(99)).is_none());
    }

    #[test]
    fn fully_shadowed_base_is_dropped() {
        let mut t: StateTable<u64, u64> = StateTable::new("n", KeyGroupRange::new(0, 1), 1);
        for k in 0..10 {
            t.insert(0, k, k);
        }
        let mut r = snapshot_and_restore(&t);
        for k in 0..10 {
            *r.get_mut(0, &k).unwrap() += 1;
        }
        assert!(r.groups[0].base.is_none());
        assert_eq!(r.len(), 10);
        assert_eq!(r.get(0, &3).unwrap().to_owned(), 4);
    }

    #[test]
    fn invalid_section_is_corrupt_checkpoint() {
        let mut w = SnapshotWriter::new(1);
        // Valid archives of the right type, but inconsistent.
        w.add_archived("n", Some(0), &(vec![1u64, 2], vec![(1u64, 1u64)]))
            .unwrap();
        w.add_bytes("n", Some(1), &[0xff; 40]).unwrap();
        w.add_archived("n", Some(2), &(vec![2u64, 1], vec![(1u64, 1u64), (2, 2)]))
            .unwrap();
        let bytes = w.finish().unwrap();
        let file = SnapshotFile::from_bytes(Path::new("t.snap"), &bytes).unwrap();
        let mut t: StateTable<u64, u64> = StateTable::new("n", KeyGroupRange::new(0, 3), 3);
        let reason = |r: Result<(), RuntimeError>| match r {
            Err(RuntimeError::CorruptCheckpoint { path, reason }) => {
                assert_eq!(path, Path::new("t.snap"));
                reason
            }
            other => panic!("{other:?}"),
        };
        let r0 = reason(t.restore_key_group(0, file.section("n", Some(0)).unwrap()));
        assert_eq!(r0, "section n key group 0: 2 hashes for 1 entries");
        let r1 = reason(t.restore_key_group(1, file.section("n", Some(1)).unwrap()));
        assert!(
            r1.starts_with("section n key group 1 is not a valid archive"),
            "{r1}"
        );
        let r2 = reason(t.restore_key_group(2, file.section("n", Some(2)).unwrap()));
        assert_eq!(r2, "section n key group 2: hashes are not sorted");
        assert!(t.is_empty());
    }

    #[test]
    fn typed_wrappers() {
        let range = full();
        let mut values: ValueState<u64, i64> = ValueState::new("v", range, GROUPS);
        values.update(kg(&1), 1, -1);
        assert_eq!(values.value(kg(&1), &1).unwrap().to_owned(), -1);
        values.clear(kg(&1), &1);
        assert!(values.value(kg(&1), &1).is_none());

        let mut lists: ListState<String, u32> = ListState::new("l", range, GROUPS);
        let a = "a".to_owned();
        lists.add(kg(&a), a.clone(), 1);
        lists.add(kg(&a), a.clone(), 2);
        assert_eq!(lists.get(kg(&a), &a).unwrap().to_owned(), vec![1, 2]);
        let mut lists = ListState(snapshot_and_restore(&lists.0));
        lists.add(kg(&a), a.clone(), 3);
        assert_eq!(lists.take(kg(&a), &a).unwrap(), vec![1, 2, 3]);

        // Map state: all user keys of one key live in that key's group.
        let mut maps: MapState<u64, String, u64> = MapState::new("m", range, GROUPS);
        let user = 7u64;
        for uk in ["x", "y", "z"] {
            maps.put(kg(&user), user, uk.to_owned(), uk.len() as u64);
        }
        maps.put(kg(&user), 8, "x".to_owned(), 0); // another key, maybe in the same group
        let restored = MapState(snapshot_and_restore(&maps.0));
        for m in [&maps, &restored] {
            let mut seen = Vec::new();
            m.for_each_of(kg(&user), &user, |uk, _| {
                seen.push(match uk {
                    StateRef::Live(s) => s.clone(),
                    StateRef::Archived(s) => s.as_str().to_owned(),
                })
            });
            seen.sort();
            assert_eq!(seen, ["x", "y", "z"]);
        }
        assert_eq!(
            restored
                .get(kg(&user), user, "y".to_owned())
                .unwrap()
                .to_owned(),
            1
        );
    }

    /// The fuzz target's seeds (`fuzz/seeds/snapshot_file/`) are snapshots of today's format:
    /// this fails when the format changed and they were not regenerated (set
    /// `EXACTLY_WRITE_FUZZ_SEEDS=1` to rewrite them).
    #[test]
    fn fuzz_seeds_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/snapshot_file");
        let write = std::env::var_os("EXACTLY_WRITE_FUZZ_SEEDS").is_some();
        let check = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, bytes).unwrap();
            } else {
                let committed =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(
                    committed == bytes,
                    "{} is not a snapshot of the current format: run this test with \
                     EXACTLY_WRITE_FUZZ_SEEDS=1",
                    path.display()
                );
            }
        };
        let range = KeyGroupRange::new(0, 128);
        let mut numbers: StateTable<u64, (u64, i64)> = StateTable::new("n", range, 128);
        let mut strings: StateTable<String, Vec<u8>> = StateTable::new("s", range, 128);
        let mut timers: crate::runtime::state::TimerQueue<u64, i64> =
            crate::runtime::state::TimerQueue::new("t", range);
        for i in 0..6u64 {
            let g = key_group_of(i.stable_hash(), 128);
            numbers.insert(g, i, (i, -(i as i64)));
            timers.register(g, i as i64 * 10, i, 60);
            let s = format!("k{i}");
            strings.insert(key_group_of(s.stable_hash(), 128), s, vec![i as u8; 3]);
        }
        let mut w = SnapshotWriter::new(1);
        numbers.snapshot(&mut w).unwrap();
        check("numbers.snap", &w.finish().unwrap());
        let mut w = SnapshotWriter::new(2);
        strings.snapshot(&mut w).unwrap();
        timers.snapshot(&mut w).unwrap();
        check("strings-timers.snap", &w.finish().unwrap());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u16, i64),
        Remove(u16),
        Bump(u16),
        Upsert(u16),
        SnapshotRestore,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u16..200, any::<i64>()).prop_map(|(k, v)| Op::Insert(k, v)),
            (0u16..200).prop_map(Op::Remove),
            (0u16..200).prop_map(Op::Bump),
            (0u16..200).prop_map(Op::Upsert),
            Just(Op::SnapshotRestore),
        ]
    }

    proptest! {
        #[test]
        fn sort_by_hash_sorts(mut hashes in proptest::collection::vec(any::<u64>(), 0..3000), low_bits in any::<bool>()) {
            if low_bits {
                // Collisions in the top bits (all in one bucket) and duplicates.
                hashes.iter_mut().for_each(|h| *h %= 50);
            }
            let mut items: Vec<(u64, usize)> = hashes.iter().copied().zip(0..).collect();
            sort_by_hash(&mut items, &mut SortScratch::new());
            let mut expected = hashes.clone();
            expected.sort_unstable();
            prop_assert_eq!(items.iter().map(|e| e.0).collect::<Vec<_>>(), expected);
            let mut ids: Vec<usize> = items.iter().map(|e| e.1).collect();
            ids.sort_unstable();
            prop_assert_eq!(ids, (0..hashes.len()).collect::<Vec<_>>());
        }

        /// The table (through any number of snapshot/restore round trips) behaves like a map.
        #[test]
        fn behaves_like_a_hash_map(ops in proptest::collection::vec(op(), 0..200)) {
            let mut t: StateTable<String, i64> = StateTable::new("p", full(), GROUPS);
            let mut model: HashMap<String, i64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        let k = k.to_string();
                        prop_assert_eq!(t.insert(kg(&k), k.clone(), v), model.insert(k, v).is_some());
                    }
                    Op::Remove(k) => {
                        let k = k.to_string();
                        prop_assert_eq!(t.remove(kg(&k), &k), model.remove(&k));
                    }
                    Op::Bump(k) => {
                        let k = k.to_string();
                        let got = t.get_mut(kg(&k), &k).map(|v| { *v = v.wrapping_add(1); *v });
                        let want = model.get_mut(&k).map(|v| { *v = v.wrapping_add(1); *v });
                        prop_assert_eq!(got, want);
                    }
                    Op::Upsert(k) => {
                        let k = k.to_string();
                        let got = *t.get_or_insert_with(kg(&k), k.clone(), || 5);
                        let want = *model.entry(k).or_insert(5);
                        prop_assert_eq!(got, want);
                    }
                    Op::SnapshotRestore => t = snapshot_and_restore(&t),
                }
                prop_assert_eq!(t.len(), model.len());
            }
            assert_matches_model(&t, &model);
        }
    }
}
