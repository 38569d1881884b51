//! The window operators with plain numbers (no tasks): assignment, firing order, lateness and
//! cleanup, session merging, the late-data output, checkpoint round trips with rescaling, and a
//! property test against a naive oracle.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::runtime::metrics::Registry;
use crate::runtime::operator::tests::Harness;
use crate::runtime::state::{KeyGroupRange, StableHash};

type Out = WindowResult<u64, u64>;

fn starts(windows: Windows, ts: i64) -> Vec<i64> {
    let mut v = Vec::new();
    windows.for_each_start(ts, |s| v.push(s));
    v
}

/// A counting window operator; late records encoded as their value if `late_output`.
fn make(
    windows: Windows,
    lateness_ms: i64,
    late_output: bool,
) -> impl Fn(KeyedOperatorFactory) -> Box<dyn OpInstance<u64, i64, Out>> {
    move |f| {
        let encode: Option<LateEncode<i64>> = late_output
            .then(|| Arc::new(|v: &i64| (None, Bytes::from(v.to_string()))) as LateEncode<i64>);
        window_operator(Arc::new(Count), windows, lateness_ms, encode, f)
    }
}

fn harness(windows: Windows, lateness_ms: i64) -> Harness<u64, i64, Out> {
    Harness::new(make(windows, lateness_ms, false), 1, 16)
}

fn factory() -> KeyedOperatorFactory {
    KeyedOperatorFactory {
        range: KeyGroupRange::new(0, 16),
        key_groups: 16,
        subtask: 0,
        metrics: Registry::default(),
    }
}

/// (key, start, end, count), as the results came.
fn results(out: &[Out]) -> Vec<(u64, i64, i64, u64)> {
    out.iter()
        .map(|r| (r.key, r.window.start, r.window.end, r.result))
        .collect()
}

fn late_count(h: &Harness<u64, i64, Out>) -> u64 {
    h.metrics.counter("late_records_total", "").get()
}

#[test]
fn assignment_is_epoch_aligned_also_for_negative_timestamps() {
    let t = Windows::tumbling(10);
    assert_eq!(starts(t, 61), vec![60]);
    assert_eq!(starts(t, 0), vec![0]);
    assert_eq!(starts(t, -1), vec![-10]);
    assert_eq!(starts(t, -10), vec![-10]);
    assert_eq!(starts(t, -11), vec![-20]);
    let s = Windows::sliding(10, 5);
    assert_eq!(starts(s, 12), vec![10, 5]);
    assert_eq!(starts(s, 10), vec![10, 5]);
    assert_eq!(starts(s, -1), vec![-5, -10]);
    assert_eq!(starts(s, -5), vec![-5, -10]);
    assert_eq!(starts(s, -6), vec![-10, -15]);
    // A slide longer than the size leaves gaps no window covers.
    let gaps = Windows::sliding(5, 10);
    assert_eq!(starts(gaps, 3), vec![0]);
    assert_eq!(starts(gaps, 7), Vec::<i64>::new());
    assert_eq!(starts(gaps, -3), Vec::<i64>::new());
    assert_eq!(starts(gaps, -7), vec![-10]);
    assert_eq!(starts(Windows::session(10), -7), vec![-7]);

    let mut h = harness(t, 0);
    for ts in [-1, -10, -11, 0] {
        h.process(1, ts, ts);
    }
    h.watermark(i64::MAX);
    assert_eq!(
        results(&h.out),
        vec![(1, -20, -10, 1), (1, -10, 0, 2), (1, 0, 10, 1)]
    );
}

#[test]
#[should_panic(expected = "window lengths must be positive")]
fn a_window_length_of_zero_is_refused() {
    Windows::sliding(10, 0);
}

