//! Finishing a transaction: EndTxn with its outcome logic, and [`commit_prepared`] /
//! [`abort_prepared`] for a [`PreparedTxn`] stored by another (possibly dead) process.

use tracing::{info_span, warn, Instrument};

use crate::connection::backoff::Backoff;
use crate::protocol::error_codes::{codes, Class};

use super::coordinator::{describe, send_end_txn, Coordinator};
use super::{CoordinatorState, PreparedTxn, TxnDescription, TxnOutcome};
use crate::client::{Client, ClientError};

/// Commits a prepared transaction from any process, without InitProducerId. Committing one
/// that is already committed is safe and reported as [`TxnOutcome::AlreadyCommitted`]; one that
/// the broker aborted (timeout) or that a newer producer fenced is
/// [`ClientError::PreparedTxnLost`], never success.
///
/// # Cancel safety
/// Not cancel safe: the commit may have been sent; calling again is safe.
pub async fn commit_prepared(
    client: &Client,
    prepared: &PreparedTxn,
    deadline_ms: u64,
) -> Result<TxnOutcome, ClientError> {
    finish_prepared(client, prepared, true, deadline_ms)
        .instrument(
            info_span!("txn.commit_prepared", transactional_id = %prepared.transactional_id),
        )
        .await
}

/// Aborts a prepared transaction from any process, without InitProducerId.
///
/// # Cancel safety
/// Not cancel safe: the abort may have been sent; calling again is safe.
pub async fn abort_prepared(
    client: &Client,
    prepared: &PreparedTxn,
    deadline_ms: u64,
) -> Result<TxnOutcome, ClientError> {
    finish_prepared(client, prepared, false, deadline_ms)
        .instrument(info_span!("txn.abort_prepared", transactional_id = %prepared.transactional_id))
        .await
}

async fn finish_prepared(
    client: &Client,
    prepared: &PreparedTxn,
    commit: bool,
    deadline_ms: u64,
) -> Result<TxnOutcome, ClientError> {
    let coordinator = Coordinator::new(
        client.clone(),
        prepared.transactional_id.clone(),
        deadline_ms,
        20,
    );
    if prepared.empty {
        return Ok(if commit {
            TxnOutcome::Committed
        } else {
            TxnOutcome::Aborted
        });
    }
    // Ask first: a second commit of the same prepared transaction must say so.
    end_txn(&coordinator, prepared, commit, true)
        .await
        .map(|(outcome, _)| outcome)
}

/// EndTxn with the given identity, with retries; returns the outcome and the producer id and
/// epoch to use next (the response's, under transactions version 2). With `check_first`, asks
/// the coordinator first whether the transaction already ended (a second `commit_prepared`).
pub(super) async fn end_txn(
    coordinator: &Coordinator,
    prepared: &PreparedTxn,
    commit: bool,
    check_first: bool,
) -> Result<(TxnOutcome, Option<(i64, i16)>), ClientError> {
    if check_first {
        // A transaction whose markers are still being written (PrepareCommit/PrepareAbort) is
        // waited for, so that a second commit right after the first is reported as such.
        let mut backoff = Backoff::new(coordinator.backoff_config());
        while let Ok(description) = describe(coordinator).await {
            if let Some(outcome) = already_ended(&description, prepared, commit)? {
                return Ok((outcome, None));
            }
            let ending =
                description.state.is_ending() && description.producer_id == prepared.producer_id;
            if !(ending && backoff.wait().await) {
                break;
            }
        }
    }
    let done = if commit {
        TxnOutcome::Committed
    } else {
        TxnOutcome::Aborted
    };
    match send_end_txn(coordinator, prepared, commit).await {
        Ok(next) => Ok((done, next)),
        // From another process (check_first), fencing or a moved epoch needs a look at what the
        // coordinator did; in the producer itself it is simply fencing (mapped by the caller).
        Err(ClientError::Broker { code, .. })
            if check_first
                && (code.class == Class::Fatal || code.code == codes::INVALID_TXN_STATE) =>
        {
            // Fenced, the epoch moved on, or the state does not allow this: ask what happened.
            let description = describe(coordinator).await;
            if let Ok(d) = &description {
                if let Some(outcome) = already_ended(d, prepared, commit)? {
                    return Ok((outcome, None));
                }
            }
            let state = description.map_or_else(
                |e| format!("unknown ({e})"),
                |d| format!("{} at epoch {}", d.state, d.producer_epoch),
            );
            Err(lost(
                prepared,
                commit,
                format!("EndTxn answered {code}; coordinator state {state}"),
            ))
        }
        Err(ClientError::Broker { code, .. }) if commit && code.class != Class::UnknownOutcome => {
            Err(ClientError::broker("EndTxn", code.code))
        }
        Err(e) if commit => {
            // The deadline passed without a definite answer. Never abort: re-check with the
            // coordinator, and if it cannot say either, report the outcome as unknown.
            warn!(error = %e, "EndTxn(commit) outcome unknown; asking the coordinator");
            if let Ok(d) = describe(coordinator).await {
                if let Some(outcome) = already_ended(&d, prepared, true)? {
                    // Continue on the epoch the coordinator reports: under transactions v2 the
                    // commit bumped it, and the old one is fenced.
                    return Ok((outcome, Some((d.producer_id, d.producer_epoch))));
                }
            }
            Err(ClientError::CommitOutcomeUnknown {
                transactional_id: prepared.transactional_id.clone(),
                cause: Box::new(e),
            })
        }
        Err(e) => Err(e),
    }
}

