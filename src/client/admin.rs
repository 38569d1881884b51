//! Admin operations: create/delete/list topics, list offsets, describe configs.
//!
//! Topic creation and deletion may go to any broker: under KRaft every broker forwards them to
//! the controller (KIP-590). ListOffsets must go to the partition leader
//! (<https://kafka.apache.org/protocol.html#The_Messages_ListOffsets>).

use std::ops::ControlFlow;

use super::retry::{retry, Deadline, RetryAfter};
use crate::protocol::error_codes::codes;
use crate::protocol::messages::kstr;
use crate::protocol::messages::messages::create_topics_request::CreatableTopic;
use crate::protocol::messages::messages::describe_configs_request::DescribeConfigsResource;
use crate::protocol::messages::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsTopic,
};
use crate::protocol::messages::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, ListOffsetsRequest, TopicName,
};

use super::{Client, ClientError};

use super::types::OffsetLookup;
/// The shared vocabulary, re-exported where it used to live.
pub use super::types::{Isolation, OffsetSpec};

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
}
