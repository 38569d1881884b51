//! Keyed state snapshot and restore: rkyv snapshot files (this crate) against serde + bincode 1
//! of the same data as a `HashMap`, in the same run (issue 7, acceptance 5 and 6).
//!
//! State: `u64` user id → `Agg { count: u64, sum: i64, last_ts: i64 }`, 128 key groups, one
//! subtask owning all of them.
//!
//! - `snapshot/{rkyv,bincode}/N`: write the state to a file in a temporary directory (no fsync in
//!   either: the durability dance is the store's and costs the same for both).
//! - `restore_to_first_record/{rkyv,bincode}/N`: from the file to the value of one key: open +
//!   verify (crc32c) + validate every key group + `get`, against deserializing the whole map.
//! - `restore_parts/N`: the rkyv restore split up — `open` (map + checksum) and
//!   `open_validate` (+ rkyv validation of every section); `access_unchecked` would cost O(1)
//!   instead of the validation, so the difference is what validation costs.
//! - `timers/restore_1e6`: 1e6 timers restored (validated + deserialized into ordered sets).
//! - `restore_1gb/rkyv`: restore to first record of ~1 GB of keyed state.
//!
//! Run: `cargo bench --bench state` (a few minutes; page cache warm: the files were just
//! written). Set `STATE_BENCH_SMALL=1` to skip the 1e7 and 1 GB cases, or
//! `STATE_BENCH_SIZES=10000000` to run only the listed sizes (no 1 GB case).
//!
//! Medians measured 2026-12-02 on the shared 2-core machine (two runs: load average ≈ 3 / ≈ 11,
//! so absolute times move by 2×; the ratios are what to read):
//!
//! | | rkyv | serde + bincode 1 | ratio |
//! |---|---|---|---|
//! | snapshot 1e6 (40 / 32 MB) | 60.6 / 114 ms | 65.3 / 148 ms | 1.08× / 1.30× |
//! | snapshot 1e7 (400 / 320 MB) | 1.03 / 1.33 s | 0.64 / 0.73 s | 0.62× / 0.55× (slower) |
//! | restore to first record 1e6 | 3.75 / 10.2 ms | 261 / 551 ms | 70× / 54× |
//! | restore to first record 1e7 | 42.4 / 86.4 ms | 5.18 / 10.5 s | 122× / 121× |
//! | restore to first record 1.04 GB (26e6 keys) | 111 / 285 ms | — | goal < 1 s |
//! | timers: restore / snapshot 1e6 | 14.8 / 66 ms (first run) | — | |

use std::collections::HashMap;
use std::fs::File;
use std::hint::black_box;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use exactly::runtime::state::{
    key_group_of, KeyGroupRange, SnapshotFile, SnapshotWriter, StableHash, StateTable, TimerQueue,
    DEFAULT_KEY_GROUPS,
};
use rkyv::util::AlignedVec;

#[derive(
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Clone,
    Debug,
    PartialEq,
)]
struct Agg {
    count: u64,
    sum: i64,
    last_ts: i64,
}

const SCHEMA: u64 = 7;

fn agg(user: u64) -> Agg {
    Agg {
        count: user % 97,
        sum: (user as i64).wrapping_mul(31),
        last_ts: 1_700_000_000_000 + user as i64,
    }
}

fn kg(user: u64) -> u16 {
    key_group_of(user.stable_hash(), DEFAULT_KEY_GROUPS)
}

fn table(n: u64) -> StateTable<u64, Agg> {
    let mut t = StateTable::new(
        "aggs",
        KeyGroupRange::new(0, DEFAULT_KEY_GROUPS),
        DEFAULT_KEY_GROUPS,
    );
    for user in 0..n {
        t.insert(kg(user), user, agg(user));
    }
    t
}

