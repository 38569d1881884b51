//! Finishing a transaction: EndTxn with its outcome logic, and [`commit_prepared`] /
//! [`abort_prepared`] for a [`PreparedTxn`] stored by another (possibly dead) process.
//!
//! A prepared transaction is finished from facts, not from the coordinator's current state
//! alone: by the time a stored [`PreparedTxn`] is finished, its transactional id may have moved
//! on — the transaction committed, then the next one opened at the same epoch (transactions
//! version 1) or a later one (version 2, KIP-890), or the coordinator aborted it on timeout,
//! bumping the epoch, and the next producer of the id bumped it again. The coordinator's (producer id, epoch, state) then describes
//! *another* transaction, and acting on it would commit or abort that one.
//!
//! The facts are the partition logs: the transaction's marker (KIP-98 control batch of its
//! producer id) follows the last batch it wrote in every partition it wrote to, whose offsets
//! [`PreparedTxn::partitions`] records (see [`super::marker`]). So:
//! 1. under transactions version 2, a coordinator holding our producer id and epoch in Ongoing
//!    holds this transaction (every later one has a later epoch): EndTxn ends it;
//! 2. otherwise read the recorded partitions for the marker: a COMMIT marker means committed,
//!    an ABORT marker aborted — whatever the coordinator holds now;
//! 3. if a log shows the transaction's batch and no marker after it, it has not ended, so the
//!    coordinator cannot have moved on (the next transaction of a producer starts only after
//!    every marker of this one is written): if it holds our producer id and epoch in Ongoing,
//!    that is ours and EndTxn ends it; other states are ours ending — wait and read again;
//! 4. if no log can tell (none recorded, retention deleted them, the topic was recreated), the
//!    coordinator alone decides only under transactions version 2 (Complete* at the next
//!    epoch is ours, ended by EndTxn); otherwise the outcome is
//!    [`ClientError::PreparedTxnOutcomeUnknown`] and nothing is done.
//!
//! An EndTxn whose answer is lost (or unexpected) is followed by another look, never by the
//! opposite action; a commit that may have applied and cannot be confirmed in time is
//! [`ClientError::CommitOutcomeUnknown`].
//!
//! One rule for the caller: a prepared transaction is finished by one party at a time. If the
//! producer that prepared it were still alive and committed it and began the next one at the
//! same epoch between steps 3 and its EndTxn, that next one would be ended instead.

use std::ops::ControlFlow;

use tokio::time::Instant;
use tracing::{debug, info_span, warn, Instrument};

use crate::client::retry::{retry, Deadline, RetryAfter};
use crate::connection::backoff::BackoffConfig;
use crate::connection::ConnectionError;
use crate::protocol::error_codes::{codes, Class};

use super::coordinator::{describe, describe_by, send_end_txn, Coordinator};
use super::marker::{find_marker, LogEvidence, MarkerKind, MarkerSearch};
use super::{CoordinatorState, PreparedTxn, TxnDescription, TxnOutcome};
use crate::client::{Client, ClientError};

/// Commits a prepared transaction from any process, without InitProducerId (which would abort
/// it). Its outcome is learned from its marker in the partition logs when the transactional id
/// has moved on (see the module docs): one already committed is
/// [`TxnOutcome::AlreadyCommitted`]; one that was aborted (by the broker on timeout, or by a
/// newer producer) is [`ClientError::PreparedTxnLost`], never success; one whose outcome cannot
/// be learned is [`ClientError::PreparedTxnOutcomeUnknown`], and nothing is done to it.
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

/// Aborts a prepared transaction from any process, without InitProducerId. One already
/// aborted is [`TxnOutcome::AlreadyAborted`]; one already committed is
/// [`ClientError::PreparedTxnLost`]; an unknown outcome is
/// [`ClientError::PreparedTxnOutcomeUnknown`], as for [`commit_prepared`].
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

