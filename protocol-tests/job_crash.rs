//! The fraud job end to end, as a separate process (`exactly run`), against the real broker:
//! exactness (issue 7, acceptance 1), SIGKILL and fault-point crashes with restarts (2), a
//! parallelism change with lingering transactions (3), corrupt checkpoints (4) and the
//! "visible after barrier" latency figure (7, printed, never asserted).
//!
//! Every test generates its input deterministically, computes the expected alerts with the
//! independent oracle (`fraud_expect.rs`), runs the job (killing and restarting it as the test
//! says), and compares the `read_committed` output with the expectation as multisets; it then
//! checks that no transaction of the job's prefix is left open.
//!
//! Its own test binary: the job tests run the binary many times and are heavy on a 2-core
//! machine, so they take a lock and run one at a time. Each child gets a bounded wait; a child
//! still running when its test ends (even by a panic) is killed. The children's stdout and
//! stderr are kept under `target/job-tests/<test>/`, and a failure prints the stderr's tail.
//!
//! Needs a broker (`EXACTLY_TEST_BROKERS`, or the project's `scripts/kafka`) and fails without
//! one. `cargo test --test job_crash harness_` runs the harness's own tests, which do not need
//! the job.
//!
//! Environment: `EXACTLY_JOB_BIN` runs another build of the job (e.g. `target/release/exactly`;
//! by default the debug binary cargo builds for the test), `EXACTLY_JOB_LOG` sets the
//! children's log filter (default `info`), `EXACTLY_CRASH_RECORDS` / `EXACTLY_CRASH_SEED` the
//! crash test's input size (at least 100,000) and seed.

#[path = "common.rs"]
#[allow(dead_code)]
mod common;
#[path = "fraud_expect.rs"]
mod fraud_expect;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use exactly::client::admin::Isolation;
use exactly::client::producer::ProducerRecord;
use exactly::client::transaction::{
    describe_transaction, CoordinatorState, TransactionConfig, TransactionalProducer,
};
use exactly::client::Client;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};

use common::{brokers, client, exactly_bin, read_all, repo_root, unique_topic};
use fraud_expect::{
    assert_nothing_open, compare_output, create_kept_topic, expected_alerts, generate, left_open,
    left_open_within, list_transactions, max_disorder_ms, open_transactions, write_input,
    write_input_paced, Alert, FraudParams, InputSpec, ListedTxn,
};

/// One job test at a time (see the module docs). A tokio mutex: it does not depend on the
/// runtime of the test that holds it, and a panicking holder does not poison it.
static JOB_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Partitions of the input topics: divisible by 1, 2 and 3 (the parallelisms used).
const INPUT_PARTITIONS: i32 = 6;
/// Partitions of the output topics.
const OUTPUT_PARTITIONS: i32 = 3;
/// SIGABRT: how the job ends itself at a fault point (`std::process::abort`).
const SIGABRT: i32 = 6;
/// The fault points of the job (`EXACTLY_FAULT_POINT`).
const FAULT_POINTS: [&str; 4] = ["snapshot-write", "after-complete", "mid-commit", "restore"];

// ---------------------------------------------------------------------------------------------
// The job as a child process.

/// The `exactly run` flags of one job (shared by every run of a test: same checkpoint dir and
/// prefix, so that a restart resumes).
#[derive(Debug, Clone)]
struct JobSpec {
    input: String,
    output: String,
    dead_letter: Option<String>,
    checkpoint_dir: PathBuf,
    prefix: String,
    parallelism: u32,
    checkpoint_interval_ms: u64,
    checkpoint_timeout_ms: u64,
    transaction_timeout_ms: u64,
    params: FraudParams,
    idle_timeout_ms: u64,
}

impl JobSpec {
    fn new(input: &str, output: &str, checkpoint_dir: PathBuf, prefix: &str) -> Self {
        Self {
            input: input.to_owned(),
            output: output.to_owned(),
            dead_letter: None,
            checkpoint_dir,
            prefix: prefix.to_owned(),
            parallelism: 2,
            checkpoint_interval_ms: 1_000,
            checkpoint_timeout_ms: 10_000,
            transaction_timeout_ms: 60_000,
            params: FraudParams::default(),
            idle_timeout_ms: 30_000,
        }
    }

    fn args(&self, bounded: bool) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--brokers".into(),
            brokers().into(),
            "run".into(),
            "--input".into(),
            self.input.clone(),
            "--output".into(),
            self.output.clone(),
        ];
        if let Some(dlq) = &self.dead_letter {
            a.extend(["--dead-letter".into(), dlq.clone()]);
        }
        let flags: [(&str, String); 11] = [
            (
                "--checkpoint-dir",
                self.checkpoint_dir.display().to_string(),
            ),
            ("--transactional-id-prefix", self.prefix.clone()),
            ("--parallelism", self.parallelism.to_string()),
            (
                "--checkpoint-interval-ms",
                self.checkpoint_interval_ms.to_string(),
            ),
            (
                "--checkpoint-timeout-ms",
                self.checkpoint_timeout_ms.to_string(),
            ),
            ("--window-ms", self.params.window_ms.to_string()),
            ("--threshold", self.params.threshold.to_string()),
            (
                "--out-of-orderness-ms",
                self.params.out_of_orderness_ms.to_string(),
            ),
            ("--idle-timeout-ms", self.idle_timeout_ms.to_string()),
            (
                "--transaction-timeout-ms",
                self.transaction_timeout_ms.to_string(),
            ),
            ("--connect-deadline-ms", "30000".to_owned()),
        ];
        for (flag, value) in flags {
            a.push(flag.into());
            a.push(value);
        }
        if bounded {
            a.push("--bounded".into());
        }
        a
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

impl Ended {
    fn of(status: std::process::ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Exited(code),
            (None, Some(sig)) => Self::Signaled(sig),
            (None, None) => Self::Exited(-1),
        }
    }
}

/// A fault to inject into one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fault {
    point: &'static str,
    after: u32,
}

/// One run of the job: the child, and where its output goes. Killed on drop.
struct JobRun {
    child: Child,
    label: String,
    started: Instant,
    /// Wall-clock start, to compare with checkpoint file times.
    started_at: SystemTime,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    ended: Option<Ended>,
}

/// The job binary: `EXACTLY_JOB_BIN` when set (e.g. `target/release/exactly`, for figures
/// worth reading), else the `exactly` binary cargo built for this test run.
fn job_bin() -> PathBuf {
    match std::env::var_os("EXACTLY_JOB_BIN") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "EXACTLY_JOB_BIN={} is not a file",
                path.display()
            );
            path
        }
        None => exactly_bin(),
    }
}