fn lost(prepared: &PreparedTxn, commit: bool, reason: String) -> ClientError {
    ClientError::PreparedTxnLost {
        action: if commit { "committed" } else { "aborted" },
        transactional_id: prepared.transactional_id.clone(),
        producer_id: prepared.producer_id,
        producer_epoch: prepared.producer_epoch,
        reason,
    }
}

/// Whether the coordinator's state shows that `prepared` already ended, and how. The epoch must
/// be ours (transactions v1) or one past ours (v2 bumps it on EndTxn), so that a transaction the
/// coordinator aborted on timeout (it bumps the epoch to fence) is never taken for ours.
fn already_ended(
    d: &TxnDescription,
    prepared: &PreparedTxn,
    commit: bool,
) -> Result<Option<TxnOutcome>, ClientError> {
    let ours = d.producer_id == prepared.producer_id
        && (d.producer_epoch == prepared.producer_epoch
            || (prepared.transaction_version >= 2
                && d.producer_epoch == prepared.producer_epoch.wrapping_add(1)));
    if !ours {
        return Ok(None);
    }
    match (&d.state, commit) {
        (CoordinatorState::CompleteCommit, true) => Ok(Some(TxnOutcome::AlreadyCommitted)),
        (CoordinatorState::CompleteAbort, false) => Ok(Some(TxnOutcome::AlreadyAborted)),
        (CoordinatorState::CompleteCommit, false) => {
            Err(lost(prepared, commit, "it was already committed".into()))
        }
        (CoordinatorState::CompleteAbort, true) => Err(lost(
            prepared,
            commit,
            format!("the coordinator aborted it (state {})", d.state),
        )),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description(state: &str, epoch: i16) -> TxnDescription {
        TxnDescription {
            state: state.into(),
            producer_id: 7,
            producer_epoch: epoch,
            partitions: vec![],
        }
    }

    fn prepared(version: i16) -> PreparedTxn {
        PreparedTxn {
            transactional_id: "t".into(),
            producer_id: 7,
            producer_epoch: 3,
            transaction_version: version,
            empty: false,
        }
    }

    #[test]
    fn already_ended_recognises_our_own_outcome_only() {
        // v2 bumps the epoch on EndTxn: one past ours is still ours.
        assert_eq!(
            already_ended(&description("CompleteCommit", 4), &prepared(2), true).unwrap(),
            Some(TxnOutcome::AlreadyCommitted)
        );
        assert_eq!(
            already_ended(&description("CompleteAbort", 3), &prepared(1), false).unwrap(),
            Some(TxnOutcome::AlreadyAborted)
        );
        // An abort by the coordinator (timeout) is never taken for a commit.
        let err = already_ended(&description("CompleteAbort", 4), &prepared(2), true).unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot be committed: the coordinator aborted it"),
            "{err}"
        );
        // Under v1 an epoch one past ours was bumped by someone else (timeout fencing): not ours.
        assert_eq!(
            already_ended(&description("CompleteCommit", 4), &prepared(1), true).unwrap(),
            None
        );
        assert_eq!(
            already_ended(&description("Ongoing", 3), &prepared(2), true).unwrap(),
            None
        );
    }
}