fn map(n: u64) -> HashMap<u64, Agg> {
    (0..n).map(|user| (user, agg(user))).collect()
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("exactly-state-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Writes the table's snapshot file; `buffer` is the previous snapshot's buffer, reused (as a
/// subtask snapshotting every second would).
fn write_rkyv(table: &StateTable<u64, Agg>, path: &Path, buffer: &mut AlignedVec<16>) -> u64 {
    let mut w = SnapshotWriter::with_buffer(SCHEMA, std::mem::take(buffer));
    table.snapshot(&mut w).expect("snapshot");
    let bytes = w.finish().expect("finish");
    let mut file = File::create(path).expect("create");
    file.write_all(&bytes).expect("write");
    let len = bytes.len() as u64;
    *buffer = bytes;
    len
}

/// Prints the time of each phase of one rkyv snapshot (table → buffer, checksum, file write).
fn phases(table: &StateTable<u64, Agg>, path: &Path, buffer: &mut AlignedVec<16>) {
    let start = std::time::Instant::now();
    let mut w = SnapshotWriter::with_buffer(SCHEMA, std::mem::take(buffer));
    table.snapshot(&mut w).expect("snapshot");
    let serialized = start.elapsed();
    let bytes = w.finish().expect("finish");
    let finished = start.elapsed();
    let mut file = File::create(path).expect("create");
    file.write_all(&bytes).expect("write");
    drop(file);
    let written = start.elapsed();
    eprintln!(
        "rkyv snapshot phases: serialize {serialized:?}, + finish (crc) {:?}, + create/write/close {:?}",
        finished - serialized,
        written - finished
    );
    *buffer = bytes;
}

fn write_bincode(map: &HashMap<u64, Agg>, path: &Path) -> u64 {
    let mut out = BufWriter::new(File::create(path).expect("create"));
    bincode::serialize_into(&mut out, map).expect("bincode");
    out.flush().expect("flush");
    std::fs::metadata(path).expect("stat").len()
}

fn restore_rkyv(path: &Path, key: u64) -> Agg {
    let file = SnapshotFile::open_expecting(path, SCHEMA).expect("open");
    let mut t: StateTable<u64, Agg> = StateTable::new(
        "aggs",
        KeyGroupRange::new(0, DEFAULT_KEY_GROUPS),
        DEFAULT_KEY_GROUPS,
    );
    t.restore(&file).expect("restore");
    let value = t.get(kg(key), &key).expect("key").to_owned();
    value
}

fn restore_bincode(path: &Path, key: u64) -> Agg {
    let reader = BufReader::new(File::open(path).expect("open"));
    let map: HashMap<u64, Agg> = bincode::deserialize_from(reader).expect("bincode");
    map[&key].clone()
}

fn keyed_state(c: &mut Criterion) {
    let dir = temp_dir();
    let small = std::env::var_os("STATE_BENCH_SMALL").is_some();
    // STATE_BENCH_SIZES=10000000 (comma-separated) picks the sizes and skips the 1 GB case.
    let chosen: Option<Vec<u64>> = std::env::var("STATE_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let sizes = match (&chosen, small) {
        (Some(sizes), _) => sizes.clone(),
        (None, true) => vec![1_000_000],
        (None, false) => vec![1_000_000, 10_000_000],
    };
    for n in sizes {
        let rkyv_path = dir.join(format!("rkyv-{n}"));
        let bincode_path = dir.join(format!("bincode-{n}"));
        let (rkyv_bytes, bincode_bytes) = {
            let t = table(n);
            let m = map(n);
            let mut buffer = AlignedVec::new();
            let rkyv_bytes = write_rkyv(&t, &rkyv_path, &mut buffer);
            phases(&t, &rkyv_path, &mut buffer);
            phases(&t, &rkyv_path, &mut buffer);
            let bincode_bytes = write_bincode(&m, &bincode_path);
            eprintln!("{n} keys: rkyv file {rkyv_bytes} bytes, bincode file {bincode_bytes} bytes");

            let mut group = c.benchmark_group("snapshot");
            group.sample_size(10);
            group.warm_up_time(Duration::from_millis(500));
            group.measurement_time(Duration::from_secs(3));
            group.throughput(Throughput::Bytes(rkyv_bytes));
            group.bench_function(BenchmarkId::new("rkyv", n), |b| {
                b.iter(|| write_rkyv(&t, &rkyv_path, &mut buffer))
            });
            group.throughput(Throughput::Bytes(bincode_bytes));
            group.bench_function(BenchmarkId::new("bincode", n), |b| {
                b.iter(|| write_bincode(&m, &bincode_path))
            });
            group.finish();
            (rkyv_bytes, bincode_bytes)
        };
        // The tables are dropped: restore runs without the state in memory.
        let key = n / 2;
        let mut group = c.benchmark_group("restore_to_first_record");
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(3));
        group.throughput(Throughput::Bytes(rkyv_bytes));
        group.bench_function(BenchmarkId::new("rkyv", n), |b| {
            b.iter(|| black_box(restore_rkyv(&rkyv_path, key)))
        });
        group.throughput(Throughput::Bytes(bincode_bytes));
        group.bench_function(BenchmarkId::new("bincode", n), |b| {
            b.iter(|| black_box(restore_bincode(&bincode_path, key)))
        });
        group.finish();

        let mut group = c.benchmark_group("restore_parts");
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));
        group.bench_function(BenchmarkId::new("open", n), |b| {
            b.iter(|| black_box(SnapshotFile::open(&rkyv_path).expect("open").len()))
        });
        group.bench_function(BenchmarkId::new("open_validate", n), |b| {
            b.iter(|| {
                let file = SnapshotFile::open(&rkyv_path).expect("open");
                let mut t: StateTable<u64, Agg> = StateTable::new(
                    "aggs",
                    KeyGroupRange::new(0, DEFAULT_KEY_GROUPS),
                    DEFAULT_KEY_GROUPS,
                );
                black_box(t.restore(&file).expect("restore"))
            })
        });
        group.finish();
        let _ = std::fs::remove_file(&rkyv_path);
        let _ = std::fs::remove_file(&bincode_path);
    }

    if !small && chosen.is_none() {
        // ~1 GB: 26e6 keys × (8 hash + 8 key + 24 value) bytes.
        let n = 26_000_000;
        let path = dir.join("rkyv-1gb");
        let bytes = write_rkyv(&table(n), &path, &mut AlignedVec::new());
        eprintln!("{n} keys: rkyv file {bytes} bytes");
        let mut group = c.benchmark_group("restore_1gb");
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(3));
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(BenchmarkId::new("rkyv", n), |b| {
            b.iter(|| black_box(restore_rkyv(&path, n / 2)))
        });
        group.finish();
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::remove_dir(&dir);
}