/// The directory for one test's files (checkpoints, children's output).
fn test_dir(test: &str) -> PathBuf {
    let dir = repo_root()
        .join("target/job-tests")
        .join(unique_topic(test));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

impl JobRun {
    /// Starts `exactly run` for `spec`; `label` names the run's log files in `logs`.
    fn spawn(
        spec: &JobSpec,
        logs: &Path,
        label: &str,
        bounded: bool,
        fault: Option<Fault>,
    ) -> Self {
        let stdout_path = logs.join(format!("{label}.stdout"));
        let stderr_path = logs.join(format!("{label}.stderr"));
        let stdout = File::create(&stdout_path).expect("create the child's stdout file");
        let stderr = File::create(&stderr_path).expect("create the child's stderr file");
        let bin = job_bin();
        let mut cmd = Command::new(&bin);
        cmd.args(spec.args(bounded))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .env_remove("EXACTLY_FAULT_POINT")
            .env_remove("EXACTLY_FAULT_AFTER")
            .env_remove("EXACTLY_BROKERS")
            .env("NO_COLOR", "1")
            .env(
                "EXACTLY_LOG",
                std::env::var("EXACTLY_JOB_LOG").unwrap_or_else(|_| "info".into()),
            );
        if let Some(f) = fault {
            cmd.env("EXACTLY_FAULT_POINT", f.point)
                .env("EXACTLY_FAULT_AFTER", f.after.to_string());
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start the job binary {}: {e} (cargo builds it for this test)",
                bin.display()
            )
        });
        Self {
            child,
            label: label.to_owned(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            stdout_path,
            stderr_path,
            ended: None,
        }
    }

    /// How the child ended, if it has.
    fn poll(&mut self) -> Option<Ended> {
        if self.ended.is_none() {
            if let Some(status) = self.child.try_wait().expect("try_wait on the job") {
                self.ended = Some(Ended::of(status));
            }
        }
        self.ended
    }

    /// Waits at most `timeout` for the child to end.
    async fn wait_for(&mut self, timeout: Duration) -> Option<Ended> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.poll() {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs the child. Returns how it had ended if it already had (nothing killed).
    fn kill(&mut self) -> Option<Ended> {
        if let Some(e) = self.poll() {
            return Some(e);
        }
        // `Child::kill` is SIGKILL on Unix.
        self.child.kill().expect("SIGKILL the job");
        let status = self.child.wait().expect("wait for the killed job");
        self.ended = Some(Ended::of(status));
        None
    }

    /// Waits (at most `timeout`) for the child to exit 0 and returns its stdout; kills it and
    /// fails with its stderr's tail otherwise.
    async fn expect_success(&mut self, timeout: Duration) -> String {
        match self.wait_for(timeout).await {
            Some(Ended::Exited(0)) => self.stdout(),
            Some(other) => panic!(
                "job run {} ended with {other:?} instead of exit 0\n{}",
                self.label,
                self.describe()
            ),
            None => {
                self.kill();
                panic!(
                    "job run {} did not finish within {} s; killed\n{}",
                    self.label,
                    timeout.as_secs(),
                    self.describe()
                )
            }
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The child's log files and the last 40 lines of its stderr and 5 of its stdout, for
    /// failure messages.
    fn describe(&self) -> String {
        let tail = |text: String, n: usize| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "--- stderr ({}), last 40 lines:\n{}\n--- stdout ({}), last 5 lines:\n{}\n---",
            self.stderr_path.display(),
            tail(self.stderr(), 40),
            self.stdout_path.display(),
            tail(self.stdout(), 5)
        )
    }
}

impl Drop for JobRun {
    fn drop(&mut self) {
        if self.poll().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoint directory (layout `DIR/chk-<20-digit id>/...`, the metadata file written last).

#[derive(Debug, Clone)]
struct CheckpointDir {
    id: u64,
    path: PathBuf,
    /// The metadata file, when present (the checkpoint is complete only with it).
    metadata: Option<PathBuf>,
}

/// The store's metadata file or its copy. A temporary file (`.tmp-_metadata-…`, written before
/// the rename) does not make a checkpoint complete: counting it let the rescale test kill the job
/// before its first checkpoint was complete and then expect a restore.
fn is_metadata_file(name: &str) -> bool {
    name == "_metadata" || name == "_metadata.copy"
}

/// The checkpoint directories under `dir`, oldest first.
fn checkpoints(dir: &Path) -> Vec<CheckpointDir> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name
            .strip_prefix("chk-")
            .and_then(|d| d.parse::<u64>().ok())
        else {
            continue;
        };
        let path = e.path();
        let metadata = std::fs::read_dir(&path).ok().and_then(|files| {
            files
                .flatten()
                .find(|f| is_metadata_file(&f.file_name().to_string_lossy()))
                .map(|f| f.path())
        });
        out.push(CheckpointDir { id, path, metadata });
    }
    out.sort_by_key(|c| c.id);
    out
}

fn complete_checkpoints(dir: &Path) -> Vec<CheckpointDir> {
    checkpoints(dir)
        .into_iter()
        .filter(|c| c.metadata.is_some())
        .collect()
}

/// A listing of the checkpoint directory for failure messages.
fn list_checkpoint_dir(dir: &Path) -> String {
    let mut s = String::new();
    for c in checkpoints(dir) {
        s.push_str(&format!("\n  {}:", c.path.display()));
        if let Ok(files) = std::fs::read_dir(&c.path) {
            let mut files: Vec<_> = files.flatten().collect();
            files.sort_by_key(|f| f.file_name());
            for f in files {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                s.push_str(&format!(" {} ({len} B)", f.file_name().to_string_lossy()));
            }
        }
    }
    s
}

/// Whether a complete checkpoint's metadata was written at or after `since` (the restarted job
/// has restored and checkpointed again).
fn checkpointed_since(dir: &Path, since: SystemTime) -> bool {
    complete_checkpoints(dir).iter().any(|c| {
        c.metadata
            .as_ref()
            .and_then(|m| std::fs::metadata(m).ok())
            .and_then(|m| m.modified().ok())
            .is_some_and(|t| t >= since)
    })
}

// ---------------------------------------------------------------------------------------------
// Shared steps.

/// A job's topics, input and expectation.
struct Fixture {
    client: Client,
    input: String,
    output: String,
    expected: Vec<Alert>,
    records: usize,
    dir: PathBuf,
    /// Generated records not written yet (see [`Fixture::write_rest`]).
    pending: Vec<fraud_expect::CardTxn>,
}

/// Generates `records` records (seeded), writes them to a new input topic, creates the output
/// topic, and computes the expected alerts.
async fn fixture(test: &str, seed: u64, records: usize) -> Fixture {
    fixture_staged(test, seed, records, records).await
}

/// [`fixture`], writing only the first `write_now` records; the rest stay in `pending`.
async fn fixture_staged(test: &str, seed: u64, records: usize, write_now: usize) -> Fixture {
    let client = client().await;
    let params = FraudParams::default();
    let spec = InputSpec::standard(seed, records, &params);
    let mut inputs = generate(&spec);
    assert!(
        max_disorder_ms(&inputs) < params.out_of_orderness_ms,
        "the generator must keep every record on time"
    );
    let expected = expected_alerts(&inputs, &params);
    let input = create_kept_topic(&client, &format!("{test}-in"), INPUT_PARTITIONS).await;
    let output = create_kept_topic(&client, &format!("{test}-out"), OUTPUT_PARTITIONS).await;
    let pending = inputs.split_off(write_now.min(records));
    let t = Instant::now();
    write_input(&client, &input, &inputs).await;
    eprintln!(
        "[{test}] wrote {} of {records} records to {input} in {} ms; {} alerts expected over {} \
         windows",
        inputs.len(),
        t.elapsed().as_millis(),
        expected.len(),
        fraud_expect::windows_of(&expected).len()
    );
    Fixture {
        client,
        input,
        output,
        expected,
        records,
        dir: test_dir(test),
        pending,
    }
}

impl Fixture {
    /// Writes the pending records in the background, spread over `over` (while a job runs:
    /// it is processing when it is killed, and new windows fire, so its sink has transactions
    /// open while the test watches). In production order after the records written before,
    /// so none of them is late.
    fn write_rest(&mut self, over: Duration) -> tokio::task::JoinHandle<()> {
        let rest = std::mem::take(&mut self.pending);
        let (client, input) = (self.client.clone(), self.input.clone());
        tokio::spawn(async move { write_input_paced(&client, &input, &rest, over).await })
    }
}

/// Fails unless the output is exactly the expected alerts and nothing is left open.
async fn assert_exact(f: &Fixture, prefix: &str, context: &str) {
    // First let committed transactions' markers land (read_committed reads up to the LSO).
    let open = left_open(&f.client, prefix, &[&f.output]).await;
    let c = compare_output(&f.client, &f.output, &f.expected).await;
    assert!(
        c.is_exact(),
        "{context}: the read_committed output of {} is not the expected alerts: {}\nleft open: {open:?}",
        f.output,
        c.report()
    );
    assert!(
        open.is_empty(),
        "{context}: the output is exact but transactions are left open:\n  {}",
        open.join("\n  ")
    );
    eprintln!(
        "{context}: output exact ({} alerts), no transaction open",
        f.expected.len()
    );
}

/// Fails if the committed output so far has a duplicate or an alert that is not expected (what
/// `read_committed` shows must be final at any moment; only missing alerts are allowed).
async fn assert_committed_prefix(f: &Fixture, context: &str) -> usize {
    let c = compare_output(&f.client, &f.output, &f.expected).await;
    assert!(
        c.is_prefix_safe(),
        "{context}: the committed output already has alerts it must never have: {}",
        c.report()
    );
    c.actual_total
}

/// The metrics JSON line the job prints at exit in bounded mode (the last stdout line that
/// parses as a JSON object).
fn metrics_line(stdout: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    stdout.lines().rev().find_map(|l| {
        serde_json::from_str::<serde_json::Value>(l.trim())
            .ok()
            .and_then(|v| v.as_object().cloned())
    })
}

/// Prints the metrics line, and the p99 of "output visible after the barrier" (acceptance 7)
/// when present. Reports, never asserts timing.
fn print_metrics(context: &str, stdout: &str) {
    match metrics_line(stdout) {
        Some(m) => {
            eprintln!(
                "[{context}] metrics: {}",
                serde_json::Value::Object(m.clone())
            );
            let visible: Vec<_> = m.iter().filter(|(k, _)| k.contains("visible")).collect();
            if visible.is_empty() {
                eprintln!("[{context}] no 'visible after barrier' figure in the metrics line");
            }
            let commit = m.iter().filter(|(k, _)| k.starts_with("commit_latency"));
            for (k, v) in visible.into_iter().chain(commit) {
                eprintln!("[{context}] FIGURE {k} = {v}");
            }
        }
        None => eprintln!("[{context}] no metrics line on stdout: {stdout:?}"),
    }
}

/// Asserts the metrics line's input count when it has one (a loose check that the job read
/// what was written, in a single uninterrupted run).
fn check_records_in(context: &str, stdout: &str, records: usize) {
    if let Some(n) = metrics_line(stdout)
        .and_then(|m| {
            m.get("records_in")
                .or_else(|| m.get("records_in_total"))
                .cloned()
        })
        .and_then(|v| v.as_u64())
    {
        assert_eq!(
            n, records as u64,
            "{context}: records_in in the metrics line"
        );
    }
}

/// Kills `run` as soon as it has completed a checkpoint (so that a restart restores one of this
/// run's checkpoints, with its owner map) and ListTransactions shows an `Ongoing` transaction
/// whose id starts with `id_head` (at most `timeout`), and returns the ones still `Ongoing`
/// after the kill (those are lingering: the job can no longer end them). Empty when none was
/// seen in time or it ended between the look and the kill.
async fn kill_with_ongoing(
    client: &Client,
    run: &mut JobRun,
    checkpoint_dir: &Path,
    prefix: &str,
    id_head: &str,
    timeout: Duration,
) -> Vec<ListedTxn> {
    let deadline = Instant::now() + timeout;
    let ongoing = |all: Vec<ListedTxn>| -> Vec<ListedTxn> {
        all.into_iter()
            .filter(|t| t.state == "Ongoing" && t.transactional_id.starts_with(id_head))
            .collect()
    };
    loop {
        if let Some(e) = run.poll() {
            panic!(
                "job run {} ended ({e:?}) before a transaction of {id_head}* was open\n{}",
                run.label,
                run.describe()
            );
        }
        if checkpointed_since(checkpoint_dir, run.started_at)
            && !ongoing(list_transactions(client, prefix).await).is_empty()
        {
            break;
        }
        if Instant::now() >= deadline {
            run.kill();
            eprintln!(
                "[{}] no Ongoing transaction of {id_head}* within {} s; killed",
                run.label,
                timeout.as_secs()
            );
            return Vec::new();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        run.kill(),
        None,
        "the job ended by itself: {}",
        run.describe()
    );
    ongoing(list_transactions(client, prefix).await)
}

/// The (producer id, epoch) of each transactional id, from its coordinator.
async fn identities(client: &Client, txns: &[ListedTxn]) -> BTreeMap<String, (i64, i16)> {
    let mut out = BTreeMap::new();
    for t in txns {
        let d = describe_transaction(client, &t.transactional_id)
            .await
            .unwrap_or_else(|e| panic!("DescribeTransactions {}: {e}", t.transactional_id));
        out.insert(
            t.transactional_id.clone(),
            (d.producer_id, d.producer_epoch),
        );
    }
    out
}

/// Those of `lingering` (id → producer id and epoch at the kill) still open on the same
/// producer id and epoch: not aborted.
async fn still_lingering(client: &Client, lingering: &BTreeMap<String, (i64, i16)>) -> Vec<String> {
    let mut out = Vec::new();
    for (id, &(pid, epoch)) in lingering {
        let d = describe_transaction(client, id)
            .await
            .unwrap_or_else(|e| panic!("DescribeTransactions {id}: {e}"));
        let open = matches!(d.state, CoordinatorState::Ongoing);
        if open && d.producer_id == pid && d.producer_epoch == epoch {
            out.push(format!(
                "{id} (producer {pid}, epoch {epoch}, {:?}, partitions {:?})",
                d.state, d.partitions
            ));
        }
    }
    out
}

/// Waits (at most `timeout`) until the restarted job has checkpointed (so its start-up
/// recovery is done) or has exited.
async fn wait_started(
    run: &mut JobRun,
    checkpoint_dir: &Path,
    since: SystemTime,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if run.poll().is_some() || checkpointed_since(checkpoint_dir, since) {
            return;
        }
        if Instant::now() >= deadline {
            run.kill();
            panic!(
                "job run {} took no checkpoint within {} s of its start\n{}\ncheckpoints:{}",
                run.label,
                timeout.as_secs(),
                run.describe(),
                list_checkpoint_dir(checkpoint_dir)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// The harness's own tests (no job needed): the oracle unit tests are in `fraud_expect`.

/// The generator, the input write, the output read and the comparison, proven with a "perfect
/// job" written in the test (alerts computed here, written transactionally under the job's id
/// scheme), and with a flawed one whose duplicate, missing alert, unexpected alert and open
/// transaction must all be caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_perfect_job_round_trip_and_flaws_caught() {
    let f = fixture("harness", 11, 30_000).await;
    // The input is all there, keyed and parseable.
    let mut read = 0;
    for p in 0..INPUT_PARTITIONS {
        for r in read_all(&f.client, &f.input, p, Isolation::ReadCommitted).await {
            let txn: fraud_expect::CardTxn =
                serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            assert_eq!(r.key.as_deref(), Some(txn.key().as_bytes()));
            assert_eq!(r.timestamp, txn.ts);
            read += 1;
        }
    }
    assert_eq!(read, f.records, "input records read back");
    assert!(f.expected.len() > 100, "{} alerts", f.expected.len());

    // The perfect job: two "subtasks", each commits its half.
    let prefix = unique_topic("harness-perfect");
    write_alerts(
        &f.client,
        &f.output,
        &format!("{prefix}-0-0"),
        &f.expected[..f.expected.len() / 2],
        true,
    )
    .await;
    write_alerts(
        &f.client,
        &f.output,
        &format!("{prefix}-1-0"),
        &f.expected[f.expected.len() / 2..],
        true,
    )
    .await;
    assert_exact(&f, &prefix, "perfect job").await;

    // The flawed job: one alert missing, one duplicated, one with a wrong count, one extra,
    // and one transaction left open.
    let flawed_out = create_kept_topic(&f.client, "harness-flawed", OUTPUT_PARTITIONS).await;
    let flawed_prefix = unique_topic("harness-flawed");
    let mut alerts = f.expected.clone();
    let missing = alerts.remove(0);
    alerts.push(alerts[0]);
    let wrong = Alert {
        count: alerts[1].count + 1,
        ..alerts[1]
    };
    alerts[1] = wrong;
    let extra = Alert {
        user_id: 1,
        ..alerts[2]
    };
    alerts.push(extra);
    write_alerts(
        &f.client,
        &flawed_out,
        &format!("{flawed_prefix}-0-0"),
        &alerts,
        true,
    )
    .await;
    assert_nothing_open(&f.client, &flawed_prefix, &[&flawed_out]).await;
    let c = compare_output(&f.client, &flawed_out, &f.expected).await;
    assert!(!c.is_exact());
    assert_eq!(c.missing_count(), 2, "{}", c.report());
    assert_eq!(c.duplicate_count(), 1, "{}", c.report());
    assert_eq!(c.unexpected_count(), 2, "{}", c.report());
    assert!(c.missing.iter().any(|(a, _)| *a == missing));
    assert!(c.unexpected.iter().any(|(a, _)| *a == extra));
    eprintln!("flawed job caught: {}", c.report());

    let open_producer = write_alerts(
        &f.client,
        &flawed_out,
        &format!("{flawed_prefix}-1-0"),
        &f.expected[..3],
        false,
    )
    .await
    .expect("the open transaction's producer");
    let open = open_transactions(&f.client, &flawed_prefix).await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].transactional_id, format!("{flawed_prefix}-1-0"));
    assert_eq!(open[0].state, "Ongoing");
    // Caught by the transaction listing at once...
    let problems = left_open(&f.client, &flawed_prefix, &[&flawed_out]).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(&format!("{flawed_prefix}-1-0 is Ongoing")),
        "{problems:?}"
    );
    // ... and by the last stable offset, even under a prefix that does not name it.
    let problems = left_open_within(&f.client, "unrelated", &[&flawed_out], 2_000).await;
    assert!(
        problems.len() == 1 && problems[0].contains("behind the high watermark"),
        "{problems:?}"
    );
    // The open transaction's alerts are not read (read_committed) until it ends.
    assert_eq!(compare_output(&f.client, &flawed_out, &f.expected).await, c);
    open_producer
        .abort()
        .await
        .expect("abort the open transaction");
    assert_nothing_open(&f.client, &flawed_prefix, &[&flawed_out]).await;
}

/// Writes `alerts` (keyed by user id) in one transaction of `transactional_id`; commits it, or
/// leaves it open and returns the producer.
async fn write_alerts(
    client: &Client,
    topic: &str,
    transactional_id: &str,
    alerts: &[Alert],
    commit: bool,
) -> Option<TransactionalProducer> {
    let producer =
        TransactionalProducer::init(client.clone(), TransactionConfig::new(transactional_id))
            .await
            .expect("init the transactional producer");
    producer.begin().await.expect("begin");
    for a in alerts {
        let value = serde_json::to_string(a).unwrap();
        producer
            .send(ProducerRecord::new(topic, value).with_key(a.user_id.to_string()))
            .await
            .expect("send an alert");
    }
    producer.flush().await.expect("flush the alerts");
    if commit {
        producer.commit().await.expect("commit the alerts");
        None
    } else {
        Some(producer)
    }
}

// ---------------------------------------------------------------------------------------------
// The job.

/// Acceptance 1 (and 7's figure): parallelism 2, bounded, no faults; the output is exactly
/// the expected alerts, the dead-letter topic is empty, nothing is left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_end_to_end_parallelism_2() {
    let _lock = JOB_LOCK.lock().await;
    let f = fixture("job-e2e", 1, 50_000).await;
    let dlq = create_kept_topic(&f.client, "job-e2e-dlq", 1).await;
    let prefix = unique_topic("e2e");
    let mut spec = JobSpec::new(&f.input, &f.output, f.dir.join("checkpoints"), &prefix);
    spec.dead_letter = Some(dlq.clone());
    let mut run = JobRun::spawn(&spec, &f.dir, "bounded", true, None);
    let stdout = run.expect_success(Duration::from_secs(240)).await;
    eprintln!(
        "[job-e2e] bounded run of {} records took {} ms",
        f.records,
        run.started.elapsed().as_millis()
    );
    print_metrics("job-e2e", &stdout);
    check_records_in("job-e2e", &stdout, f.records);
    assert_exact(&f, &prefix, "end to end, parallelism 2").await;
    let dead = read_all(&f.client, &dlq, 0, Isolation::ReadCommitted).await;
    assert!(dead.is_empty(), "well-formed input dead-lettered: {dead:?}");
}

/// What one crash-test run does.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// SIGKILL after this many ms.
    Kill { after_ms: u64 },
    /// Let the job abort itself at a fault point.
    Fault(Fault),
}