#[test]
fn windows_fire_in_end_order_when_the_watermark_reaches_their_last_millisecond() {
    let mut h = harness(Windows::tumbling(10), 0);
    h.process(1, 0, 25);
    h.process(2, 0, 5);
    h.process(1, 0, 7);
    h.process(3, 0, 14);
    h.process(3, 0, 31);
    h.watermark(8);
    assert!(h.out.is_empty());
    h.watermark(9);
    let mut first = results(&h.out);
    first.sort();
    assert_eq!(first, vec![(1, 0, 10, 1), (2, 0, 10, 1)]);
    h.out.clear();
    h.watermark(100);
    assert_eq!(
        results(&h.out),
        vec![(3, 10, 20, 1), (1, 20, 30, 1), (3, 30, 40, 1)]
    );
    assert_eq!(h.state_entries(), 0);
}

#[test]
fn a_record_later_than_the_lateness_is_counted_not_output() {
    let mut h = harness(Windows::tumbling(10), 0);
    h.process(1, 0, 5);
    h.watermark(9);
    h.process(1, 0, 3);
    h.watermark(100);
    assert_eq!(results(&h.out), vec![(1, 0, 10, 1)]);
    assert_eq!(late_count(&h), 1);
    assert!(h.side.is_empty(), "no late output configured");
}

#[test]
fn late_records_go_to_the_late_output_when_there_is_one() {
    for windows in [
        Windows::tumbling(10),
        Windows::sliding(10, 5),
        Windows::session(10),
    ] {
        let mut h = Harness::new(make(windows, 0, true), 1, 16);
        h.process(1, 100, 5);
        h.watermark(30);
        h.process(1, 101, 3);
        h.process(2, 102, 4);
        assert_eq!(late_count(&h), 2, "{windows:?}");
        let late: Vec<(Target, Option<Bytes>)> =
            h.side.iter().map(|r| (r.target, r.value.clone())).collect();
        assert_eq!(
            late,
            vec![
                (Target::Late, Some(Bytes::from_static(b"101"))),
                (Target::Late, Some(Bytes::from_static(b"102")))
            ],
            "{windows:?}"
        );
        assert_eq!(
            h.out.len(),
            if windows == Windows::sliding(10, 5) {
                2
            } else {
                1
            },
            "{windows:?}"
        );
    }
}

#[test]
fn a_sliding_record_late_for_one_window_only_is_not_late() {
    let mut h = harness(Windows::sliding(10, 5), 0);
    h.process(1, 0, 7); // [0, 10) and [5, 15)
    h.watermark(9);
    assert_eq!(results(&h.out), vec![(1, 0, 10, 1)]);
    h.process(1, 0, 8); // [0, 10) is gone, [5, 15) takes it
    h.watermark(14);
    assert_eq!(results(&h.out)[1..], [(1, 5, 15, 2)]);
    assert_eq!(late_count(&h), 0);
    assert_eq!(h.state_entries(), 0);
}

#[test]
fn a_record_between_sliding_windows_is_in_none_and_not_late() {
    // Windows [0, 5), [10, 15), ...: 7 is in none of them, and not late either (Flink counts a
    // record late only if it is itself past the lateness).
    let mut h = harness(Windows::sliding(5, 10), 0);
    h.process(1, 0, 3);
    h.process(1, 0, 7);
    h.watermark(i64::MAX);
    assert_eq!(results(&h.out), vec![(1, 0, 5, 1)]);
    assert_eq!(late_count(&h), 0);
}

#[test]
fn after_a_restore_a_window_within_its_lateness_fires_again_at_the_next_watermark() {
    // The watermark is not part of the snapshot (the restored operator starts at the lowest);
    // a record for a window that fired before the snapshot must still make it fire again.
    for windows in [
        Windows::tumbling(10),
        Windows::sliding(10, 10),
        Windows::session(10),
    ] {
        let mut h = harness(windows, 100);
        h.process(1, 0, 0);
        h.watermark(20);
        assert_eq!(results(&h.out).len(), 1, "{windows:?}");
        h.restart(2);
        h.process(1, 0, 0);
        h.watermark(25);
        let r = results(&h.out);
        assert_eq!(r.len(), 2, "{windows:?}: {r:?}");
        assert_eq!(r[1].3, 2, "{windows:?}: fires again with both records");
    }
}

