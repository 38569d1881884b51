//! The product's everyday commands against the real broker, run as the `exactly` binary:
//! `gen` (deterministic, exact malformed count, retention), `verify` (passes on a correct
//! output; names an injected duplicate, a missing alert, an unexpected alert, an open
//! transaction, dead letters missing or twice), `txn list` and `txn abort-lingering` (dry run
//! changes nothing, `--execute` aborts: LSO equals the high watermark afterwards), and the whole
//! path gen → run → verify.
//!
//! The expected alerts here are computed in the test from the job's input contract, neither by
//! `verify`'s code nor by the runtime.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use exactly::client::admin::{Admin, ConfigResource, Isolation};
use exactly::client::producer::ProducerRecord;
use exactly::client::transaction::{
    describe_transaction, CoordinatorState, TransactionConfig, TransactionalProducer,
};
use exactly::client::Client;
use exactly::jobs::fraud::{parse, Alert};
use serde_json::Value;

use crate::common::{brokers, client, exactly_bin, lso_and_hw, read_all, unique_topic};

const START_MS: &str = "1700000000000";
/// Longest any one command may take before the test fails (bounded run time).
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// Runs `exactly ARGS` against the test broker, killing it after [`COMMAND_DEADLINE`].
async fn exactly(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(exactly_bin())
            .args(&args)
            .env("EXACTLY_BROKERS", brokers())
            .env_remove("EXACTLY_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the exactly binary");
        let began = Instant::now();
        loop {
            if child.try_wait().expect("wait for exactly").is_some() {
                return child.wait_with_output().expect("collect output");
            }
            if began.elapsed() > COMMAND_DEADLINE {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "exactly {args:?} ran longer than {COMMAND_DEADLINE:?}; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command that must succeed.
async fn ok(args: &[&str]) -> Output {
    let out = exactly(args).await;
    assert!(
        out.status.success(),
        "exactly {args:?} failed: {}",
        text(&out)
    );
    out
}

/// The one JSON object a `--format json` command printed.
fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", text(out)))
}

/// (partition, key, value, timestamp) of every record of `topic`, read_committed.
async fn records(client: &Client, topic: &str) -> Vec<(i32, String, String, i64)> {
    let partitions = client.topic(topic).await.unwrap().partitions.len() as i32;
    let mut out = Vec::new();
    for p in 0..partitions {
        for r in read_all(client, topic, p, Isolation::ReadCommitted).await {
            let s = |b: Option<bytes::Bytes>| {
                String::from_utf8_lossy(&b.unwrap_or_default()).into_owned()
            };
            out.push((p, s(r.key), s(r.value), r.timestamp));
        }
    }
    out
}

async fn gen(topic: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "gen",
        "--topic",
        topic,
        "--users",
        "60",
        "--seed",
        "7",
        "--start-ms",
        START_MS,
        "--partitions",
        "2",
    ];
    args.extend_from_slice(extra);
    json(&ok(&args).await)
}

/// The expected alerts (threshold 10, 60 s windows) and the malformed values of `input`,
/// computed here with the job's input contract (no record of the default gen is late).
async fn expected(client: &Client, input: &str) -> (Vec<Alert>, Vec<String>) {
    let mut counts: BTreeMap<(u64, i64), u64> = BTreeMap::new();
    let mut malformed = Vec::new();
    for (_, _, value, _) in records(client, input).await {
        match parse(Some(value.as_bytes())) {
            Ok(t) => {
                *counts
                    .entry((t.user_id, t.ts - t.ts.rem_euclid(60_000)))
                    .or_default() += 1
            }
            Err(_) => malformed.push(value),
        }
    }
    let alerts = counts
        .into_iter()
        .filter(|(_, n)| *n > 10)
        .map(|((user_id, window_start), count)| Alert {
            user_id,
            window_start,
            window_end: window_start + 60_000,
            count,
        })
        .collect();
    (alerts, malformed)
}

async fn create(client: &Client, prefix: &str, partitions: i32) -> String {
    let name = unique_topic(prefix);
    Admin::new(client.clone())
        .create_topic(&name, partitions, &[("retention.ms", "-1")])
        .await
        .expect("create topic");
    name
}

async fn txn_producer(client: &Client, id: &str) -> TransactionalProducer {
    let config = TransactionConfig {
        // Far beyond the test: a transaction that ends was not ended by the broker's timeout.
        transaction_timeout_ms: 600_000,
        ..TransactionConfig::new(id)
    };
    TransactionalProducer::init(client.clone(), config)
        .await
        .expect("init transactional producer")
}

/// Writes `values` (key, value) to `topic` in one committed transaction.
async fn write_committed(client: &Client, topic: &str, values: &[(String, String)]) {
    let producer = txn_producer(client, &unique_topic("cli-writer")).await;
    producer.begin().await.unwrap();
    for (k, v) in values {
        producer
            .send(ProducerRecord::new(topic, v.clone()).with_key(k.clone()))
            .await
            .unwrap();
    }
    producer.commit().await.unwrap();
}

fn alert_records(alerts: &[Alert]) -> Vec<(String, String)> {
    alerts
        .iter()
        .map(|a| (a.user_id.to_string(), serde_json::to_string(a).unwrap()))
        .collect()
}

fn keyless(values: &[String]) -> Vec<(String, String)> {
    values.iter().map(|v| (String::new(), v.clone())).collect()
}

async fn verify(input: &str, output: &str, dead_letter: Option<&str>) -> (Output, Value) {
    let mut args = vec![
        "verify", "--input", input, "--output", output, "--format", "json",
    ];
    if let Some(d) = dead_letter {
        args.extend(["--dead-letter", d]);
    }
    let out = exactly(&args).await;
    let report = json(&out);
    (out, report)
}

/// Asserts a failed verification whose discrepancies name `what`.
fn assert_fails_naming(out: &Output, report: &Value, what: &str) {
    assert!(!out.status.success(), "verify passed: {}", text(out));
    assert_eq!(report["ok"], false, "{report}");
    let named = report["discrepancies"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d.as_str().unwrap().contains(what));
    assert!(named, "no discrepancy names {what:?}: {report}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(what),
        "stderr does not name {what:?}: {}",
        text(out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gen_is_deterministic_and_writes_the_malformed_count() {
    let client = client().await;
    let (a, b) = (unique_topic("cli-gen-a"), unique_topic("cli-gen-b"));
    let flags = ["--count", "2000", "--malformed-fraction", "0.05"];
    let summary = gen(&a, &flags).await;
    gen(&b, &flags).await;
    assert_eq!(summary["records"], 2000, "{summary}");
    assert_eq!(summary["malformed"], 100, "{summary}");
    let (ra, rb) = (records(&client, &a).await, records(&client, &b).await);
    assert_eq!(ra.len(), 2000);
    assert!(ra == rb, "the same seed and start gave different records");
    // Malformed for the job itself, each value once.
    let malformed: Vec<&String> = ra
        .iter()
        .map(|(_, _, v, _)| v)
        .filter(|v| parse(Some(v.as_bytes())).is_err())
        .collect();
    assert_eq!(malformed.len(), 100);
    let distinct: std::collections::HashSet<_> = malformed.iter().collect();
    assert_eq!(distinct.len(), 100);
    // Keys are the user ids; the Kafka timestamp is the event time.
    for (_, key, value, ts) in &ra {
        if let Ok(t) = parse(Some(value.as_bytes())) {
            assert_eq!(key, &t.user_id.to_string());
            assert_eq!(*ts, t.ts);
        }
    }
    let retention = Admin::new(client.clone())
        .describe_configs(ConfigResource::Topic, &a)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.name == "retention.ms")
        .and_then(|c| c.value);
    assert_eq!(retention.as_deref(), Some("-1"));
    // Another seed, other records.
    let c = unique_topic("cli-gen-c");
    ok(&[
        "gen",
        "--topic",
        &c,
        "--users",
        "60",
        "--seed",
        "8",
        "--start-ms",
        START_MS,
        "--count",
        "2000",
    ])
    .await;
    assert!(records(&client, &c).await != ra);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_on_a_correct_output_and_names_each_discrepancy() {
    let client = client().await;
    let input = unique_topic("cli-verify-in");
    gen(&input, &["--count", "3000", "--malformed-fraction", "0.02"]).await;
    let (alerts, malformed) = expected(&client, &input).await;
    assert!(
        alerts.len() >= 5,
        "too few alerts to test with: {}",
        alerts.len()
    );
    assert_eq!(malformed.len(), 60);
    let dead = create(&client, "cli-verify-dlq", 1).await;
    write_committed(&client, &dead, &keyless(&malformed)).await;

    // Correct: every alert once, every malformed record dead-lettered once.
    let good = create(&client, "cli-verify-good", 2).await;
    write_committed(&client, &good, &alert_records(&alerts)).await;
    let (out, report) = verify(&input, &good, Some(&dead)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["matched"], alerts.len(), "{report}");
    assert_eq!(report["dead_letter"]["matched_malformed"], 60, "{report}");
    // The text format agrees.
    let out = ok(&[
        "verify",
        "--input",
        &input,
        "--output",
        &good,
        "--dead-letter",
        &dead,
    ])
    .await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: every expected alert exactly once"));

    // An injected duplicate.
    let dup = create(&client, "cli-verify-dup", 2).await;
    let mut with_dup = alerts.clone();
    with_dup.push(alerts[0]);
    write_committed(&client, &dup, &alert_records(&with_dup)).await;
    let (out, report) = verify(&input, &dup, None).await;
    assert_fails_naming(&out, &report, "duplicated");
    assert_eq!(report["duplicated"]["count"], 1, "{report}");
    assert_eq!(
        report["duplicated"]["examples"][0]["alert"]["user_id"],
        alerts[0].user_id
    );
    assert_eq!(report["missing"]["count"], 0, "{report}");

    // An injected missing alert.
    let missing = create(&client, "cli-verify-missing", 2).await;
    write_committed(&client, &missing, &alert_records(&alerts[1..])).await;
    let (out, report) = verify(&input, &missing, None).await;
    assert_fails_naming(&out, &report, "missing");
    assert_eq!(report["missing"]["count"], 1, "{report}");
    let example = &report["missing"]["examples"][0];
    assert_eq!(example["user_id"], alerts[0].user_id, "{report}");
    assert_eq!(example["window_start"], alerts[0].window_start, "{report}");

    // An unexpected alert: a user with no transactions at all.
    let extra = create(&client, "cli-verify-extra", 2).await;
    let mut with_extra = alerts.clone();
    with_extra.push(Alert {
        user_id: 999_999,
        ..alerts[0]
    });
    write_committed(&client, &extra, &alert_records(&with_extra)).await;
    let (out, report) = verify(&input, &extra, None).await;
    assert_fails_naming(&out, &report, "unexpected");
    assert_eq!(report["unexpected"]["count"], 1, "{report}");
    assert_eq!(
        report["unexpected"]["examples"][0]["alert"]["user_id"],
        999_999
    );

    // An open transaction on the output (the correct alerts committed before it).
    let open = create(&client, "cli-verify-open", 2).await;
    write_committed(&client, &open, &alert_records(&alerts)).await;
    let hanging = txn_producer(&client, &unique_topic("cli-hanging")).await;
    hanging.begin().await.unwrap();
    hanging
        .send(ProducerRecord::new(open.as_str(), "{}").with_partition(1))
        .await
        .unwrap();
    hanging.flush().await.unwrap();
    let (out, report) = verify(&input, &open, None).await;
    assert_fails_naming(&out, &report, "open transactions");
    let partitions: Vec<i64> = report["open_transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["partition"].as_i64().unwrap())
        .collect();
    assert_eq!(partitions, vec![1], "{report}");
    hanging.abort().await.unwrap();

    // An alert under another key than its user id.
    let rekeyed = create(&client, "cli-verify-key", 2).await;
    let mut records = alert_records(&alerts);
    records[0].0 = "someone-else".into();
    write_committed(&client, &rekeyed, &records).await;
    let (out, report) = verify(&input, &rekeyed, None).await;
    assert_fails_naming(&out, &report, "not keyed by their user id");
    assert_eq!(report["output"]["wrong_key"], 1, "{report}");
    assert_eq!(report["matched"], alerts.len(), "{report}");

    // Dead letters: one malformed record missing, another twice.
    let bad_dead = create(&client, "cli-verify-dlq-bad", 1).await;
    let mut letters = malformed[1..].to_vec();
    letters.push(malformed[1].clone());
    write_committed(&client, &bad_dead, &keyless(&letters)).await;
    let (out, report) = verify(&input, &good, Some(&bad_dead)).await;
    assert_fails_naming(&out, &report, "not in the dead-letter topic");
    assert_fails_naming(&out, &report, "dead-lettered more than once");
    assert_eq!(report["dead_letter"]["missing"]["count"], 1, "{report}");
    assert_eq!(
        report["dead_letter"]["missing"]["examples"][0]["value"],
        malformed[0]
    );
    assert_eq!(report["dead_letter"]["duplicated"]["count"], 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_list_shows_an_open_transaction_and_abort_lingering_aborts_it_only_with_execute() {
    let client = client().await;
    let topic = create(&client, "cli-linger", 2).await;
    let prefix = unique_topic("cli-linger");
    let id = format!("{prefix}-0-0");
    let other = format!("{}-0-0", unique_topic("cli-other"));
    // Two crashed writers: one of the prefix, one of another job.
    let lingering = txn_producer(&client, &id).await;
    let bystander = txn_producer(&client, &other).await;
    for (partition, p) in [(0, &lingering), (1, &bystander)] {
        p.begin().await.unwrap();
        p.send(ProducerRecord::new(topic.as_str(), "held").with_partition(partition))
            .await
            .unwrap();
        p.flush().await.unwrap();
    }

    let listed = json(&ok(&["txn", "list", "--prefix", &prefix, "--format", "json"]).await);
    let txns = listed["transactions"].as_array().unwrap();
    assert_eq!(txns.len(), 1, "{listed}");
    assert_eq!(txns[0]["transactional_id"], id.as_str());
    assert_eq!(txns[0]["state"], "Ongoing");
    assert_eq!(txns[0]["partitions"][0], format!("{topic}/0"));
    assert!(txns[0]["age_ms"].as_i64().unwrap() >= 0, "{listed}");
    let committed = json(
        &ok(&[
            "txn",
            "list",
            "--prefix",
            &prefix,
            "--state",
            "complete-commit",
            "--format",
            "json",
        ])
        .await,
    );
    assert_eq!(
        committed["transactions"].as_array().unwrap().len(),
        0,
        "{committed}"
    );

    // Dry run: says what it would abort, changes nothing.
    let dry = json(
        &ok(&[
            "txn",
            "abort-lingering",
            "--prefix",
            &prefix,
            "--format",
            "json",
        ])
        .await,
    );
    assert_eq!(dry["dry_run"], true);
    let planned = dry["transactions"].as_array().unwrap();
    assert_eq!(planned.len(), 1, "{dry}");
    assert_eq!(planned[0]["transactional_id"], id.as_str());
    assert_eq!(planned[0]["result"], "would abort");
    let text_dry = ok(&["txn", "abort-lingering", "--prefix", &prefix]).await;
    assert!(String::from_utf8_lossy(&text_dry.stdout).contains("dry run"));
    let young = json(
        &ok(&[
            "txn",
            "abort-lingering",
            "--prefix",
            &prefix,
            "--older-than-ms",
            "3600000",
            "--execute",
            "--format",
            "json",
        ])
        .await,
    );
    assert_eq!(
        young["transactions"].as_array().unwrap().len(),
        0,
        "{young}"
    );
    assert_eq!(
        describe_transaction(&client, &id).await.unwrap().state,
        CoordinatorState::Ongoing
    );
    let (lso, hw) = lso_and_hw(&client, &topic, 0).await;
    assert!(
        lso < hw,
        "the dry run ended the transaction: LSO {lso}, HW {hw}"
    );

    // Execute: aborted, the partition readable to its end again; the other job's untouched.
    let done = json(
        &ok(&[
            "txn",
            "abort-lingering",
            "--prefix",
            &prefix,
            "--execute",
            "--format",
            "json",
        ])
        .await,
    );
    assert_eq!(done["dry_run"], false);
    assert_eq!(done["transactions"][0]["result"], "aborted", "{done}");
    let state = describe_transaction(&client, &id).await.unwrap().state;
    assert_ne!(state, CoordinatorState::Ongoing);
    // InitProducerId answers once the abort is complete, markers written: no waiting.
    let (lso, hw) = lso_and_hw(&client, &topic, 0).await;
    assert_eq!(lso, hw, "LSO behind HW after abort-lingering --execute");
    assert!(read_all(&client, &topic, 0, Isolation::ReadCommitted)
        .await
        .is_empty());
    assert_eq!(
        describe_transaction(&client, &other).await.unwrap().state,
        CoordinatorState::Ongoing
    );
    let (lso, hw) = lso_and_hw(&client, &topic, 1).await;
    assert!(lso < hw, "the other job's transaction was ended");
    bystander.abort().await.unwrap();
}

/// The whole path: gen (with malformed and late records) → the job, bounded → verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_on_the_jobs_output() {
    let client = client().await;
    let input = unique_topic("cli-e2e-in");
    gen(
        &input,
        &[
            "--count",
            "3000",
            "--malformed-fraction",
            "0.02",
            "--late-fraction",
            "0.01",
        ],
    )
    .await;
    let output = create(&client, "cli-e2e-out", 2).await;
    let dead = create(&client, "cli-e2e-dlq", 1).await;
    let dir = std::env::temp_dir().join(unique_topic("cli-e2e-ck"));
    ok(&[
        "run",
        "--input",
        &input,
        "--output",
        &output,
        "--dead-letter",
        &dead,
        "--checkpoint-dir",
        dir.to_str().unwrap(),
        "--transactional-id-prefix",
        &unique_topic("cli-e2e"),
        "--bounded",
    ])
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let (out, report) = verify(&input, &output, Some(&dead)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(report["dead_letter"]["matched_malformed"], 60, "{report}");
    assert!(report["input"]["late"].as_u64().unwrap() > 0, "{report}");
}
