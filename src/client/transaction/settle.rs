//! Waiting out the previous transaction's markers before the next transaction's first write.
//!
//! Why: the transaction coordinator answers EndTxn as soon as it has logged PrepareCommit (or
//! PrepareAbort); it writes the commit markers to the partitions and moves to CompleteCommit
//! afterwards (0.25–0.45 ms on a loopback single-node broker, more on a real cluster). A producer
//! that starts its next transaction at once races those markers:
//! - under transactions version 2 (KIP-890) the partition leader verifies the first transactional
//!   Produce with the coordinator, gets CONCURRENT_TRANSACTIONS, and parks the Produce for
//!   `add.partitions.to.txn.retry.backoff.ms` (20 ms) before it retries;
//! - under transactions version 1 our own AddPartitionsToTxn and (both versions) AddOffsetsToTxn
//!   get CONCURRENT_TRANSACTIONS and back off for `concurrent_txn_backoff_ms` (20 ms).
//!
//! Either way one lost race costs 20 ms, and a transaction that takes 1–3 ms otherwise loses it
//! most of the time. A fixed delay cannot cover the tail (the markers take longer under load), so
//! the first write of a transaction that starts within `settle_window_ms` of the previous EndTxn
//! answer asks the coordinator (DescribeTransactions, KIP-664) until it no longer reports
//! `PrepareCommit`/`PrepareAbort`/`PrepareEpochFence`, for at most [`WAIT_MAX`] (the broker's own
//! `add.partitions.to.txn.retry.backoff.max.ms`). Later writes of the transaction, and a first
//! write after the window, never ask.
//!
//! It is best effort and changes no guarantee: it only delays the first write. An error, an
//! unsupported or unauthorized DescribeTransactions, or the bound ends the wait and the write
//! goes ahead as before (the broker or our retry loop then handles CONCURRENT_TRANSACTIONS as
//! without this module). The producer id and epoch are not looked at: if another producer fenced
//! us meanwhile, the write itself reports it.

use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use crate::connection::backoff::{Backoff, BackoffConfig};
use crate::protocol::error_codes::{self, Class};
use crate::protocol::messages::kstr;
use crate::protocol::messages::messages::{DescribeTransactionsRequest, TransactionalId};

use super::coordinator::Coordinator;

/// The longest a first write waits for the previous transaction's markers: the broker's default
/// `add.partitions.to.txn.retry.backoff.max.ms`, the longest it would park that write itself.
pub(super) const WAIT_MAX: Duration = Duration::from_millis(100);

/// Probes sent back to back (paced by their round trips, a fraction of a millisecond on a local
/// network) before the wait falls back to a jittered backoff of 1–8 ms: markers usually land
/// within the first one or two probes.
const EAGER_PROBES: u32 = 3;

/// What a DescribeTransactions probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// The coordinator is still writing the previous transaction's markers.
    Ending,
    /// Anything else: go ahead.
    Settled,
    /// The coordinator cannot answer this (too old a broker, not authorized): stop asking.
    Unavailable,
}

/// The settle state of one transactional producer; lives under its lock.
#[derive(Debug)]
pub(super) struct Settle {
    window: Duration,
    /// When the last EndTxn was answered, until the next transaction's first write.
    ended_at: Option<Instant>,
    /// DescribeTransactions cannot be used with this coordinator (unsupported, unauthorized).
    unavailable: bool,
    /// DescribeTransactions probes sent.
    pub(super) probes: u64,
    /// First writes that found the previous transaction still ending and waited.
    pub(super) waits: u64,
}

impl Settle {
    /// `window_ms` 0 turns the wait off.
    pub(super) fn new(window_ms: u64) -> Self {
        Self {
            window: Duration::from_millis(window_ms),
            ended_at: None,
            unavailable: false,
            probes: 0,
            waits: 0,
        }
    }

    /// EndTxn was answered just now (commit or abort).
    pub(super) fn ended(&mut self) {
        self.ended_at = Some(Instant::now());
    }

