//! Talking to a coordinator: FindCoordinator, the retried call loop used for the transaction
//! coordinator and for group coordinators (TxnOffsetCommit), DescribeTransactions, the EndTxn
//! request itself, and the broker-config check of `transaction.max.timeout.ms`.
//!
//! FindCoordinator: <https://kafka.apache.org/protocol.html#The_Messages_FindCoordinator>;
//! DescribeTransactions (KIP-664): <https://cwiki.apache.org/confluence/display/KAFKA/KIP-664%3A+Provide+tooling+to+detect+and+abort+hanging+transactions>.

use std::ops::ControlFlow;
use std::sync::Arc;

use tracing::debug;

use crate::client::retry::{retry, Deadline, RetryAfter};
use crate::connection::backoff::BackoffConfig;
use crate::connection::{Connection, ConnectionError};
use crate::protocol::error_codes::{self, codes, Class, ErrorCode, Refresh};
use crate::protocol::messages::messages::{
    DescribeTransactionsRequest, EndTxnRequest, FindCoordinatorRequest, ProduceRequest, ProducerId,
    TransactionalId,
};
use crate::protocol::messages::{kstr, KafkaRequest};

use super::{CoordinatorState, PreparedTxn, TxnDescription};
use crate::client::admin::{Admin, ConfigResource};
use crate::client::{Client, ClientError};

/// Asks the coordinator what state a transactional id is in.
///
/// # Cancel safety
/// Cancel safe.
pub async fn describe_transaction(
    client: &Client,
    transactional_id: &str,
) -> Result<TxnDescription, ClientError> {
    let coordinator = Coordinator::new(client.clone(), transactional_id.to_owned(), 30_000, 20);
    describe(&coordinator).await
}

pub(super) async fn describe(coordinator: &Coordinator) -> Result<TxnDescription, ClientError> {
    describe_by(coordinator, coordinator.deadline()).await
}

/// [`describe`], retried until `deadline` (a caller's budget).
pub(super) async fn describe_by(
    coordinator: &Coordinator,
    deadline: Deadline,
) -> Result<TxnDescription, ClientError> {
    let request = DescribeTransactionsRequest::default()
        .with_transactional_ids(vec![TransactionalId(kstr(coordinator.key.clone()))]);
    let (response, _) = coordinator
        .call_classified_by(
            deadline,
            &request,
            "DescribeTransactions",
            i16::MAX,
            |r| r.transaction_states.first().map_or(0, |s| s.error_code),
            error_codes::lookup,
        )
        .await?;
    let s = response
        .transaction_states
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::broker("DescribeTransactions", codes::INVALID_TXN_STATE))?;
    Ok(TxnDescription {
        state: CoordinatorState::parse(s.transaction_state.as_str()),
        producer_id: s.producer_id.0,
        producer_epoch: s.producer_epoch,
        transaction_start_time_ms: s.transaction_start_time_ms,
        transaction_timeout_ms: s.transaction_timeout_ms,
        partitions: s
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.topic.0.to_string(), *p))
            })
            .collect(),
    })
}

/// Sends EndTxn for `prepared` (with retries until `deadline`); returns the producer id and
/// epoch to use next (the response's, under transactions version 2 — EndTxn v5+ — and `None`
/// before).
pub(super) async fn send_end_txn(
    coordinator: &Coordinator,
    prepared: &PreparedTxn,
    commit: bool,
    deadline: Deadline,
) -> Result<Option<(i64, i16)>, ClientError> {
    let request = EndTxnRequest::default()
        .with_transactional_id(TransactionalId(kstr(prepared.transactional_id.clone())))
        .with_producer_id(ProducerId(prepared.producer_id))
        .with_producer_epoch(prepared.producer_epoch)
        .with_committed(commit);
    // An unexpected answer to a commit may hide an applied commit: classified as unknown.
    let classify = if commit {
        error_codes::end_txn_commit
    } else {
        error_codes::lookup
    };
    // EndTxn v5 bumps the epoch (KIP-890): only for a transaction written under version 2.
    let version_max = if prepared.transaction_version >= 2 {
        i16::MAX
    } else {
        4
    };
    let (response, version) = coordinator
        .call_classified_by(
            deadline,
            &request,
            "EndTxn",
            version_max,
            |r| r.error_code,
            classify,
        )
        .await?;
    // Version 5 (transactions v2) returns the bumped epoch; older versions return none.
    Ok((version >= 5 && response.producer_id.0 >= 0)
        .then_some((response.producer_id.0, response.producer_epoch)))
}

pub(super) fn transaction_version(conn: &Connection) -> i16 {
    let feature = conn.finalized_feature("transaction.version").unwrap_or(0);
    let end_txn = conn.version_of::<EndTxnRequest>().unwrap_or(0);
    let produce = conn.version_of::<ProduceRequest>().unwrap_or(0);
    if feature >= 2 && end_txn >= 5 && produce >= 12 {
        2
    } else {
        1
    }
}

