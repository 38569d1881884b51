//! Shared test setup: the broker, unique topic names, a client, a Java tool runner.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use exactly::client::admin::{Admin, Isolation};
use exactly::client::fetcher::{FetchConfig, Fetcher};
use exactly::client::reader::PartitionReader;
use exactly::client::types::{Record, TopicPartition};
use exactly::client::{Client, ClientConfig};

/// The environment variable naming an already running broker (comma-separated host:port).
pub const BROKERS_ENV: &str = "EXACTLY_TEST_BROKERS";

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The broker's bootstrap address, starting the project's broker if needed. Panics with a
/// message saying how to get a broker when none can be had.
pub fn brokers() -> &'static str {
    static BROKERS: OnceLock<String> = OnceLock::new();
    BROKERS.get_or_init(|| {
        if let Ok(addr) = std::env::var(BROKERS_ENV) {
            if !addr.trim().is_empty() {
                return addr;
            }
        }
        let script = repo_root().join("scripts/kafka");
        let output = Command::new("bash").arg(&script).arg("up").output().unwrap_or_else(|e| {
            panic!("cannot run {}: {e}. Start a broker with `scripts/kafka up` or set {BROKERS_ENV}", script.display())
        });
        if !output.status.success() {
            panic!(
                "no Kafka broker for the protocol tests: `scripts/kafka up` failed ({}).\n{}\n\
                 Start one with `scripts/kafka up` (needs Java 17+ and Maven) or set {BROKERS_ENV}=host:port.",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        stdout
            .lines()
            .last()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| panic!("`scripts/kafka up` printed no address; stdout: {stdout}"))
            .to_owned()
    })
}