#[test]
fn tumbling_lateness_fires_again_with_the_update_and_cleans_up_at_end_plus_lateness() {
    let mut h = harness(Windows::tumbling(10), 5);
    h.process(1, 0, 5);
    h.watermark(9);
    assert_eq!(results(&h.out), vec![(1, 0, 10, 1)]);
    h.process(1, 0, 3); // within the lateness: fires again at once
    assert_eq!(results(&h.out)[1..], [(1, 0, 10, 2)]);
    h.watermark(13);
    assert_eq!(h.state_entries(), 1, "kept until end - 1 + lateness");
    h.watermark(14);
    assert_eq!(h.state_entries(), 0, "cleaned at end - 1 + lateness");
    h.process(1, 0, 4);
    assert_eq!(late_count(&h), 1);
    h.watermark(100);
    assert_eq!(h.out.len(), 2, "no further firing: {:?}", results(&h.out));
}

#[test]
fn sliding_lateness_fires_again_and_cleans_up() {
    let mut h = harness(Windows::sliding(10, 5), 5);
    h.process(1, 0, 7); // [5, 15) and [0, 10)
    h.watermark(9);
    assert_eq!(results(&h.out), vec![(1, 0, 10, 1)]);
    h.process(1, 0, 8);
    assert_eq!(
        results(&h.out)[1..],
        [(1, 0, 10, 2)],
        "[0, 10) fires again at once"
    );
    h.watermark(14); // cleans [0, 10), fires [5, 15)
    assert_eq!(results(&h.out)[2..], [(1, 5, 15, 2)]);
    assert_eq!(h.state_entries(), 1);
    h.watermark(19);
    assert_eq!(h.state_entries(), 0);
    h.process(1, 0, 6); // both windows past their cleanup time
    assert_eq!(late_count(&h), 1);
    assert_eq!(h.out.len(), 3);
}

fn session_operator(gap_ms: i64, lateness_ms: i64) -> SessionOperator<u64, i64, Count> {
    SessionOperator::new(Arc::new(Count), gap_ms, lateness_ms, None, factory())
}

fn feed(op: &mut SessionOperator<u64, i64, Count>, out: &mut Vec<Out>, key: u64, ts: i64) {
    let kg = crate::runtime::state::key_group_of(key.stable_hash(), 16);
    op.process(kg, key, 0, ts, out, &mut Vec::new());
}

#[test]
fn sessions_merge_and_the_timers_of_merged_windows_are_deleted() {
    let mut op = session_operator(10, 0);
    let mut out = Vec::new();
    feed(&mut op, &mut out, 1, 0);
    feed(&mut op, &mut out, 1, 5); // [0, 15)
    feed(&mut op, &mut out, 1, 30); // [30, 40)
    assert_eq!(op.timers.len(), 2);
    feed(&mut op, &mut out, 1, 20); // [20, 30) touches [30, 40): [20, 40)
    assert_eq!(op.timers.len(), 2);
    feed(&mut op, &mut out, 2, 21); // another key
    feed(&mut op, &mut out, 1, 12); // [12, 22) bridges [0, 15) and [20, 40): [0, 40)
    assert_eq!(
        op.timers.len(),
        2,
        "one timer per session left: {:?}",
        op.timers
    );
    assert_eq!(op.state_entries(), 2);
    op.advance_watermark(30, &mut out);
    assert_eq!(results(&out), vec![(2, 21, 31, 1)]);
    op.advance_watermark(38, &mut out);
    assert_eq!(out.len(), 1);
    op.advance_watermark(39, &mut out);
    assert_eq!(
        results(&out)[1..],
        [(1, 0, 40, 5)],
        "ends at the last record + gap"
    );
    assert_eq!(op.state_entries(), 0);
    assert!(op.timers.is_empty());
}

#[test]
fn records_gap_apart_are_one_session_and_farther_ones_are_two() {
    let mut h = harness(Windows::session(10), 0);
    h.process(1, 0, 0);
    h.process(1, 0, 10); // touches [0, 10): one session (Flink's intersects)
    h.process(2, 0, 0);
    h.process(2, 0, 11); // one more: two sessions
    h.watermark(i64::MAX);
    let mut r = results(&h.out);
    r.sort();
    assert_eq!(r, vec![(1, 0, 20, 2), (2, 0, 10, 1), (2, 11, 21, 1)]);
}

