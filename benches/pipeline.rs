//! The fraud job on the in-memory source and sink (no broker): records/s at parallelism 1 and
//! 2, with checkpoints every second versus none (the checkpoint overhead as a ratio), records per
//! CPU-second, and peak RSS. Not a criterion bench: each run is seconds long and the figures
//! wanted are throughput, CPU and memory, reported as medians with ranges over repeated runs.
//!
//! `cargo bench --bench pipeline` (env: `PIPELINE_RECORDS`, default 2,000,000; `PIPELINE_RUNS`,
//! default 5).

use std::time::Instant;

use bytes::Bytes;
use exactly::client::types::Record;
use exactly::jobs::fraud::{build, CardTxn, FraudConfig};
use exactly::runtime::connector::{MemorySink, MemorySource};
use exactly::runtime::JobConfig;

fn input(n: usize, splits: usize) -> Vec<Vec<Record>> {
    let mut out: Vec<Vec<Record>> = (0..splits)
        .map(|_| Vec::with_capacity(n / splits + 1))
        .collect();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let user = if x % 2 == 0 { x % 100 } else { x % 100_000 };
        let ts = 1_700_000_000_000i64 + (i / splits) as i64 * 2 + (x % 2_000) as i64 - 1_000;
        let t = CardTxn {
            user_id: user,
            amount: (x % 10_000) as f64 / 100.0,
            card: format!("4000-{:04}", x % 10_000),
            ts,
        };
        let s = i % splits;
        let offset = out[s].len() as i64;
        out[s].push(Record {
            offset,
            value: Some(Bytes::from(serde_json::to_vec(&t).unwrap())),
            ..Record::default()
        });
    }
    out
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::var("PIPELINE_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let runs: usize = std::env::var("PIPELINE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let source = MemorySource::new(input(n, 4), 1_024);
    let baseline_kib = proc_status_kib("VmRSS:");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("fraud job, in-memory source and sink, {n} records, {runs} runs each; input held in memory: {} MiB", baseline_kib / 1024);
    println!(
        "{:<28} {:>14} {:>22} {:>16} {:>12}",
        "configuration", "records/s", "range", "records/CPU-s", "peak RSS MiB"
    );
    let mut medians = std::collections::BTreeMap::new();
    for p in [1usize, 2] {
        for interval_ms in [0u64, 1_000] {
            let mut rates = Vec::new();
            let mut per_cpu = Vec::new();
            // Reset the peak-RSS watermark (Linux: clear_refs 5), so each configuration reports its own.
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            for run in 0..runs {
                let dir = std::env::temp_dir().join(format!(
                    "exactly-pipeline-{}-{p}-{interval_ms}-{run}",
                    std::process::id()
                ));
                let mut config = JobConfig::new("pipeline", &dir);
                config.parallelism = p;
                config.bounded = true;
                config.checkpoint.interval_ms = interval_ms;
                let sink = MemorySink::discarding();
                let job = build(config, FraudConfig::default(), source.clone(), sink);
                let cpu0 = cpu_seconds();
                let t0 = Instant::now();
                let report = rt.block_on(job.run()).expect("job");
                let secs = t0.elapsed().as_secs_f64();
                let cpu = cpu_seconds() - cpu0;
                let _ = std::fs::remove_dir_all(&dir);
                rates.push(n as f64 / secs);
                per_cpu.push(n as f64 / cpu.max(0.01));
                let _ = report;
            }
            let peak = proc_status_kib("VmHWM:");
            let (lo, hi) = (
                rates.iter().cloned().fold(f64::MAX, f64::min),
                rates.iter().cloned().fold(0.0, f64::max),
            );
            let m = median(&mut rates);
            medians.insert((p, interval_ms), m);
            println!(
                "{:<28} {:>14.0} {:>22} {:>16.0} {:>12}",
                format!(
                    "p={p} checkpoints={}",
                    if interval_ms == 0 {
                        "none".into()
                    } else {
                        format!("{interval_ms}ms")
                    }
                ),
                m,
                format!("{lo:.0}..{hi:.0}"),
                median(&mut per_cpu),
                peak / 1024
            );
        }
    }
    for p in [1usize, 2] {
        let overhead = 1.0 - medians[&(p, 1_000)] / medians[&(p, 0)];
        println!(
            "p={p}: checkpoint overhead {:.1}% of throughput",
            overhead * 100.0
        );
    }
}
