//! Recovery of the two-phase-commit sink, once per job start, before any sink subtask opens:
//! finish what the restored checkpoint prepared, then abort what it does not know.
//!
//! 1. **Commit after crash.** Every [`KafkaCommittable`] in the restored checkpoint belongs to
//!    a complete checkpoint, so it must be committed — idempotently: one already committed
//!    (the crash came after the commit, or a second recovery) is success. [`commit_prepared`]
//!    learns the outcome from the transaction's marker in the partition logs when its
//!    transactional id has moved on (a later transaction of the same pool slot), so it never
//!    commits that later one by mistake and never reports a committed one as lost. It sends
//!    EndTxn with the stored producer id, epoch and transactions version, never
//!    InitProducerId (which would abort it). Lost, unknown, fenced and producer-id-mapping
//!    outcomes become [`RuntimeError::SinkTransaction`] with advice, not a restart loop.
//! 2. **Abort lingering transactions.** Transactions of this job that the checkpoint does not
//!    know — written after it by the crashed run, by subtasks that no longer exist after a
//!    parallelism change, or by a crashed upscale — would hold back the last stable offset of
//!    their partitions (and every `read_committed` reader) until the broker's
//!    `transaction.timeout.ms`. They are found by ListTransactions (KIP-664,
//!    <https://cwiki.apache.org/confluence/display/KAFKA/KIP-664%3A+Provide+tooling+to+detect+and+abort+hanging+transactions>)
//!    filtered to ids of exactly the job's shape `{prefix}-<subtask>-<slot>`, plus every id of
//!    the checkpoint's [`OwnerMap`], and fenced with InitProducerId, which makes the
//!    coordinator abort the open transaction and bump the epoch. This is what Flink's
//!    `TransactionAborter` does by probing ids; listing is exact and cheaper.
//!    This step runs only when step 1 succeeded for every committable: fencing an id whose
//!    commit outcome is unknown would abort a transaction of a complete checkpoint.
//!
//! KIP-939 (<https://cwiki.apache.org/confluence/display/KAFKA/KIP-939%3A+Support+Participation+in+2PC>)
//! lets InitProducerId v6 keep a prepared transaction (`keepPreparedTxn`) so that a producer
//! can resume it instead of the stored-identity path above. No released Kafka offers it (as
//! of 4.4); when a broker advertises InitProducerId v6 this module logs it and still uses the
//! stored-identity path. Using it is future work.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::client::admin::Admin;
use crate::client::transaction::{
    commit_prepared, describe_transaction, CoordinatorState, TransactionalProducer, TxnOutcome,
};
use crate::client::{Client, ClientError};
use crate::connection::ConnectionError;
use crate::runtime::RuntimeError;

use super::kafka::{parse_transactional_id, transactional_id, KafkaCommittable, KafkaSinkConfig};

/// InitProducerId's API key; version 6 is KIP-939's two-phase-commit version.
const INIT_PRODUCER_ID_KEY: i16 = 22;

/// Which sink subtask owns which transactional ids; the core stores it in each checkpoint.
///
/// Each subtask owns its own pool ids; after a downscale, [`OwnerMap::rebalance`] gives the
/// ids of vanished subtasks to surviving ones, so that the ids stay known to later checkpoints
/// (and are checked by every later recovery) even where ListTransactions cannot see them, or
/// after a change of prefix.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct OwnerMap {
    /// The transactional-id prefix the ids were made with.
    pub prefix: String,
    /// Producers per subtask.
    pub pool_size: u32,
    /// Per subtask (by index), the transactional ids it owns: its pool first, then inherited.
    pub owners: Vec<Vec<String>>,
}

impl OwnerMap {
    /// Each of `parallelism` subtasks owning its own pool.
    pub fn new(config: &KafkaSinkConfig, parallelism: u32) -> Self {
        Self {
            prefix: config.transactional_id_prefix.clone(),
            pool_size: config.pool_size,
            owners: (0..parallelism)
                .map(|s| Self::pool(&config.transactional_id_prefix, config.pool_size, s))
                .collect(),
        }
    }

    fn pool(prefix: &str, pool_size: u32, subtask: u32) -> Vec<String> {
        (0..pool_size)
            .map(|slot| transactional_id(prefix, subtask, slot))
            .collect()
    }

    /// The parallelism the map was made for.
    pub fn parallelism(&self) -> u32 {
        self.owners.len() as u32
    }

