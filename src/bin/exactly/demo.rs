//! `exactly demo`: the README's main-job command. It shows the whole product doing what it
//! promises, on a machine where nothing runs yet:
//!
//! 1. a broker: the one at `--brokers`, or — when that is a local address and nothing answers —
//!    the project's own, started with `scripts/kafka up`;
//! 2. fresh topics (unique names, `retention.ms=-1` because the records carry past event times);
//! 3. card transactions from `exactly gen` (the generator of [`crate::cards`]), streamed at
//!    `--rate` while the job runs, as a live source would;
//! 4. the fraud job, `exactly run`, as a child process that is killed with SIGKILL at random
//!    moments — each time after it completed a new checkpoint, so that every run makes
//!    progress — and restarted from its checkpoint directory; once the input is complete, a
//!    last run with `--bounded` drains it, fires every window and exits.
//!
//! Why the crashed runs are not `--bounded`: the job reads a few hundred thousand records per
//! second, so a bounded run over a topic written beforehand ends before its first checkpoint;
//! a crash that never interrupts anything demonstrates nothing. With the input streaming in, every
//! kill lands in the middle of open transactions.
//! 5. `exactly verify` (read_committed, independent of the job's code) and a short report.
//!
//! Why child processes: a SIGKILL is the honest crash — no destructor, no final flush, open
//! transactions left on the broker — and only a separate process can take it. `gen` and `verify`
//! run as children too, so the demo uses exactly the commands a user would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use exactly::client::admin::Admin;
use exactly::client::{Client, ClientConfig};
use rand::Rng as _;
use serde_json::Value;

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Card transactions to generate.
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// Distinct users.
    #[arg(long, default_value_t = 5_000)]
    users: u64,
    /// Share of records written malformed (they must end up in the dead-letter topic, once).
    #[arg(long, default_value_t = 0.001)]
    malformed_fraction: f64,
    /// Records per second the input is written at, while the job runs (0: as fast as possible).
    #[arg(long, default_value_t = 15_000.0)]
    rate: f64,
    /// Seed of the generator (default: random; the report prints it).
    #[arg(long)]
    seed: Option<u64>,
    /// How many times the job is killed with SIGKILL and restarted before the last run.
    #[arg(long, default_value_t = 5)]
    crashes: u32,
    /// Subtasks per stage of the job.
    #[arg(long, default_value_t = 2)]
    parallelism: usize,
    /// The job's checkpoint interval.
    #[arg(long, default_value_t = 1_000)]
    checkpoint_interval_ms: u64,
    /// A kill comes at a random moment up to this long after the run's first new checkpoint.
    #[arg(long, default_value_t = 1_500)]
    kill_jitter_ms: u64,
    /// Directory for the checkpoints and the job's logs (default: a fresh one in the temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Give up on a run (and the demo) that takes longer than this.
    #[arg(long, default_value_t = 600_000)]
    run_timeout_ms: u64,
}

/// Partitions of the input topic (the job's source subtasks share them).
const INPUT_PARTITIONS: i32 = 4;
/// Partitions of the alert topic.
const OUTPUT_PARTITIONS: i32 = 2;
/// How long the first probe waits for a broker before the demo starts the local one.
const PROBE_DEADLINE_MS: u64 = 3_000;
/// How often the checkpoint directory and the child are looked at.
const POLL_MS: u64 = 50;
/// Lines of a failed child's stderr shown.
const TAIL_LINES: usize = 30;

