//! A scripted one-node fake cluster for the transactional producer's rare paths (in the spirit
//! of franz-go's `pkg/kfake` and its `ControlKey`): a lost EndTxn answer, an unexpected error
//! code, a slow produce. It speaks the real wire protocol on 127.0.0.1 (the client under test is
//! unchanged) and models just enough of a transaction coordinator and a partition leader:
//! producer ids and epochs, the coordinator state, the KIP-890 epoch bump on EndTxn v5, fencing
//! of produce batches written with an old epoch. The real broker stays the judge of the common
//! paths (protocol-tests/); this fake is for what the broker cannot be made to do on demand.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::{ApiVersion, FinalizedFeatureKey};
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResult;
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    add_partitions_to_txn_response::{
        AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
    },
    AddPartitionsToTxnResponse, ApiKey, ApiVersionsResponse, BrokerId, DescribeConfigsResponse,
    DescribeTransactionsResponse, EndTxnResponse, FindCoordinatorResponse, InitProducerIdResponse,
    MetadataResponse, ProduceResponse, ProducerId, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::protocol::error_codes::codes;

/// Declares the requests the fake understands and the matching responses (kafka-protocol's own
/// `RequestKind`/`ResponseKind` need a feature we do not build).
macro_rules! apis {
    ($($name:ident($req:ident, $resp:ident);)*) => {
        /// A decoded request (tests read the variants they intercept).
        #[derive(Debug)]
        #[allow(dead_code)]
        pub(crate) enum RequestKind {
            $($name(kafka_protocol::messages::$req),)*
        }
        /// A response to send.
        #[derive(Debug)]
        pub(crate) enum ResponseKind {
            $($name(kafka_protocol::messages::$resp),)*
        }
        impl RequestKind {
            fn decode(api: ApiKey, buf: &mut Bytes, version: i16) -> Self {
                match api {
                    $(ApiKey::$name => Self::$name(
                        Decodable::decode(buf, version).expect("request body"),
                    ),)*
                    other => panic!("the fake cluster does not handle {other:?}"),
                }
            }
        }
        impl ResponseKind {
            fn encode(&self, buf: &mut BytesMut, version: i16) {
                match self {
                    $(Self::$name(r) => r.encode(buf, version).expect("response body"),)*
                }
            }
        }
    };
}

apis! {
    ApiVersions(ApiVersionsRequest, ApiVersionsResponse);
    Metadata(MetadataRequest, MetadataResponse);
    Produce(ProduceRequest, ProduceResponse);
    FindCoordinator(FindCoordinatorRequest, FindCoordinatorResponse);
    DescribeConfigs(DescribeConfigsRequest, DescribeConfigsResponse);
    InitProducerId(InitProducerIdRequest, InitProducerIdResponse);
    AddPartitionsToTxn(AddPartitionsToTxnRequest, AddPartitionsToTxnResponse);
    EndTxn(EndTxnRequest, EndTxnResponse);
    DescribeTransactions(DescribeTransactionsRequest, DescribeTransactionsResponse);
}

/// What a hook tells the fake to do with one request.
pub(crate) enum Reply {
    /// Handle it as the model does.
    Default,
    /// Handle it as the model does, after a pause.
    DelayThenDefault(Duration),
    /// Apply it as the model does but never answer (the answer is lost).
    ApplyAndDrop,
    /// Answer with this response instead (the model is not changed).
    Answer(ResponseKind),
}

type Hook = Box<dyn FnMut(&mut FakeState, &RequestKind) -> Reply + Send>;

/// The coordinator and log state of the fake, readable and changeable by tests.
pub(crate) struct FakeState {
    /// The finalized `transaction.version` feature (1 or 2); 2 also advertises EndTxn v5 and
    /// Produce v12.
    pub txn_version: i16,
    pub producer_id: i64,
    /// -1 until the first InitProducerId.
    pub producer_epoch: i16,
    /// The coordinator's state name, as DescribeTransactions reports it.
    pub txn_state: &'static str,
    pub txn_partitions: BTreeSet<(String, i32)>,
    /// Every batch written: (topic, partition, producer epoch, record count).
    pub batches: Vec<(String, i32, i16, i32)>,
    /// Every EndTxn applied: (epoch sent, commit).
    pub end_txns: Vec<(i16, bool)>,
    /// Every request received, by API key.
    pub requests: Vec<ApiKey>,
    pub partitions_per_topic: i32,
    next_offset: HashMap<(String, i32), i64>,
    hooks: HashMap<ApiKey, Hook>,
}