    /// The ids `subtask` owns (empty for an unknown subtask).
    pub fn owned_by(&self, subtask: u32) -> &[String] {
        self.owners
            .get(subtask as usize)
            .map_or(&[][..], Vec::as_slice)
    }

    /// Every id in the map, each once, sorted.
    pub fn all_ids(&self) -> BTreeSet<&str> {
        self.owners.iter().flatten().map(String::as_str).collect()
    }

    /// The map for `new_parallelism` subtasks (at least 1): each keeps what it owned, new
    /// subtasks get their pool, and the ids of subtasks ≥ `new_parallelism` go to subtask
    /// `index % new_parallelism`.
    pub fn rebalance(&self, new_parallelism: u32) -> Self {
        let new_parallelism = new_parallelism.max(1);
        let mut owners: Vec<Vec<String>> = (0..new_parallelism)
            .map(|s| match self.owners.get(s as usize) {
                Some(ids) => ids.clone(),
                None => Self::pool(&self.prefix, self.pool_size, s),
            })
            .collect();
        for (vanished, ids) in self
            .owners
            .iter()
            .enumerate()
            .skip(new_parallelism as usize)
        {
            let heir = &mut owners[vanished % new_parallelism as usize];
            for id in ids {
                if !heir.contains(id) {
                    heir.push(id.clone());
                }
            }
        }
        Self {
            prefix: self.prefix.clone(),
            pool_size: self.pool_size,
            owners,
        }
    }
}

/// What [`recover`] did, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Prepared transactions this recovery committed.
    pub committed: u64,
    /// Prepared transactions found already committed (idempotent success).
    pub already_committed: u64,
    /// Empty committables (nothing to commit).
    pub empty: u64,
    /// Lingering transactions aborted, by transactional id.
    pub lingering_aborted: Vec<String>,
    /// The owner map for the new parallelism: store it in the next checkpoint.
    pub owners: OwnerMap,
}