/// Acceptance 2: ≥ 100,000 records at parallelism 2; ≥ 20 SIGKILLs at random (seeded)
/// moments and 12 aborts at the named fault points (each point 3 times), in a seeded random
/// order, each run restarted from the checkpoint directory; after every crash the committed
/// output must be a duplicate-free part of the expected alerts; a final uninterrupted bounded
/// run must complete with exactly the expected alerts and nothing open.
///
/// The crashed runs are unbounded (the job would otherwise finish before the kills are done);
/// the final run is bounded. `EXACTLY_CRASH_RECORDS` and `EXACTLY_CRASH_SEED` override the
/// size and seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_crash_kill_and_fault_points() {
    let _lock = JOB_LOCK.lock().await;
    let seed = env_usize("EXACTLY_CRASH_SEED", 2) as u64;
    let records = env_usize("EXACTLY_CRASH_RECORDS", 120_000).max(100_000);
    // A tenth of the input first; the rest arrives steadily over the first minute of the
    // crashes, so that kills and fault points land while the job is processing.
    let mut f = fixture_staged("job-crash", seed, records, records / 10).await;
    let writer = f.write_rest(Duration::from_secs(60));
    let prefix = unique_topic("crash");
    let spec = JobSpec::new(&f.input, &f.output, f.dir.join("checkpoints"), &prefix);

    let mut rng = StdRng::seed_from_u64(seed);
    let mut plan: Vec<Action> = (0..20)
        .map(|_| Action::Kill {
            after_ms: rng.random_range(300..4_000),
        })
        .collect();
    for point in FAULT_POINTS {
        for after in 1..=3 {
            // The restore point is reached once per start.
            let after = if point == "restore" { 1 } else { after };
            plan.push(Action::Fault(Fault { point, after }));
        }
    }
    plan.shuffle(&mut rng);
    // Start with a kill late enough for a first checkpoint, so that "restore" has one.
    let first_kill = plan
        .iter()
        .position(|a| matches!(a, Action::Kill { .. }))
        .unwrap();
    plan.swap(0, first_kill);
    plan[0] = Action::Kill { after_ms: 4_000 };

    let mut sigkills = 0;
    let mut fault_hits: BTreeMap<&str, u32> = BTreeMap::new();
    let mut fault_missed: Vec<String> = Vec::new();
    for (i, action) in plan.iter().enumerate() {
        let label = format!("run-{i:02}");
        let fault = match action {
            Action::Fault(f) => Some(*f),
            Action::Kill { .. } => None,
        };
        let mut run = JobRun::spawn(&spec, &f.dir, &label, false, fault);
        match *action {
            Action::Kill { after_ms } => {
                if let Some(e) = run.wait_for(Duration::from_millis(after_ms)).await {
                    panic!(
                        "crash test run {label} ended by itself ({e:?}) before its SIGKILL at \
                         {after_ms} ms\n{}",
                        run.describe()
                    );
                }
                assert_eq!(run.kill(), None);
                sigkills += 1;
            }
            Action::Fault(fault) => {
                // A checkpoint every second: the k-th one is reached well within 30 s.
                let timeout = Duration::from_secs(30);
                match run.wait_for(timeout).await {
                    Some(Ended::Signaled(SIGABRT)) => {
                        *fault_hits.entry(fault.point).or_default() += 1;
                    }
                    Some(e) => panic!(
                        "crash test run {label} with fault {fault:?} ended with {e:?}, not by \
                         the fault point's abort (SIGABRT)\n{}",
                        run.describe()
                    ),
                    None => {
                        run.kill();
                        sigkills += 1;
                        fault_missed.push(format!("{label} {fault:?}"));
                        eprintln!(
                            "[job-crash] {label}: fault {fault:?} not reached in {} s; SIGKILLed",
                            timeout.as_secs()
                        );
                    }
                }
            }
        }
        let committed = assert_committed_prefix(&f, &format!("after crash {i} ({action:?})")).await;
        eprintln!(
            "[job-crash] {label} {action:?} after {} ms: {committed}/{} alerts committed, \
             {} complete checkpoints",
            run.started.elapsed().as_millis(),
            f.expected.len(),
            complete_checkpoints(&spec.checkpoint_dir).len()
        );
    }

    // The final run is bounded: it must see the whole input.
    writer.await.expect("write the input");
    let latest = complete_checkpoints(&spec.checkpoint_dir)
        .last()
        .map(|c| c.id);
    let mut last = JobRun::spawn(&spec, &f.dir, "final", true, None);
    let stdout = last.expect_success(Duration::from_secs(240)).await;
    print_metrics("job-crash final run", &stdout);
    if let Some(restored) = metrics_line(&stdout).and_then(|m| m.get("restored_from").cloned()) {
        assert_eq!(
            restored.as_u64(),
            latest,
            "the final run must resume from the latest complete checkpoint\ncheckpoints:{}",
            list_checkpoint_dir(&spec.checkpoint_dir)
        );
    }
    let crashes = sigkills + fault_hits.values().sum::<u32>();
    eprintln!(
        "[job-crash] survived {crashes} crashes: {sigkills} SIGKILLs, fault aborts {fault_hits:?}; \
         final run {} ms",
        last.started.elapsed().as_millis()
    );
    assert_exact(&f, &prefix, "crash test").await;
    assert!(sigkills >= 20, "only {sigkills} SIGKILLs");
    let never: Vec<&str> = FAULT_POINTS
        .iter()
        .copied()
        .filter(|p| !fault_hits.contains_key(p))
        .collect();
    assert!(
        never.is_empty(),
        "fault points never reached: {never:?} (runs that missed their fault: {fault_missed:?})"
    );
}

