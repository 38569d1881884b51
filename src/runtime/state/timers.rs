//! Event-time timers per key group: registered by keyed operators, fired by the watermark.
//!
//! Why: a keyed operator asks to be called back when the event-time watermark passes a
//! timestamp for a key and a *namespace* (the window operator uses the window's end as the
//! namespace, as Flink's `InternalTimerService` does — see Flink's
//! [timers](https://nightlies.apache.org/flink/flink-docs-stable/docs/dev/datastream/operators/process_function/#timers)).
//! Timers are deduplicated (registering the same `(timestamp, key, namespace)` twice fires once),
//! fire in timestamp order across all key groups of the subtask, and are part of the checkpoint,
//! one section per key group like the keyed state (so they move with their key group on rescale).
//!
//! # Structure
//!
//! Per key group an ordered set of `(timestamp, key, namespace)`; across key groups an ordered
//! set of each non-empty group's earliest timestamp, so [`TimerQueue::pop_due`] and
//! [`TimerQueue::next_due`] are O(log n) without scanning the groups.
//!
//! # Restore: deserialized, not read in place
//!
//! Unlike the state table, restored timers are deserialized into the ordered sets at once.
//! Timers are consumed front to back and deleted at random, so reading them in place would need
//! a cursor and tombstones per group for little gain: the set of pending timers is small next to
//! the keyed state (at most a few per key and window), and deserializing is cheap —
//! measured with `benches/state.rs` (`timers/restore_1e6`): see the figure below.
//!
//! Figure (this machine, 2 shared cores, `cargo bench --bench state -- timers`): restoring
//! 1e6 timers `(i64, u64, i64)` over 128 key groups — validate + deserialize + build the
//! sets — takes about TIMERS_RESTORE_MS; see the state branch's report.

use std::collections::BTreeSet;
use std::marker::PhantomData;

use rkyv::Archived;

use super::keygroup::KeyGroupRange;
use super::mmap::Validated;
use super::snapshot::{MappedSection, SnapshotFile, SnapshotWriter};
use super::table::{deserialize, SerializeIter, StateValue};
use crate::runtime::RuntimeError;

/// One timer: event time, key, namespace.
type Timer<K, N> = (i64, K, N);

/// The event-time timers of one subtask for its key-group range.
///
/// Every method taking a key group panics if it is not in the queue's range (a routing bug).
pub struct TimerQueue<K, N> {
    name: &'static str,
    range: KeyGroupRange,
    groups: Vec<BTreeSet<Timer<K, N>>>,
    /// `(earliest timestamp, key group)` for each non-empty group.
    heads: BTreeSet<(i64, u16)>,
    len: usize,
}

impl<K, N> std::fmt::Debug for TimerQueue<K, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerQueue")
            .field("name", &self.name)
            .field("range", &self.range)
            .field("len", &self.len)
            .field("next_due", &self.heads.first().map(|h| h.0))
            .finish()
    }
}