/// Finishes the restored checkpoint's prepared transactions, then aborts the job's lingering
/// ones (see the module docs). Call it once per job start, before any sink subtask opens,
/// with every committable of the restored checkpoint (all subtasks, whatever parallelism wrote
/// it) and its owner map — also on a start without a checkpoint (no committables, the owner
/// map of the configured parallelism), so that a previous run's transactions do not linger.
///
/// # Cancel safety
/// Not cancel safe: commits or fences may have been sent; calling it again is safe.
pub async fn recover(
    client: &Client,
    config: &KafkaSinkConfig,
    committables: &[KafkaCommittable],
    owners: &OwnerMap,
    new_parallelism: u32,
) -> Result<RecoveryReport, RuntimeError> {
    config.validate()?;
    log_kip_939(client).await;
    let owners = owners.rebalance(new_parallelism);
    let mut report = RecoveryReport {
        committed: 0,
        already_committed: 0,
        empty: 0,
        lingering_aborted: Vec::new(),
        owners,
    };

    // 1. Commit every prepared transaction of the checkpoint: the ids concurrently (each
    //    commit bounded), one id's transactions in checkpoint order — a prepared transaction
    //    is finished by one party at a time.
    let mut by_id: BTreeMap<String, Vec<KafkaCommittable>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for c in committables {
        let p = &c.prepared;
        if !seen.insert((p.transactional_id.clone(), p.producer_id, p.producer_epoch)) {
            continue; // the same transaction in two snapshots
        }
        if p.empty {
            report.empty += 1;
            continue;
        }
        by_id
            .entry(p.transactional_id.clone())
            .or_default()
            .push(c.clone());
    }
    let mut commits = JoinSet::new();
    for (_, mut group) in by_id {
        group.sort_by_key(|c| c.checkpoint_id);
        let (client, deadline_ms) = (client.clone(), config.commit_deadline_ms);
        commits.spawn(async move {
            let mut outcomes = Vec::with_capacity(group.len());
            for c in group {
                let outcome = commit_prepared(&client, &c.prepared, deadline_ms).await;
                outcomes.push((c, outcome));
            }
            outcomes
        });
    }
    let mut first_error = None;
    while let Some(joined) = commits.join_next().await {
        let outcomes = joined.map_err(|e| RuntimeError::TaskFailed {
            task: "sink recovery commit".into(),
            reason: e.to_string(),
        })?;
        for (c, outcome) in outcomes {
            match outcome {
                Ok(TxnOutcome::Committed) => report.committed += 1,
                Ok(TxnOutcome::AlreadyCommitted) => report.already_committed += 1,
                Ok(other) => {
                    first_error.get_or_insert(RuntimeError::SinkInvalidCall {
                        subtask: c.subtask,
                        operation: "recover",
                        reason: format!(
                            "committing {:?} gave {other:?}",
                            c.prepared.transactional_id
                        ),
                    });
                }
                Err(e) => {
                    let e = super::classify(e, Some(c.checkpoint_id), &c.prepared.transactional_id);
                    warn!(error = %e, "a prepared transaction of the restored checkpoint could not be committed");
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    if let Some(e) = first_error {
        // Fencing now could abort a transaction whose commit outcome is unknown.
        return Err(e);
    }

    // 2. Abort the job's lingering transactions.
    let lingering = lingering(client, config, &report.owners).await?;
    for id in lingering {
        debug!(transactional_id = %id, "fencing a lingering transaction");
        TransactionalProducer::init(client.clone(), config.transaction_config(id.clone()))
            .await
            .map_err(|e| super::classify(e, None, &id))?;
        report.lingering_aborted.push(id);
    }
    info!(
        committed = report.committed,
        already_committed = report.already_committed,
        lingering_aborted = report.lingering_aborted.len(),
        "sink recovery done"
    );
    Ok(report)
}

/// The ongoing transactions of this job: listed by ListTransactions (ids of the job's shape,
/// under the configured prefix or the owner map's), and — where the broker cannot list — the
/// owner map's ids that DescribeTransactions shows ongoing.
async fn lingering(
    client: &Client,
    config: &KafkaSinkConfig,
    owners: &OwnerMap,
) -> Result<Vec<String>, RuntimeError> {
    let known = owners.all_ids();
    let ours = |id: &str| {
        parse_transactional_id(&config.transactional_id_prefix, id).is_some()
            || parse_transactional_id(&owners.prefix, id).is_some()
            || known.contains(id)
    };
    let listed = Admin::new(client.clone())
        .list_transactions(&[CoordinatorState::Ongoing], ours)
        .await;
    match listed {
        Ok(listed) => Ok(listed
            .into_iter()
            .filter(|t| t.state == CoordinatorState::Ongoing)
            .map(|t| t.transactional_id)
            .collect()),
        Err(ClientError::Connection(ConnectionError::UnsupportedVersion { .. })) => {
            warn!("the cluster cannot list transactions (ListTransactions, Kafka 3.0+): checking the owner map's ids one by one");
            let mut ongoing = Vec::new();
            for id in known {
                match describe_transaction(client, id).await {
                    Ok(d) if d.state == CoordinatorState::Ongoing => ongoing.push(id.to_owned()),
                    Ok(_) => {}
                    // Never used, or expired: nothing to abort.
                    Err(e) => debug!(transactional_id = id, error = %e, "not described"),
                }
            }
            Ok(ongoing)
        }
        Err(e) => Err(RuntimeError::Client(e)),
    }
}

/// Logs that a broker offers KIP-939's InitProducerId v6, which is not used yet.
async fn log_kip_939(client: &Client) {
    match Admin::new(client.clone())
        .advertised_max_version(INIT_PRODUCER_ID_KEY)
        .await
    {
        Ok(Some(v)) if v >= 6 => info!(
            init_producer_id_version = v,
            "the broker offers InitProducerId v6 (KIP-939 two-phase commit); this sink still \
             finishes prepared transactions from their stored identity"
        ),
        Ok(_) => {}
        Err(e) => debug!(error = %e, "ApiVersions for the KIP-939 check failed"),
    }
}

/// Checks at job start that the sink's transaction timeout exceeds the checkpoint interval
/// plus the checkpoint timeout (a transaction stays open from one barrier until the next
/// checkpoint completes; the broker would abort it earlier and its checkpoint's output would
/// be lost) and is within the brokers' `transaction.max.timeout.ms` (InitProducerId would
/// refuse it).
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn check_transaction_timeout(
    client: &Client,
    config: &KafkaSinkConfig,
    checkpoint_interval_ms: u64,
    checkpoint_timeout_ms: u64,
) -> Result<(), RuntimeError> {
    // The local rule first: it needs no broker.
    validate_transaction_timeout(
        config.transaction_timeout_ms,
        checkpoint_interval_ms,
        checkpoint_timeout_ms,
        None,
    )?;
    let broker_max_ms = Admin::new(client.clone())
        .transaction_max_timeout_ms()
        .await?;
    validate_transaction_timeout(
        config.transaction_timeout_ms,
        checkpoint_interval_ms,
        checkpoint_timeout_ms,
        broker_max_ms,
    )
}

/// The rule of [`check_transaction_timeout`], given the broker's limit. Pure.
pub fn validate_transaction_timeout(
    transaction_timeout_ms: i32,
    checkpoint_interval_ms: u64,
    checkpoint_timeout_ms: u64,
    broker_max_ms: Option<i64>,
) -> Result<(), RuntimeError> {
    let needed = checkpoint_interval_ms.saturating_add(checkpoint_timeout_ms);
    let timeout = i64::from(transaction_timeout_ms);
    if timeout <= 0 || (timeout as u64) <= needed {
        return Err(RuntimeError::Config {
            key: "transaction_timeout_ms",
            reason: format!(
                "{transaction_timeout_ms} ms must exceed the checkpoint interval \
                 ({checkpoint_interval_ms} ms) plus the checkpoint timeout \
                 ({checkpoint_timeout_ms} ms) = {needed} ms: a transaction stays open until the \
                 checkpoint after it completes, and the broker would abort it before"
            ),
        });
    }
    match broker_max_ms {
        Some(max) if timeout > max => Err(RuntimeError::Config {
            key: "transaction_timeout_ms",
            reason: format!(
                "{transaction_timeout_ms} ms is above the broker's transaction.max.timeout.ms \
                 ({max} ms): lower it (it must stay above {needed} ms) or raise the broker's \
                 limit"
            ),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> KafkaSinkConfig {
        KafkaSinkConfig::new("job")
    }

    #[test]
    fn a_downscale_gives_vanished_ids_to_survivors() {
        let map = OwnerMap::new(&config(), 3);
        assert_eq!(map.owned_by(2), ["job-2-0", "job-2-1"]);
        let down = map.rebalance(2);
        assert_eq!(down.parallelism(), 2);
        assert_eq!(
            down.owned_by(0),
            ["job-0-0", "job-0-1", "job-2-0", "job-2-1"]
        );
        assert_eq!(down.owned_by(1), ["job-1-0", "job-1-1"]);
        assert_eq!(down.all_ids(), map.all_ids());
        // Down to 1 and back up to 3: nothing is forgotten, new subtasks get their pools.
        let up = down.rebalance(1).rebalance(3);
        assert_eq!(up.all_ids(), map.all_ids());
        assert_eq!(up.owned_by(2), ["job-2-0", "job-2-1"]);
        assert_eq!(up.owned_by(0).len(), 6);
        // An upscale adds the new subtasks' pools.
        let wide = map.rebalance(4);
        assert_eq!(wide.owned_by(3), ["job-3-0", "job-3-1"]);
        assert_eq!(wide.all_ids().len(), 8);
        // rkyv round trip (the checkpoint stores it).
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&down).unwrap();
        assert_eq!(
            rkyv::from_bytes::<OwnerMap, rkyv::rancor::Error>(&bytes).unwrap(),
            down
        );
    }

    #[test]
    fn the_transaction_timeout_must_cover_a_checkpoint_and_fit_the_broker() {
        let err = validate_transaction_timeout(60_000, 50_000, 10_000, None).unwrap_err();
        assert!(matches!(
            err,
            RuntimeError::Config {
                key: "transaction_timeout_ms",
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "invalid configuration transaction_timeout_ms: 60000 ms must exceed the checkpoint \
             interval (50000 ms) plus the checkpoint timeout (10000 ms) = 60000 ms: a \
             transaction stays open until the checkpoint after it completes, and the broker \
             would abort it before"
        );
        let err =
            validate_transaction_timeout(1_000_000, 1_000, 10_000, Some(900_000)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration transaction_timeout_ms: 1000000 ms is above the broker's \
             transaction.max.timeout.ms (900000 ms): lower it (it must stay above 11000 ms) or \
             raise the broker's limit"
        );
        validate_transaction_timeout(60_001, 50_000, 10_000, Some(900_000)).unwrap();
        validate_transaction_timeout(60_001, 50_000, 10_000, None).unwrap();
    }
}
