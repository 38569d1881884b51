//! The Java client as a peer: compiles `java/CommitLatency.java` with `javac` against the Kafka
//! jars the project's broker script already caches (`scripts/kafka classpath`), and drives it as a
//! child process over stdin/stdout, so that it runs in the same run as the Rust peers, interleaved.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// A running `CommitLatency` Java program with an initialized transactional producer.
pub struct JavaPeer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// The Kafka jars' classpath, from `scripts/kafka classpath` (which fetches them once if needed).
fn kafka_classpath() -> String {
    let script = format!("{MANIFEST_DIR}/../../scripts/kafka");
    let out = Command::new("bash")
        .arg(script)
        .arg("classpath")
        .output()
        .expect("run scripts/kafka classpath");
    assert!(
        out.status.success(),
        "scripts/kafka classpath failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("a classpath")
        .trim()
        .to_owned()
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Compiles the program unless its class file is newer than the source; returns the class dir.
fn compile(classpath: &str) -> PathBuf {
    let source = PathBuf::from(format!("{MANIFEST_DIR}/java/CommitLatency.java"));
    let classes = PathBuf::from(format!("{MANIFEST_DIR}/target/java"));
    let class = classes.join("CommitLatency.class");
    if modified(&class).is_some_and(|c| modified(&source).is_some_and(|s| c >= s)) {
        return classes;
    }
    std::fs::create_dir_all(&classes).expect("create target/java");
    let javac = std::env::var("JAVAC").unwrap_or_else(|_| "javac".into());
    let status = Command::new(&javac)
        .args(["-nowarn", "-d"])
        .arg(&classes)
        .arg("-cp")
        .arg(classpath)
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("run {javac} (a JDK 17+ is needed for the Java peer): {e}"));
    assert!(status.success(), "javac failed on {}", source.display());
    classes
}

impl JavaPeer {
    /// Compiles (if needed) and starts the program; returns once `initTransactions()` returned.
    pub fn start(brokers: &str, transactional_id: &str, topic: &str) -> Self {
        let libs = kafka_classpath();
        let classes = compile(&libs);
        let java = std::env::var("JAVA").unwrap_or_else(|_| "java".into());
        let log_config = format!("{MANIFEST_DIR}/../../scripts/kafka-config/tools-log4j2.yaml");
        let mut child = Command::new(&java)
            .arg("-Xmx512m")
            .arg(format!("-Dlog4j2.configurationFile={log_config}"))
            .arg("-cp")
            .arg(format!("{}:{libs}", classes.display()))
            .arg("CommitLatency")
            .args([brokers, transactional_id, topic])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {java}: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read from the Java peer");
        assert_eq!(
            line.trim(),
            "ready",
            "the Java peer did not start (see its stderr above)"
        );
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Runs `count` back-to-back transactions of `n` records over `p` partitions; returns each
    /// successful transaction's latency as measured inside the JVM, and how many failed (the
    /// Java client gave up on them; its error is on stderr, and the program went on with a new
    /// producer).
    pub fn run(&mut self, n: usize, p: i32, count: usize) -> (Vec<Duration>, usize) {
        writeln!(self.stdin, "{n} {p} {count}").expect("write to the Java peer");
        self.stdin.flush().expect("flush to the Java peer");
        let mut line = String::new();
        let read = self
            .stdout
            .read_line(&mut line)
            .expect("read from the Java peer");
        assert!(read > 0, "the Java peer exited (see its stderr above)");
        let nanos: Vec<i64> = line
            .split_whitespace()
            .map(|s| s.parse().expect("a latency in ns"))
            .collect();
        assert_eq!(nanos.len(), count, "the Java peer answered {line:?}");
        let v: Vec<Duration> = nanos
            .iter()
            .filter(|ns| **ns >= 0)
            .map(|ns| Duration::from_nanos(*ns as u64))
            .collect();
        let failed = count - v.len();
        (v, failed)
    }
}

impl Drop for JavaPeer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}