pub(super) async fn check_timeout(
    client: &Client,
    node_id: i32,
    timeout_ms: i32,
) -> Result<(), ClientError> {
    let configs = Admin::new(client.clone())
        .describe_configs(ConfigResource::Broker, &node_id.to_string())
        .await?;
    let max = configs
        .iter()
        .find(|c| c.name == "transaction.max.timeout.ms")
        .and_then(|c| c.value.as_deref())
        .and_then(|v| v.parse::<i64>().ok());
    match max {
        Some(max) if i64::from(timeout_ms) > max => Err(ClientError::TransactionTimeoutTooLarge {
            timeout_ms,
            broker_max_ms: max,
        }),
        _ => Ok(()),
    }
}

/// Finds and talks to a coordinator (transaction or group), retrying per the error table.
pub(super) struct Coordinator {
    client: Client,
    pub(super) key: String,
    key_type: i8,
    deadline_ms: u64,
    concurrent_backoff_ms: u64,
    cached: std::sync::Mutex<Option<(i32, Arc<Connection>)>>,
    retries: std::sync::atomic::AtomicU32,
}

impl Coordinator {
    pub(super) fn new(
        client: Client,
        transactional_id: String,
        deadline_ms: u64,
        concurrent_backoff_ms: u64,
    ) -> Self {
        Self {
            client,
            key: transactional_id,
            key_type: 1,
            deadline_ms,
            concurrent_backoff_ms,
            cached: std::sync::Mutex::new(None),
            retries: std::sync::atomic::AtomicU32::new(0),
        }
    }

    pub(super) fn group(client: Client, group_id: String, deadline_ms: u64) -> Self {
        Self {
            key_type: 0,
            ..Self::new(client, group_id, deadline_ms, 20)
        }
    }

