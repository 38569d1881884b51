//! The fraud job on the in-memory source and sink: exactness against an independent oracle,
//! with and without crashes (the job future dropped mid-run, as a kill would stop it).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};

use super::*;
use crate::client::types::Record;
use crate::runtime::connector::{MemorySink, MemorySource, Target};
use crate::runtime::JobConfig;

/// `n` transactions over `splits` splits: event time advancing ~5 ms per record per split,
/// jitter within ±2 s (inside the 5 s out-of-orderness), a hot tenth of the users.
fn input(n: usize, splits: usize, seed: u64) -> Vec<Vec<Record>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out: Vec<Vec<Record>> = (0..splits).map(|_| Vec::new()).collect();
    for i in 0..n {
        let s = i % splits;
        let user: u64 = if rng.random_bool(0.5) {
            rng.random_range(0..20)
        } else {
            rng.random_range(20..2_000)
        };
        let ts =
            1_700_000_000_000i64 + (i as i64 / splits as i64) * 5 + rng.random_range(-2_000..2_000);
        let t = CardTxn {
            user_id: user,
            amount: 12.5,
            card: format!("c{user}"),
            ts,
        };
        let offset = out[s].len() as i64;
        out[s].push(Record {
            offset,
            value: Some(Bytes::from(serde_json::to_vec(&t).unwrap())),
            ..Record::default()
        });
    }
    out
}

/// The expected alerts, computed without the runtime.
fn expected(splits: &[Vec<Record>], window_ms: i64, threshold: u64) -> Vec<Alert> {
    let mut counts: BTreeMap<(u64, i64), u64> = BTreeMap::new();
    for r in splits.iter().flatten() {
        if let Ok(t) = serde_json::from_slice::<CardTxn>(r.value.as_deref().unwrap_or_default()) {
            *counts
                .entry((t.user_id, t.ts - t.ts.rem_euclid(window_ms)))
                .or_default() += 1;
        }
    }
    counts
        .into_iter()
        .filter(|(_, c)| *c > threshold)
        .map(|((user_id, start), count)| Alert {
            user_id,
            window_start: start,
            window_end: start + window_ms,
            count,
        })
        .collect()
}

fn alerts(sink: &MemorySink) -> Vec<Alert> {
    let mut v: Vec<Alert> = sink
        .committed()
        .iter()
        .filter(|r| r.target == Target::Main)
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
        .collect();
    v.sort();
    v
}

