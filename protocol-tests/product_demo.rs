//! `exactly demo`, the README's main-job command, against the real broker: with small sizes
//! and two SIGKILL crashes of the fraud job it completes with exit 0, and the independent
//! verification it runs reports no duplicated and no missing alert.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{brokers, client, exactly_bin, unique_topic};

/// Longest the demo may take before the test fails (bounded run time).
const DEMO_DEADLINE: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_survives_two_crashes_with_no_duplicate_and_no_missing_alert() {
    // Fails loudly when there is no broker (the demo would otherwise start one itself).
    drop(client().await);
    let dir = std::env::temp_dir().join(unique_topic("demo-test"));
    let dir_arg = dir.to_str().unwrap().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(exactly_bin())
            .args(["--brokers", brokers(), "demo"])
            .args(["--records", "20000", "--users", "500", "--rate", "5000"])
            .args(["--malformed-fraction", "0.005", "--crashes", "2"])
            .args(["--dir", &dir_arg])
            .env_remove("EXACTLY_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the exactly binary");
        let began = Instant::now();
        while child.try_wait().expect("wait for exactly").is_none() {
            if began.elapsed() > DEMO_DEADLINE {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "exactly demo ran longer than {DEMO_DEADLINE:?}; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().expect("collect output")
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let all = format!(
        "status {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(out.status.success(), "{all}");
    for line in [
        "duplicates: 0",
        "missing: 0",
        "crashes survived:  2",
        "records in:        20000 (100 malformed)",
        "dead letters:      100 (each malformed record once: true)",
    ] {
        assert!(stdout.contains(line), "no {line:?} in the report: {all}");
    }
    assert!(stderr.contains("demo: crash 2/2: SIGKILL"), "{all}");
    let _ = std::fs::remove_dir_all(&dir);
}