#[test]
fn a_record_whose_own_session_is_late_still_joins_a_live_session() {
    let mut op = session_operator(10, 0);
    let mut out = Vec::new();
    feed(&mut op, &mut out, 1, 50); // [50, 60)
    op.advance_watermark(52, &mut out);
    feed(&mut op, &mut out, 1, 42); // own window [42, 52) is past, but it touches [50, 60)
    feed(&mut op, &mut out, 1, 30); // [30, 40) is past and touches nothing: late
    assert_eq!(op.late.seen, 1);
    op.advance_watermark(i64::MAX, &mut out);
    assert_eq!(results(&out), vec![(1, 42, 60, 2)]);
}

#[test]
fn session_lateness_fires_again_and_cleans_up() {
    let mut h = harness(Windows::session(10), 20);
    h.process(1, 0, 0);
    h.watermark(9);
    assert_eq!(results(&h.out), vec![(1, 0, 10, 1)]);
    h.process(1, 0, 5); // extends the session to [0, 15), which has not ended yet
    h.watermark(14);
    assert_eq!(results(&h.out)[1..], [(1, 0, 15, 2)]);
    h.watermark(20);
    h.process(1, 0, 2); // within the lateness: fires again at once
    assert_eq!(results(&h.out)[2..], [(1, 0, 15, 3)]);
    h.watermark(33);
    assert_eq!(h.state_entries(), 1);
    h.watermark(34); // 14 + 20
    assert_eq!(h.state_entries(), 0);
    h.process(1, 0, 1);
    assert_eq!(late_count(&h), 1);
    h.watermark(i64::MAX);
    assert_eq!(h.out.len(), 3);
}

/// Records with event times in `[max seen - disorder, max seen]`, several keys, and the
/// watermark a source with that out-of-orderness would send.
fn drive(
    h: &mut Harness<u64, i64, Out>,
    input: &[(u64, i64)],
    disorder: i64,
    restart: Option<(usize, usize)>,
) {
    let mut max_ts = i64::MIN;
    for (i, &(key, ts)) in input.iter().enumerate() {
        if restart.is_some_and(|(at, _)| at == i) {
            h.restart(restart.unwrap().1);
        }
        h.process(key, ts, ts);
        max_ts = max_ts.max(ts);
        h.watermark(max_ts - disorder - 1);
    }
    h.watermark(i64::MAX);
}

fn sorted(out: &[Out]) -> Vec<(u64, i64, i64, u64)> {
    let mut r = results(out);
    r.sort();
    r
}

#[test]
fn checkpoint_round_trip_mid_window_with_rescale_gives_the_same_results() {
    // Keys over both halves of the key groups, windows open at every restart point.
    let input: Vec<(u64, i64)> = (0..300u64)
        .map(|i| (i % 23, (i as i64) * 2 - 100 - (i % 7) as i64))
        .collect();
    for windows in [
        Windows::tumbling(20),
        Windows::sliding(20, 5),
        Windows::session(3),
    ] {
        let mut plain = harness(windows, 0);
        drive(&mut plain, &input, 7, None);
        let want = sorted(&plain.out);
        assert!(want.len() > 23, "{windows:?}: {}", want.len());
        for (at, parallelism) in [(97, 1), (97, 2), (201, 2)] {
            let mut h = harness(windows, 0);
            drive(&mut h, &input, 7, Some((at, parallelism)));
            assert_eq!(
                sorted(&h.out),
                want,
                "{windows:?} restarted at {at} with parallelism {parallelism}"
            );
            assert_eq!(h.state_entries(), 0);
        }
    }
}