/// Finishes `prepared` from its facts. See the module docs for the rules.
async fn finish_prepared(
    client: &Client,
    prepared: &PreparedTxn,
    commit: bool,
    deadline_ms: u64,
) -> Result<TxnOutcome, ClientError> {
    if prepared.empty {
        return Ok(if commit {
            TxnOutcome::Committed
        } else {
            TxnOutcome::Aborted
        });
    }
    let deadline = Deadline::after_ms(deadline_ms);
    let policy = BackoffConfig {
        backoff_initial_ms: 20,
        backoff_max_ms: 500,
        deadline_ms,
    };
    let progress = tokio::sync::Mutex::new(Progress {
        maybe_applied: None,
        resume: prepared
            .partitions
            .iter()
            .map(|p| p.last_batch_offset)
            .collect(),
    });
    let progress_ref = &progress;
    let finished = retry(&policy, deadline, |_| async move {
        let mut progress = progress_ref.lock().await;
        let Progress {
            maybe_applied,
            resume,
        } = &mut *progress;
        let remaining_ms = deadline.remaining().as_millis().max(1) as u64;
        // At most half the time left per call, so that a lost answer leaves time to look again.
        let coordinator = Coordinator::new(
            client.clone(),
            prepared.transactional_id.clone(),
            (remaining_ms / 2).max(1),
            20,
        );
        let description = describe(&coordinator).await;
        // Under transactions version 2 the coordinator holding our producer id and epoch in
        // Ongoing can only be this transaction (every later one has a later epoch): no need to
        // read the logs. Otherwise they decide.
        let evidence = if prepared.transaction_version >= 2
            && description.as_ref().is_ok_and(|d| holds(d, prepared))
        {
            Evidence::Silent {
                reasons: vec!["not read: the coordinator holds it".to_owned()],
                transient: false,
            }
        } else {
            read_logs(client, prepared, resume, deadline.instant()).await
        };
        let decision = decide(prepared, commit, &evidence, Some(&description));
        debug!(
            ?evidence,
            ?description,
            ?decision,
            "finishing a prepared transaction"
        );
        let wait_reason = match decision {
            Decision::Done(Ok(outcome)) => {
                // An outcome this call's own EndTxn may have brought about is reported as such.
                return ControlFlow::Break(Ok(match outcome {
                    TxnOutcome::AlreadyCommitted if maybe_applied.is_some() => {
                        TxnOutcome::Committed
                    }
                    TxnOutcome::AlreadyAborted if maybe_applied.is_some() => TxnOutcome::Aborted,
                    other => other,
                }));
            }
            Decision::Done(Err(e)) => return ControlFlow::Break(Err(e)),
            Decision::EndTxn => match send_end_txn(
                &coordinator,
                prepared,
                commit,
                deadline.within((remaining_ms / 2).max(1)),
            )
            .await
            {
                Ok(_) => {
                    return ControlFlow::Break(Ok(if commit {
                        TxnOutcome::Committed
                    } else {
                        TxnOutcome::Aborted
                    }))
                }
                // Fenced, the state changed under us, or no answer: the logs will tell what
                // happened. Anything else (authorization, ...) will not get better.
                Err(e) if look_again_after(&e) => {
                    warn!(error = %e, "EndTxn for a prepared transaction failed; looking again");
                    let reason = format!("EndTxn failed: {e}");
                    if !is_rejection(&e) {
                        *maybe_applied = Some(e);
                    }
                    reason
                }
                Err(e) => {
                    return ControlFlow::Break(Err(match maybe_applied.take() {
                        Some(_) if commit => ClientError::CommitOutcomeUnknown {
                            transactional_id: prepared.transactional_id.clone(),
                            cause: Box::new(e),
                        },
                        _ => e,
                    }))
                }
            },
            Decision::Wait(reason) => reason,
        };
        ControlFlow::Continue(RetryAfter::error(wait_reason))
    })
    .await;
    let wait_reason = match finished {
        Ok(result) => return result,
        Err(exhausted) => exhausted.last,
    };
    let maybe_applied = progress.into_inner().maybe_applied;
    Err(match maybe_applied {
        Some(cause) if commit => ClientError::CommitOutcomeUnknown {
            transactional_id: prepared.transactional_id.clone(),
            cause: Box::new(cause),
        },
        Some(cause) => unknown(
            prepared,
            commit,
            format!("an EndTxn(abort) was sent and may have applied ({cause}); {wait_reason}"),
        ),
        None => unknown(
            prepared,
            commit,
            format!("{wait_reason} (gave up after {deadline_ms} ms)"),
        ),
    })
}

/// What [`finish_prepared`] carries from one look to the next.
struct Progress {
    /// An EndTxn this call sent that failed without a definite answer: it may have applied.
    maybe_applied: Option<ClientError>,
    /// Per recorded partition, where the log search resumes.
    resume: Vec<i64>,
}

