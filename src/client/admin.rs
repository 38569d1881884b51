//! Admin operations: create/delete/list topics, add partitions, list offsets, describe configs,
//! commit a simple group's offsets, list transactions, the broker's API versions.
//!
//! Topic creation and deletion and partition creation may go to any broker: under KRaft every
//! broker forwards them to the controller (KIP-590). ListOffsets must go to the partition leader
//! (<https://kafka.apache.org/protocol.html#The_Messages_ListOffsets>). OffsetCommit goes to the
//! group's coordinator (FindCoordinator, key type 0); committed as a *simple* group (generation
//! -1, empty member id) it needs no group membership — how a checkpointing runtime publishes
//! its offsets for lag monitoring
//! (<https://kafka.apache.org/protocol.html#The_Messages_OffsetCommit>). ListTransactions
//! (KIP-664, <https://kafka.apache.org/protocol.html#The_Messages_ListTransactions>) must be
//! asked of every broker: each answers for the transactional ids it coordinates.

use std::ops::ControlFlow;

use super::retry::{retry, Deadline, RetryAfter};
use crate::protocol::error_codes::codes;
use crate::protocol::messages::kstr;
use crate::protocol::messages::messages::create_partitions_request::CreatePartitionsTopic;
use crate::protocol::messages::messages::create_topics_request::CreatableTopic;
use crate::protocol::messages::messages::describe_configs_request::DescribeConfigsResource;
use crate::protocol::messages::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsTopic,
};
use crate::protocol::messages::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use crate::protocol::messages::messages::{
    ApiVersionsRequest, ApiVersionsResponse, CreatePartitionsRequest, CreateTopicsRequest,
    DeleteTopicsRequest, DescribeConfigsRequest, FindCoordinatorRequest, FindCoordinatorResponse,
    GroupId, ListOffsetsRequest, ListTransactionsRequest, ListTransactionsResponse,
    OffsetCommitRequest, OffsetCommitResponse, TopicName,
};

use super::{Client, ClientError};

use super::transaction::CoordinatorState;
/// The shared vocabulary, re-exported where it used to live.
pub use super::types::{Isolation, OffsetSpec};
use super::types::{OffsetLookup, TopicPartition};

/// The kind of resource DescribeConfigs looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigResource {
    /// A topic.
    Topic,
    /// A broker, by id.
    Broker,
}

/// One configuration entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    /// Its name, e.g. `transaction.max.timeout.ms`.
    pub name: String,
    /// Its value (absent when sensitive).
    pub value: Option<String>,
}

/// One transaction as ListTransactions reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedTransaction {
    /// The transactional id.
    pub transactional_id: String,
    /// Its current producer id.
    pub producer_id: i64,
    /// Its state on its coordinator.
    pub state: CoordinatorState,
    /// The broker that coordinates it (and answered).
    pub coordinator: i32,
}

/// The config that bounds a transactional producer's `transaction.timeout.ms`.
pub const TRANSACTION_MAX_TIMEOUT_MS: &str = "transaction.max.timeout.ms";

/// The ListTransactions request: only transactions in `states` (all when empty). Pure.
pub fn list_transactions_request(states: &[CoordinatorState]) -> ListTransactionsRequest {
    ListTransactionsRequest::default()
        .with_state_filters(states.iter().map(|s| kstr(s.as_str().to_owned())).collect())
}