/// Acceptance 3, downscale: parallelism 3 killed while subtask 2 has a transaction open;
/// restarted at parallelism 2, the vanished subtask's transactions must be aborted by the job
/// at its start (the transaction timeout is 600 s, so the broker cannot have done it); then
/// the output is exact and nothing is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_rescale_3_to_2_aborts_vanished_subtask_transactions() {
    let _lock = JOB_LOCK.lock().await;
    let mut f = fixture_staged("job-rescale-down", 3, 60_000, 15_000).await;
    let prefix = unique_topic("down");
    let mut spec = JobSpec::new(&f.input, &f.output, f.dir.join("checkpoints"), &prefix);
    spec.transaction_timeout_ms = 600_000;
    spec.parallelism = 3;
    let vanished = format!("{prefix}-2-");
    let mut lingering = Vec::new();
    let mut rest = None;
    for attempt in 0..5 {
        let mut run = JobRun::spawn(&spec, &f.dir, &format!("p3-{attempt}"), false, None);
        rest.get_or_insert_with(|| f.write_rest(Duration::from_secs(20)));
        lingering = kill_with_ongoing(
            &f.client,
            &mut run,
            &spec.checkpoint_dir,
            &prefix,
            &vanished,
            Duration::from_secs(60),
        )
        .await;
        assert_committed_prefix(&f, &format!("after killing p3-{attempt}")).await;
        if !lingering.is_empty() {
            break;
        }
    }
    assert!(
        !lingering.is_empty(),
        "no transaction of subtask 2 was open at any of 5 kills: the test could not set up \
         lingering transactions"
    );
    rest.expect("written")
        .await
        .expect("write the rest of the input");
    let at_kill = identities(&f.client, &lingering).await;
    eprintln!("[job-rescale-down] lingering at the kill: {at_kill:?}");

    spec.parallelism = 2;
    let since = SystemTime::now();
    let mut run = JobRun::spawn(&spec, &f.dir, "p2", true, None);
    wait_started(
        &mut run,
        &spec.checkpoint_dir,
        since,
        Duration::from_secs(60),
    )
    .await;
    let left = still_lingering(&f.client, &at_kill).await;
    let ongoing_vanished: Vec<ListedTxn> = list_transactions(&f.client, &prefix)
        .await
        .into_iter()
        .filter(|t| t.state == "Ongoing" && t.transactional_id.starts_with(&vanished))
        .collect();
    assert!(
        left.is_empty() && ongoing_vanished.is_empty(),
        "after the restart at parallelism 2 had started, transactions of the vanished subtask 2 \
         are still open: {left:?} / {ongoing_vanished:?}\n{}",
        run.describe()
    );
    let stdout = run.expect_success(Duration::from_secs(240)).await;
    print_metrics("job-rescale-down", &stdout);
    assert_restored(&stdout, "the restart at parallelism 2", &run);
    assert_exact(&f, &prefix, "rescale 3 -> 2").await;
}

