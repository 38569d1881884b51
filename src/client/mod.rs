//! The cluster client: bootstrap, metadata, one connection per broker, and the clients built on
//! them ([`admin`], [`producer`], [`fetcher`], [`reader`]), and the vocabulary they share
//! ([`types`]).
//!
//! Metadata (<https://kafka.apache.org/protocol.html#The_Messages_Metadata>) tells which broker
//! leads each partition. We cache it and refresh it when an error says it is stale
//! (NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION, a lost connection), as the error-code
//! table's `refresh` column directs.

pub mod admin;
mod error;
#[cfg(test)]
pub(crate) mod fake_cluster;
pub mod fetcher;
pub mod partitioner;
pub mod producer;
pub mod reader;
pub mod retry;
#[cfg(test)]
mod tests;
pub mod transaction;
pub mod types;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, RwLock};

use tracing::{debug, instrument};

pub use error::ClientError;

use crate::connection::backoff::BackoffConfig;
use crate::connection::{Connection, ConnectionConfig, ConnectionError};
use crate::protocol::error_codes::{self, Refresh};
use crate::protocol::messages::messages::metadata_request::MetadataRequestTopic;
use crate::protocol::messages::messages::{MetadataRequest, TopicName};
use crate::protocol::messages::{kstr, KafkaRequest};
use retry::{retry, Deadline, RetryAfter};

/// Cluster client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` pairs to start from.
    pub bootstrap: Vec<String>,
    /// Per-connection settings.
    pub connection: ConnectionConfig,
    /// Backoff and deadline for retried operations (connects, metadata).
    pub retry: BackoffConfig,
}

impl ClientConfig {
    /// Settings for a comma-separated bootstrap list, defaults elsewhere.
    pub fn new(bootstrap: &str) -> Self {
        Self {
            bootstrap: bootstrap
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            connection: ConnectionConfig::default(),
            retry: BackoffConfig::default(),
        }
    }
}

/// What metadata says about one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition index.
    pub partition: i32,
    /// Leader broker id (-1 when leaderless).
    pub leader: i32,
    /// Leader epoch.
    pub leader_epoch: i32,
}

/// What metadata says about one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Partitions, indexed by partition number.
    pub partitions: Vec<PartitionInfo>,
    /// Whether it is an internal topic (`__consumer_offsets`, ...).
    pub internal: bool,
}

#[derive(Default)]
struct Metadata {
    brokers: HashMap<i32, String>,
    topics: HashMap<String, TopicInfo>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

struct Inner {
    config: ClientConfig,
    metadata: RwLock<Metadata>,
    /// One slot per broker address; the async mutex serializes (re)connecting to that broker.
    slots: Mutex<HashMap<String, Slot>>,
}

/// Which of its connections to a broker a request goes on.
///
/// Why two: the broker reads one request per connection at a time and answers in order, so a
/// Fetch it holds for up to `max_wait_ms` (a long poll with no data) holds back every request
/// pipelined behind it on that connection — the way Java's consumer and producer, each with its
/// own network client, never share one. Behind a fetch a transactional producer's requests wait
/// (its InitProducerId, EndTxn, commit latency), and worse: an InitProducerId queued there by a
/// process that is then killed is still read and applied when the fetch returns, possibly
/// after the next incarnation opened its transaction under the same transactional id — which
/// that InitProducerId fences: the coordinator aborts a transaction whose checkpoint may then
/// complete, and its output is lost (the crash test's failure; regression test
/// `txn_lifecycle::an_init_queued_behind_a_long_poll_fetch_cannot_fence_a_later_transaction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Everything but Fetch: metadata, produce, coordinator and admin requests.
    General,
    /// Fetch requests only ([`Client::fetch_broker`]).
    Fetch,
}