/// Whether EndTxn was definitely refused (so it did not apply).
fn is_rejection(e: &ClientError) -> bool {
    matches!(e, ClientError::Broker { code, .. } if code.class == Class::Fatal)
}

/// Whether the logs should be read again after an EndTxn failure: the transaction may have
/// ended otherwise (fenced, state changed: someone else ended it or the id moved on), or ours may
/// have applied (no answer, an unexpected code). Only a definite refusal that will not change
/// (authorization, ...) is final.
fn look_again_after(e: &ClientError) -> bool {
    match e {
        ClientError::Broker { code, .. } if code.class == Class::Fatal => matches!(
            code.code,
            codes::PRODUCER_FENCED | codes::INVALID_PRODUCER_EPOCH | codes::INVALID_TXN_STATE
        ),
        ClientError::Connection(ConnectionError::UnsupportedVersion { .. }) => false,
        _ => true,
    }
}

/// What the partition logs say about a prepared transaction (the first partition that can
/// tell decides; see [`read_logs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Evidence {
    /// Its marker, in `topic`/`partition` at `offset`.
    Ended {
        kind: MarkerKind,
        topic: String,
        partition: i32,
        offset: i64,
    },
    /// Its batch is there and no marker after it: it has not ended (or its markers are being
    /// written).
    Open { topic: String, partition: i32 },
    /// No partition can tell. `transient`: some could not be read now and may be later.
    Silent {
        reasons: Vec<String>,
        transient: bool,
    },
}

/// Reads the recorded partitions in turn until one can tell. `resume` holds, per recorded
/// partition, where to search from: a log found open is not read again from the start.
async fn read_logs(
    client: &Client,
    prepared: &PreparedTxn,
    resume: &mut [i64],
    deadline: Instant,
) -> Evidence {
    let mut reasons = Vec::new();
    let mut transient = false;
    if prepared.partitions.is_empty() {
        reasons.push("no partition offsets were recorded with it".to_owned());
    }
    for (p, start) in prepared.partitions.iter().zip(resume.iter_mut()) {
        let search = MarkerSearch {
            producer_id: prepared.producer_id,
            producer_epoch: prepared.producer_epoch,
            batch_offset: p.last_batch_offset,
        };
        match find_marker(client, &p.topic, p.partition, search, *start, deadline).await {
            Ok(LogEvidence::Ended { kind, offset, .. }) => {
                return Evidence::Ended {
                    kind,
                    topic: p.topic.clone(),
                    partition: p.partition,
                    offset,
                }
            }
            Ok(LogEvidence::Open { next_offset }) => {
                *start = next_offset;
                return Evidence::Open {
                    topic: p.topic.clone(),
                    partition: p.partition,
                };
            }
            Ok(LogEvidence::Unknown { reason }) => {
                reasons.push(format!("{}/{}: {reason}", p.topic, p.partition));
            }
            Err(e) => {
                transient = true;
                reasons.push(format!("{}/{}: {e}", p.topic, p.partition));
            }
        }
    }
    Evidence::Silent { reasons, transient }
}

/// What to do next.
#[derive(Debug)]
enum Decision {
    /// The answer.
    Done(Result<TxnOutcome, ClientError>),
    /// The coordinator holds exactly this transaction: end it.
    EndTxn,
    /// Look again shortly (markers are being written); the reason if time runs out.
    Wait(String),
}