/// Acceptance 3, downscale at the worst moment: parallelism 3 aborts itself right after its
/// second checkpoint is durable and before it commits, so the checkpoint holds prepared
/// transactions of subtask 2; the restart at parallelism 2 must commit them (the surviving
/// subtasks own the vanished one's ids) and abort what came after; the output is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_rescale_3_to_2_after_checkpoint_complete() {
    let _lock = JOB_LOCK.lock().await;
    let mut f = fixture_staged("job-rescale-prepared", 8, 60_000, 15_000).await;
    let prefix = unique_topic("prepared");
    let mut spec = JobSpec::new(&f.input, &f.output, f.dir.join("checkpoints"), &prefix);
    spec.transaction_timeout_ms = 600_000;
    spec.parallelism = 3;
    let fault = Fault {
        point: "after-complete",
        after: 2,
    };
    let writer = f.write_rest(Duration::from_secs(20));
    // Until an abort leaves a transaction of subtask 2 open (the durable checkpoint's prepared
    // ones, with alerts in them): which windows fire before a given checkpoint varies.
    let vanished = format!("{prefix}-2-");
    let mut open = Vec::new();
    for attempt in 0..5 {
        let label = format!("p3-{attempt}");
        let mut run = JobRun::spawn(&spec, &f.dir, &label, false, Some(fault));
        match run.wait_for(Duration::from_secs(60)).await {
            Some(Ended::Signaled(SIGABRT)) => {}
            other => {
                run.kill();
                panic!(
                    "{label} should abort at {fault:?}, ended {other:?}\n{}",
                    run.describe()
                )
            }
        }
        open = open_transactions(&f.client, &prefix).await;
        eprintln!("[job-rescale-prepared] open at the abort of {label}: {open:?}");
        assert_committed_prefix(&f, &format!("after the abort of {label}")).await;
        if open
            .iter()
            .any(|t| t.transactional_id.starts_with(&vanished))
        {
            break;
        }
    }
    assert!(
        open.iter()
            .any(|t| t.transactional_id.starts_with(&vanished)),
        "no abort left a transaction of subtask 2 open: the test could not set up its case"
    );
    writer.await.expect("write the rest of the input");

    spec.parallelism = 2;
    let mut run = JobRun::spawn(&spec, &f.dir, "p2", true, None);
    let stdout = run.expect_success(Duration::from_secs(240)).await;
    print_metrics("job-rescale-prepared", &stdout);
    assert_restored(&stdout, "the restart at parallelism 2", &run);
    assert_exact(&f, &prefix, "rescale 3 -> 2 after checkpoint complete").await;
}

