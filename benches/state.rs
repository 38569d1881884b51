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
//! written). Set `STATE_BENCH_SMALL=1` to skip the 1e7 and 1 GB cases.

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

fn write_rkyv(table: &StateTable<u64, Agg>, path: &Path, capacity: usize) -> u64 {
    let mut w = SnapshotWriter::with_capacity(SCHEMA, capacity);
    table.snapshot(&mut w).expect("snapshot");
    let bytes = w.finish().expect("finish");
    let mut file = File::create(path).expect("create");
    file.write_all(&bytes).expect("write");
    bytes.len() as u64
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
    let sizes: &[u64] = if small {
        &[1_000_000]
    } else {
        &[1_000_000, 10_000_000]
    };
    for &n in sizes {
        let rkyv_path = dir.join(format!("rkyv-{n}"));
        let bincode_path = dir.join(format!("bincode-{n}"));
        let (rkyv_bytes, bincode_bytes) = {
            let t = table(n);
            let m = map(n);
            let rkyv_bytes = write_rkyv(&t, &rkyv_path, 0);
            let bincode_bytes = write_bincode(&m, &bincode_path);
            eprintln!("{n} keys: rkyv file {rkyv_bytes} bytes, bincode file {bincode_bytes} bytes");

            let mut group = c.benchmark_group("snapshot");
            group.sample_size(10);
            group.warm_up_time(Duration::from_millis(500));
            group.measurement_time(Duration::from_secs(3));
            group.throughput(Throughput::Bytes(rkyv_bytes));
            group.bench_function(BenchmarkId::new("rkyv", n), |b| {
                b.iter(|| write_rkyv(&t, &rkyv_path, rkyv_bytes as usize))
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

    if !small {
        // ~1 GB: 26e6 keys × (8 hash + 8 key + 24 value) bytes.
        let n = 26_000_000;
        let path = dir.join("rkyv-1gb");
        let bytes = write_rkyv(&table(n), &path, 0);
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
