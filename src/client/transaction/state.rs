//! The transactional producer's state record and its two rules: which operations a state
//! allows ([`Inner::expect`]) and which state an error leads to ([`Inner::fail`]).

use std::collections::HashSet;

use tracing::warn;

use super::{PreparedTxn, TxnMetrics, TxnState};
use crate::client::ClientError;
use crate::protocol::error_codes::Class;

/// Everything that changes over a transactional producer's life, behind its `std` mutex.
pub(super) struct Inner {
    pub(super) state: TxnState,
    pub(super) error: Option<ClientError>,
    pub(super) producer_id: i64,
    pub(super) producer_epoch: i16,
    pub(super) partitions: HashSet<(String, i32)>,
    /// Offsets were added (AddOffsetsToTxn) in the current transaction.
    pub(super) offsets_added: bool,
    /// Set (to the state name reported to a refused `send`) once commit, prepare or abort began
    /// on the open transaction: no record may join it any more.
    pub(super) closing: Option<&'static str>,
    /// Sends past their state check whose record is not queued yet.
    pub(super) sends_in_flight: usize,
    /// The transaction handed out by `prepare`, until it is committed or aborted.
    pub(super) prepared: Option<PreparedTxn>,
    pub(super) metrics: TxnMetrics,
}

impl Inner {
    /// Ready, with the producer id and epoch InitProducerId gave.
    pub(super) fn new(producer_id: i64, producer_epoch: i16) -> Self {
        Self {
            state: TxnState::Ready,
            error: None,
            producer_id,
            producer_epoch,
            partitions: HashSet::new(),
            offsets_added: false,
            closing: None,
            sends_in_flight: 0,
            prepared: None,
            metrics: TxnMetrics::default(),
        }
    }

    /// Whether `operation` may run in the current state; the recorded error if the producer
    /// is stopped or the transaction must be aborted.
    pub(super) fn expect(
        &self,
        operation: &'static str,
        allowed: &[TxnState],
    ) -> Result<(), ClientError> {
        if let (TxnState::FatalError, Some(e)) = (self.state, &self.error) {
            return Err(ClientError::TxnFatal {
                cause: Box::new(e.clone()),
            });
        }
        if allowed.contains(&self.state) {
            return Ok(());
        }
        if let (TxnState::AbortableError, Some(e)) = (self.state, &self.error) {
            return Err(ClientError::TxnAbortable {
                cause: Box::new(e.clone()),
            });
        }
        Err(ClientError::InvalidTxnState {
            operation,
            state: self.state.name(),
        })
    }

    /// Records an error and moves to the state its class calls for; returns the error.
    pub(super) fn fail(&mut self, e: ClientError) -> ClientError {
        // One classification (`ClientError::class`, from the error-code table for broker codes);
        // the only addition here is what an unknown commit outcome means for the producer: it
        // may neither abort nor go on.
        let fatal = match e.class() {
            Class::Fatal => true,
            Class::UnknownOutcome => {
                matches!(e, ClientError::CommitOutcomeUnknown { .. })
                    // A retry refused fatally (fenced, not authorized) after an attempt that may
                    // have been applied: the outcome is unknown, and the producer cannot go on.
                    || matches!(&e, ClientError::OutcomeUnknown { last, .. } if last.class() == Class::Fatal)
            }
            Class::None | Class::Retriable | Class::Abortable => false,
        };
        self.state = if fatal {
            TxnState::FatalError
        } else {
            TxnState::AbortableError
        };
        self.closing = None;
        warn!(error = %e, state = self.state.name(), "transaction failed");
        self.error = Some(e.clone());
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_lead_to_the_state_their_class_calls_for() {
        let fenced = ClientError::broker(
            "EndTxn",
            crate::protocol::error_codes::codes::PRODUCER_FENCED,
        );
        let timeout = ClientError::broker(
            "EndTxn",
            crate::protocol::error_codes::codes::REQUEST_TIMED_OUT,
        );
        let abortable = ClientError::broker(
            "EndTxn",
            crate::protocol::error_codes::codes::TRANSACTION_ABORTABLE,
        );
        let cases = [
            (fenced.clone(), TxnState::FatalError),
            (abortable.clone(), TxnState::AbortableError),
            (
                ClientError::OutcomeUnknown {
                    what: "AddPartitionsToTxn",
                    maybe_applied: Box::new(timeout.clone()),
                    last: Box::new(fenced),
                },
                TxnState::FatalError,
            ),
            (
                ClientError::OutcomeUnknown {
                    what: "AddPartitionsToTxn",
                    maybe_applied: Box::new(timeout),
                    last: Box::new(abortable),
                },
                TxnState::AbortableError,
            ),
        ];
        for (error, state) in cases {
            let mut inner = Inner::new(1, 0);
            inner.state = TxnState::InTransaction;
            let returned = inner.fail(error.clone());
            assert_eq!(returned, error);
            assert_eq!(inner.state, state, "{error}");
            let refused = inner
                .expect("send", &[TxnState::InTransaction])
                .unwrap_err();
            let expected = if state == TxnState::FatalError {
                "transactional producer stopped after a fatal error: "
            } else {
                "transaction must be aborted: "
            };
            assert_eq!(refused.to_string(), format!("{expected}{error}"));
        }
    }
}