    pub(super) fn take_retries(&self) -> u32 {
        self.retries.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    fn forget(&self) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// A fresh deadline of this coordinator's budget (`deadline_ms` from now).
    pub(super) fn deadline(&self) -> Deadline {
        Deadline::after_ms(self.deadline_ms)
    }

    pub(super) async fn connection(&self) -> Result<(i32, Arc<Connection>), ClientError> {
        self.connection_by(self.deadline()).await
    }

    /// The coordinator's connection, looked up (with retries until `deadline`) when not cached.
    pub(super) async fn connection_by(
        &self,
        deadline: Deadline,
    ) -> Result<(i32, Arc<Connection>), ClientError> {
        let cached = self
            .cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((node, conn)) = cached {
            if conn.poisoned().is_none() {
                return Ok((node, conn));
            }
        }
        let found = retry(&self.backoff_config(), deadline, |_| async {
            match self.find().await {
                Ok(found) => ControlFlow::Break(Ok(found)),
                Err(e) if e.is_retriable() => ControlFlow::Continue(RetryAfter::error(e)),
                Err(e) => ControlFlow::Break(Err(e)),
            }
        })
        .await
        .unwrap_or_else(|exhausted| Err(exhausted.last))?;
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(found.clone());
        Ok(found)
    }

    async fn find(&self) -> Result<(i32, Arc<Connection>), ClientError> {
        let conn = self.client.any_broker().await?;
        let version = conn.version_of::<FindCoordinatorRequest>()?;
        let mut request = FindCoordinatorRequest::default().with_key_type(self.key_type);
        if version >= 4 {
            request = request.with_coordinator_keys(vec![kstr(self.key.clone())]);
        } else {
            request = request.with_key(kstr(self.key.clone()));
        }
        let response = conn.request(&request).await?;
        let (code, node) = if version >= 4 {
            let c = response.coordinators.first();
            (
                c.map_or(codes::NOT_COORDINATOR, |c| c.error_code),
                c.map_or(-1, |c| c.node_id.0),
            )
        } else {
            (response.error_code, response.node_id.0)
        };
        if code != 0 {
            return Err(ClientError::broker("FindCoordinator", code));
        }
        let conn = self.client.broker(node).await?;
        Ok((node, conn))
    }

    pub(super) fn backoff_config(&self) -> BackoffConfig {
        BackoffConfig {
            backoff_initial_ms: 50,
            backoff_max_ms: 1_000,
            deadline_ms: self.deadline_ms,
        }
    }

    /// Sends `request` to the coordinator; `code` extracts the error code, classified by the
    /// error-code table. See [`Coordinator::call_classified`].
    pub(super) async fn call<R: KafkaRequest>(
        &self,
        request: &R,
        api: &'static str,
        code: impl Fn(&R::Response) -> i16,
    ) -> Result<(R::Response, i16), ClientError>
    where
        R::Response: Send + 'static,
    {
        self.call_classified(request, api, i16::MAX, code, error_codes::lookup)
            .await
    }

    /// Sends `request` to the coordinator; `code` extracts the error code and `classify` reads
    /// its row (the error-code table, or a request-specific view of it such as
    /// [`error_codes::end_txn_commit`]). Retriable codes and disconnects are retried until the
    /// deadline (CONCURRENT_TRANSACTIONS with a short fixed backoff); timeouts are retried too,
    /// since every coordinator request we send is idempotent for the same producer id and epoch.
    /// An answer whose outcome is unknown is retried only when Kafka calls it retriable (a
    /// broker-side timeout), not when it is merely unexpected.
    ///
    /// An attempt that timed out may have been applied. If a later attempt then fails for
    /// another reason, the result is [`ClientError::OutcomeUnknown`], never the later error
    /// alone: a refusal of the retry says nothing about the first attempt.
    pub(super) async fn call_classified<R: KafkaRequest>(
        &self,
        request: &R,
        api: &'static str,
        version_max: i16,
        code: impl Fn(&R::Response) -> i16,
        classify: fn(i16) -> ErrorCode,
    ) -> Result<(R::Response, i16), ClientError>
    where
        R::Response: Send + 'static,
    {
        self.call_classified_by(self.deadline(), request, api, version_max, code, classify)
            .await
    }

    /// [`Coordinator::call_classified`], retried until `deadline` (a caller's budget): the
    /// coordinator lookup inside an attempt shares it.
    pub(super) async fn call_classified_by<R: KafkaRequest>(
        &self,
        deadline: Deadline,
        request: &R,
        api: &'static str,
        version_max: i16,
        code: impl Fn(&R::Response) -> i16,
        classify: fn(i16) -> ErrorCode,
    ) -> Result<(R::Response, i16), ClientError>
    where
        R::Response: Send + 'static,
    {
        let budget_ms = deadline.remaining().as_millis() as u64;
        // The first attempt that failed without a definite answer: it may have applied.
        let maybe_applied: std::sync::Mutex<Option<ClientError>> = std::sync::Mutex::new(None);
        let code = &code;
        let maybe_applied_ref = &maybe_applied;
        let outcome = retry(&self.backoff_config(), deadline, |attempt| async move {
            if attempt > 0 {
                self.retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let sent = async {
                let (_, conn) = self.connection_by(deadline).await?;
                Ok::<_, ClientError>(conn.request_versioned_max(request, version_max).await?)
            }
            .await;
            let error = match sent {
                Ok((version, response)) => match code(&response) {
                    0 => return ControlFlow::Break(Ok((response, version))),
                    c => ClientError::Broker {
                        api,
                        code: classify(c),
                        topic: None,
                        partition: None,
                        message: None,
                    },
                },
                Err(e) => e,
            };
            // `Some(delay)`: retried, after `delay` ms (`None`: the backoff).
            let wait: Option<Option<u64>> = match &error {
                ClientError::Broker { code, .. } => {
                    if code.refresh == Refresh::Coordinator {
                        self.forget();
                    }
                    match code.class {
                        Class::Retriable => Some(
                            (code.code == codes::CONCURRENT_TRANSACTIONS)
                                .then_some(self.concurrent_backoff_ms),
                        ),
                        Class::UnknownOutcome if code.kafka_retriable => Some(None),
                        _ => None,
                    }
                }
                ClientError::Connection(ConnectionError::Timeout { .. }) => {
                    self.forget();
                    Some(None)
                }
                e if e.is_retriable() => {
                    self.forget();
                    Some(None)
                }
                _ => None,
            };
            if error.class() == Class::UnknownOutcome {
                let mut first = maybe_applied_ref.lock().unwrap_or_else(|e| e.into_inner());
                if first.is_none() {
                    *first = Some(error.clone());
                }
            }
            match wait {
                None => ControlFlow::Break(Err((error, attempt.saturating_add(1)))),
                Some(delay) => {
                    debug!(api, %error, "coordinator request failed; retrying while time is left");
                    ControlFlow::Continue(RetryAfter {
                        error,
                        throttle_ms: 0,
                        instead_of_backoff_ms: delay,
                    })
                }
            }
        })
        .await;
        let (last, attempts) = match outcome {
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(given_up)) => given_up,
            Err(exhausted) => (exhausted.last, exhausted.attempts),
        };
        let last = match last.class() {
            Class::Retriable => ClientError::RetriesExhausted {
                what: api,
                attempts,
                deadline_ms: budget_ms,
                last: Box::new(last),
            },
            _ => last,
        };
        let maybe_applied = maybe_applied
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        Err(match maybe_applied {
            Some(first) if last.class() != Class::UnknownOutcome => ClientError::OutcomeUnknown {
                what: api,
                maybe_applied: Box::new(first),
                last: Box::new(last),
            },
            _ => last,
        })
    }
}