fn timers(c: &mut Criterion) {
    let range = KeyGroupRange::new(0, DEFAULT_KEY_GROUPS);
    let mut q: TimerQueue<u64, i64> = TimerQueue::new("timers", range);
    for user in 0..1_000_000u64 {
        let window_end = 60_000 * (1 + (user % 30) as i64);
        q.register(kg(user), window_end - 1, user, window_end);
    }
    let mut w = SnapshotWriter::new(SCHEMA);
    q.snapshot(&mut w).expect("snapshot");
    let bytes = w.finish().expect("finish");
    let file = SnapshotFile::from_bytes(Path::new("timers"), &bytes).expect("open");
    let mut group = c.benchmark_group("timers");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("restore_1e6", |b| {
        b.iter(|| {
            let mut r: TimerQueue<u64, i64> = TimerQueue::new("timers", range);
            r.restore(&file).expect("restore");
            black_box(r.next_due())
        })
    });
    group.bench_function("snapshot_1e6", |b| {
        b.iter(|| {
            let mut w = SnapshotWriter::with_capacity(SCHEMA, bytes.len());
            q.snapshot(&mut w).expect("snapshot");
            black_box(w.finish().expect("finish").len())
        })
    });
    group.finish();
}

criterion_group!(benches, keyed_state, timers);
criterion_main!(benches);