impl<K, N> TimerQueue<K, N>
where
    K: StateValue + Ord + Clone,
    N: StateValue + Ord + Clone,
{
    /// An empty queue named `name` (its snapshot sections' name: 1..=40 bytes, unique per
    /// file) for the key groups `range`.
    pub fn new(name: &'static str, range: KeyGroupRange) -> Self {
        TimerQueue {
            name,
            range,
            groups: (0..range.len()).map(|_| BTreeSet::new()).collect(),
            heads: BTreeSet::new(),
            len: 0,
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The key groups the queue holds.
    pub fn range(&self) -> KeyGroupRange {
        self.range
    }

    fn index(&self, kg: u16) -> usize {
        assert!(
            self.range.contains(kg),
            "key group {kg} is not in {} range {:?}",
            self.name,
            self.range
        );
        usize::from(kg - self.range.start)
    }

    fn head_of(&self, i: usize) -> Option<i64> {
        self.groups[i].first().map(|t| t.0)
    }

    /// Replaces group `i`'s entry in `heads` after its earliest timestamp changed from `old`.
    fn update_head(&mut self, i: usize, old: Option<i64>) {
        let new = self.head_of(i);
        if new != old {
            let kg = self.range.start + i as u16;
            if let Some(old) = old {
                self.heads.remove(&(old, kg));
            }
            if let Some(new) = new {
                self.heads.insert((new, kg));
            }
        }
    }

    /// Registers a timer; returns false if the same timer was already registered.
    pub fn register(&mut self, kg: u16, ts: i64, key: K, ns: N) -> bool {
        let i = self.index(kg);
        let old = self.head_of(i);
        if !self.groups[i].insert((ts, key, ns)) {
            return false;
        }
        self.len += 1;
        if old.is_none_or(|old| ts < old) {
            self.update_head(i, old);
        }
        true
    }

    /// Deletes a timer; returns whether it was registered.
    pub fn delete(&mut self, kg: u16, ts: i64, key: K, ns: N) -> bool {
        let i = self.index(kg);
        let old = self.head_of(i);
        if !self.groups[i].remove(&(ts, key, ns)) {
            return false;
        }
        self.len -= 1;
        if old == Some(ts) {
            self.update_head(i, old);
        }
        true
    }

    /// Removes and returns the earliest timer with timestamp `<= watermark` (Flink fires a timer
    /// when the watermark reaches its timestamp): `(key group, timestamp, key, namespace)`.
    /// Timers come out in timestamp order across the key groups.
    pub fn pop_due(&mut self, watermark: i64) -> Option<(u16, i64, K, N)> {
        let &(ts, kg) = self.heads.first()?;
        if ts > watermark {
            return None;
        }
        let i = usize::from(kg - self.range.start);
        let (ts, key, ns) = self.groups[i].pop_first()?;
        self.len -= 1;
        self.update_head(i, Some(ts));
        Some((kg, ts, key, ns))
    }

    /// The earliest timestamp of any timer.
    pub fn next_due(&self) -> Option<i64> {
        self.heads.first().map(|h| h.0)
    }

    /// The number of timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no timers.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of timers in key group `kg`.
    pub fn len_in_group(&self, kg: u16) -> usize {
        self.groups[self.index(kg)].len()
    }

    /// Writes the timers of key group `kg` as a section named after the queue: the archive of
    /// a `Vec<(i64, K, N)>` in timestamp order.
    pub fn snapshot_key_group(
        &self,
        kg: u16,
        out: &mut SnapshotWriter,
    ) -> Result<(), RuntimeError> {
        let set = &self.groups[self.index(kg)];
        out.add_archived(
            self.name,
            Some(kg),
            &SerializeIter::<Timer<K, N>, _>(set.iter(), PhantomData),
        )
    }

    /// Writes every key group of the range into `out`.
    pub fn snapshot(&self, out: &mut SnapshotWriter) -> Result<(), RuntimeError> {
        for kg in self.range.iter() {
            self.snapshot_key_group(kg, out)?;
        }
        Ok(())
    }

    /// Replaces the timers of key group `kg` with those in `section` (validated, then
    /// deserialized; see the module docs). A bad section is
    /// [`RuntimeError::CorruptCheckpoint`] and leaves the group as it was.
    pub fn restore_key_group(
        &mut self,
        kg: u16,
        section: MappedSection,
    ) -> Result<(), RuntimeError> {
        let i = self.index(kg);
        let name = self.name;
        let archived =
            Validated::<Archived<Vec<Timer<K, N>>>>::new(section.clone()).map_err(|e| {
                section.corrupt(format!(
                    "section {name} key group {kg} is not a valid archive: {e}"
                ))
            })?;
        let set: BTreeSet<Timer<K, N>> = archived
            .get()
            .iter()
            .map(deserialize::<Timer<K, N>>)
            .collect();
        let old = self.head_of(i);
        self.len = self.len - self.groups[i].len() + set.len();
        self.groups[i] = set;
        self.update_head(i, old);
        Ok(())
    }

    /// Restores every key group of the range that has a section named after the queue in
    /// `file`. Returns how many were restored.
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
                        "section {} has no key group but holds timers",
                        self.name
                    )))
                }
            }
        }
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    fn queue() -> TimerQueue<u64, i64> {
        TimerQueue::new("timers", KeyGroupRange::new(2, 6))
    }

    fn round_trip(q: &TimerQueue<u64, i64>) -> TimerQueue<u64, i64> {
        let mut w = SnapshotWriter::new(1);
        q.snapshot(&mut w).unwrap();
        let bytes = w.finish().unwrap();
        let file = SnapshotFile::from_bytes(Path::new("t.snap"), &bytes).unwrap();
        let mut r = TimerQueue::new(q.name(), q.range());
        assert_eq!(r.restore(&file).unwrap(), 4);
        r
    }

    #[test]
    fn fires_in_timestamp_order_across_groups_and_dedups() {
        let mut q = queue();
        assert!(q.register(3, 30, 1, 60));
        assert!(q.register(2, 10, 2, 60));
        assert!(q.register(5, 20, 3, 60));
        assert!(!q.register(5, 20, 3, 60));
        assert!(q.register(5, 20, 3, 120));
        assert_eq!(q.len(), 4);
        assert_eq!(q.next_due(), Some(10));
        assert_eq!(q.pop_due(9), None);
        assert_eq!(q.pop_due(25), Some((2, 10, 2, 60)));
        assert_eq!(q.pop_due(25), Some((5, 20, 3, 60)));
        assert!(q.delete(5, 20, 3, 120));
        assert!(!q.delete(5, 20, 3, 120));
        assert_eq!(q.pop_due(25), None);
        assert_eq!(q.next_due(), Some(30));
        assert_eq!(q.pop_due(i64::MAX), Some((3, 30, 1, 60)));
        assert!(q.is_empty());
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn snapshot_restore_keeps_timers() {
        let mut q = queue();
        for i in 0..100u64 {
            q.register(2 + (i % 4) as u16, (i * 7 % 50) as i64, i, 1);
        }
        let mut r = round_trip(&q);
        assert_eq!(r.len(), 100);
        let mut previous = i64::MIN;
        let mut fired = 0;
        while let Some((kg, ts, key, _)) = r.pop_due(i64::MAX) {
            assert!(ts >= previous);
            assert_eq!(kg, 2 + (key % 4) as u16);
            previous = ts;
            fired += 1;
        }
        assert_eq!(fired, 100);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Register(u16, i64, u64),
        Delete(u16, i64, u64),
        Pop(i64),
        RoundTrip,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (2u16..6, 0i64..50, 0u64..5).prop_map(|(g, t, k)| Op::Register(g, t, k)),
            (2u16..6, 0i64..50, 0u64..5).prop_map(|(g, t, k)| Op::Delete(g, t, k)),
            (0i64..60).prop_map(Op::Pop),
            Just(Op::RoundTrip),
        ]
    }

    proptest! {
        /// Against a model (one ordered set of (ts, kg, key)), through snapshot round trips.
        #[test]
        fn behaves_like_an_ordered_set(ops in proptest::collection::vec(op(), 0..150)) {
            let mut q = queue();
            let mut model: BTreeSet<(i64, u16, u64)> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Register(g, t, k) => prop_assert_eq!(q.register(g, t, k, 0), model.insert((t, g, k))),
                    Op::Delete(g, t, k) => prop_assert_eq!(q.delete(g, t, k, 0), model.remove(&(t, g, k))),
                    Op::Pop(w) => match q.pop_due(w) {
                        Some((g, t, k, _)) => {
                            // The earliest due timer (ties between groups in any order).
                            prop_assert_eq!(model.first().map(|m| m.0), Some(t));
                            prop_assert!(t <= w);
                            prop_assert!(model.remove(&(t, g, k)));
                        }
                        None => prop_assert!(model.first().is_none_or(|m| m.0 > w)),
                    },
                    Op::RoundTrip => q = round_trip(&q),
                }
                prop_assert_eq!(q.len(), model.len());
                prop_assert_eq!(q.next_due(), model.first().map(|m| m.0));
            }
        }
    }
}