/// The oracle: every window of every record, counted, without the operator's machinery.
fn oracle(windows: Windows, input: &[(u64, i64)]) -> Vec<(u64, i64, i64, u64)> {
    let mut counts: BTreeMap<(u64, i64, i64), u64> = BTreeMap::new();
    match windows {
        Windows::Tumbling { size_ms: size } | Windows::Sliding { size_ms: size, .. } => {
            let slide = match windows {
                Windows::Sliding { slide_ms, .. } => slide_ms,
                _ => size,
            };
            for &(key, ts) in input {
                // Every start s with s <= ts < s + size that is a multiple of the slide.
                for s in (ts - size + 1)..=ts {
                    if s.rem_euclid(slide) == 0 {
                        *counts.entry((key, s, s + size)).or_default() += 1;
                    }
                }
            }
        }
        Windows::Session { gap_ms } => {
            let mut by_key: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
            for &(key, ts) in input {
                by_key.entry(key).or_default().push(ts);
            }
            for (key, mut ts) in by_key {
                ts.sort();
                let (mut start, mut end, mut n) = (ts[0], ts[0] + gap_ms, 0);
                for t in ts {
                    if t > end {
                        counts.insert((key, start, end), n);
                        (start, n) = (t, 0);
                    }
                    end = end.max(t + gap_ms);
                    n += 1;
                }
                counts.insert((key, start, end), n);
            }
        }
    }
    counts
        .into_iter()
        .map(|((k, s, e), c)| (k, s, e, c))
        .collect()
}

fn windows_strategy() -> impl Strategy<Value = Windows> {
    prop_oneof![
        (1i64..40).prop_map(Windows::tumbling),
        (1i64..40, 1i64..40).prop_map(|(size, slide)| Windows::sliding(size, slide)),
        (1i64..25).prop_map(Windows::session),
    ]
}

proptest! {
    /// With disorder below the watermark's out-of-orderness nothing is late, so the results
    /// are exactly the oracle's — also across a snapshot and a restore at another
    /// parallelism, and with all state and timers cleaned at the end.
    #[test]
    fn results_equal_the_oracle_for_bounded_disorder(
        windows in windows_strategy(),
        disorder in 1i64..20,
        start in -200i64..200,
        steps in proptest::collection::vec((0u64..6, 0i64..6, 0i64..20), 0..150),
        restart in proptest::option::of((0usize..150, 1usize..4)),
    ) {
        let mut t = start;
        let input: Vec<(u64, i64)> = steps
            .iter()
            .map(|&(key, step, back)| {
                t += step;
                (key, t - back % disorder) // at most disorder - 1 behind the latest
            })
            .collect();
        let mut h = Harness::new(make(windows, 0, false), 1, 16);
        drive(&mut h, &input, disorder, restart);
        prop_assert_eq!(late_count(&h), 0);
        prop_assert_eq!(sorted(&h.out), oracle(windows, &input));
        prop_assert_eq!(h.state_entries(), 0);
    }
}

