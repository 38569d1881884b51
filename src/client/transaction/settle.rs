//! Waiting out the previous transaction's markers before the next transaction's first write.
//!
//! Why: the transaction coordinator answers EndTxn as soon as it has logged PrepareCommit (or
//! PrepareAbort); it writes the markers to the partitions and moves to CompleteCommit afterwards
//! (0.25–0.5 ms on an idle loopback single-node broker, several ms under load or across
//! brokers). A producer that starts its next transaction at once races those markers:
//! - under transactions version 2 (KIP-890) the partition leader verifies the first transactional
//!   Produce of each partition with the coordinator (AddPartitionsToTxn), gets
//!   CONCURRENT_TRANSACTIONS, and parks the Produce for `add.partitions.to.txn.retry.backoff.ms`
//!   (20 ms) before it retries;
//! - under transactions version 1 our own AddPartitionsToTxn, and under both versions
//!   AddOffsetsToTxn, get CONCURRENT_TRANSACTIONS and back off `concurrent_txn_backoff_ms` (20 ms).
//!
//! One lost race costs 20 ms, in a transaction that takes 1–3 ms otherwise; whether it is lost
//! depends on scheduling, so it shows in the p50 on one machine and in the p99 on another, and
//! no fixed delay covers the tail (the markers take longer under load). So the first write of a
//! transaction that starts within `settle_window_ms` of the previous EndTxn answer asks the
//! coordinator (DescribeTransactions, KIP-664) until it no longer reports PrepareCommit,
//! PrepareAbort or PrepareEpochFence, for at most [`WAIT_MAX`] (the broker's own default
//! `add.partitions.to.txn.retry.backoff.max.ms`). Later writes of the transaction, and a first
//! write after the window, never ask. The cost is the markers' own time (which a produce
//! sent earlier waits for too, in the parked case) plus up to one round trip to the
//! coordinator, and a handful of small requests.
//!
//! It is best effort and changes no guarantee: it only delays the first write. An error, an
//! unsupported or unauthorized DescribeTransactions, or the bound ends the wait and the write
//! goes ahead as it would have without this module (the broker or our retry loop then handles
//! CONCURRENT_TRANSACTIONS). The producer id and epoch are not looked at: if another producer
//! fenced us meanwhile, the write itself reports it.

use std::ops::ControlFlow;
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use crate::client::retry::{retry, Deadline, RetryAfter};
use crate::connection::backoff::BackoffConfig;
use crate::protocol::error_codes::{self, Class};
use crate::protocol::messages::kstr;
use crate::protocol::messages::messages::{DescribeTransactionsRequest, TransactionalId};

use super::coordinator::Coordinator;
use super::CoordinatorState;

/// The longest a first write waits for the previous transaction's markers: the broker's default
/// `add.partitions.to.txn.retry.backoff.max.ms`, the longest it would park that write itself.
pub(super) const WAIT_MAX: Duration = Duration::from_millis(100);

/// For this long the probes go back to back, paced only by their round trips (0.1–0.3 ms on a
/// local network), at most [`EAGER_PROBES_MAX`] of them; then the wait falls back to a jittered
/// backoff of 1–4 ms. Why not sleep at once: the timer's resolution is 1 ms, so the shortest
/// sleep (1–2 ms) costs more than the markers usually take (0.25–0.5 ms).
const EAGER: Duration = Duration::from_millis(2);
/// Bounds the back-to-back probes of [`EAGER`] (round trips can be shorter than expected).
const EAGER_PROBES_MAX: u32 = 16;

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

#[derive(Debug, Default)]
struct State {
    /// When the last EndTxn was answered, until the next transaction's first write.
    ended_at: Option<Instant>,
    /// DescribeTransactions cannot be used with this coordinator (unsupported, unauthorized).
    unavailable: bool,
    probes: u64,
    waits: u64,
}

/// The settle state of one transactional producer. Self-contained: its own short `std` lock
/// (never held across an await) and an async lock so that concurrent first writes wait for one
/// probe sequence instead of each sending their own.
#[derive(Debug)]
pub(super) struct Settle {
    window: Duration,
    state: std::sync::Mutex<State>,
    probing: tokio::sync::Mutex<()>,
}