/// The decision from the logs and the coordinator's state. Pure.
///
/// - A marker decides.
/// - The log shows the transaction open: the coordinator cannot have moved on (a later
///   transaction of this producer starts only after every marker of this one is written), so
///   if it holds our producer id and epoch in Ongoing, that is ours: EndTxn. Any other state is
///   ours ending (markers being written): wait and read again.
/// - No log can tell: only under transactions version 2, where each transaction of a producer
///   has its own epoch, may the coordinator's state stand in — Ongoing at our epoch is ours,
///   Complete* at the next epoch is ours ended by EndTxn. Otherwise the outcome is unknown.
fn decide(
    prepared: &PreparedTxn,
    commit: bool,
    evidence: &Evidence,
    description: Option<&Result<TxnDescription, ClientError>>,
) -> Decision {
    let d = description.and_then(|d| d.as_ref().ok());
    let coordinator_state = || match description {
        Some(Ok(d)) => format!(
            "the coordinator is in state {} with producer {} epoch {}",
            d.state, d.producer_id, d.producer_epoch
        ),
        Some(Err(e)) => format!("the coordinator could not be asked ({e})"),
        None => "the coordinator was not asked".to_owned(),
    };
    let ours_ongoing = d.is_some_and(|d| holds(d, prepared));
    match evidence {
        Evidence::Ended {
            kind,
            topic,
            partition,
            offset,
        } => {
            let marker = match kind {
                MarkerKind::Commit => "commit",
                MarkerKind::Abort => "abort",
            };
            Decision::Done(ended(
                prepared,
                commit,
                *kind,
                &format!(" ({marker} marker at {topic}/{partition} offset {offset})"),
            ))
        }
        Evidence::Open { topic, partition } => {
            // A coordinator that cannot be asked does not change what the log says.
            if ours_ongoing || matches!(description, Some(Err(_))) {
                Decision::EndTxn
            } else {
                Decision::Wait(format!(
                    "{topic}/{partition} shows it open, and {}",
                    coordinator_state()
                ))
            }
        }
        Evidence::Silent { reasons, transient } => {
            let reasons = reasons.join("; ");
            if prepared.transaction_version >= 2 {
                if ours_ongoing {
                    return Decision::EndTxn;
                }
                if let Some(d) = d.filter(|d| {
                    d.producer_id == prepared.producer_id
                        && d.producer_epoch == prepared.producer_epoch.wrapping_add(1)
                }) {
                    let kind = match d.state {
                        CoordinatorState::CompleteCommit => Some(MarkerKind::Commit),
                        CoordinatorState::CompleteAbort => Some(MarkerKind::Abort),
                        _ => None,
                    };
                    if d.state.is_ending() {
                        return Decision::Wait(format!("{reasons}; {}", coordinator_state()));
                    }
                    if let Some(kind) = kind {
                        let detail = format!(
                            " (the coordinator is in state {} at epoch {})",
                            d.state, d.producer_epoch
                        );
                        return Decision::Done(ended(prepared, commit, kind, &detail));
                    }
                }
            }
            let reason = format!("{reasons}; {}", coordinator_state());
            if *transient {
                Decision::Wait(reason)
            } else {
                Decision::Done(Err(unknown(prepared, commit, reason)))
            }
        }
    }
}

/// Whether the coordinator holds a transaction of our producer id and epoch, open.
fn holds(d: &TxnDescription, prepared: &PreparedTxn) -> bool {
    d.producer_id == prepared.producer_id
        && d.producer_epoch == prepared.producer_epoch
        && d.state == CoordinatorState::Ongoing
}

/// The outcome of asking to commit (or abort) a transaction that ended as `kind` says.
fn ended(
    prepared: &PreparedTxn,
    commit: bool,
    kind: MarkerKind,
    detail: &str,
) -> Result<TxnOutcome, ClientError> {
    match (kind, commit) {
        (MarkerKind::Commit, true) => Ok(TxnOutcome::AlreadyCommitted),
        (MarkerKind::Abort, false) => Ok(TxnOutcome::AlreadyAborted),
        (MarkerKind::Commit, false) => Err(lost(
            prepared,
            commit,
            format!("it was already committed{detail}"),
        )),
        (MarkerKind::Abort, true) => Err(lost(prepared, commit, format!("it was aborted{detail}"))),
    }
}