/// Through the job builder and the tasks: session windows, and late records in the sink's
/// late-data output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_writes_session_results_and_late_records_to_their_outputs() {
    use crate::client::types::Record;
    use crate::runtime::connector::{MemorySink, MemorySource};
    use crate::runtime::{job, JobConfig, WatermarkConfig};

    // (key, ts), one split, one record per poll: a watermark follows every record.
    let input = [(1u64, 0i64), (1, 5), (1, 100), (1, 3), (2, 50), (1, 105)];
    let records: Vec<Record> = input
        .iter()
        .enumerate()
        .map(|(i, (k, ts))| Record {
            offset: i as i64,
            value: Some(Bytes::from(format!("{k},{ts}"))),
            ..Record::default()
        })
        .collect();
    let dir = std::env::temp_dir().join(format!(
        "exactly-sessions-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut config = JobConfig::new("sessions-test", &dir);
    config.bounded = true;
    config.checkpoint.interval_ms = 0;
    let metrics = config.metrics.clone();
    let sink = MemorySink::default();
    job(config, MemorySource::new(vec![records], 1))
        .deserialize(|r| {
            let s = std::str::from_utf8(r.record.value.as_deref().unwrap_or_default())
                .map_err(|e| e.to_string())?;
            let (k, ts) = s.split_once(',').ok_or("no comma")?;
            Ok((
                k.parse::<u64>().map_err(|e| e.to_string())?,
                ts.parse::<i64>().map_err(|e| e.to_string())?,
            ))
        })
        .timestamps(
            |r: &(u64, i64)| r.1,
            WatermarkConfig {
                out_of_orderness_ms: 0,
                idle_timeout_ms: None,
            },
        )
        .key_by(|r: &(u64, i64)| r.0)
        .window(Windows::session(10))
        .late_output(|r| {
            (
                Some(Bytes::from(r.0.to_string())),
                Bytes::from(r.1.to_string()),
            )
        })
        .aggregate(Count)
        .sink(sink.clone(), |r| {
            (
                None,
                Bytes::from(format!(
                    "{} [{}, {}) {}",
                    r.key, r.window.start, r.window.end, r.result
                )),
            )
        })
        .run()
        .await
        .unwrap();
    let of = |target: Target| -> Vec<String> {
        sink.committed()
            .iter()
            .filter(|r| r.target == target)
            .map(|r| String::from_utf8(r.value.as_deref().unwrap().to_vec()).unwrap())
            .collect()
    };
    assert_eq!(of(Target::Main), vec!["1 [0, 15) 2", "1 [100, 115) 2"]);
    assert_eq!(of(Target::Late), vec!["3", "50"]);
    assert_eq!(metrics.counter("late_records_total", "").get(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Checkpoints disabled (issue 9, at least once): a bounded job at parallelism 2 still fires
/// every window (final watermark) and ends once its sinks are flushed and closed, with no
/// checkpoint taken and nothing written in the checkpoint directory; the first record's time is
/// recorded for the startup figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_job_without_checkpoints_fires_every_window_and_ends() {
    use std::sync::Mutex;

    use crate::client::types::Record;
    use crate::runtime::connector::{
        BoxFuture, MemorySource, SinkFactory, SinkRecovery, SinkWriter,
    };
    use crate::runtime::{job, JobConfig, WatermarkConfig};

    /// Writes straight through (no epochs), counts closes: an at-least-once sink.
    #[derive(Clone, Default)]
    struct Through(Arc<Mutex<(Vec<OutputRecord>, usize)>>);
    impl SinkFactory for Through {
        fn recover<'a>(
            &'a self,
            _: Vec<serde_json::Value>,
            _: &'a BTreeMap<String, String>,
            _: usize,
        ) -> BoxFuture<'a, Result<SinkRecovery, RuntimeError>> {
            Box::pin(async { Ok(SinkRecovery::default()) })
        }
        fn properties(&self, _: usize) -> BTreeMap<String, String> {
            BTreeMap::new()
        }
        fn create(
            &self,
            _: usize,
            _: usize,
            _: Option<u64>,
        ) -> BoxFuture<'_, Result<Box<dyn SinkWriter>, RuntimeError>> {
            let me = self.clone();
            Box::pin(async move { Ok(Box::new(me) as Box<dyn SinkWriter>) })
        }
    }
    impl SinkWriter for Through {
        fn write<'a>(
            &'a mut self,
            records: &'a mut Vec<OutputRecord>,
        ) -> BoxFuture<'a, Result<(), RuntimeError>> {
            self.0.lock().unwrap().0.append(records);
            Box::pin(async { Ok(()) })
        }
        fn prepare(&mut self, _: u64) -> BoxFuture<'_, Result<serde_json::Value, RuntimeError>> {
            panic!("no barrier without checkpoints")
        }
        fn commit_up_to(&mut self, _: u64) -> BoxFuture<'_, Result<(), RuntimeError>> {
            panic!("no commit without checkpoints")
        }
        fn flush_commits(&mut self) -> BoxFuture<'_, Result<(), RuntimeError>> {
            Box::pin(async { Ok(()) })
        }
        fn close(self: Box<Self>) -> BoxFuture<'static, Result<(), RuntimeError>> {
            self.0.lock().unwrap().1 += 1;
            Box::pin(async { Ok(()) })
        }
    }

    // Two splits, keys 0..5, event time 0..2000 ms: windows of 100 ms.
    let split = |offset: i64| -> Vec<Record> {
        (0..1000)
            .map(|i| Record {
                offset: i,
                value: Some(Bytes::from(format!("{},{}", i % 5, 2 * i + offset))),
                ..Record::default()
            })
            .collect()
    };
    let dir = std::env::temp_dir().join(format!(
        "exactly-no-checkpoints-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut config = JobConfig::new("no-checkpoints-test", &dir);
    config.bounded = true;
    config.parallelism = 2;
    config.checkpoint.enabled = false;
    config.checkpoint.interval_ms = 1;
    let metrics = config.metrics.clone();
    let sink = Through::default();
    let report = job(config, MemorySource::new(vec![split(0), split(1)], 64))
        .deserialize(|r| {
            let s = std::str::from_utf8(r.record.value.as_deref().unwrap_or_default())
                .map_err(|e| e.to_string())?;
            let (k, ts) = s.split_once(',').ok_or("no comma")?;
            Ok((
                k.parse::<u64>().map_err(|e| e.to_string())?,
                ts.parse::<i64>().map_err(|e| e.to_string())?,
            ))
        })
        .timestamps(
            |r: &(u64, i64)| r.1,
            WatermarkConfig {
                out_of_orderness_ms: 0,
                idle_timeout_ms: None,
            },
        )
        .key_by(|r: &(u64, i64)| r.0)
        .window(Windows::tumbling(100))
        .aggregate(Count)
        .sink(sink.clone(), |r| {
            (
                None,
                Bytes::from(format!("{} {} {}", r.key, r.window.start, r.result)),
            )
        })
        .run()
        .await
        .unwrap();
    assert_eq!(report.checkpoints, 0);
    assert_eq!(report.restored_from, None);
    let (written, closed) = std::mem::take(&mut *sink.0.lock().unwrap());
    assert_eq!(closed, 2, "each subtask closes its sink");
    // Every window fired: the counts add up to the input, 5 keys x 20 windows.
    let total: u64 = written
        .iter()
        .map(|r| {
            let v = std::str::from_utf8(r.value.as_deref().unwrap()).unwrap();
            v.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(total, 2000);
    assert_eq!(written.len(), 5 * 20);
    assert!(
        !dir.exists(),
        "nothing may be written in the checkpoint dir"
    );
    assert!(metrics.gauge("first_record_time_unix_ms", "").get() > 0);
}

proptest! {
    /// Records up to `lateness` behind the watermark: windows fire, then fire again for each
    /// late record within the lateness. Nothing is late, the last result of every window is
    /// the oracle's count, every result is of a window (or, for sessions, part of a session)
    /// the oracle has, and all state is cleaned at the end.
    #[test]
    fn with_lateness_the_last_result_of_each_window_equals_the_oracle(
        windows in windows_strategy(),
        disorder in 1i64..10,
        lateness in 1i64..30,
        start in -200i64..200,
        steps in proptest::collection::vec((0u64..4, 0i64..8, 0i64..40), 0..120),
        restart in proptest::option::of((0usize..120, 1usize..4)),
    ) {
        let mut t = start;
        let input: Vec<(u64, i64)> = steps
            .iter()
            .map(|&(key, step, back)| {
                t += step;
                (key, t - back % (disorder + lateness))
            })
            .collect();
        let mut h = Harness::new(make(windows, lateness, false), 1, 16);
        drive(&mut h, &input, disorder, restart);
        prop_assert_eq!(late_count(&h), 0);
        prop_assert_eq!(h.state_entries(), 0);
        let want = oracle(windows, &input);
        let mut last: BTreeMap<(u64, i64, i64), u64> = BTreeMap::new();
        for r in results(&h.out) {
            let inside = want.iter().any(|w| match windows {
                Windows::Session { .. } => w.0 == r.0 && w.1 <= r.1 && r.2 <= w.2,
                _ => (w.0, w.1, w.2) == (r.0, r.1, r.2),
            });
            prop_assert!(inside, "{:?} is no window of the oracle's {:?}", r, want);
            last.insert((r.0, r.1, r.2), r.3);
        }
        for w in &want {
            prop_assert_eq!(last.get(&(w.0, w.1, w.2)), Some(&w.3), "last result of {:?}", w);
        }
    }
}
