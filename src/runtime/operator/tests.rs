//! Keyed process functions without tasks, and a small harness that drives any keyed operator
//! the way keyed subtasks do (records routed by key group, watermarks, snapshot, restore at
//! another parallelism) — shared with the window operator's tests.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::runtime::state::{key_group_of, KeyGroupRange, StableHash};

/// Operators with their key groups, as the keyed subtasks hold them.
type Subtasks<K, T, O> = Vec<(KeyGroupRange, Box<dyn OpInstance<K, T, O>>)>;

type Make<K, T, O> = Arc<dyn Fn(KeyedOperatorFactory) -> Box<dyn OpInstance<K, T, O>>>;

/// Operators of `parallelism` subtasks over `key_groups` key groups, fed like keyed subtasks.
pub(crate) struct Harness<K, T, O> {
    make: Make<K, T, O>,
    key_groups: u16,
    pub(crate) metrics: Registry,
    ops: Subtasks<K, T, O>,
    /// Results, in the order the operators emitted them.
    pub(crate) out: Vec<O>,
    /// Side outputs.
    pub(crate) side: Vec<OutputRecord>,
}

impl<K: StateKey, T, O> Harness<K, T, O> {
    pub(crate) fn new(
        make: impl Fn(KeyedOperatorFactory) -> Box<dyn OpInstance<K, T, O>> + 'static,
        parallelism: usize,
        key_groups: u16,
    ) -> Self {
        let mut h = Harness {
            make: Arc::new(make),
            key_groups,
            metrics: Registry::default(),
            ops: Vec::new(),
            out: Vec::new(),
            side: Vec::new(),
        };
        h.ops = h.create(parallelism);
        h
    }

    fn create(&self, parallelism: usize) -> Subtasks<K, T, O> {
        (0..parallelism)
            .map(|j| {
                let range =
                    KeyGroupRange::for_subtask(j as u32, parallelism as u32, self.key_groups);
                let op = (self.make)(KeyedOperatorFactory {
                    range,
                    key_groups: self.key_groups,
                    subtask: j,
                    metrics: self.metrics.clone(),
                });
                (range, op)
            })
            .collect()
    }

    pub(crate) fn process(&mut self, key: K, value: T, ts: i64) {
        let kg = key_group_of(key.stable_hash(), self.key_groups);
        let (_, op) = self
            .ops
            .iter_mut()
            .find(|(r, _)| r.contains(kg))
            .expect("a subtask for every key group");
        op.process(kg, key, value, ts, &mut self.out, &mut self.side);
    }

    pub(crate) fn watermark(&mut self, watermark: i64) {
        for (_, op) in &mut self.ops {
            op.advance_watermark(watermark, &mut self.out);
        }
    }

    pub(crate) fn state_entries(&self) -> usize {
        self.ops.iter().map(|(_, op)| op.state_entries()).sum()
    }

    /// Snapshots every subtask (as a checkpoint would), then replaces them with `parallelism`
    /// fresh subtasks restored from all the files (as a restart at that parallelism does).
    pub(crate) fn restart(&mut self, parallelism: usize) {
        let files: Vec<SnapshotFile> = self
            .ops
            .iter()
            .enumerate()
            .map(|(j, (_, op))| {
                let mut w = SnapshotWriter::new(op.state_fingerprint());
                op.snapshot(&mut w).unwrap();
                let bytes = w.finish().unwrap();
                SnapshotFile::from_bytes(Path::new(&format!("keyed-{j}")), &bytes).unwrap()
            })
            .collect();
        self.ops = self.create(parallelism);
        for (_, op) in &mut self.ops {
            for file in &files {
                op.restore(file).unwrap();
            }
        }
    }
}

/// Per key: counts records and, 10 ms after a key's first record, emits
/// `(key, count, timer time)` and clears the key.
struct CountThenFire;

impl KeyedProcessFunction<u64, i64> for CountThenFire {
    type State = u64;
    type Out = (u64, u64, i64);
    fn process(
        &mut self,
        _key: &u64,
        _value: i64,
        ctx: &mut ProcessContext<'_, u64, u64, (u64, u64, i64)>,
    ) {
        let first = ctx.state().is_none();
        *ctx.state_or_insert_with(|| 0) += 1;
        if first {
            let at = ctx.timestamp() + 10;
            ctx.register_timer(at);
        }
    }
    fn on_timer(
        &mut self,
        key: &u64,
        timestamp: i64,
        ctx: &mut ProcessContext<'_, u64, u64, (u64, u64, i64)>,
    ) {
        assert_eq!(ctx.timestamp(), timestamp);
        let count = ctx.take_state().expect("state of a key with a timer");
        ctx.emit((*key, count, timestamp));
    }
}