    /// Whether the next write must ask the coordinator first; forgets the end when it need not.
    fn due(&mut self) -> bool {
        let due = self.ended_at.is_some_and(|at| at.elapsed() < self.window) && !self.unavailable;
        if !due {
            self.ended_at = None;
        }
        due
    }

    /// Call before every write to the transaction (first produce, AddPartitionsToTxn,
    /// AddOffsetsToTxn). Only the first write after an EndTxn within the window waits.
    ///
    /// # Cancel safety
    /// Cancel safe: it only asks and sleeps; if dropped, the next write asks again.
    pub(super) async fn before_write(&mut self, coordinator: &Coordinator) {
        if !self.due() {
            return;
        }
        let started = Instant::now();
        let deadline = started + WAIT_MAX;
        let mut backoff = Backoff::new(BackoffConfig {
            backoff_initial_ms: 1,
            backoff_max_ms: 8,
            deadline_ms: WAIT_MAX.as_millis() as u64,
        });
        let mut probes = 0u32;
        loop {
            let probe = tokio::time::timeout_at(deadline, probe(coordinator))
                .await
                .unwrap_or(Probe::Settled);
            probes += 1;
            self.probes += 1;
            match probe {
                Probe::Ending => {}
                Probe::Settled => break,
                Probe::Unavailable => {
                    self.unavailable = true;
                    break;
                }
            }
            if probes == 1 {
                self.waits += 1;
            }
            if probes >= EAGER_PROBES && !backoff.wait().await {
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        debug!(
            probes,
            waited_us = started.elapsed().as_micros() as u64,
            "first write waited for the previous transaction's markers"
        );
        self.ended_at = None;
    }
}

/// One DescribeTransactions round trip to the (cached) coordinator, no retries: a failure is
/// taken as "go ahead".
async fn probe(coordinator: &Coordinator) -> Probe {
    let Ok((_, conn)) = coordinator.connection().await else {
        return Probe::Settled;
    };
    if conn.version_of::<DescribeTransactionsRequest>().is_err() {
        return Probe::Unavailable;
    }
    let request = DescribeTransactionsRequest::default()
        .with_transactional_ids(vec![TransactionalId(kstr(coordinator.key.clone()))]);
    match conn.request(&request).await {
        Ok(response) => match response.transaction_states.first() {
            Some(s) if s.error_code == 0 => state_probe(s.transaction_state.as_str()),
            // Not authorized (fatal per the error table) will not change: stop asking. Anything
            // else (coordinator moving or loading) only ends this wait.
            Some(s) if error_codes::lookup(s.error_code).class == Class::Fatal => {
                Probe::Unavailable
            }
            _ => Probe::Settled,
        },
        Err(_) => Probe::Settled,
    }
}

/// The coordinator's state names (`TransactionState` in the broker): the `Prepare*` states are the
/// ones whose markers are still being written.
fn state_probe(state: &str) -> Probe {
    if matches!(
        state,
        "PrepareCommit" | "PrepareAbort" | "PrepareEpochFence"
    ) {
        Probe::Ending
    } else {
        Probe::Settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_prepare_states_are_waited_for() {
        for s in ["PrepareCommit", "PrepareAbort", "PrepareEpochFence"] {
            assert_eq!(state_probe(s), Probe::Ending, "{s}");
        }
        for s in [
            "Empty",
            "Ongoing",
            "CompleteCommit",
            "CompleteAbort",
            "Dead",
            "",
        ] {
            assert_eq!(state_probe(s), Probe::Settled, "{s}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_write_within_the_window_after_an_end_asks() {
        let mut s = Settle::new(100);
        assert!(!s.due(), "no transaction ended yet");
        s.ended();
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(s.due());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!s.due(), "the window is over");
        assert!(!s.due(), "and the end is forgotten");

        let mut off = Settle::new(0);
        off.ended();
        assert!(!off.due(), "window 0 turns it off");

        let mut unavailable = Settle::new(100);
        unavailable.unavailable = true;
        unavailable.ended();
        assert!(!unavailable.due());
    }
}