/// Logs to the test output when `EXACTLY_LOG` is set (e.g. `EXACTLY_LOG=exactly=debug`).
pub fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if let Ok(filter) = std::env::var("EXACTLY_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

pub async fn client() -> Client {
    init_logging();
    let brokers = brokers();
    Client::connect(ClientConfig::new(brokers))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test broker at {brokers}: {e}"))
}

/// A topic name no other test (or earlier run) uses.
pub fn unique_topic(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn create_topic(client: &Client, prefix: &str, partitions: i32) -> String {
    let name = unique_topic(prefix);
    Admin::new(client.clone())
        .create_topic(&name, partitions, &[])
        .await
        .expect("create topic");
    name
}

/// Runs one of Kafka's Java tools (see `scripts/kafka tool`) and returns its stdout.
/// The committed offset of `group` on partition 0 of `topic`, as Kafka's own consumer-group tool
/// reports it (`--describe`: GROUP TOPIC PARTITION CURRENT-OFFSET ...), with the tool's output
/// for assertion messages.
pub async fn group_offset(group: &str, topic: &str) -> (Option<String>, String) {
    let g = group.to_owned();
    let described = tokio::task::spawn_blocking(move || {
        kafka_tool(
            &[
                "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                "--bootstrap-server",
                brokers(),
                "--describe",
                "--group",
                &g,
            ],
            None,
        )
    })
    .await
    .unwrap();
    let text = String::from_utf8(described).unwrap();
    let row = text
        .lines()
        .find(|l| l.contains(topic))
        .unwrap_or_else(|| panic!("no offsets for {topic}: {text}"));
    let offset = row.split_whitespace().nth(3).map(str::to_owned);
    (offset, text)
}

/// Waits (bounded, 30 s) until the coordinator has aborted `transactional_id`'s transaction on
/// timeout; fails with `message` otherwise.
pub async fn wait_for_timeout_abort(client: &Client, transactional_id: &str, message: &str) {
    use exactly::client::transaction::{describe_transaction, CoordinatorState};
    let mut state = CoordinatorState::Empty;
    for _ in 0..300 {
        state = describe_transaction(client, transactional_id)
            .await
            .unwrap()
            .state;
        if state == CoordinatorState::CompleteAbort {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(state, CoordinatorState::CompleteAbort, "{message}");
}

pub fn kafka_tool(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/kafka"))
        .arg("tool")
        .args(args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run scripts/kafka tool");
    {
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(data) = stdin {
            pipe.write_all(data).expect("write tool stdin");
        }
    }
    let output = child.wait_with_output().expect("wait for tool");
    assert!(
        output.status.success(),
        "kafka tool {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The `exactly` binary built for this test run.
pub fn exactly_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_exactly"))
}

/// Compiles (once) and returns the directory holding the test's Java helper programs.
pub fn java_helpers() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = repo_root().join("target/java-helpers");
        std::fs::create_dir_all(&out).expect("create target/java-helpers");
        let classpath = classpath();
        let status = Command::new("javac")
            .args(["-d", out.to_str().unwrap(), "-cp", &classpath])
            .arg(repo_root().join("protocol-tests/java/TxnWriter.java"))
            .status()
            .expect("run javac (Java 17+ is needed for the interop tests)");
        assert!(
            status.success(),
            "javac failed for protocol-tests/java/TxnWriter.java"
        );
        out
    })
    .as_path()
}

pub fn classpath() -> String {
    let output = Command::new("bash")
        .arg(repo_root().join("scripts/kafka"))
        .arg("classpath")
        .output()
        .expect("scripts/kafka classpath");
    assert!(
        output.status.success(),
        "scripts/kafka classpath failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Runs a Java helper class with the Kafka classpath.
pub fn run_java(class: &str, args: &[&str]) -> String {
    let classpath = format!("{}:{}", java_helpers().display(), classpath());
    let output = Command::new("java")
        .args(["-cp", &classpath, class])
        .args(args)
        .output()
        .expect("run java");
    assert!(
        output.status.success(),
        "java {class} {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Reads `topic`/`partition` from offset 0 to its end (the last stable offset under
/// read_committed, the high watermark otherwise), with the library's [`PartitionReader`].
pub async fn read_all(
    client: &Client,
    topic: &str,
    partition: i32,
    isolation: Isolation,
) -> Vec<Record> {
    let fetcher = Fetcher::new(
        client.clone(),
        FetchConfig {
            isolation,
            max_wait_ms: 50,
            ..FetchConfig::default()
        },
    );
    PartitionReader::at(fetcher, TopicPartition::new(topic, partition), 0)
        .read_to_end()
        .await
        .unwrap_or_else(|e| panic!("reading {topic}/{partition} to its end: {e}"))
}

/// The partition's last stable offset and high watermark.
pub async fn lso_and_hw(client: &Client, topic: &str, partition: i32) -> (i64, i64) {
    use exactly::client::admin::OffsetSpec;
    let admin = Admin::new(client.clone());
    let lso = admin
        .list_offset(
            topic,
            partition,
            OffsetSpec::Latest,
            Isolation::ReadCommitted,
        )
        .await
        .unwrap();
    let hw = admin
        .list_offset(
            topic,
            partition,
            OffsetSpec::Latest,
            Isolation::ReadUncommitted,
        )
        .await
        .unwrap();
    (lso, hw)
}

/// Waits (at most 30 s) until every partition's last stable offset has caught up with its high
/// watermark. EndTxn returns once the coordinator has decided; the markers that move the LSO are
/// written to the partitions just after, so a reader that wants a finished transaction waits.
pub async fn settle(client: &Client, topic: &str, partitions: i32) {
    for p in 0..partitions {
        let mut waited_ms = 0;
        loop {
            let (lso, hw) = lso_and_hw(client, topic, p).await;
            if lso >= hw {
                break;
            }
            assert!(
                waited_ms < 30_000,
                "{topic}/{p}: LSO {lso} still behind the high watermark {hw} after 30 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            waited_ms += 20;
        }
    }
}

#[allow(dead_code)] // used by the broker_restart and txn_version_1 binaries
/// Panics unless the project's own broker (scripts/kafka) is the one under test: for tests that
/// kill it or change its features.
pub fn assert_own_broker(what: &str) {
    let addr = brokers();
    let ours = Command::new("bash")
        .arg(repo_root().join("scripts/kafka"))
        .arg("status")
        .status()
        .unwrap()
        .success();
    assert!(
        ours,
        "this test {what}, so it only runs against the project's own broker (scripts/kafka), and \
         that is not running: {addr} is some other broker. Unset EXACTLY_TEST_BROKERS to let the \
         tests start their own."
    );
}