/// Fails unless the run's metrics line says it restored a checkpoint (`restored_from`), when
/// the line has that field.
fn assert_restored(stdout: &str, what: &str, run: &JobRun) {
    if let Some(m) = metrics_line(stdout) {
        if let Some(v) = m.get("restored_from") {
            assert!(
                v.is_u64(),
                "{what} restored no checkpoint (restored_from = {v})\n{}",
                run.describe()
            );
        }
    }
}

/// Acceptance 3, upscale: parallelism 1 killed with a transaction open; restarted at 3 (the
/// lingering transaction must be aborted at start), killed again mid-way while a new subtask's
/// transaction is open (a crashed upscale), restarted at 2 to the end: exact output, nothing
/// open (no orphaned transaction of subtask 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_rescale_1_to_3_then_crash_then_2() {
    let _lock = JOB_LOCK.lock().await;
    let mut f = fixture_staged("job-rescale-up", 4, 60_000, 15_000).await;
    let prefix = unique_topic("up");
    let mut spec = JobSpec::new(&f.input, &f.output, f.dir.join("checkpoints"), &prefix);
    spec.transaction_timeout_ms = 600_000;
    spec.parallelism = 1;
    let mut lingering = Vec::new();
    let mut rest = None;
    for attempt in 0..5 {
        let mut run = JobRun::spawn(&spec, &f.dir, &format!("p1-{attempt}"), false, None);
        rest.get_or_insert_with(|| f.write_rest(Duration::from_secs(20)));
        lingering = kill_with_ongoing(
            &f.client,
            &mut run,
            &spec.checkpoint_dir,
            &prefix,
            &format!("{prefix}-0-"),
            Duration::from_secs(60),
        )
        .await;
        assert_committed_prefix(&f, &format!("after killing p1-{attempt}")).await;
        if !lingering.is_empty() {
            break;
        }
    }
    assert!(
        !lingering.is_empty(),
        "no transaction open at any of 5 kills"
    );
    rest.expect("written")
        .await
        .expect("write the rest of the input");
    let at_kill = identities(&f.client, &lingering).await;
    eprintln!("[job-rescale-up] lingering at the kill: {at_kill:?}");

    spec.parallelism = 3;
    let since = SystemTime::now();
    let mut run = JobRun::spawn(&spec, &f.dir, "p3", false, None);
    wait_started(
        &mut run,
        &spec.checkpoint_dir,
        since,
        Duration::from_secs(60),
    )
    .await;
    let left = still_lingering(&f.client, &at_kill).await;
    assert!(
        left.is_empty(),
        "after the restart at parallelism 3 had started, the transactions left by parallelism 1 \
         are still open: {left:?}\n{}",
        run.describe()
    );
    // The crashed upscale: kill while a new subtask has a transaction open (or after 60 s).
    let orphans = kill_with_ongoing(
        &f.client,
        &mut run,
        &spec.checkpoint_dir,
        &prefix,
        &format!("{prefix}-2-"),
        Duration::from_secs(60),
    )
    .await;
    eprintln!("[job-rescale-up] open at the crashed upscale: {orphans:?}");
    assert_committed_prefix(&f, "after the crashed upscale").await;

    spec.parallelism = 2;
    let mut run = JobRun::spawn(&spec, &f.dir, "p2", true, None);
    let stdout = run.expect_success(Duration::from_secs(240)).await;
    print_metrics("job-rescale-up", &stdout);
    assert_exact(&f, &prefix, "rescale 1 -> 3 -> 2").await;
}