impl Settle {
    /// `window_ms` 0 turns the wait off.
    pub(super) fn new(window_ms: u64) -> Self {
        Self {
            window: Duration::from_millis(window_ms),
            state: std::sync::Mutex::new(State::default()),
            probing: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// EndTxn was answered just now (commit or abort).
    pub(super) fn ended(&self) {
        self.lock().ended_at = Some(Instant::now());
    }

    /// DescribeTransactions probes sent, and first writes that found the previous transaction
    /// still ending (and waited).
    pub(super) fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (s.probes, s.waits)
    }

    /// Whether the next write must ask the coordinator first; forgets the end when it need not.
    fn due(&self) -> bool {
        let mut s = self.lock();
        let due = !s.unavailable && s.ended_at.is_some_and(|at| at.elapsed() < self.window);
        if !due {
            s.ended_at = None;
        }
        due
    }

    /// Counts a probe; `false` when the wait is over.
    fn count(&self, found: Probe, first: bool) -> bool {
        let mut s = self.lock();
        s.probes += 1;
        match found {
            Probe::Ending => {
                s.waits += u64::from(first);
                true
            }
            Probe::Settled => false,
            Probe::Unavailable => {
                s.unavailable = true;
                false
            }
        }
    }

    /// Call before every write to the transaction (a record, AddPartitionsToTxn,
    /// AddOffsetsToTxn); only the first write after an EndTxn within the window waits.
    ///
    /// # Cancel safety
    /// Cancel safe: it only asks and sleeps; if dropped, the next write asks again.
    pub(super) async fn before_write(&self, coordinator: &Coordinator) {
        if !self.due() {
            return;
        }
        let _probing = self.probing.lock().await;
        // Another write may have waited meanwhile.
        if !self.due() {
            return;
        }
        let started = Instant::now();
        let deadline = started + WAIT_MAX;
        let policy = BackoffConfig {
            backoff_initial_ms: 1,
            backoff_max_ms: 4,
            deadline_ms: WAIT_MAX.as_millis() as u64,
        };
        let probes = retry(&policy, Deadline::at(deadline), |attempt| async move {
            let found = tokio::time::timeout_at(deadline, probe(coordinator, deadline))
                .await
                .unwrap_or(Probe::Settled);
            let probes = attempt + 1;
            if !self.count(found, probes == 1) {
                return ControlFlow::Break(probes);
            }
            // Back to back at first, then the backoff.
            if probes < EAGER_PROBES_MAX && started.elapsed() < EAGER {
                ControlFlow::Continue(RetryAfter::after_ms((), 0))
            } else {
                ControlFlow::Continue(RetryAfter::error(()))
            }
        })
        .await
        .unwrap_or_else(|exhausted| exhausted.attempts);
        self.lock().ended_at = None;
        debug!(
            probes,
            waited_us = started.elapsed().as_micros() as u64,
            "first write of the transaction asked whether the previous one had ended"
        );
    }
}

/// One DescribeTransactions round trip to the (cached) coordinator, no retries (a coordinator
/// not cached is looked up until `deadline`, the wait's own): a failure is taken as "go ahead".
async fn probe(coordinator: &Coordinator, deadline: Instant) -> Probe {
    let Ok((_, conn)) = coordinator.connection_by(Deadline::at(deadline)).await else {
        return Probe::Settled;
    };
    if conn.version_of::<DescribeTransactionsRequest>().is_err() {
        return Probe::Unavailable;
    }
    let request = DescribeTransactionsRequest::default()
        .with_transactional_ids(vec![TransactionalId(kstr(coordinator.key.clone()))]);
    match conn.request(&request).await {
        Ok(response) => match response.transaction_states.first() {
            Some(s) if s.error_code == 0 => {
                state_probe(&CoordinatorState::parse(s.transaction_state.as_str()))
            }
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

/// The states whose markers are still being written.
fn state_probe(state: &CoordinatorState) -> Probe {
    if state.is_ending() || *state == CoordinatorState::PrepareEpochFence {
        Probe::Ending
    } else {
        Probe::Settled
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use kafka_protocol::messages::ApiKey;

    use super::super::fake_tests::{fake_at, producer_with};
    use super::super::{TransactionalProducer, TxnOutcome};
    use super::*;
    use crate::client::fake_cluster::FakeCluster;
    use crate::client::producer::ProducerRecord;

    /// A producer on the fake whose every transaction asks (a window far longer than the test).
    async fn producer(fake: &FakeCluster) -> TransactionalProducer {
        producer_with(fake, "fake-settle", |txn| txn.settle_window_ms = 3_600_000).await
    }

    /// One transaction with one record, committed.
    async fn transaction(p: &TransactionalProducer, value: &str) {
        p.begin().await.unwrap();
        let delivery = p
            .send(ProducerRecord::new("t", value.to_owned()).with_partition(0))
            .await
            .unwrap();
        assert_eq!(p.commit().await.unwrap(), TxnOutcome::Committed);
        delivery.await.expect("delivered");
    }

    /// After each EndTxn the fake coordinator reports PrepareCommit to the next `probes`
    /// DescribeTransactions (`u32::MAX`: for ever), as a coordinator still writing markers does.
    fn markers_pending_for(fake: &FakeCluster, probes: u32) -> Arc<AtomicU32> {
        let left = Arc::new(AtomicU32::new(0));
        let on_end = Arc::clone(&left);
        fake.control(ApiKey::EndTxn, true, move |_, _| {
            on_end.store(probes, Ordering::SeqCst);
            None
        });
        let on_describe = Arc::clone(&left);
        fake.control(ApiKey::DescribeTransactions, true, move |_, s| {
            let ending = on_describe
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let txn = s.txns.get_mut("fake-settle").expect("initialized");
            txn.state = match (ending, txn.state.as_str()) {
                (true, _) => "PrepareCommit".into(),
                (false, "PrepareCommit") => "CompleteCommit".into(),
                (false, other) => other.into(),
            };
            None
        });
        left
    }

    /// The requests the fake received after the first EndTxn, up to the next one.
    fn between_end_txns(fake: &FakeCluster) -> Vec<ApiKey> {
        let requests: Vec<ApiKey> = fake.requests().iter().map(|r| r.key).collect();
        let first = requests.iter().position(|k| *k == ApiKey::EndTxn).unwrap();
        requests[first + 1..]
            .iter()
            .take_while(|k| **k != ApiKey::EndTxn)
            .filter(|k| **k != ApiKey::Metadata)
            .copied()
            .collect()
    }

    /// Transactions version 2: the next transaction's first Produce leaves only once the
    /// coordinator stopped reporting PrepareCommit (a real partition leader would park it).
    #[tokio::test]
    async fn first_produce_waits_until_the_markers_are_written() {
        let fake = fake_at(2).await;
        markers_pending_for(&fake, 3);
        let p = producer(&fake).await;
        transaction(&p, "a").await;
        transaction(&p, "b").await;
        use ApiKey::{DescribeTransactions as Describe, Produce};
        assert_eq!(
            between_end_txns(&fake),
            [Describe, Describe, Describe, Describe, Produce],
            "three probes see PrepareCommit, the fourth CompleteCommit, then the produce"
        );
        let m = p.metrics().await;
        assert_eq!((m.settle_probes, m.settle_waits), (4, 1));
        assert_eq!(fake.batches().len(), 2);
    }

    /// Transactions version 1: AddPartitionsToTxn waits the same way (the coordinator would
    /// answer CONCURRENT_TRANSACTIONS, and we would back off 20 ms).
    #[tokio::test]
    async fn version_1_add_partitions_waits_until_the_markers_are_written() {
        let fake = fake_at(1).await;
        markers_pending_for(&fake, 2);
        let p = producer(&fake).await;
        transaction(&p, "a").await;
        transaction(&p, "b").await;
        use ApiKey::{AddPartitionsToTxn as Add, DescribeTransactions as Describe, Produce};
        assert_eq!(
            between_end_txns(&fake),
            [Describe, Describe, Describe, Add, Produce]
        );
    }

    /// The wait is bounded and best effort: a coordinator that keeps reporting PrepareCommit
    /// only delays the write, which then goes ahead and commits.
    #[tokio::test]
    async fn a_coordinator_that_never_settles_only_delays_the_write() {
        let fake = fake_at(2).await;
        markers_pending_for(&fake, u32::MAX);
        let p = producer(&fake).await;
        transaction(&p, "a").await;
        transaction(&p, "b").await;
        let after = between_end_txns(&fake);
        assert_eq!(after.last(), Some(&ApiKey::Produce), "{after:?}");
        assert!(
            after[..after.len() - 1]
                .iter()
                .all(|k| *k == ApiKey::DescribeTransactions)
                && after.len() > 2,
            "{after:?}"
        );
        assert_eq!(fake.batches().len(), 2);
        assert_eq!(p.metrics().await.commits, 2);
    }

    #[test]
    fn only_prepare_states_are_waited_for() {
        for s in ["PrepareCommit", "PrepareAbort", "PrepareEpochFence"] {
            assert_eq!(
                state_probe(&CoordinatorState::parse(s)),
                Probe::Ending,
                "{s}"
            );
        }
        for s in [
            "Empty",
            "Ongoing",
            "CompleteCommit",
            "CompleteAbort",
            "Dead",
            "SomethingNew",
        ] {
            assert_eq!(
                state_probe(&CoordinatorState::parse(s)),
                Probe::Settled,
                "{s}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_write_within_the_window_after_an_end_asks() {
        let s = Settle::new(100);
        assert!(!s.due(), "no transaction ended yet");
        s.ended();
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(s.due());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!s.due(), "the window is over");
        assert!(!s.due(), "and the end is forgotten");

        let off = Settle::new(0);
        off.ended();
        assert!(!off.due(), "window 0 turns it off");

        let unavailable = Settle::new(100);
        unavailable.lock().unavailable = true;
        unavailable.ended();
        assert!(!unavailable.due());
    }
}