/// A handle to the cluster. Cheap to clone; all clones share connections and metadata.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bootstrap", &self.inner.config.bootstrap)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the first reachable bootstrap broker and loads cluster metadata.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        if config.bootstrap.is_empty() {
            return Err(ClientError::Config {
                field: "bootstrap",
                message: "no broker address given".into(),
            });
        }
        // TLS files read and SASL settings checked once, here, for every connection to share:
        // a missing CA file is reported now, not as a failure to reach the brokers.
        config.connection.security.prepare()?;
        let client = Self {
            inner: Arc::new(Inner {
                config,
                metadata: RwLock::default(),
                slots: Mutex::default(),
            }),
        };
        client.refresh_metadata(&[]).await?;
        Ok(client)
    }

    /// The settings this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// A live connection to `addr`, connecting (with backoff, until the retry deadline) if the
    /// cached one is missing or poisoned.
    ///
    /// # Cancel safety
    /// Cancel safe; a connection attempt in progress is dropped.
    pub async fn connection(&self, addr: &str) -> Result<Arc<Connection>, ClientError> {
        self.connection_on(addr, Lane::General).await
    }

    /// [`Client::connection`] on one of the address's lanes (see [`Lane`]).
    async fn connection_on(&self, addr: &str, lane: Lane) -> Result<Arc<Connection>, ClientError> {
        let policy = self.inner.config.retry;
        retry(&policy, Deadline::after_ms(policy.deadline_ms), |_| async {
            match self.connect_once(addr, lane).await {
                Err(ClientError::Connection(e)) if e.is_disconnect() => {
                    debug!(addr, error = %e, "connect failed; backing off");
                    ControlFlow::Continue(RetryAfter::error(e))
                }
                other => ControlFlow::Break(other),
            }
        })
        .await
        .unwrap_or_else(|exhausted| {
            Err(ClientError::RetriesExhausted {
                what: "connect",
                attempts: exhausted.attempts,
                deadline_ms: policy.deadline_ms,
                last: Box::new(exhausted.last.into()),
            })
        })
    }

    /// The cached live connection to `addr`, or one attempt to make it (bounded by the
    /// connection's `connect_timeout_ms`). Attempts to one address are serialized; callers for
    /// other addresses are not held up.
    async fn connect_once(&self, addr: &str, lane: Lane) -> Result<Arc<Connection>, ClientError> {
        let key = match lane {
            Lane::General => addr.to_owned(),
            Lane::Fetch => format!("{addr} (fetch)"),
        };
        let slot = {
            let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(slots.entry(key).or_default())
        };
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.as_ref() {
            if conn.poisoned().is_none() {
                return Ok(Arc::clone(conn));
            }
        }
        let conn = Arc::new(Connection::connect(addr, self.inner.config.connection.clone()).await?);
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// A connection to the broker with id `node_id`.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn broker(&self, node_id: i32) -> Result<Arc<Connection>, ClientError> {
        self.broker_on(node_id, Lane::General).await
    }

    /// The connection to the broker with id `node_id` reserved for Fetch requests (see
    /// `Lane::Fetch`): a long-poll fetch there holds back no other request.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn fetch_broker(&self, node_id: i32) -> Result<Arc<Connection>, ClientError> {
        self.broker_on(node_id, Lane::Fetch).await
    }

    async fn broker_on(&self, node_id: i32, lane: Lane) -> Result<Arc<Connection>, ClientError> {
        let addr = self.broker_addr(node_id);
        let addr = match addr {
            Some(addr) => addr,
            None => {
                self.refresh_metadata(&[]).await?;
                self.broker_addr(node_id).ok_or_else(|| {
                    ClientError::Connection(ConnectionError::Closed {
                        addr: format!("node {node_id}"),
                        cause: "broker not in metadata".into(),
                    })
                })?
            }
        };
        self.connection_on(&addr, lane).await
    }

    fn broker_addr(&self, node_id: i32) -> Option<String> {
        self.inner
            .metadata
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .brokers
            .get(&node_id)
            .cloned()
    }

    /// A connection to any reachable broker: known brokers first, then the bootstrap list.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn any_broker(&self) -> Result<Arc<Connection>, ClientError> {
        self.any_broker_within(Deadline::after_ms(self.inner.config.retry.deadline_ms))
            .await
    }

    /// [`Client::any_broker`] within the caller's `deadline`.
    async fn any_broker_within(&self, deadline: Deadline) -> Result<Arc<Connection>, ClientError> {
        let mut candidates: Vec<String> = {
            let md = self
                .inner
                .metadata
                .read()
                .unwrap_or_else(|e| e.into_inner());
            md.brokers.values().cloned().collect()
        };
        candidates.sort();
        for addr in &self.inner.config.bootstrap {
            if !candidates.contains(addr) {
                candidates.push(addr.clone());
            }
        }
        // Reuse a live connection when there is one.
        for addr in &candidates {
            let slot = self
                .inner
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(addr)
                .cloned();
            if let Some(slot) = slot {
                if let Ok(guard) = slot.try_lock() {
                    if let Some(conn) = guard.as_ref().filter(|c| c.poisoned().is_none()) {
                        return Ok(Arc::clone(conn));
                    }
                }
            }
        }
        // One attempt per candidate, then a pause, until the retry deadline: a broker that is
        // down does not hold up the others for a whole retry sequence.
        let round = retry(&self.inner.config.retry, deadline, |_| async {
            let mut last_error = None;
            for addr in &candidates {
                match self.connect_once(addr, Lane::General).await {
                    Ok(conn) => return ControlFlow::Break(Ok(conn)),
                    // A TLS or SASL failure (untrusted certificate, wrong password, ...) happens
                    // again at every broker and attempt: report it now, not at the deadline.
                    Err(ClientError::Connection(e)) if e.is_security() => {
                        return ControlFlow::Break(Err(ClientError::Connection(e)))
                    }
                    Err(ClientError::Connection(e)) => {
                        debug!(addr, error = %e, "broker unreachable; trying the next");
                        last_error = Some(e);
                    }
                    Err(e) => return ControlFlow::Break(Err(e)),
                }
            }
            ControlFlow::Continue(RetryAfter::error(last_error))
        })
        .await;
        let last_error = match round {
            Ok(result) => return result,
            Err(exhausted) => exhausted.last,
        };
        Err(ClientError::NoBrokers {
            bootstrap: self.inner.config.bootstrap.join(","),
            last_error: Box::new(last_error.unwrap_or(ConnectionError::Closed {
                addr: String::new(),
                cause: "no address to try".into(),
            })),
        })
    }

    /// Sends `request` to any broker, retrying disconnects until the retry deadline.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn request_any<R: KafkaRequest + Clone>(
        &self,
        request: &R,
    ) -> Result<R::Response, ClientError>
    where
        R::Response: Send + 'static,
    {
        // One deadline for finding a broker and for the retries around it.
        let deadline = Deadline::after_ms(self.inner.config.retry.deadline_ms);
        retry(&self.inner.config.retry, deadline, |_| async {
            let result = async {
                Ok::<_, ClientError>(
                    self.any_broker_within(deadline)
                        .await?
                        .request(request)
                        .await?,
                )
            }
            .await;
            match result {
                Err(e) if e.is_retriable() => ControlFlow::Continue(RetryAfter::error(e)),
                other => ControlFlow::Break(other),
            }
        })
        .await
        .unwrap_or_else(|exhausted| Err(exhausted.last))
    }

    /// Reloads metadata for `topics` (all topics when empty) and the broker list.
    ///
    /// # Cancel safety
    /// Cancel safe.
    #[instrument(level = "debug", skip(self))]
    pub async fn refresh_metadata(&self, topics: &[String]) -> Result<(), ClientError> {
        let request = MetadataRequest::default()
            .with_topics(if topics.is_empty() {
                None
            } else {
                Some(
                    topics
                        .iter()
                        .map(|t| {
                            MetadataRequestTopic::default()
                                .with_name(Some(TopicName(kstr(t.clone()))))
                        })
                        .collect(),
                )
            })
            .with_allow_auto_topic_creation(false);
        let response = self.request_any(&request).await?;
        let mut md = self
            .inner
            .metadata
            .write()
            .unwrap_or_else(|e| e.into_inner());
        md.brokers = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        if topics.is_empty() {
            md.topics.clear();
        }
        for topic in &response.topics {
            let Some(name) = topic.name.as_ref().map(|n| n.0.to_string()) else {
                continue;
            };
            if topic.error_code != 0 {
                md.topics.remove(&name);
                continue;
            }
            let mut partitions: Vec<PartitionInfo> = topic
                .partitions
                .iter()
                .map(|p| PartitionInfo {
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            md.topics.insert(
                name.clone(),
                TopicInfo {
                    name,
                    partitions,
                    internal: topic.is_internal,
                },
            );
        }
        Ok(())
    }

    /// Cached metadata for `topic`, loading it if absent.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn topic(&self, topic: &str) -> Result<TopicInfo, ClientError> {
        if let Some(info) = self.cached_topic(topic) {
            return Ok(info);
        }
        self.refresh_metadata(&[topic.to_owned()]).await?;
        self.cached_topic(topic)
            .ok_or_else(|| ClientError::UnknownTopic {
                topic: topic.to_owned(),
            })
    }

    /// Every topic in the cluster (refreshes metadata).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn topics(&self) -> Result<Vec<TopicInfo>, ClientError> {
        self.refresh_metadata(&[]).await?;
        let md = self
            .inner
            .metadata
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut topics: Vec<TopicInfo> = md.topics.values().cloned().collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    fn cached_topic(&self, topic: &str) -> Option<TopicInfo> {
        self.inner
            .metadata
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .topics
            .get(topic)
            .cloned()
    }

    /// The leader of `topic`/`partition`, refreshing metadata if it is unknown or leaderless.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn leader(&self, topic: &str, partition: i32) -> Result<i32, ClientError> {
        let deadline = Deadline::after_ms(self.inner.config.retry.deadline_ms);
        retry(&self.inner.config.retry, deadline, |attempt| async move {
            if attempt > 0 {
                if let Err(e) = self.refresh_metadata(&[topic.to_owned()]).await {
                    return ControlFlow::Break(Err(e));
                }
            }
            let info = match self.topic(topic).await {
                Ok(info) => info,
                Err(e) => return ControlFlow::Break(Err(e)),
            };
            let count = info.partitions.len() as i32;
            match info
                .partitions
                .get(partition as usize)
                .filter(|_| partition >= 0)
            {
                None => ControlFlow::Break(Err(ClientError::UnknownPartition {
                    topic: topic.to_owned(),
                    partition,
                    partitions: count,
                })),
                Some(p) if p.leader >= 0 => ControlFlow::Break(Ok(p.leader)),
                Some(_) => ControlFlow::Continue(RetryAfter::error(
                    ClientError::broker("Metadata", error_codes::codes::NOT_LEADER_OR_FOLLOWER)
                        .at(topic, Some(partition)),
                )),
            }
        })
        .await
        .unwrap_or_else(|exhausted| Err(exhausted.last))
    }

    /// The cached leader of `topic`/`partition`, without any I/O.
    pub fn cached_leader(&self, topic: &str, partition: i32) -> Option<i32> {
        let md = self
            .inner
            .metadata
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let leader = md
            .topics
            .get(topic)?
            .partitions
            .get(usize::try_from(partition).ok()?)?
            .leader;
        (leader >= 0).then_some(leader)
    }

    /// Runs a partition-level operation, retrying retriable errors with backoff until the retry
    /// deadline and forgetting `topic`'s leadership when an error code says it is stale.
    ///
    /// # Cancel safety
    /// As cancel safe as `op`.
    pub(crate) async fn with_retries<T, F, Fut>(
        &self,
        topic: &str,
        mut op: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let deadline = Deadline::after_ms(self.inner.config.retry.deadline_ms);
        retry(&self.inner.config.retry, deadline, |_| {
            let attempt = op();
            async move {
                match attempt.await {
                    Err(e) if e.is_retriable() => {
                        if let ClientError::Broker { code, .. } = &e {
                            self.invalidate(topic, code.code);
                        }
                        ControlFlow::Continue(RetryAfter::error(e))
                    }
                    other => ControlFlow::Break(other),
                }
            }
        })
        .await
        .unwrap_or_else(|exhausted| Err(exhausted.last))
    }

    /// Forgets cached leadership for `topic` when an error code says it is stale.
    pub fn invalidate(&self, topic: &str, code: i16) {
        if error_codes::lookup(code).refresh == Refresh::Metadata {
            self.inner
                .metadata
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .topics
                .remove(topic);
        }
    }

    /// Kills every open connection as a network failure would. For tests that force retries.
    pub fn kill_connections(&self) {
        let slots: Vec<Slot> = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for slot in slots {
            if let Ok(guard) = slot.try_lock() {
                if let Some(conn) = guard.as_ref() {
                    conn.kill();
                }
            }
        }
    }
}