/// How a corruption test damages the newest complete checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    /// Cut its largest snapshot file to half its length.
    Truncate,
    /// Flip 16 bytes in the middle of its largest snapshot file.
    FlipBytes,
    /// Remove its metadata file (every copy).
    RemoveMetadata,
}

/// Acceptance 4: the job aborts itself right after its third checkpoint is durable and before
/// it commits (so the newest checkpoint's transactions are still open and the previous one is
/// a valid place to resume); the newest checkpoint is damaged; the restart must name it (for
/// truncation and flipped bytes: its path and "corrupt" on stderr), resume from the previous
/// one, and produce exactly the expected alerts with nothing open.
async fn corruption_case(damage: Damage, seed: u64) {
    let _lock = JOB_LOCK.lock().await;
    let test = format!("job-corrupt-{damage:?}").to_lowercase();
    // The input keeps arriving while the first run checkpoints, so the damaged checkpoint's
    // transactions hold alerts that the fallback must produce again.
    let mut f = fixture_staged(&test, seed, 30_000, 5_000).await;
    // Not "corrupt-...": the prefix is in the job's logs, and the test looks for that word.
    let prefix = unique_topic("damaged");
    let spec = JobSpec::new(&f.input, &f.output, f.dir.join("checkpoints"), &prefix);
    let fault = Fault {
        point: "after-complete",
        after: 3,
    };
    let mut run = JobRun::spawn(&spec, &f.dir, "first", false, Some(fault));
    let writer = f.write_rest(Duration::from_secs(8));
    match run.wait_for(Duration::from_secs(60)).await {
        Some(Ended::Signaled(SIGABRT)) => {}
        other => {
            run.kill();
            panic!(
                "the first run should abort at {fault:?}, ended {other:?}\n{}",
                run.describe()
            )
        }
    }
    let complete = complete_checkpoints(&spec.checkpoint_dir);
    assert!(
        complete.len() >= 2,
        "need two complete checkpoints to fall back on, found:{}",
        list_checkpoint_dir(&spec.checkpoint_dir)
    );
    let newest = complete[complete.len() - 1].clone();
    let previous = complete[complete.len() - 2].clone();
    let victim = damage_checkpoint(&newest, damage);
    eprintln!(
        "[{test}] {damage:?} on {} (previous complete: {})",
        victim.display(),
        previous.path.display()
    );

    writer.await.expect("write the input");
    let mut run = JobRun::spawn(&spec, &f.dir, "restart", true, None);
    let stdout = run.expect_success(Duration::from_secs(240)).await;
    let stderr = run.stderr();
    let restored_from = metrics_line(&stdout).and_then(|m| m.get("restored_from").cloned());
    eprintln!("[{test}] the restart restored from {restored_from:?}");
    if let Some(id) = restored_from {
        assert_eq!(
            id.as_u64(),
            Some(previous.id),
            "the restart must resume from the previous complete checkpoint {} (the newest, {}, \
             is damaged)\n{}",
            previous.path.display(),
            newest.path.display(),
            run.describe()
        );
    }
    let newest_name = newest
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let previous_name = previous
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let names_it = stderr.lines().any(|l| l.contains(&newest_name));
    let says_corrupt = stderr.to_ascii_lowercase().contains("corrupt");
    eprintln!(
        "[{test}] stderr names {newest_name}: {names_it}, says corrupt: {says_corrupt}, \
         mentions the previous {previous_name}: {}",
        stderr.contains(&previous_name)
    );
    for l in stderr
        .lines()
        .filter(|l| l.contains("chk-") || l.to_ascii_lowercase().contains("corrupt"))
        .take(10)
    {
        eprintln!("[{test}]   {l}");
    }
    // A damaged file must be reported as corrupt; a checkpoint without its metadata file
    // (half-written) must at least be named.
    assert!(
        names_it && (says_corrupt || damage == Damage::RemoveMetadata),
        "the restart must name the damaged checkpoint {} on stderr (and call a damaged file \
         corrupt)\n{}",
        newest.path.display(),
        run.describe()
    );
    print_metrics(&test, &stdout);
    assert_exact(
        &f,
        &prefix,
        &format!("after {damage:?} of the newest checkpoint"),
    )
    .await;
}