pub(crate) async fn run(
    brokers: &str,
    connect_deadline_ms: u64,
    args: DemoArgs,
) -> anyhow::Result<()> {
    let began = Instant::now();
    if !(0.0..=1.0).contains(&args.malformed_fraction) {
        bail!(
            "--malformed-fraction must be between 0 and 1, got {}",
            args.malformed_fraction
        );
    }
    if args.parallelism == 0 {
        bail!("--parallelism must be at least 1");
    }
    let exe = std::env::current_exe().context("cannot find the exactly executable")?;

    // 1. A broker.
    let client = broker(brokers, connect_deadline_ms, &exe).await?;

    // 2. Fresh topics and directory.
    let run_id = format!(
        "{}-{:04x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
        rand::rng().random::<u16>()
    );
    let input = format!("exactly-demo-{run_id}-cards");
    let output = format!("exactly-demo-{run_id}-alerts");
    let dead_letter = format!("exactly-demo-{run_id}-dead-letters");
    let admin = Admin::new(client.clone());
    for (topic, partitions) in [
        (&input, INPUT_PARTITIONS),
        (&output, OUTPUT_PARTITIONS),
        (&dead_letter, 1),
    ] {
        admin
            .create_topic(topic, partitions, &[("retention.ms", "-1")])
            .await
            .with_context(|| format!("cannot create topic {topic}"))?;
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("exactly-demo-{run_id}")));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    eprintln!(
        "demo: topics {input} ({INPUT_PARTITIONS} partitions), {output}, {dead_letter}; \
         checkpoints and logs in {}",
        dir.display()
    );

    // 3. The input, streamed while the job runs.
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    eprintln!(
        "demo: streaming {} card transactions of {} users at {} records/s (seed {seed})",
        args.records, args.users, args.rate
    );
    let gen_began = Instant::now();
    let gen_logs = (dir.join("gen.stdout"), dir.join("gen.stderr"));
    let gen_args = [
        "gen",
        "--topic",
        &input,
        "--count",
        &args.records.to_string(),
        "--users",
        &args.users.to_string(),
        "--seed",
        &seed.to_string(),
        "--malformed-fraction",
        &args.malformed_fraction.to_string(),
        "--partitions",
        &INPUT_PARTITIONS.to_string(),
        "--rate",
        &args.rate.to_string(),
    ]
    .map(str::to_owned);
    let mut gen = Running::start(&exe, brokers, &gen_args, &gen_logs)?;

    // 4. The job, killed and restarted.
    let prefix = format!("exactly-demo-{run_id}");
    let mut job_args = vec![
        "run".to_owned(),
        "--input".to_owned(),
        input.clone(),
        "--output".to_owned(),
        output.clone(),
        "--dead-letter".to_owned(),
        dead_letter.clone(),
        "--checkpoint-dir".to_owned(),
        dir.join("checkpoints").display().to_string(),
        "--checkpoint-interval-ms".to_owned(),
        args.checkpoint_interval_ms.to_string(),
        "--transactional-id-prefix".to_owned(),
        prefix,
        "--parallelism".to_owned(),
        args.parallelism.to_string(),
    ];
    let run_timeout = Duration::from_millis(args.run_timeout_ms);
    let job_began = Instant::now();
    let checkpoints = dir.join("checkpoints");
    let logs = |n: u32| {
        (
            dir.join(format!("run-{n}.stdout")),
            dir.join(format!("run-{n}.stderr")),
        )
    };
    let mut crashes = 0u32;
    while crashes < args.crashes {
        let n = crashes + 1;
        let logs = logs(n);
        let restored = latest_complete(&checkpoints);
        let mut child = Running::start(&exe, brokers, &job_args, &logs)?;
        let started = Instant::now();
        // Wait for a checkpoint newer than the one this run restored, then a random moment.
        let mut checkpointed = false;
        while !checkpointed && started.elapsed() < run_timeout {
            if let Some(status) = child.0.try_wait()? {
                bail!(failed(n, status, &logs.1));
            }
            checkpointed = latest_complete(&checkpoints) > restored;
            let pause_ms = if checkpointed {
                rand::rng().random_range(0..=args.kill_jitter_ms)
            } else {
                POLL_MS
            };
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        }
        // A child that exits just now is killed or already gone: either way it stopped
        // without its final checkpoint, which is what a crash is. (`kill` is SIGKILL.)
        child.0.kill().ok();
        child.0.wait()?;
        if !checkpointed {
            bail!(
                "run {n} completed no checkpoint within --run-timeout-ms: {}",
                tail(&logs.1)
            );
        }
        crashes += 1;
        eprintln!(
            "demo: crash {crashes}/{}: SIGKILL after {:.1} s of run {n} (restored from \
             checkpoint {}, latest complete {}); restarting",
            args.crashes,
            started.elapsed().as_secs_f64(),
            shown(restored),
            shown(latest_complete(&checkpoints)),
        );
    }

    // The input complete, a last, bounded run drains it.
    let status = gen.finish(run_timeout).await?;
    if !status.is_some_and(|s| s.success()) {
        bail!(
            "exactly gen failed or took longer than --run-timeout-ms ({status:?}): {}",
            tail(&gen_logs.1)
        );
    }
    let gen_report = last_json_line(&std::fs::read_to_string(&gen_logs.0)?)
        .context("exactly gen printed no report")?;
    eprintln!(
        "demo: the input is complete: {} records ({} malformed) in {:.1} s; {} alerts expected",
        gen_report["records"],
        gen_report["malformed"],
        gen_began.elapsed().as_secs_f64(),
        gen_report["expected_alerts_threshold_10"]
    );
    let n = crashes + 1;
    let logs = logs(n);
    eprintln!(
        "demo: run {n}: bounded, letting the job finish (restored from checkpoint {})",
        shown(latest_complete(&checkpoints))
    );
    job_args.push("--bounded".to_owned());
    let mut child = Running::start(&exe, brokers, &job_args, &logs)?;
    let Some(status) = child.finish(run_timeout).await? else {
        bail!(
            "the last run took longer than --run-timeout-ms: {}",
            tail(&logs.1)
        );
    };
    if !status.success() {
        bail!(failed(n, status, &logs.1));
    }
    let stdout = std::fs::read_to_string(&logs.0)
        .with_context(|| format!("cannot read {}", logs.0.display()))?;
    let metrics = last_json_line(&stdout).context("the last run printed no metrics line")?;
    eprintln!(
        "demo: the job finished after {crashes} crashes in {:.1} s; verifying",
        job_began.elapsed().as_secs_f64()
    );

    // 5. Verification, independent of the job's code.
    let verify = capture(
        &exe,
        brokers,
        &[
            "verify",
            "--input",
            &input,
            "--output",
            &output,
            "--dead-letter",
            &dead_letter,
            "--format",
            "json",
        ],
    )?
    .await??;
    let report = last_json_line(&verify.stdout).with_context(|| {
        format!(
            "exactly verify printed no report ({}): {}",
            verify.status,
            verify.stderr.trim()
        )
    })?;
    let ok = verify.status.success() && report["ok"] == Value::Bool(true);
    print_report(&report, &metrics, crashes, seed, began.elapsed());
    if !ok {
        bail!(
            "the output is not exactly once: {} (topics kept: {input}, {output}, {dead_letter})",
            report["discrepancies"]
        );
    }
    Ok(())
}

