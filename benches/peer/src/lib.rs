//! Shared setup for the peer benchmarks: the broker address and topic helpers.

pub mod java;

use std::process::Command;

/// The broker: `EXACTLY_TEST_BROKERS`, or the project's own broker started with `scripts/kafka up`.
pub fn brokers() -> String {
    if let Ok(b) = std::env::var("EXACTLY_TEST_BROKERS") {
        if !b.is_empty() {
            return b;
        }
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/kafka");
    let out = Command::new("bash").arg(script).arg("up").output().expect("run scripts/kafka up");
    assert!(out.status.success(), "scripts/kafka up failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().last().expect("address").trim().to_owned()
}

/// A fresh topic name.
pub fn topic(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("bench-{prefix}-{}", nanos % 1_000_000_000_000)
}