fn process_harness(parallelism: usize) -> Harness<u64, i64, (u64, u64, i64)> {
    Harness::new(
        |f| Box::new(ProcessOperator::new(CountThenFire, f)) as Box<dyn OpInstance<u64, i64, _>>,
        parallelism,
        16,
    )
}

#[test]
fn process_function_keeps_state_per_key_and_fires_timers_in_timestamp_order() {
    let mut h = process_harness(1);
    h.process(1, 0, 100);
    h.process(2, 0, 95);
    h.process(1, 0, 104); // same key: counted, no second timer
    h.process(3, 0, 90);
    assert_eq!(h.state_entries(), 3);
    h.watermark(99);
    assert!(h.out.is_empty(), "no timer is due before 100: {:?}", h.out);
    h.watermark(200);
    assert_eq!(h.out, vec![(3, 1, 100), (2, 1, 105), (1, 2, 110)]);
    assert_eq!(h.state_entries(), 0, "take_state cleared every key");
    // A key seen again after its state was taken starts over.
    h.process(1, 0, 300);
    h.watermark(310);
    assert_eq!(h.out.last(), Some(&(1, 1, 310)));
}

#[test]
fn timers_registered_and_deleted_from_the_context() {
    /// Registers a timer at the record's time + 5, and deletes the previous one of its key:
    /// only each key's last timer fires.
    struct Debounce;
    impl KeyedProcessFunction<u64, i64> for Debounce {
        type State = i64;
        type Out = (u64, i64);
        fn process(
            &mut self,
            _key: &u64,
            _value: i64,
            ctx: &mut ProcessContext<'_, u64, i64, (u64, i64)>,
        ) {
            if let Some(previous) = ctx.take_state() {
                assert!(ctx.delete_timer(previous));
            }
            let at = ctx.timestamp() + 5;
            ctx.register_timer(at);
            *ctx.state_or_insert_with(|| at) = at;
        }
        fn on_timer(
            &mut self,
            key: &u64,
            timestamp: i64,
            ctx: &mut ProcessContext<'_, u64, i64, (u64, i64)>,
        ) {
            ctx.take_state();
            ctx.emit((*key, timestamp));
        }
    }
    let mut h = Harness::new(
        |f| Box::new(ProcessOperator::new(Debounce, f)) as Box<dyn OpInstance<u64, i64, _>>,
        1,
        16,
    );
    for ts in [10, 12, 14] {
        h.process(7, 0, ts);
    }
    h.process(8, 0, 11);
    h.watermark(100);
    assert_eq!(h.out, vec![(8u64, 16i64), (7, 19)]);
}

/// Keys spread over both halves of 16 key groups, and timers at different times.
fn process_input() -> Vec<(u64, i64)> {
    (0..400u64)
        .map(|i| (i % 37, (i as i64) * 3 + (i % 5) as i64))
        .collect()
}

fn run_process(input: &[(u64, i64)], restart_at: Option<(usize, usize)>) -> Vec<(u64, u64, i64)> {
    let mut h = process_harness(1);
    for (i, &(key, ts)) in input.iter().enumerate() {
        if let Some((at, parallelism)) = restart_at {
            if i == at {
                h.restart(parallelism);
            }
        }
        h.process(key, 0, ts);
        h.watermark(ts - 20);
    }
    h.watermark(i64::MAX);
    assert_eq!(h.state_entries(), 0);
    let mut out = std::mem::take(&mut h.out);
    out.sort();
    out
}

#[test]
fn process_function_checkpoint_round_trip_with_rescale_from_1_to_2() {
    let input = process_input();
    let want = run_process(&input, None);
    assert!(want.len() > 37, "several timers per key: {}", want.len());
    assert_eq!(
        run_process(&input, Some((150, 1))),
        want,
        "restored at the same parallelism"
    );
    assert_eq!(
        run_process(&input, Some((150, 2))),
        want,
        "restored at parallelism 2"
    );
}

#[test]
fn restore_at_parallelism_2_gives_each_subtask_exactly_its_key_groups() {
    let mut h = process_harness(1);
    for key in 0..64u64 {
        h.process(key, 0, 1_000);
    }
    h.restart(2);
    let mut total = 0;
    for (range, op) in &h.ops {
        let mut keys = 0;
        for key in 0..64u64 {
            if range.contains(key_group_of(key.stable_hash(), 16)) {
                keys += 1;
            }
        }
        assert!(keys > 0 && keys < 64, "both subtasks get keys: {keys}");
        assert_eq!(op.state_entries(), keys, "subtask of {range:?}");
        total += op.state_entries();
    }
    assert_eq!(total, 64);
    // Each subtask has the timers of its own keys only: every key fires once.
    h.watermark(i64::MAX);
    assert_eq!(h.out.len(), 64);
    assert_eq!(h.state_entries(), 0);
}