/// A client to `brokers`; when none answers there and the address is local, the project's
/// broker started with `scripts/kafka up` on that port.
async fn broker(brokers: &str, connect_deadline_ms: u64, exe: &Path) -> anyhow::Result<Client> {
    let connect = |deadline_ms| {
        let mut config = ClientConfig::new(brokers);
        config.retry.deadline_ms = deadline_ms;
        Client::connect(config)
    };
    let probe_ms = PROBE_DEADLINE_MS.min(connect_deadline_ms);
    if let Ok(client) = connect(probe_ms).await {
        eprintln!("demo: using the Kafka broker at {brokers}");
        return Ok(client);
    }
    let Some(port) = local_port(brokers) else {
        bail!(
            "cannot reach Kafka at {brokers}, and it is not a local address the demo could \
             start a broker on (set --brokers or EXACTLY_BROKERS)"
        );
    };
    let script = find_kafka_script(exe).with_context(|| {
        format!(
            "no Kafka answers at {brokers} and the project's scripts/kafka was not found next \
             to {} or in the current directory: start a broker yourself, or run the demo from \
             the repository (scripts/quickstart)",
            exe.display()
        )
    })?;
    eprintln!(
        "demo: no Kafka at {brokers}; starting the project's broker ({} up, port {port}; the \
         first time it fetches the Kafka jars)",
        script.display()
    );
    let mut up = Command::new("bash");
    up.arg(&script)
        .arg("up")
        .env("EXACTLY_KAFKA_PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let status = tokio::task::spawn_blocking(move || up.status())
        .await?
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !status.success() {
        bail!("{} up failed ({status})", script.display());
    }
    let client = connect(connect_deadline_ms).await.with_context(|| {
        format!("cannot reach Kafka at {brokers} after starting it with scripts/kafka")
    })?;
    eprintln!(
        "demo: the broker keeps running after the demo; stop it with \
         EXACTLY_KAFKA_PORT={port} {} down",
        script.display()
    );
    Ok(client)
}

/// The port of `brokers` when it is one local address (`127.0.0.1`, `localhost`, `[::1]`).
fn local_port(brokers: &str) -> Option<u16> {
    let (host, port) = brokers.trim().rsplit_once(':')?;
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
        .then(|| port.parse().ok())
        .flatten()
}

/// `scripts/kafka` in a directory above the executable (`target/release/exactly` in a clone) or
/// above the current directory.
fn find_kafka_script(exe: &Path) -> Option<PathBuf> {
    let exe = exe.canonicalize().unwrap_or_else(|_| exe.to_path_buf());
    let cwd = std::env::current_dir().ok();
    exe.ancestors()
        .chain(cwd.iter().flat_map(|d| d.ancestors()))
        .map(|d| d.join("scripts").join("kafka"))
        .find(|p| p.is_file())
}

/// What a finished child printed.
struct Captured {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Starts `exactly --brokers B ARGS`; the task ends with what it printed.
fn capture(
    exe: &Path,
    brokers: &str,
    args: &[&str],
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<Captured>>> {
    let child = Command::new(exe)
        .arg("--brokers")
        .arg(brokers)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run exactly {}", args[0]))?;
    Ok(tokio::task::spawn_blocking(move || {
        let out = child.wait_with_output()?;
        Ok(Captured {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }))
}

/// A child `exactly` process with its stdout and stderr in files; killed (SIGKILL) when dropped,
/// so that a demo that fails leaves no job or generator behind.
struct Running(Child);

impl Running {
    /// Starts `exactly --brokers B ARGS`.
    fn start(
        exe: &Path,
        brokers: &str,
        args: &[String],
        (stdout, stderr): &(PathBuf, PathBuf),
    ) -> anyhow::Result<Self> {
        let file = |p: &PathBuf| {
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))
        };
        let child = Command::new(exe)
            .arg("--brokers")
            .arg(brokers)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file(stdout)?)
            .stderr(file(stderr)?)
            .spawn()
            .with_context(|| format!("cannot start exactly {}", args[0]))?;
        Ok(Self(child))
    }

    /// Waits until the child exits; `None` (and the child killed) after `timeout`.
    async fn finish(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let began = Instant::now();
        while began.elapsed() < timeout {
            if let Some(status) = self.0.try_wait()? {
                return Ok(Some(status));
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
        self.0.kill().ok();
        self.0.wait()?;
        Ok(None)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Both fail harmlessly when the child has been waited for already.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The newest complete checkpoint in `dir`: `chk-<id>/_metadata` is written last.
fn latest_complete(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let id = name.to_str()?.strip_prefix("chk-")?.parse::<u64>().ok()?;
            e.path().join("_metadata").is_file().then_some(id)
        })
        .max()
}

/// A checkpoint id for people.
fn shown(checkpoint: Option<u64>) -> String {
    checkpoint.map_or_else(|| "none".to_owned(), |c| c.to_string())
}

/// The message for a run that failed: its status and the tail of its stderr.
fn failed(n: u32, status: ExitStatus, stderr: &Path) -> String {
    format!("run {n} of the job failed ({status}): {}", tail(stderr))
}

/// The last lines of a log file, with its path.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    format!(
        "last lines of {}:\n{}",
        path.display(),
        lines[from..].join("\n")
    )
}

/// The last line of `text` that is a JSON object.
fn last_json_line(text: &str) -> Option<Value> {
    text.lines().rev().find_map(|l| {
        serde_json::from_str::<Value>(l.trim())
            .ok()
            .filter(Value::is_object)
    })
}

/// The short report on stdout.
fn print_report(report: &Value, metrics: &Value, crashes: u32, seed: u64, total: Duration) {
    let ms = |v: &Value| {
        v.as_f64()
            .map_or("n/a".to_owned(), |x| format!("{x:.0} ms"))
    };
    let dead = &report["dead_letter"];
    println!("exactly demo (seed {seed})");
    println!(
        "  records in:        {} ({} malformed)",
        report["input"]["records"], report["input"]["malformed"]
    );
    println!(
        "  alerts out:        {} (expected {})",
        report["output"]["alerts"], report["expected_alerts"]
    );
    println!("  crashes survived:  {crashes} (SIGKILL, restart from the latest checkpoint)");
    println!("  duplicates: {}", report["duplicated"]["count"]);
    println!("  missing: {}", report["missing"]["count"]);
    println!(
        "  dead letters:      {} (each malformed record once: {})",
        dead["records"],
        dead["missing"]["count"] == 0 && dead["duplicated"]["count"] == 0
    );
    println!(
        "  commit latency:    p50 {}, p99 {} (last run)",
        ms(&metrics["commit_latency_ms_p50"]),
        ms(&metrics["commit_latency_ms_p99"])
    );
    println!(
        "  checkpoint:        p50 {} (last run)",
        ms(&metrics["checkpoint_duration_ms_p50"])
    );
    println!("  total time:        {:.1} s", total.as_secs_f64());
    let verdict = if report["ok"] == Value::Bool(true) {
        "ok: every alert exactly once".to_owned()
    } else {
        format!("FAILED: {}", report["discrepancies"])
    };
    println!("  {verdict}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_single_local_address_is_started_locally() {
        assert_eq!(local_port("127.0.0.1:9092"), Some(9092));
        assert_eq!(local_port("localhost:9692"), Some(9692));
        assert_eq!(local_port("kafka.example:9092"), None);
        assert_eq!(local_port("127.0.0.1:9092,127.0.0.1:9093"), None);
        assert_eq!(local_port("127.0.0.1"), None);
    }

    #[test]
    fn the_latest_complete_checkpoint_has_metadata() {
        let dir = std::env::temp_dir().join(format!("exactly-demo-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(latest_complete(&dir), None);
        for (id, complete) in [(1u64, true), (2, true), (3, false)] {
            let chk = dir.join(format!("chk-{id:020}"));
            std::fs::create_dir_all(&chk).unwrap();
            if complete {
                std::fs::write(chk.join("_metadata"), b"x").unwrap();
            }
        }
        std::fs::write(dir.join("run-1.stderr"), b"").unwrap();
        assert_eq!(latest_complete(&dir), Some(2));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_report_is_the_last_json_object() {
        let v = last_json_line("progress\n{\"a\":1}\n{\"a\":2}\nbye\n").unwrap();
        assert_eq!(v["a"], 2);
        assert!(last_json_line("no json\n[1]\n").is_none());
    }
}
