//! `exactly run`'s operations surface, run as the binary against the real broker: its layered
//! configuration (a `--config` TOML file, `EXACTLY_<KEY>` variables, flags; errors naming the key
//! and where it came from), the Prometheus endpoint (`--metrics-addr`: scraped while the job
//! runs, `records_in` growing as input arrives), JSON logs, and SIGTERM ending it with exit 0.
//! Also `--delivery-guarantee at-least-once` (issue 9): no checkpoints, no transactions, and the
//! summary line's figures for the Flink comparison.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exactly::client::admin::Admin;

use crate::common::{brokers, client, exactly_bin, unique_topic};

const START_MS: &str = "1700000000000";
/// Longest any step may take before the test fails (bounded run time).
const DEADLINE: Duration = Duration::from_secs(120);

fn exactly() -> Command {
    let mut c = Command::new(exactly_bin());
    c.env("EXACTLY_BROKERS", brokers())
        .env_remove("EXACTLY_LOG")
        .stdin(Stdio::null());
    c
}

/// Runs `exactly ARGS` with `env` to its end (killed after [`DEADLINE`]).
fn output(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = exactly()
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the exactly binary");
    let began = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if began.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("exactly {args:?} ran longer than {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect output")
}

fn gen(topic: &str, count: &str, seed: &str) {
    let out = output(
        &[
            "gen",
            "--topic",
            topic,
            "--count",
            count,
            "--users",
            "20",
            "--seed",
            seed,
            "--start-ms",
            START_MS,
            "--partitions",
            "2",
        ],
        &[],
    );
    assert!(out.status.success(), "gen failed: {out:?}");
}

/// The configuration error of `exactly run` with these arguments and variables: it must fail
/// before touching Kafka, with one line naming the problem.
fn config_error(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    // An unreachable broker: a configuration error must come before any connection attempt.
    let mut env = env.to_vec();
    env.push(("EXACTLY_BROKERS", "127.0.0.1:1"));
    let out = output(&all, &env);
    assert!(!out.status.success(), "accepted: {args:?} {env:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("invalid configuration"),
        "not a configuration error: {stderr}"
    );
    stderr
}