/// Reads one broker's ListTransactions answer: its transactions whose id is accepted by
/// `keep`, or the broker's error. Pure.
pub fn list_transactions_answer(
    coordinator: i32,
    response: &ListTransactionsResponse,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<ListedTransaction>, ClientError> {
    if response.error_code != 0 {
        return Err(ClientError::broker("ListTransactions", response.error_code));
    }
    Ok(response
        .transaction_states
        .iter()
        .filter(|t| keep(t.transactional_id.0.as_str()))
        .map(|t| ListedTransaction {
            transactional_id: t.transactional_id.0.to_string(),
            producer_id: t.producer_id.0,
            state: CoordinatorState::parse(t.transaction_state.as_str()),
            coordinator,
        })
        .collect())
}

/// The highest version of API `api_key` a broker's ApiVersions answer advertises (not capped by
/// what this client implements), or `None` when it does not list the API. Pure.
pub fn advertised_max_version(response: &ApiVersionsResponse, api_key: i16) -> Option<i16> {
    response
        .api_keys
        .iter()
        .find(|k| k.api_key == api_key)
        .map(|k| k.max_version)
}

/// The smallest `transaction.max.timeout.ms` among brokers' config entries (`None` when no
/// broker reports it). Pure.
pub fn transaction_max_timeout_ms(per_broker: &[Vec<ConfigEntry>]) -> Option<i64> {
    per_broker
        .iter()
        .filter_map(|entries| {
            entries
                .iter()
                .find(|c| c.name == TRANSACTION_MAX_TIMEOUT_MS)
                .and_then(|c| c.value.as_deref())
                .and_then(|v| v.parse::<i64>().ok())
        })
        .min()
}

/// A broker error about a whole topic (or resource), with the broker's message.
fn broker_error(
    api: &'static str,
    code: i16,
    topic: Option<String>,
    message: Option<&str>,
) -> ClientError {
    ClientError::Broker {
        api,
        code: crate::protocol::error_codes::lookup(code),
        topic,
        partition: None,
        message: message.map(str::to_owned),
    }
}

/// Admin operations on a [`Client`].
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

const ADMIN_TIMEOUT_MS: i32 = 30_000;

impl Admin {
    /// Admin operations over `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// Creates a topic with the broker's default replication factor, then waits until
    /// metadata shows a leader for every partition.
    ///
    /// # Cancel safety
    /// Not cancel safe in effect: the topic may have been created when the future is dropped.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> Result<(), ClientError> {
        if partitions < 1 {
            return Err(ClientError::Config {
                field: "partitions",
                message: format!("must be at least 1, got {partitions}"),
            });
        }
        let topic = CreatableTopic::default()
            .with_name(TopicName(kstr(name)))
            .with_num_partitions(partitions)
            .with_replication_factor(-1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        crate::protocol::messages::messages::create_topics_request::CreatableTopicConfig::default()
                            .with_name(kstr(*k))
                            .with_value(Some(kstr(*v)))
                    })
                    .collect(),
            );
        let request = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(ADMIN_TIMEOUT_MS);
        let response = self.client.request_any(&request).await?;
        for result in &response.topics {
            if result.error_code != 0 {
                return Err(broker_error(
                    "CreateTopics",
                    result.error_code,
                    Some(name.to_owned()),
                    result.error_message.as_deref(),
                ));
            }
        }
        self.wait_for_leaders(name, partitions).await
    }

    async fn wait_for_leaders(&self, name: &str, partitions: i32) -> Result<(), ClientError> {
        let policy = self.client.config().retry;
        retry(&policy, Deadline::after_ms(policy.deadline_ms), |_| async {
            if let Err(e) = self.client.refresh_metadata(&[name.to_owned()]).await {
                return ControlFlow::Break(Err(e));
            }
            match self.client.topic(name).await {
                Ok(info)
                    if info.partitions.len() as i32 == partitions
                        && info.partitions.iter().all(|p| p.leader >= 0) =>
                {
                    ControlFlow::Break(Ok(()))
                }
                _ => ControlFlow::Continue(RetryAfter::error(
                    ClientError::broker("CreateTopics", codes::NOT_LEADER_OR_FOLLOWER)
                        .at(name, None),
                )),
            }
        })
        .await
        .unwrap_or_else(|exhausted| Err(exhausted.last))
    }

    /// Deletes topics.
    ///
    /// # Cancel safety
    /// Not cancel safe in effect: the topics may have been deleted when the future is dropped.
    pub async fn delete_topics(&self, names: &[&str]) -> Result<(), ClientError> {
        let request = DeleteTopicsRequest::default()
            .with_topic_names(names.iter().map(|n| TopicName(kstr(*n))).collect())
            .with_timeout_ms(ADMIN_TIMEOUT_MS);
        let response = self.client.request_any(&request).await?;
        for result in &response.responses {
            if result.error_code != 0 {
                return Err(broker_error(
                    "DeleteTopics",
                    result.error_code,
                    result.name.as_ref().map(|n| n.0.to_string()),
                    result.error_message.as_deref(),
                ));
            }
        }
        for name in names {
            self.client
                .invalidate(name, codes::UNKNOWN_TOPIC_OR_PARTITION);
        }
        Ok(())
    }

    /// The offset `spec` names in `topic`/`partition`, as seen with `isolation`
    /// ([`OffsetSpec::Offset`] names itself: the broker is not asked).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: i32,
        spec: OffsetSpec,
        isolation: Isolation,
    ) -> Result<i64, ClientError> {
        let timestamp = match spec.lookup() {
            OffsetLookup::Known(offset) => return Ok(offset),
            OffsetLookup::Ask { timestamp } => timestamp,
        };
        self.client
            .with_retries(topic, || {
                self.list_offset_once(topic, partition, timestamp, isolation)
            })
            .await
    }

    async fn list_offset_once(
        &self,
        topic: &str,
        partition: i32,
        timestamp: i64,
        isolation: Isolation,
    ) -> Result<i64, ClientError> {
        let leader = self.client.leader(topic, partition).await?;
        let conn = self.client.broker(leader).await?;
        let request = ListOffsetsRequest::default()
            .with_replica_id(crate::protocol::messages::messages::BrokerId(-1))
            .with_isolation_level(isolation.wire())
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(kstr(topic)))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_current_leader_epoch(-1)
                    .with_timestamp(timestamp)])]);
        let response = conn.request(&request).await?;
        let p = response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| {
                ClientError::broker("ListOffsets", codes::UNKNOWN_TOPIC_OR_PARTITION)
                    .at(topic, Some(partition))
            })?;
        if p.error_code != 0 {
            return Err(ClientError::broker("ListOffsets", p.error_code).at(topic, Some(partition)));
        }
        Ok(p.offset)
    }

    /// Raises `topic`'s partition count to `total` (Kafka never lowers it), then waits until
    /// metadata shows a leader for every partition.
    ///
    /// # Cancel safety
    /// Not cancel safe in effect: the partitions may have been created when the future is
    /// dropped.
    pub async fn create_partitions(&self, topic: &str, total: i32) -> Result<(), ClientError> {
        let request = create_partitions_request(topic, total);
        let response = self.client.request_any(&request).await?;
        for result in &response.results {
            if result.error_code != 0 {
                return Err(broker_error(
                    "CreatePartitions",
                    result.error_code,
                    Some(topic.to_owned()),
                    result.error_message.as_deref(),
                ));
            }
        }
        self.wait_for_leaders(topic, total).await
    }

    /// Commits `offsets` (partition, next offset to read) for `group` as a simple group
    /// (generation -1, empty member id): no membership, nothing else about the group changes.
    /// Coordinator moves, loading coordinators and disconnects are retried until the client's
    /// retry deadline.
    ///
    /// # Cancel safety
    /// Cancel safe in effect: a dropped commit may or may not have been applied, and applying
    /// it again is harmless (the same offsets).
    pub async fn commit_group_offsets(
        &self,
        group: &str,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<(), ClientError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let request = offset_commit_request(group, offsets);
        let policy = self.client.config().retry;
        retry(&policy, Deadline::after_ms(policy.deadline_ms), |_| async {
            let attempt = async {
                let conn = self.client.any_broker().await?;
                let version = conn.version_of::<FindCoordinatorRequest>()?;
                let found = conn
                    .request(&find_group_coordinator_request(version, group))
                    .await?;
                let node = group_coordinator_node(version, &found)?;
                let response = self.client.broker(node).await?.request(&request).await?;
                offset_commit_result(&response)
            };
            match attempt.await {
                Err(e) if e.is_retriable() => ControlFlow::Continue(RetryAfter::error(e)),
                other => ControlFlow::Break(other),
            }
        })
        .await
        .unwrap_or_else(|exhausted| Err(exhausted.last))
    }

    /// The configuration of a topic or broker (by id, as a string).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn describe_configs(
        &self,
        kind: ConfigResource,
        name: &str,
    ) -> Result<Vec<ConfigEntry>, ClientError> {
        let resource_type = match kind {
            ConfigResource::Topic => 2,
            ConfigResource::Broker => 4,
        };
        let request = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(kstr(name))
                .with_configuration_keys(None),
        ]);
        // Broker configs must be asked of that broker.
        let response = match kind {
            ConfigResource::Broker => {
                let id: i32 = name.parse().map_err(|_| ClientError::Config {
                    field: "broker",
                    message: format!("broker id must be a number, got {name:?}"),
                })?;
                self.client.broker(id).await?.request(&request).await?
            }
            ConfigResource::Topic => self.client.request_any(&request).await?,
        };
        let mut entries = Vec::new();
        for result in &response.results {
            if result.error_code != 0 {
                return Err(broker_error(
                    "DescribeConfigs",
                    result.error_code,
                    Some(name.to_owned()),
                    result.error_message.as_deref(),
                ));
            }
            entries.extend(result.configs.iter().map(|c| ConfigEntry {
                name: c.name.to_string(),
                value: c.value.as_ref().map(|v| v.to_string()),
            }));
        }
        Ok(entries)
    }

    /// The ids of every broker in the cluster (fresh metadata).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn broker_ids(&self) -> Result<Vec<i32>, ClientError> {
        self.client.refresh_metadata(&[]).await?;
        let mut ids: Vec<i32> = self
            .client
            .inner
            .metadata
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .brokers
            .keys()
            .copied()
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The transactions of the whole cluster in one of `states` (all when empty) whose
    /// transactional id `keep` accepts, asking every broker (each coordinates its share of the
    /// ids). Retriable errors (a coordinator still loading) are retried per broker until the
    /// client's retry deadline.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn list_transactions(
        &self,
        states: &[CoordinatorState],
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<ListedTransaction>, ClientError> {
        let request = list_transactions_request(states);
        let policy = self.client.config().retry;
        let deadline = Deadline::after_ms(policy.deadline_ms);
        let keep = &keep;
        let mut all = Vec::new();
        for node in self.broker_ids().await? {
            let request = &request;
            let found = retry(&policy, deadline, |_| async move {
                let answer = async {
                    let response = self.client.broker(node).await?.request(request).await?;
                    list_transactions_answer(node, &response, keep)
                }
                .await;
                match answer {
                    Err(e) if e.is_retriable() => ControlFlow::Continue(RetryAfter::error(e)),
                    other => ControlFlow::Break(other),
                }
            })
            .await
            .unwrap_or_else(|exhausted| Err(exhausted.last))?;
            all.extend(found);
        }
        all.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        Ok(all)
    }

    /// The smallest `transaction.max.timeout.ms` of the cluster's brokers (a transaction's
    /// coordinator may be any of them), or `None` if no broker reports it.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn transaction_max_timeout_ms(&self) -> Result<Option<i64>, ClientError> {
        let mut per_broker = Vec::new();
        for node in self.broker_ids().await? {
            per_broker.push(
                self.describe_configs(ConfigResource::Broker, &node.to_string())
                    .await?,
            );
        }
        Ok(transaction_max_timeout_ms(&per_broker))
    }

    /// The highest version of API `api_key` that a broker advertises in ApiVersions, beyond
    /// what this client implements (e.g. to learn whether InitProducerId v6, KIP-939, is
    /// offered). `None` when the broker does not list it.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn advertised_max_version(&self, api_key: i16) -> Result<Option<i16>, ClientError> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(kstr("exactly"))
            .with_client_software_version(kstr(env!("CARGO_PKG_VERSION")));
        let response = self.client.request_any(&request).await?;
        if response.error_code != 0 {
            return Err(ClientError::broker("ApiVersions", response.error_code));
        }
        Ok(advertised_max_version(&response, api_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::messages::list_transactions_response::TransactionState;
    use crate::protocol::messages::messages::{ProducerId, TransactionalId};

    fn listed(id: &str, state: &str) -> TransactionState {
        TransactionState::default()
            .with_transactional_id(TransactionalId(kstr(id.to_owned())))
            .with_producer_id(ProducerId(7))
            .with_transaction_state(kstr(state.to_owned()))
    }

    #[test]
    fn list_transactions_filters_states_on_the_broker_and_ids_here() {
        let request = list_transactions_request(&[CoordinatorState::Ongoing]);
        assert_eq!(request.state_filters, vec![kstr("Ongoing")]);
        assert!(list_transactions_request(&[]).state_filters.is_empty());

        let response = ListTransactionsResponse::default().with_transaction_states(vec![
            listed("job-0-0", "Ongoing"),
            listed("other-0-0", "Ongoing"),
        ]);
        let found = list_transactions_answer(3, &response, |id| id.starts_with("job-")).unwrap();
        assert_eq!(
            found,
            vec![ListedTransaction {
                transactional_id: "job-0-0".into(),
                producer_id: 7,
                state: CoordinatorState::Ongoing,
                coordinator: 3,
            }]
        );
        let refused = ListTransactionsResponse::default().with_error_code(14); // COORDINATOR_LOAD_IN_PROGRESS
        let err = list_transactions_answer(1, &refused, |_| true).unwrap_err();
        assert!(err.is_retriable(), "{err}");
    }

    #[test]
    fn the_smallest_reported_transaction_max_timeout_wins() {
        let entry = |v: &str| ConfigEntry {
            name: TRANSACTION_MAX_TIMEOUT_MS.into(),
            value: Some(v.into()),
        };
        assert_eq!(
            transaction_max_timeout_ms(&[vec![entry("900000")], vec![entry("60000")], vec![]]),
            Some(60_000)
        );
        assert_eq!(transaction_max_timeout_ms(&[vec![]]), None);
    }
}

/// A CreatePartitions request raising `topic` to `total` partitions, replicas placed by the
/// controller.
fn create_partitions_request(topic: &str, total: i32) -> CreatePartitionsRequest {
    CreatePartitionsRequest::default()
        .with_topics(vec![CreatePartitionsTopic::default()
            .with_name(TopicName(kstr(topic)))
            .with_count(total)
            .with_assignments(None)])
        .with_timeout_ms(ADMIN_TIMEOUT_MS)
}

/// A FindCoordinator request for `group`'s coordinator (key type 0) at `version`: v4+ ask for a
/// list of keys, older versions for one.
fn find_group_coordinator_request(version: i16, group: &str) -> FindCoordinatorRequest {
    let request = FindCoordinatorRequest::default().with_key_type(0);
    if version >= 4 {
        request.with_coordinator_keys(vec![kstr(group)])
    } else {
        request.with_key(kstr(group))
    }
}

/// The coordinator's node id from a FindCoordinator answer at `version`, or its error.
fn group_coordinator_node(
    version: i16,
    response: &FindCoordinatorResponse,
) -> Result<i32, ClientError> {
    let (code, node) = if version >= 4 {
        response
            .coordinators
            .first()
            .map_or((codes::NOT_COORDINATOR, -1), |c| {
                (c.error_code, c.node_id.0)
            })
    } else {
        (response.error_code, response.node_id.0)
    };
    if code != 0 {
        return Err(ClientError::broker("FindCoordinator", code));
    }
    Ok(node)
}

/// An OffsetCommit request for a simple group: generation -1 and an empty member id tell the
/// coordinator that no group membership is involved; partitions grouped by topic.
fn offset_commit_request(group: &str, offsets: &[(TopicPartition, i64)]) -> OffsetCommitRequest {
    let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
    for (tp, offset) in offsets {
        let partition = OffsetCommitRequestPartition::default()
            .with_partition_index(tp.partition)
            .with_committed_offset(*offset)
            .with_committed_leader_epoch(-1);
        match topics.iter_mut().find(|t| t.name.0.as_str() == tp.topic) {
            Some(topic) => topic.partitions.push(partition),
            None => topics.push(
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(kstr(tp.topic.clone())))
                    .with_partitions(vec![partition]),
            ),
        }
    }
    OffsetCommitRequest::default()
        .with_group_id(GroupId(kstr(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(kstr(""))
        .with_retention_time_ms(-1)
        .with_topics(topics)
}

/// The first partition error of an OffsetCommit answer, located, or success.
fn offset_commit_result(response: &OffsetCommitResponse) -> Result<(), ClientError> {
    for topic in &response.topics {
        for p in &topic.partitions {
            if p.error_code != 0 {
                return Err(ClientError::broker("OffsetCommit", p.error_code)
                    .at(topic.name.0.as_str(), Some(p.partition_index)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod transaction_and_version_tests {
    use super::*;

    #[test]
    fn offset_commit_is_a_simple_group_commit_grouped_by_topic() {
        let offsets = [
            (TopicPartition::new("a", 0), 5),
            (TopicPartition::new("b", 1), 7),
            (TopicPartition::new("a", 2), 9),
        ];
        let request = offset_commit_request("lag", &offsets);
        assert_eq!(request.group_id.0.as_str(), "lag");
        assert_eq!(request.generation_id_or_member_epoch, -1);
        assert_eq!(request.member_id.as_str(), "");
        let got: Vec<(String, Vec<(i32, i64)>)> = request
            .topics
            .iter()
            .map(|t| {
                let partitions = t.partitions.iter();
                let partitions = partitions.map(|p| (p.partition_index, p.committed_offset));
                (t.name.0.to_string(), partitions.collect())
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a".to_owned(), vec![(0, 5), (2, 9)]),
                ("b".to_owned(), vec![(1, 7)])
            ]
        );
    }

    #[test]
    fn coordinator_answers_and_commit_errors() {
        use crate::protocol::messages::messages::find_coordinator_response::Coordinator;
        use crate::protocol::messages::messages::offset_commit_response::{
            OffsetCommitResponsePartition, OffsetCommitResponseTopic,
        };
        use crate::protocol::messages::messages::BrokerId;
        let v4 = FindCoordinatorResponse::default()
            .with_coordinators(vec![Coordinator::default().with_node_id(BrokerId(3))]);
        assert_eq!(group_coordinator_node(4, &v4), Ok(3));
        let coordinator_load_in_progress = 14;
        let loading =
            FindCoordinatorResponse::default().with_error_code(coordinator_load_in_progress);
        let err = group_coordinator_node(3, &loading).unwrap_err();
        assert!(err.is_retriable(), "{err}");
        // An empty v4 answer is no answer: retried, not taken as node -1.
        let err = group_coordinator_node(4, &FindCoordinatorResponse::default()).unwrap_err();
        assert!(err.is_retriable(), "{err}");
        assert_eq!(
            find_group_coordinator_request(4, "g").coordinator_keys,
            vec![kstr("g")]
        );
        assert_eq!(find_group_coordinator_request(3, "g").key.as_str(), "g");

        let response =
            OffsetCommitResponse::default().with_topics(vec![OffsetCommitResponseTopic::default()
                .with_name(TopicName(kstr("t")))
                .with_partitions(vec![
                    OffsetCommitResponsePartition::default().with_partition_index(0),
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(1)
                        .with_error_code(codes::NOT_COORDINATOR),
                ])]);
        let err = offset_commit_result(&response).unwrap_err();
        assert!(err.is_retriable(), "{err}");
        assert!(matches!(
            &err,
            ClientError::Broker { api: "OffsetCommit", topic: Some(t), partition: Some(1), .. } if t == "t"
        ));
    }

    #[test]
    fn create_partitions_asks_for_the_total() {
        let request = create_partitions_request("t", 6);
        assert_eq!(request.topics[0].name.0.as_str(), "t");
        assert_eq!(request.topics[0].count, 6);
        assert!(request.topics[0].assignments.is_none());
    }
}