/// Damages `checkpoint` as `damage` says and returns the file it changed.
fn damage_checkpoint(checkpoint: &CheckpointDir, damage: Damage) -> PathBuf {
    assert!(checkpoint.metadata.is_some(), "a complete checkpoint");
    let is_metadata = |p: &Path| {
        p.file_name()
            .is_some_and(|n| is_metadata_file(&n.to_string_lossy()))
    };
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&checkpoint.path)
        .expect("read the checkpoint dir")
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| (e.metadata().map(|m| m.len()).unwrap_or(0), e.path()))
        .collect();
    files.sort();
    if damage == Damage::RemoveMetadata {
        // Every copy of it (the job keeps `_metadata` and `_metadata.copy`): as if the
        // checkpoint had never completed.
        for (_, p) in files.iter().filter(|(_, p)| is_metadata(p)) {
            std::fs::remove_file(p).unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
        }
        return checkpoint.path.clone();
    }
    // The largest file other than the metadata (the metadata itself if it is alone).
    let victim = files
        .iter()
        .rev()
        .find(|(_, p)| !is_metadata(p))
        .or_else(|| files.last())
        .map(|(_, p)| p.clone())
        .expect("a file in the checkpoint");
    let mut bytes = std::fs::read(&victim).expect("read the victim file");
    assert!(!bytes.is_empty(), "{} is empty", victim.display());
    match damage {
        Damage::Truncate => bytes.truncate(bytes.len() / 2),
        Damage::FlipBytes => {
            let mid = bytes.len() / 2;
            let end = (mid + 16).min(bytes.len());
            for b in &mut bytes[mid..end] {
                *b ^= 0xA5;
            }
        }
        Damage::RemoveMetadata => unreachable!(),
    }
    std::fs::write(&victim, &bytes).expect("write the damaged file");
    victim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_corrupt_checkpoint_truncated() {
    corruption_case(Damage::Truncate, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_corrupt_checkpoint_flipped_bytes() {
    corruption_case(Damage::FlipBytes, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_corrupt_checkpoint_metadata_removed() {
    corruption_case(Damage::RemoveMetadata, 7).await;
}

/// Acceptance 7, measured from outside the job (the job's metrics line has no "visible after
/// barrier" figure yet): the input arrives steadily for 20 s while the job runs unbounded with
/// a checkpoint a second; the test watches the checkpoint directory and the output's last
/// stable offsets every 10 ms. For each checkpoint whose commit moved an LSO, the figure is
/// the time from the checkpoint directory's first appearance (its first snapshot, right after
/// the barrier passed a subtask) to the first LSO move after its metadata appeared: when the
/// alerts of that checkpoint became visible to `read_committed` readers. Printed (p50, p99,
/// max, and the target: interval + 100 ms), never asserted. Then the job is finished bounded
/// and its output checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_visibility_after_barrier() {
    use exactly::client::admin::{Admin, OffsetSpec};
    let _lock = JOB_LOCK.lock().await;
    let mut f = fixture_staged("job-visible", 9, 60_000, 3_000).await;
    let prefix = unique_topic("visible");
    let spec = JobSpec::new(&f.input, &f.output, f.dir.join("checkpoints"), &prefix);
    let mut run = JobRun::spawn(&spec, &f.dir, "watched", false, None);
    let writer = f.write_rest(Duration::from_secs(20));
    let admin = Admin::new(f.client.clone());
    let origin = Instant::now();
    let mut first_seen: BTreeMap<u64, Duration> = BTreeMap::new();
    let mut complete_seen: BTreeMap<u64, Duration> = BTreeMap::new();
    // (when an LSO moved, the newest checkpoint complete by then).
    let mut lso_moves: Vec<(Duration, u64)> = Vec::new();
    let mut last_lso = vec![0i64; OUTPUT_PARTITIONS as usize];
    let watch_until = origin + Duration::from_secs(24);
    while Instant::now() < watch_until {
        if let Some(e) = run.poll() {
            panic!("the watched run ended ({e:?})\n{}", run.describe());
        }
        let scan = |first: &mut BTreeMap<u64, Duration>, complete: &mut BTreeMap<u64, Duration>| {
            let now = origin.elapsed();
            for c in checkpoints(&spec.checkpoint_dir) {
                first.entry(c.id).or_insert(now);
                if c.metadata.is_some() {
                    complete.entry(c.id).or_insert(now);
                }
            }
        };
        scan(&mut first_seen, &mut complete_seen);
        let mut moved = false;
        for (p, last) in last_lso.iter_mut().enumerate() {
            let lso = admin
                .list_offset(
                    &f.output,
                    p as i32,
                    OffsetSpec::Latest,
                    Isolation::ReadCommitted,
                )
                .await
                .expect("list the LSO");
            moved |= lso > *last;
            *last = lso.max(*last);
        }
        if moved {
            let t = origin.elapsed();
            // A commit follows its checkpoint's metadata: scanning again after the LSO was
            // read finds the checkpoint that moved it even if it completed during the reads.
            scan(&mut first_seen, &mut complete_seen);
            if let Some((&id, _)) = complete_seen.last_key_value() {
                lso_moves.push((t, id));
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(run.kill(), None, "the watched run ended by itself");
    writer.await.expect("write the rest of the input");

    // Each LSO move belongs to the newest checkpoint complete when it was seen; the first
    // move per checkpoint is when its output became visible.
    let mut visible_ms: Vec<u128> = Vec::new();
    // Per checkpoint: (first file to metadata seen, first file to visible), ms.
    let mut per_checkpoint: BTreeMap<u64, (u128, u128)> = BTreeMap::new();
    for &(t, id) in &lso_moves {
        if let (false, Some(start)) = (per_checkpoint.contains_key(&id), first_seen.get(&id)) {
            let ms = t.saturating_sub(*start).as_millis();
            let durable = complete_seen
                .get(&id)
                .map_or(0, |c| c.saturating_sub(*start).as_millis());
            per_checkpoint.insert(id, (durable, ms));
            visible_ms.push(ms);
        }
    }
    visible_ms.sort_unstable();
    let pct = |q: f64| {
        visible_ms
            .get(((visible_ms.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    eprintln!(
        "[job-visible] FIGURE output visible after barrier (external estimate, ±10 ms polling): \
         {} checkpoints with output of {} complete; p50 {:?} ms, p99 {:?} ms, max {:?} ms; \
         target: checkpoint interval + 100 ms = {} ms; per checkpoint id (ms to metadata seen, ms to visible): {per_checkpoint:?}",
        visible_ms.len(),
        complete_seen.len(),
        pct(0.5),
        pct(0.99),
        visible_ms.last(),
        spec.checkpoint_interval_ms + 100
    );
    assert!(
        !visible_ms.is_empty(),
        "no checkpoint's output became visible while watched: nothing measured"
    );

    let mut run = JobRun::spawn(&spec, &f.dir, "bounded", true, None);
    let stdout = run.expect_success(Duration::from_secs(240)).await;
    print_metrics("job-visible", &stdout);
    assert_exact(&f, &prefix, "visibility run").await;
}