/// A running fake cluster; dropping it stops it.
pub(crate) struct FakeCluster {
    pub addr: String,
    pub state: Arc<Mutex<FakeState>>,
    task: JoinHandle<()>,
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeCluster {
    pub(crate) async fn start(txn_version: i16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let state = Arc::new(Mutex::new(FakeState {
            txn_version,
            producer_id: 1000,
            producer_epoch: -1,
            txn_state: "Empty",
            txn_partitions: BTreeSet::new(),
            batches: Vec::new(),
            end_txns: Vec::new(),
            requests: Vec::new(),
            partitions_per_topic: 2,
            next_offset: HashMap::new(),
            hooks: HashMap::new(),
        }));
        let shared = Arc::clone(&state);
        let port = listener.local_addr().expect("local addr").port();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, Arc::clone(&shared), i32::from(port)));
            }
        });
        Self { addr, state, task }
    }

    /// Intercepts every request with API `key` (replacing an earlier hook for it).
    pub(crate) fn on(
        &self,
        key: ApiKey,
        hook: impl FnMut(&mut FakeState, &RequestKind) -> Reply + Send + 'static,
    ) {
        self.lock().hooks.insert(key, Box::new(hook));
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn serve(socket: TcpStream, state: Arc<Mutex<FakeState>>, port: i32) {
    let (mut read, mut write) = socket.into_split();
    // Answers go through one writer so that a delayed answer does not hold up the next request
    // (our client matches answers by correlation id).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BytesMut>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    while let Ok(size) = read.read_i32().await {
        let mut body = vec![0; size as usize];
        if read.read_exact(&mut body).await.is_err() {
            break;
        }
        let mut body = Bytes::from(body);
        let key = i16::from_be_bytes([body[0], body[1]]);
        let version = i16::from_be_bytes([body[2], body[3]]);
        let api = ApiKey::try_from(key).expect("known api key");
        let header = RequestHeader::decode(&mut body, api.request_header_version(version))
            .expect("request header");
        let request = RequestKind::decode(api, &mut body, version);
        let reply = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.requests.push(api);
            match s.hooks.remove(&api) {
                Some(mut hook) => {
                    let reply = hook(&mut s, &request);
                    s.hooks.entry(api).or_insert(hook);
                    reply
                }
                None => Reply::Default,
            }
        };
        let frame = move |response: ResponseKind| {
            let mut buf = BytesMut::new();
            buf.put_i32(0);
            ResponseHeader::default()
                .with_correlation_id(header.correlation_id)
                .encode(&mut buf, api.response_header_version(version))
                .expect("response header");
            response.encode(&mut buf, version);
            let len = (buf.len() - 4) as i32;
            buf[..4].copy_from_slice(&len.to_be_bytes());
            buf
        };
        let handle = |state: &Arc<Mutex<FakeState>>| {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.handle(&request, version, port)
        };
        match reply {
            Reply::Default => {
                let _ = tx.send(frame(handle(&state)));
            }
            Reply::ApplyAndDrop => {
                handle(&state);
            }
            Reply::Answer(response) => {
                let _ = tx.send(frame(response));
            }
            Reply::DelayThenDefault(pause) => {
                let (tx, state) = (tx.clone(), Arc::clone(&state));
                tokio::spawn(async move {
                    tokio::time::sleep(pause).await;
                    let response = {
                        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                        s.handle(&request, version, port)
                    };
                    let _ = tx.send(frame(response));
                });
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

impl FakeState {
    fn versions(&self) -> Vec<ApiVersion> {
        let v2 = self.txn_version >= 2;
        [
            (ApiKey::ApiVersions, 0, 3),
            (ApiKey::Metadata, 0, 12),
            (ApiKey::Produce, 3, if v2 { 12 } else { 11 }),
            (ApiKey::FindCoordinator, 0, 4),
            (ApiKey::DescribeConfigs, 0, 4),
            (ApiKey::InitProducerId, 0, 5),
            (ApiKey::AddPartitionsToTxn, 0, 3),
            (ApiKey::EndTxn, 0, if v2 { 5 } else { 4 }),
            (ApiKey::DescribeTransactions, 0, 0),
        ]
        .into_iter()
        .map(|(k, min, max)| {
            ApiVersion::default()
                .with_api_key(k as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect()
    }

    /// The model: a minimal transaction coordinator and partition leader.
    fn handle(&mut self, request: &RequestKind, version: i16, port: i32) -> ResponseKind {
        match request {
            RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(
                ApiVersionsResponse::default()
                    .with_api_keys(self.versions())
                    .with_finalized_features(vec![FinalizedFeatureKey::default()
                        .with_name(s("transaction.version"))
                        .with_max_version_level(self.txn_version)
                        .with_min_version_level(self.txn_version)]),
            ),
            RequestKind::Metadata(r) => {
                let topics = r.topics.iter().flatten().filter_map(|t| t.name.clone());
                ResponseKind::Metadata(
                    MetadataResponse::default()
                        .with_brokers(vec![MetadataResponseBroker::default()
                            .with_node_id(BrokerId(1))
                            .with_host(s("127.0.0.1"))
                            .with_port(port)])
                        .with_controller_id(BrokerId(1))
                        .with_topics(
                            topics
                                .map(|name| {
                                    MetadataResponseTopic::default()
                                        .with_name(Some(name))
                                        .with_partitions(
                                            (0..self.partitions_per_topic)
                                                .map(|p| {
                                                    MetadataResponsePartition::default()
                                                        .with_partition_index(p)
                                                        .with_leader_id(BrokerId(1))
                                                        .with_replica_nodes(vec![BrokerId(1)])
                                                        .with_isr_nodes(vec![BrokerId(1)])
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        ),
                )
            }
            RequestKind::FindCoordinator(r) => {
                let response = if version >= 4 {
                    FindCoordinatorResponse::default().with_coordinators(
                        r.coordinator_keys
                            .iter()
                            .map(|k| {
                                Coordinator::default()
                                    .with_key(k.clone())
                                    .with_node_id(BrokerId(1))
                                    .with_host(s("127.0.0.1"))
                                    .with_port(port)
                            })
                            .collect(),
                    )
                } else {
                    FindCoordinatorResponse::default()
                        .with_node_id(BrokerId(1))
                        .with_host(s("127.0.0.1"))
                        .with_port(port)
                };
                ResponseKind::FindCoordinator(response)
            }
            RequestKind::DescribeConfigs(r) => ResponseKind::DescribeConfigs(
                DescribeConfigsResponse::default().with_results(
                    r.resources
                        .iter()
                        .map(|res| {
                            DescribeConfigsResult::default()
                                .with_resource_type(res.resource_type)
                                .with_resource_name(res.resource_name.clone())
                        })
                        .collect(),
                ),
            ),
            RequestKind::InitProducerId(r) => {
                let mut code = codes::NONE;
                if r.producer_id.0 >= 0
                    && (r.producer_id.0 != self.producer_id
                        || r.producer_epoch != self.producer_epoch)
                {
                    code = codes::PRODUCER_FENCED;
                } else {
                    if self.txn_state == "Ongoing" {
                        self.txn_state = "CompleteAbort";
                    } else {
                        self.txn_state = "Empty";
                    }
                    self.txn_partitions.clear();
                    self.producer_epoch += 1;
                }
                ResponseKind::InitProducerId(
                    InitProducerIdResponse::default()
                        .with_error_code(code)
                        .with_producer_id(ProducerId(self.producer_id))
                        .with_producer_epoch(self.producer_epoch),
                )
            }
            RequestKind::AddPartitionsToTxn(r) => {
                let code = if r.v3_and_below_producer_epoch == self.producer_epoch {
                    codes::NONE
                } else {
                    codes::PRODUCER_FENCED
                };
                let mut results = Vec::new();
                for t in &r.v3_and_below_topics {
                    let mut partitions = Vec::new();
                    for p in &t.partitions {
                        if code == codes::NONE {
                            self.txn_partitions.insert((t.name.0.to_string(), *p));
                            self.txn_state = "Ongoing";
                        }
                        partitions.push(
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(*p)
                                .with_partition_error_code(code),
                        );
                    }
                    results.push(
                        AddPartitionsToTxnTopicResult::default()
                            .with_name(t.name.clone())
                            .with_results_by_partition(partitions),
                    );
                }
                ResponseKind::AddPartitionsToTxn(
                    AddPartitionsToTxnResponse::default()
                        .with_results_by_topic_v3_and_below(results),
                )
            }
            RequestKind::Produce(r) => {
                let mut responses = Vec::new();
                for t in &r.topic_data {
                    let mut partitions = Vec::new();
                    for p in &t.partition_data {
                        let tp = (t.name.0.to_string(), p.index);
                        let mut records = p.records.clone().unwrap_or_default();
                        // Record batch v2 header: producer epoch at byte 51, count at 57.
                        records.advance(51);
                        let epoch = records.get_i16();
                        records.advance(4);
                        let count = records.get_i32();
                        let code = if r.transactional_id.is_none() {
                            codes::NONE
                        } else if epoch != self.producer_epoch {
                            codes::PRODUCER_FENCED
                        } else if self.txn_version >= 2 && version >= 12 {
                            self.txn_partitions.insert(tp.clone());
                            self.txn_state = "Ongoing";
                            codes::NONE
                        } else if self.txn_partitions.contains(&tp) {
                            codes::NONE
                        } else {
                            codes::INVALID_TXN_STATE
                        };
                        let mut base = -1;
                        if code == codes::NONE {
                            let next = self.next_offset.entry(tp.clone()).or_default();
                            base = *next;
                            *next += i64::from(count);
                            self.batches.push((tp.0.clone(), tp.1, epoch, count));
                        }
                        partitions.push(
                            PartitionProduceResponse::default()
                                .with_index(p.index)
                                .with_error_code(code)
                                .with_base_offset(base),
                        );
                    }
                    responses.push(
                        TopicProduceResponse::default()
                            .with_name(TopicName(t.name.0.clone()))
                            .with_partition_responses(partitions),
                    );
                }
                ResponseKind::Produce(ProduceResponse::default().with_responses(responses))
            }
            RequestKind::EndTxn(r) => {
                let bump = version >= 5;
                let done = if r.committed {
                    "CompleteCommit"
                } else {
                    "CompleteAbort"
                };
                let code = if r.producer_id.0 != self.producer_id {
                    49 // INVALID_PRODUCER_ID_MAPPING
                } else if r.producer_epoch == self.producer_epoch && self.txn_state == "Ongoing" {
                    self.txn_state = done;
                    self.txn_partitions.clear();
                    self.end_txns.push((r.producer_epoch, r.committed));
                    if bump {
                        self.producer_epoch += 1;
                    }
                    codes::NONE
                } else if self.txn_state == done
                    && r.producer_epoch == self.producer_epoch - i16::from(bump)
                {
                    // A retry of the EndTxn that completed the transaction.
                    codes::NONE
                } else if r.producer_epoch < self.producer_epoch {
                    codes::PRODUCER_FENCED
                } else {
                    codes::INVALID_TXN_STATE
                };
                ResponseKind::EndTxn(
                    EndTxnResponse::default()
                        .with_error_code(code)
                        .with_producer_id(ProducerId(if bump { self.producer_id } else { -1 }))
                        .with_producer_epoch(if bump { self.producer_epoch } else { -1 }),
                )
            }
            RequestKind::DescribeTransactions(r) => ResponseKind::DescribeTransactions(
                DescribeTransactionsResponse::default().with_transaction_states(
                    r.transactional_ids
                        .iter()
                        .map(|id| {
                            let mut topics: Vec<TopicData> = Vec::new();
                            for (t, p) in &self.txn_partitions {
                                match topics.iter_mut().find(|d| d.topic.0.as_str() == t) {
                                    Some(d) => d.partitions.push(*p),
                                    None => topics.push(
                                        TopicData::default()
                                            .with_topic(TopicName(s(t)))
                                            .with_partitions(vec![*p]),
                                    ),
                                }
                            }
                            TransactionState::default()
                                .with_transactional_id(id.clone())
                                .with_transaction_state(s(self.txn_state))
                                .with_producer_id(ProducerId(self.producer_id))
                                .with_producer_epoch(self.producer_epoch)
                                .with_topics(topics)
                        })
                        .collect(),
                ),
            ),
        }
    }
}
