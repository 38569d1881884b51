//! Interop with Kafka's Java console tools: what we write they read byte for byte, and back.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::{brokers, client, create_topic, exactly_bin, kafka_tool};

/// Lines with spaces, tabs, non-ASCII UTF-8 and non-UTF-8 bytes (no newlines: one line is one record).
fn payload() -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("line {i}\twith tab — ünïcødé {}", "z".repeat(i % 40)).into_bytes())
        .collect();
    lines.push(vec![0xff, 0xfe, 0x00, 0x01, b'x']);
    lines.push(b"{\"json\": true}".to_vec());
    lines
}

fn joined(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

#[tokio::test]
async fn java_console_consumer_reads_what_exactly_produces() {
    let client = client().await;
    let topic = create_topic(&client, "interop-out", 1).await;
    let lines = payload();
    let mut child = Command::new(exactly_bin())
        .args([
            "--brokers",
            brokers(),
            "produce",
            &topic,
            "--compression",
            "lz4",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run exactly produce");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&joined(&lines))
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "exactly produce failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let n = lines.len().to_string();
    let consumed = tokio::task::spawn_blocking(move || {
        kafka_tool(
            &[
                "console-consumer",
                "--bootstrap-server",
                brokers(),
                "--topic",
                &topic,
                "--from-beginning",
                "--max-messages",
                &n,
                "--timeout-ms",
                "30000",
            ],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(
        consumed,
        joined(&lines),
        "Java console consumer output differs from what we produced"
    );
}

#[tokio::test]
async fn exactly_consumes_what_the_java_console_producer_writes() {
    let client = client().await;
    let topic = create_topic(&client, "interop-in", 1).await;
    let lines: Vec<Vec<u8>> = payload()
        .into_iter()
        .filter(|l| std::str::from_utf8(l).is_ok())
        .collect();
    let input = joined(&lines);
    let t = topic.clone();
    tokio::task::spawn_blocking(move || {
        kafka_tool(
            &[
                "console-producer",
                "--bootstrap-server",
                brokers(),
                "--topic",
                &t,
                "--compression-codec",
                "gzip",
            ],
            Some(&input),
        )
    })
    .await
    .unwrap();
    let out = Command::new(exactly_bin())
        .args([
            "--brokers",
            brokers(),
            "consume",
            &topic,
            "--format",
            "value",
            "--exit-at-end",
        ])
        .output()
        .expect("run exactly consume");
    assert!(
        out.status.success(),
        "exactly consume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, joined(&lines));
}

#[test]
fn cli_reports_bad_arguments_and_unreachable_brokers() {
    let out = Command::new(exactly_bin())
        .args(["consume", "t", "--isolation", "sometimes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown isolation level"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(exactly_bin())
        .args([
            "--brokers",
            "127.0.0.1:1",
            "--connect-deadline-ms",
            "300",
            "topics",
            "list",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach Kafka at 127.0.0.1:1"),
        "{stderr}"
    );
}