fn config(dir: &std::path::Path, parallelism: usize, interval_ms: u64) -> JobConfig {
    let mut c = JobConfig::new("fraud-test", dir);
    c.parallelism = parallelism;
    c.bounded = true;
    c.checkpoint.interval_ms = interval_ms;
    c
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "exactly-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_job_matches_the_oracle_at_parallelism_1_and_2() {
    let splits = input(20_000, 4, 7);
    let want = expected(&splits, 60_000, 10);
    assert!(
        want.len() > 20,
        "the input should make alerts: {}",
        want.len()
    );
    for p in [1, 2] {
        let dir = temp_dir("fraud-bounded");
        let sink = MemorySink::default();
        let report = build(
            config(&dir, p, 50),
            FraudConfig::default(),
            MemorySource::new(splits.clone(), 256),
            sink.clone(),
        )
        .run()
        .await
        .unwrap();
        assert!(report.checkpoints >= 1);
        assert_eq!(alerts(&sink), want, "parallelism {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_go_to_the_dead_letter_output() {
    let mut splits = input(2_000, 2, 3);
    splits[0].push(Record {
        offset: 1_000,
        value: Some(Bytes::from_static(b"not json")),
        ..Record::default()
    });
    splits[1].push(Record {
        offset: 1_000,
        value: Some(Bytes::from_static(br#"{"user_id":1}"#)),
        ..Record::default()
    });
    let dir = temp_dir("fraud-dead");
    let sink = MemorySink::default();
    build(
        config(&dir, 2, 0),
        FraudConfig::default(),
        MemorySource::new(splits.clone(), 128),
        sink.clone(),
    )
    .run()
    .await
    .unwrap();
    let dead: Vec<_> = sink
        .committed()
        .into_iter()
        .filter(|r| r.target == Target::DeadLetter)
        .collect();
    assert_eq!(dead.len(), 2);
    let reasons: Vec<String> = dead
        .iter()
        .map(|r| String::from_utf8(r.headers[0].value.clone().unwrap().to_vec()).unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("missing field")),
        "{reasons:?}"
    );
    assert_eq!(alerts(&sink), expected(&splits, 60_000, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_at_random_moments_keep_the_output_exact() {
    let splits = input(60_000, 4, 11);
    let want = expected(&splits, 60_000, 10);
    let dir = temp_dir("fraud-crash");
    let sink = MemorySink::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut restored = Vec::new();
    for round in 0..8 {
        let p = 1 + round % 2; // rescale on every restart
        let job = build(
            config(&dir, p, 5),
            FraudConfig::default(),
            MemorySource::new(splits.clone(), 64),
            sink.clone(),
        );
        let after = Duration::from_millis(rng.random_range(5..80));
        match tokio::time::timeout(after, job.run()).await {
            Err(_) => {} // "killed"
            Ok(r) => {
                restored.push(r.unwrap().restored_from);
                break;
            }
        }
    }
    let p = 2;
    let report = build(
        config(&dir, p, 5),
        FraudConfig::default(),
        MemorySource::new(splits.clone(), 64),
        sink.clone(),
    )
    .run()
    .await
    .unwrap();
    restored.push(report.restored_from);
    eprintln!("runs restored from {restored:?}");
    assert!(
        report.restored_from.is_some(),
        "the last run should have resumed from a checkpoint"
    );
    assert_eq!(alerts(&sink), want, "restored from {restored:?}");
}

/// Flips one byte in the middle of `path`.
fn flip_byte(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

fn newest_checkpoint(dir: &std::path::Path) -> std::path::PathBuf {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("_metadata").exists())
        .collect();
    v.sort();
    v.pop().expect("a complete checkpoint")
}

/// Runs the job until it has completed at least `checkpoints` checkpoints, then drops it.
async fn run_until_checkpoints(
    splits: &[Vec<Record>],
    dir: &std::path::Path,
    sink: &MemorySink,
    checkpoints: usize,
) {
    let job = build(
        config(dir, 2, 5),
        FraudConfig::default(),
        MemorySource::new(splits.to_vec(), 16),
        sink.clone(),
    );
    let run = tokio::spawn(job.run());
    loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let complete = std::fs::read_dir(dir).map_or(0, |d| {
            d.filter(|e| e.as_ref().unwrap().path().join("_metadata").exists())
                .count()
        });
        if complete >= checkpoints || run.is_finished() {
            break;
        }
    }
    run.abort();
    let _ = run.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_newest_checkpoint_is_named_and_the_output_stays_exact() {
    let splits = input(40_000, 4, 13);
    let want = expected(&splits, 60_000, 10);
    let dir = temp_dir("fraud-corrupt");
    let sink = MemorySink::default();
    run_until_checkpoints(&splits, &dir, &sink, 3).await;
    let newest = newest_checkpoint(&dir);
    flip_byte(&newest.join("keyed-1"));
    let report = build(
        config(&dir, 2, 5),
        FraudConfig::default(),
        MemorySource::new(splits.clone(), 64),
        sink.clone(),
    )
    .run()
    .await
    .unwrap();
    assert!(
        report.rejected.iter().any(|r| r.contains("keyed-1")),
        "the corrupt file is named: {:?}",
        report.rejected
    );
    assert_eq!(alerts(&sink), want);
    assert!(report.replayed_to.is_some(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_job_commits_a_final_checkpoint_and_the_next_run_resumes_from_it() {
    let splits = input(60_000, 4, 17);
    let want = expected(&splits, 60_000, 10);
    let dir = temp_dir("fraud-stop");
    let sink = MemorySink::default();
    let mut c = config(&dir, 2, 0); // no periodic checkpoints: the final one is the only one
    c.bounded = true;
    let job = build(
        c,
        FraudConfig::default(),
        MemorySource::new(splits.clone(), 8),
        sink.clone(),
    );
    let report = job
        .run_until(tokio::time::sleep(Duration::from_millis(30)))
        .await
        .unwrap();
    assert_eq!(report.checkpoints, 1, "{report:?}");
    let stopped_at = report.last_checkpoint;
    let report = build(
        config(&dir, 2, 0),
        FraudConfig::default(),
        MemorySource::new(splits.clone(), 64),
        sink.clone(),
    )
    .run()
    .await
    .unwrap();
    assert_eq!(report.restored_from, stopped_at);
    assert_eq!(alerts(&sink), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_metadata_file_of_the_newest_checkpoint_keeps_the_output_exact() {
    let splits = input(40_000, 4, 19);
    let want = expected(&splits, 60_000, 10);
    let dir = temp_dir("fraud-metadata");
    let sink = MemorySink::default();
    run_until_checkpoints(&splits, &dir, &sink, 3).await;
    let newest = newest_checkpoint(&dir);
    std::fs::remove_file(newest.join("_metadata")).unwrap();
    flip_byte(&newest.join("keyed-0"));
    let report = build(
        config(&dir, 2, 5),
        FraudConfig::default(),
        MemorySource::new(splits.clone(), 64),
        sink.clone(),
    )
    .run()
    .await
    .unwrap();
    assert_eq!(alerts(&sink), want, "{report:?}");
    assert!(report.replayed_to.is_some(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotent_file_sink_is_exact_across_crashes() {
    use crate::runtime::connector::IdempotentSinks;
    use crate::runtime::sink::FileSink;
    let splits = input(40_000, 4, 23);
    let want = expected(&splits, 60_000, 10);
    let dir = temp_dir("fraud-files");
    let out = dir.join("out");
    let make = |out: std::path::PathBuf| {
        IdempotentSinks::new(
            move |subtask: usize| FileSink::new(&out, subtask as u32),
            |r: crate::runtime::connector::OutputRecord| {
                r.value.map(|v| v.to_vec()).unwrap_or_default()
            },
        )
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(29);
    for _ in 0..6 {
        let job = build(
            config(&dir.join("chk"), 2, 5),
            FraudConfig::default(),
            MemorySource::new(splits.clone(), 32),
            make(out.clone()),
        );
        let _ =
            tokio::time::timeout(Duration::from_millis(rng.random_range(5..60)), job.run()).await;
    }
    build(
        config(&dir.join("chk"), 2, 5),
        FraudConfig::default(),
        MemorySource::new(splits.clone(), 64),
        make(out.clone()),
    )
    .run()
    .await
    .unwrap();
    let mut got: Vec<Alert> = Vec::new();
    for e in std::fs::read_dir(&out).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "out") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                got.push(serde_json::from_str(line).unwrap());
            }
        }
    }
    got.sort();
    assert_eq!(got, want);
}
