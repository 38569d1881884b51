//! Named fault points: the crash tests make the job process die at chosen moments of the
//! checkpoint / commit protocol, where a random kill would rarely land.
//!
//! `EXACTLY_FAULT_POINT=<name>` and `EXACTLY_FAULT_AFTER=<k>` (default 1) abort the process the
//! k-th time it reaches the point. Without the variable a point is one relaxed atomic load.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// In the middle of writing a snapshot file (part of it on disk, not renamed).
pub const SNAPSHOT_WRITE: &str = "snapshot-write";
/// The checkpoint is durable (metadata written); nothing of it committed yet.
pub const AFTER_COMPLETE: &str = "after-complete";
/// Some sink subtasks committed checkpoint n, others not.
pub const MID_COMMIT: &str = "mid-commit";
/// Restore started finishing the prepared transactions of the restored checkpoint.
pub const RESTORE: &str = "restore";

struct Armed {
    name: String,
    after: u32,
    hits: AtomicU32,
}

fn armed_point() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let name = std::env::var("EXACTLY_FAULT_POINT").ok()?;
            let after = std::env::var("EXACTLY_FAULT_AFTER")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            Some(Armed {
                name,
                after,
                hits: AtomicU32::new(0),
            })
        })
        .as_ref()
}

/// Aborts the process if the armed fault point is `name` and this is its k-th hit.
pub fn point(name: &str) {
    if let Some(a) = armed_point() {
        if a.name == name && a.hits.fetch_add(1, Ordering::Relaxed) + 1 == a.after {
            eprintln!(
                "exactly: fault point {name} reached (hit {}): aborting",
                a.after
            );
            std::process::abort();
        }
    }
}

/// Whether `name` is the armed fault point (to make a point's situation certain only when a
/// test asks for it).
pub fn armed(name: &str) -> bool {
    armed_point().is_some_and(|a| a.name == name)
}