fn unknown(prepared: &PreparedTxn, commit: bool, reason: String) -> ClientError {
    ClientError::PreparedTxnOutcomeUnknown {
        action: if commit { "committed" } else { "aborted" },
        transactional_id: prepared.transactional_id.clone(),
        producer_id: prepared.producer_id,
        producer_epoch: prepared.producer_epoch,
        reason,
    }
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
    // One budget for the wait below and the EndTxn after it.
    let deadline = coordinator.deadline();
    if check_first {
        // A transaction whose markers are still being written (PrepareCommit/PrepareAbort) is
        // waited for, so that a second commit right after the first is reported as such.
        let settled = retry(&coordinator.backoff_config(), deadline, |_| async {
            let Ok(description) = describe_by(coordinator, deadline).await else {
                return ControlFlow::Break(Ok(None));
            };
            match already_ended(&description, prepared, commit) {
                Err(e) => return ControlFlow::Break(Err(e)),
                Ok(Some(outcome)) => return ControlFlow::Break(Ok(Some(outcome))),
                Ok(None) => {}
            }
            if description.state.is_ending() && description.producer_id == prepared.producer_id {
                ControlFlow::Continue(RetryAfter::error(()))
            } else {
                ControlFlow::Break(Ok(None))
            }
        })
        .await;
        if let Some(outcome) = settled.unwrap_or(Ok(None))? {
            return Ok((outcome, None));
        }
    }
    let done = if commit {
        TxnOutcome::Committed
    } else {
        TxnOutcome::Aborted
    };
    match send_end_txn(coordinator, prepared, commit, deadline).await {
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
    use crate::client::transaction::PreparedPartition;

    fn description(state: &str, epoch: i16) -> TxnDescription {
        TxnDescription {
            state: state.into(),
            producer_id: 7,
            producer_epoch: epoch,
            partitions: vec![],
            transaction_start_time_ms: -1,
            transaction_timeout_ms: 60_000,
        }
    }

    fn prepared(version: i16) -> PreparedTxn {
        PreparedTxn {
            transactional_id: "t".into(),
            producer_id: 7,
            producer_epoch: 3,
            transaction_version: version,
            empty: false,
            partitions: vec![],
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

    fn ended_at(kind: MarkerKind) -> Evidence {
        Evidence::Ended {
            kind,
            topic: "t".into(),
            partition: 1,
            offset: 42,
        }
    }

    fn open() -> Evidence {
        Evidence::Open {
            topic: "t".into(),
            partition: 1,
        }
    }

    fn silent(transient: bool) -> Evidence {
        Evidence::Silent {
            reasons: vec!["t/1: offset 10 is no longer in the log".into()],
            transient,
        }
    }

    fn done(d: Decision) -> Result<TxnOutcome, ClientError> {
        match d {
            Decision::Done(r) => r,
            other => panic!("expected a verdict, got {other:?}"),
        }
    }

    #[test]
    fn a_marker_decides_whatever_the_coordinator_holds() {
        // The coordinator holds a later transaction of the same producer and epoch (version 1):
        // the marker, not that state, decides, and nothing is sent.
        let later = Ok(description("Ongoing", 3));
        for version in [1, 2] {
            let p = prepared(version);
            assert_eq!(
                done(decide(
                    &p,
                    true,
                    &ended_at(MarkerKind::Commit),
                    Some(&later)
                ))
                .unwrap(),
                TxnOutcome::AlreadyCommitted
            );
            assert_eq!(
                done(decide(
                    &p,
                    false,
                    &ended_at(MarkerKind::Abort),
                    Some(&later)
                ))
                .unwrap(),
                TxnOutcome::AlreadyAborted
            );
            let err = done(decide(&p, false, &ended_at(MarkerKind::Commit), None)).unwrap_err();
            assert!(matches!(err, ClientError::PreparedTxnLost { .. }));
            assert_eq!(
                err.to_string(),
                "prepared transaction \"t\" (producer 7, epoch 3) cannot be aborted: it was \
                 already committed (commit marker at t/1 offset 42)"
            );
            let err = done(decide(&p, true, &ended_at(MarkerKind::Abort), None)).unwrap_err();
            assert_eq!(
                err.to_string(),
                "prepared transaction \"t\" (producer 7, epoch 3) cannot be committed: it was \
                 aborted (abort marker at t/1 offset 42)"
            );
        }
    }

    #[test]
    fn an_open_log_ends_only_our_own_ongoing_transaction() {
        let p = prepared(1);
        assert!(matches!(
            decide(&p, true, &open(), Some(&Ok(description("Ongoing", 3)))),
            Decision::EndTxn
        ));
        // The coordinator could not be asked: the log alone says it is ours and open.
        let unreachable = Err(ClientError::broker("DescribeTransactions", 15));
        assert!(matches!(
            decide(&p, true, &open(), Some(&unreachable)),
            Decision::EndTxn
        ));
        // Ours is ending (markers being written), or the state is not ours: wait, never send.
        for d in [
            description("PrepareCommit", 3),
            description("CompleteCommit", 4),
            description("Ongoing", 4),
            TxnDescription {
                producer_id: 8,
                ..description("Ongoing", 3)
            },
        ] {
            match decide(&p, true, &open(), Some(&Ok(d.clone()))) {
                Decision::Wait(reason) => assert!(
                    reason.contains(&format!(
                        "t/1 shows it open, and the coordinator is in state {}",
                        d.state
                    )),
                    "{reason}"
                ),
                other => panic!("{d:?}: expected Wait, got {other:?}"),
            }
        }
    }

    #[test]
    fn without_log_evidence_only_version_2_epochs_identify_the_transaction() {
        let v2 = prepared(2);
        assert!(matches!(
            decide(
                &v2,
                true,
                &silent(false),
                Some(&Ok(description("Ongoing", 3)))
            ),
            Decision::EndTxn
        ));
        assert_eq!(
            done(decide(
                &v2,
                true,
                &silent(false),
                Some(&Ok(description("CompleteCommit", 4)))
            ))
            .unwrap(),
            TxnOutcome::AlreadyCommitted
        );
        assert!(matches!(
            decide(
                &v2,
                true,
                &silent(false),
                Some(&Ok(description("PrepareAbort", 4)))
            ),
            Decision::Wait(_)
        ));
        // Two epochs on (aborted on timeout, or a later transaction): cannot tell.
        let err = done(decide(
            &v2,
            true,
            &silent(false),
            Some(&Ok(description("CompleteAbort", 5))),
        ))
        .unwrap_err();
        assert!(matches!(err, ClientError::PreparedTxnOutcomeUnknown { .. }));
        assert_eq!(
            err.to_string(),
            "outcome of prepared transaction \"t\" (producer 7, epoch 3) is unknown; it could \
             not be committed: t/1: offset 10 is no longer in the log; the coordinator is in state \
             CompleteAbort with producer 7 epoch 5"
        );
        // Version 1: Ongoing at our epoch may be a later transaction: never act on it.
        let v1 = prepared(1);
        for state in ["Ongoing", "CompleteCommit", "CompleteAbort"] {
            let err = done(decide(
                &v1,
                false,
                &silent(false),
                Some(&Ok(description(state, 3))),
            ))
            .unwrap_err();
            assert!(
                matches!(err, ClientError::PreparedTxnOutcomeUnknown { .. }),
                "{state}: {err:?}"
            );
        }
        // A partition that could not be read now may be readable later.
        assert!(matches!(
            decide(
                &v1,
                true,
                &silent(true),
                Some(&Ok(description("Ongoing", 3)))
            ),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn end_txn_failures_that_call_for_another_look() {
        let fenced = ClientError::broker("EndTxn", codes::PRODUCER_FENCED);
        assert!(look_again_after(&fenced) && is_rejection(&fenced));
        let state = ClientError::broker("EndTxn", codes::INVALID_TXN_STATE);
        assert!(look_again_after(&state) && is_rejection(&state));
        // Refused for good: reported as it is.
        let denied = ClientError::broker("EndTxn", 53);
        assert!(!look_again_after(&denied) && is_rejection(&denied));
        // No answer, or one we do not understand: it may have applied.
        for maybe in [
            ClientError::broker("EndTxn", codes::REQUEST_TIMED_OUT),
            ClientError::broker("EndTxn", 9999),
            ClientError::Connection(ConnectionError::Closed {
                addr: "b:9092".into(),
                cause: "reset".into(),
            }),
            ClientError::RetriesExhausted {
                what: "EndTxn",
                attempts: 3,
                deadline_ms: 10,
                last: Box::new(ClientError::broker("EndTxn", codes::NOT_COORDINATOR)),
            },
        ] {
            assert!(look_again_after(&maybe) && !is_rejection(&maybe), "{maybe}");
        }
    }

    #[test]
    fn prepared_txn_round_trips_through_rkyv_and_json() {
        let p = PreparedTxn {
            partitions: vec![
                PreparedPartition {
                    topic: "orders".into(),
                    partition: 0,
                    last_batch_offset: 17,
                },
                PreparedPartition {
                    topic: "orders".into(),
                    partition: 3,
                    last_batch_offset: 0,
                },
            ],
            ..prepared(2)
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&p).unwrap();
        let back: PreparedTxn =
            rkyv::from_bytes::<PreparedTxn, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(back, p);
        // Archived bytes are validated, not trusted.
        let mut bad = bytes.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(rkyv::from_bytes::<PreparedTxn, rkyv::rancor::Error>(&bad).is_err());

        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<PreparedTxn>(&json).unwrap(), p);
        // A file written before partitions were recorded still reads.
        let old = r#"{"transactional_id":"t","producer_id":7,"producer_epoch":3,"transaction_version":2,"empty":false}"#;
        assert_eq!(
            serde_json::from_str::<PreparedTxn>(old).unwrap(),
            prepared(2)
        );
    }
}