#[test]
fn configuration_errors_name_the_key_and_where_it_came_from() {
    let dir = std::env::temp_dir().join(unique_topic("ops-config"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("job.toml");
    let file_s = file.to_str().unwrap();
    let base = [
        "--input",
        "in",
        "--output",
        "out",
        "--checkpoint-dir",
        "/tmp/x",
    ];

    std::fs::write(&file, "input = \"in\"\ncheckpoint-dir = \"/tmp/x\"\n").unwrap();
    let e = config_error(&["--config", file_s], &[]);
    assert!(e.contains("`checkpoint-dir`") && e.contains(file_s), "{e}");
    assert!(e.contains("did you mean `checkpoint_dir`"), "{e}");

    std::fs::write(&file, "parallelism = 0\n").unwrap();
    let mut args = base.to_vec();
    args.extend(["--config", file_s]);
    let e = config_error(&args, &[]);
    assert!(e.contains("`parallelism`") && e.contains(file_s), "{e}");

    // The variable overrides the file, and the message says it was the variable.
    std::fs::write(&file, "window_ms = 1000\n").unwrap();
    let e = config_error(&args, &[("EXACTLY_WINDOW_MS", "-1")]);
    assert!(
        e.contains("`window_ms`") && e.contains("EXACTLY_WINDOW_MS"),
        "{e}"
    );

    let mut args = base.to_vec();
    args.extend([
        "--checkpoint-interval-ms",
        "30000",
        "--transaction-timeout-ms",
        "40000",
    ]);
    let e = config_error(&args, &[]);
    assert!(
        e.contains("`transaction_timeout_ms` from the flag --transaction-timeout-ms"),
        "{e}"
    );
    assert!(e.contains("checkpoint_interval_ms from the flag"), "{e}");

    let e = config_error(&base[2..], &[]);
    assert!(e.contains("`input`") && e.contains("required"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A missing output (or input) topic is said once, naming the key and how to create it, and the
/// job is not started and restarted on it (before: 10 restarts over ~15 s, each failing in the
/// sink with "unknown topic").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_a_configuration_error_not_a_restart_loop() {
    let client = client().await;
    let input = crate::common::create_topic(&client, "ops-missing-in", 1).await;
    let missing = unique_topic("ops-missing-out");
    let dir = std::env::temp_dir().join(unique_topic("ops-missing-ck"));
    let dir_s = dir.to_str().unwrap().to_owned();
    for (flag_input, flag_output, key) in [
        (input.as_str(), missing.as_str(), "output"),
        (missing.as_str(), input.as_str(), "input"),
    ] {
        let out = output(
            &[
                "run",
                "--bounded",
                "--input",
                flag_input,
                "--output",
                flag_output,
                "--checkpoint-dir",
                &dir_s,
                "--restart-delay-ms",
                "10000",
            ],
            &[],
        );
        assert!(!out.status.success(), "a missing {key} topic was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("the {key} topic \"{missing}\" does not exist"))
                && stderr.contains("exactly topics create"),
            "{stderr}"
        );
        assert!(!stderr.contains("restart"), "restarted on it: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plain HTTP GET of `/metrics`: the body.
fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The value of the sample `name` (no labels) in an exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `done` holds for the exposition, up to [`DEADLINE`].
fn scrape_until(addr: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let began = Instant::now();
    loop {
        let text = scrape(addr);
        if done(&text) {
            return text;
        }
        assert!(
            began.elapsed() < DEADLINE,
            "metrics never showed {what}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills the job if the test fails half-way.
struct Job(Child);

impl Drop for Job {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_the_running_jobs_metrics() {
    let client = client().await;
    let input = unique_topic("ops-metrics-in");
    let output_topic = unique_topic("ops-metrics-out");
    Admin::new(client.clone())
        .create_topic(&output_topic, 1, &[("retention.ms", "-1")])
        .await
        .expect("create the output topic");
    let dir = std::env::temp_dir().join(unique_topic("ops-metrics-ck"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("job.toml");
    let prefix = unique_topic("ops-metrics");
    tokio::task::spawn_blocking(move || {
        gen(&input, "300", "1");
        // Most of the configuration from the file, one key from the environment, the metrics
        // address from a flag.
        std::fs::write(
            &file,
            format!(
                "input = {input:?}\noutput = {output_topic:?}\ncheckpoint_dir = {:?}\n\
                 transactional_id_prefix = {prefix:?}\n",
                dir.join("ck").to_str().unwrap()
            ),
        )
        .unwrap();
        let mut child = exactly()
            .args(["--log-format", "json", "run", "--config"])
            .arg(&file)
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("EXACTLY_CHECKPOINT_INTERVAL_MS", "300")
            .env("EXACTLY_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start exactly run");
        let stderr = child.stderr.take().unwrap();
        let mut job = Job(child);
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let seen = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if let Some(rest) = line.strip_prefix("exactly: metrics at http://") {
                    let _ = addr_tx.send(rest.trim_end_matches("/metrics").to_string());
                }
                seen.lock().unwrap().push(line);
            }
        });
        let addr = addr_rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("no metrics address: {:?}", lines.lock().unwrap()));

        let text = scrape_until(&addr, "the first 300 records and a checkpoint", |t| {
            sample(t, "exactly_records_in_total") == Some(300.0)
                && sample(t, "exactly_checkpoints_completed_total").unwrap_or(0.0) >= 1.0
        });
        for name in [
            "# TYPE exactly_records_in counter",
            "# TYPE exactly_records_out counter",
            "# TYPE exactly_checkpoint_duration_ms histogram",
            "exactly_checkpoint_duration_ms_bucket{le=\"+Inf\"}",
            "# TYPE exactly_checkpoint_size_bytes histogram",
            "# TYPE exactly_commit_latency_ms histogram",
            "# TYPE exactly_dead_letter_records counter",
            "# TYPE exactly_late_records counter",
        ] {
            assert!(text.contains(name), "no {name} in:\n{text}");
        }
        gen(&input, "200", "2");
        scrape_until(&addr, "records_in grow to 500", |t| {
            sample(t, "exactly_records_in_total") == Some(500.0)
        });

        // SIGTERM: a final checkpoint and commit, exit 0.
        let pid = job.0.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
        let began = Instant::now();
        let status = loop {
            if let Some(status) = job.0.try_wait().unwrap() {
                break status;
            }
            assert!(began.elapsed() < DEADLINE, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stdout = String::new();
        job.0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let lines = lines.lock().unwrap().clone();
        assert!(status.success(), "exit {status} after SIGTERM: {lines:#?}");
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("report");
        assert_eq!(report["records_in_total"], 500, "{report}");
        // --log-format json: each log line is one JSON object (the plain `exactly:` lines are
        // progress messages, not logs).
        let logs: Vec<serde_json::Value> = lines
            .iter()
            .filter(|l| !l.starts_with("exactly:"))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert!(
            logs.iter()
                .any(|l| l["level"] == "INFO" && l["fields"].is_object()),
            "{lines:#?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    })
    .await
    .unwrap();
}

/// Issue 8: SIGTERM while transactions are open (input still arriving) ends the job with exit 0
/// and leaves no transaction open (nothing lingering for the restart to abort; LSO = high
/// watermark on every output partition once the markers are written);
/// a restart with the same checkpoint directory resumes where the stop left off (the two runs
/// read the input exactly once between them) and the output verifies exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_transaction_leaves_nothing_open_and_a_restart_resumes() {
    let client = client().await;
    let input = unique_topic("ops-term-in");
    let output_topic = unique_topic("ops-term-out");
    Admin::new(client.clone())
        .create_topic(&output_topic, 2, &[("retention.ms", "-1")])
        .await
        .expect("create the output topic");
    let dir = std::env::temp_dir().join(unique_topic("ops-term-ck"));
    let prefix = unique_topic("ops-term");
    let total = 20_000u64;
    let (input2, output2, dir2, prefix2) = (
        input.clone(),
        output_topic.clone(),
        dir.clone(),
        prefix.clone(),
    );
    let (first, second) = tokio::task::spawn_blocking(move || {
        // The input arrives while the job runs (5,000 records/s for 4 s).
        let mut gen = exactly()
            .args([
                "gen",
                "--topic",
                &input2,
                "--count",
                &total.to_string(),
                "--users",
                "50",
                "--seed",
                "3",
            ])
            .args([
                "--start-ms",
                START_MS,
                "--partitions",
                "2",
                "--rate",
                "5000",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gen");
        let run = |bounded: bool| {
            let mut c = exactly();
            c.args([
                "run",
                "--input",
                &input2,
                "--output",
                &output2,
                "--transactional-id-prefix",
                &prefix2,
            ])
            .arg("--checkpoint-dir")
            .arg(&dir2)
            .args(["--checkpoint-interval-ms", "500", "--parallelism", "2"]);
            if bounded {
                c.arg("--bounded");
            }
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            c
        };
        // Wait until the topic exists and has data, then start the job.
        std::thread::sleep(Duration::from_millis(800));
        let mut job = Job(run(false).spawn().expect("start exactly run"));
        std::thread::sleep(Duration::from_millis(2_000));
        let status = Command::new("kill")
            .args(["-TERM", &job.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let began = Instant::now();
        let status = loop {
            if let Some(status) = job.0.try_wait().unwrap() {
                break status;
            }
            assert!(began.elapsed() < DEADLINE, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = String::new();
        job.0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let mut stderr = String::new();
        job.0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(status.success(), "exit {status} after SIGTERM: {stderr}");
        let first: serde_json::Value = serde_json::from_str(stdout.trim()).expect("first report");
        assert!(gen.wait().unwrap().success(), "gen failed");
        let out = run(true).output().expect("second run");
        assert!(
            out.status.success(),
            "second run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let second: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())
                .expect("second report");
        (first, second)
    })
    .await
    .unwrap();
    // The SIGTERM left nothing open (checked after the second run too: it must not have had to
    // abort anything of the first).
    assert_eq!(
        second["lingering_aborted"], 0,
        "the stop left a transaction open: {second}"
    );
    // EndTxn returns once the coordinator has decided; the markers follow within milliseconds,
    // so the LSO is waited for (bounded, 30 s: far below the 60 s transaction timeout, so a
    // transaction left open still fails here). Checking it at once failed ~1 run in 5.
    crate::common::settle(&client, &output_topic, 2).await;
    // Resumed, not reprocessed: between them the two runs read every input record once.
    let (a, b) = (
        first["records_in_total"].as_u64().unwrap(),
        second["records_in_total"].as_u64().unwrap(),
    );
    assert!(
        a > 0 && b > 0,
        "both runs should have read input: {a} + {b}"
    );
    assert_eq!(a + b, total, "first {first}\nsecond {second}");
    assert!(second["restored_from"].is_u64(), "{second}");
    let verify = output(
        &["verify", "--input", &input, "--output", &output_topic],
        &[],
    );
    assert!(
        verify.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `exactly run` to its end in a blocking task; the summary line parsed.
async fn run_to_end(args: Vec<String>) -> serde_json::Value {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = output(&args, &[]);
        assert!(
            out.status.success(),
            "exactly {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("summary line")
    })
    .await
    .unwrap()
}

/// Issue 9: `--bounded --delivery-guarantee at-least-once` reads the whole input, fires every
/// window, writes the alerts without transactions (no transactional id of its prefix exists on
/// the broker afterwards) and without checkpoints (nothing in `--checkpoint-dir`), exits 0, and
/// the output verifies (a crash-free run writes each alert once). Its summary carries the
/// figures the Flink comparison reads. The same job exactly once is the control: its ids and
/// checkpoint files are seen by the same checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_bounded_run_has_no_transactions_no_checkpoints_and_verifies() {
    let client = client().await;
    let admin = Admin::new(client.clone());
    let input = unique_topic("ops-alo-in");
    let total = 6_000u64;
    tokio::task::spawn_blocking({
        let input = input.clone();
        move || gen(&input, &total.to_string(), "9")
    })
    .await
    .unwrap();
    let mut runs = Vec::new();
    for guarantee in ["at-least-once", "exactly-once"] {
        let output_topic = unique_topic("ops-alo-out");
        admin
            .create_topic(&output_topic, 2, &[("retention.ms", "-1")])
            .await
            .expect("create the output topic");
        let dir = std::env::temp_dir().join(unique_topic("ops-alo-ck"));
        let prefix = unique_topic("ops-alo");
        let mut args: Vec<String> = [
            "run",
            "--bounded",
            "--delivery-guarantee",
            guarantee,
            "--input",
            &input,
            "--output",
            &output_topic,
            "--transactional-id-prefix",
            &prefix,
            "--parallelism",
            "2",
            "--checkpoint-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(dir.display().to_string());
        let summary = run_to_end(args).await;
        assert_eq!(summary["delivery_guarantee"], guarantee, "{summary}");
        assert_eq!(summary["parallelism"], 2, "{summary}");
        assert_eq!(summary["records_in"], total, "{summary}");
        let alerts = summary["alerts"].as_u64().expect("alerts");
        assert!(alerts > 0, "the input has hot users: {summary}");
        assert_eq!(summary["alerts"], summary["records_out_total"], "{summary}");
        let first = summary["process_start_to_first_record_ms"]
            .as_u64()
            .expect("process_start_to_first_record_ms");
        let end = summary["process_start_to_end_ms"]
            .as_u64()
            .expect("process_start_to_end_ms");
        assert!(first <= end, "{summary}");
        let verify = tokio::task::spawn_blocking({
            let (input, output_topic) = (input.clone(), output_topic.clone());
            move || {
                output(
                    &["verify", "--input", &input, "--output", &output_topic],
                    &[],
                )
            }
        })
        .await
        .unwrap();
        assert!(
            verify.status.success(),
            "{guarantee}: verify: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        let ids: Vec<String> = admin
            .list_transactions(&[], |id| id.starts_with(&prefix))
            .await
            .expect("list transactions")
            .into_iter()
            .map(|t| t.transactional_id)
            .collect();
        let files: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("read {}: {e}", dir.display()),
        };
        let _ = std::fs::remove_dir_all(&dir);
        runs.push((guarantee, summary, ids, files));
    }
    let (_, alo, alo_ids, alo_files) = &runs[0];
    assert_eq!(alo["checkpoints"], 0, "{alo}");
    assert!(alo_ids.is_empty(), "transactional ids: {alo_ids:?}");
    assert!(alo_files.is_empty(), "checkpoint dir: {alo_files:?}");
    // The control: the checks see what exactly once leaves.
    let (_, eo, eo_ids, eo_files) = &runs[1];
    assert!(eo["checkpoints"].as_u64().unwrap() >= 1, "{eo}");
    assert!(!eo_ids.is_empty(), "exactly once left no transactional id");
    assert!(
        eo_files.iter().any(|f| f.starts_with("chk-")),
        "exactly once left no checkpoint: {eo_files:?}"
    );
    assert_eq!(alo["alerts"], eo["alerts"], "{alo}\n{eo}");
}
