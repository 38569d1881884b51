//! A scripted fake Kafka cluster for client tests (compiled for tests only); the one fake every
//! unit test of the client, the producer and the transactional producer uses.
//!
//! Why: the real broker is the judge of the common paths, but it cannot be made to answer
//! NOT_COORDINATOR, CONCURRENT_TRANSACTIONS, an unknown error code, or to lose an EndTxn answer
//! on demand. franz-go's `kfake` solves this with a small in-process cluster whose every API has a
//! default handler and a `ControlKey` hook to intercept a chosen request; this is the same idea,
//! kept to the APIs the client speaks.
//!
//! - Each node is a loopback listener; all share one [`State`] (topics, partition logs,
//!   transactional ids). Metadata lists every node and the topics asked for; partition leaders
//!   are chosen per topic. Node 1 is every coordinator.
//! - [`FakeCluster::control`] installs a hook for one API key: it sees each decoded request (in
//!   arrival order) and either passes (`None`: the default handler answers) or decides the
//!   [`Action`]: a scripted response, a delay, no response at all, or a cut connection. A hook
//!   stays installed until it handles a request, unless it was installed with `keep`. A delayed
//!   answer does not hold up later requests on its connection (answers are matched by
//!   correlation id).
//! - [`FakeCluster::requests`] is the journal of every request seen, for assertions such as
//!   "no EndTxn(abort) was ever sent".
//!
//! The default handlers model just enough of a partition leader and a transaction coordinator:
//! producer ids and epochs per transactional id ([`Txn`], read with [`FakeCluster::txn`]), the
//! coordinator state DescribeTransactions reports, the `transaction.version` feature
//! ([`FakeCluster::set_transaction_version`]; version 1 offers neither Produce v12 nor EndTxn v5
//! and needs AddPartitionsToTxn, KIP-890), fencing of batches and EndTxn with an old epoch, the
//! epoch bump of EndTxn v5, and per-partition logs with offsets and transaction markers (KIP-98)
//! that Fetch serves. Produce does no sequence checks and nothing is replicated. Tests that need
//! more script it with a hook.

// A test utility: not every hook or accessor is used by every test build.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::api_versions_response::{ApiVersion, FinalizedFeatureKey};
use kafka_protocol::messages::describe_transactions_response::{
    TopicData, TransactionState as DescribedTxn,
};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::protocol::error_codes::codes;
use crate::protocol::messages::KafkaRequest;

/// Not among the codes the client names (it classifies it from the table).
const INVALID_PRODUCER_ID_MAPPING: i16 = 49;

macro_rules! kinds {
    ($($name:ident($req:ident, $resp:ident),)*) => {
        /// The requests the fake cluster decodes.
        #[derive(Debug, Clone)]
        #[allow(missing_docs, dead_code)]
        pub(crate) enum RequestKind { $($name($req),)* }

        /// The responses it can send.
        #[derive(Debug, Clone)]
        #[allow(missing_docs, dead_code)]
        pub(crate) enum ResponseKind { $($name($resp),)* }

        fn decode_body(key: ApiKey, bytes: &mut Bytes, version: i16) -> Option<RequestKind> {
            match key {
                $(ApiKey::$name => $req::decode(bytes, version).ok().map(RequestKind::$name),)*
                _ => None,
            }
        }

        impl ResponseKind {
            fn encode(&self, buf: &mut BytesMut, version: i16) {
                match self {
                    $(Self::$name(r) => r.encode(buf, version).expect("encode response"),)*
                }
            }
        }
    };
}

kinds! {
    ApiVersions(ApiVersionsRequest, ApiVersionsResponse),
    Metadata(MetadataRequest, MetadataResponse),
    Produce(ProduceRequest, ProduceResponse),
    Fetch(FetchRequest, FetchResponse),
    ListOffsets(ListOffsetsRequest, ListOffsetsResponse),
    FindCoordinator(FindCoordinatorRequest, FindCoordinatorResponse),
    InitProducerId(InitProducerIdRequest, InitProducerIdResponse),
    AddPartitionsToTxn(AddPartitionsToTxnRequest, AddPartitionsToTxnResponse),
    AddOffsetsToTxn(AddOffsetsToTxnRequest, AddOffsetsToTxnResponse),
    TxnOffsetCommit(TxnOffsetCommitRequest, TxnOffsetCommitResponse),
    EndTxn(EndTxnRequest, EndTxnResponse),
    DescribeTransactions(DescribeTransactionsRequest, DescribeTransactionsResponse),
    ListTransactions(ListTransactionsRequest, ListTransactionsResponse),
    DescribeConfigs(DescribeConfigsRequest, DescribeConfigsResponse),
}

/// One decoded request, as hooks and the journal see it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// The node it was sent to.
    pub(crate) node: i32,
    /// Its API.
    pub(crate) key: ApiKey,
    /// Its version.
    pub(crate) version: i16,
    /// The decoded body.
    pub(crate) body: RequestKind,
}

/// What a hook decides for a request.
#[derive(Debug)]
pub(crate) enum Action {
    /// Answer with this response instead of the default handler's.
    Respond(ResponseKind),
    /// Let the default handler answer, after this many milliseconds.
    DelayMs(u64),
    /// Apply the default handler (the state changes) but never answer.
    DropResponse,
    /// Apply the default handler, then close the connection without answering.
    CutAfterApply,
    /// Close the connection without applying or answering.
    Cut,
}

type Hook = Box<dyn FnMut(&Seen, &mut State) -> Option<Action> + Send>;

struct Control {
    key: ApiKey,
    keep: bool,
    hook: Hook,
}

/// One transactional id's coordinator state.
#[derive(Debug, Clone, Default)]
pub(crate) struct Txn {
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    /// Kafka's state names: Empty, Ongoing, PrepareCommit, CompleteCommit, CompleteAbort, ...
    pub(crate) state: String,
    pub(crate) partitions: Vec<(String, i32)>,
    /// Every EndTxn that ended a transaction: (epoch sent, commit).
    pub(crate) end_txns: Vec<(i16, bool)>,
}

/// The cluster's shared state; hooks may read and change it.
#[derive(Default)]
pub(crate) struct State {
    /// topic → per partition (leader node, log: data batches and transaction markers in offset
    /// order, each batch's base offset set as the leader assigned it).
    pub(crate) topics: HashMap<String, Vec<(i32, Vec<Bytes>)>>,
    /// transactional id → coordinator state.
    pub(crate) txns: HashMap<String, Txn>,
    /// The finalized `transaction.version` advertised in ApiVersions (1 or 2; 2 also offers
    /// Produce v12 and EndTxn v5). Set it before the client connects.
    pub(crate) transaction_version: i16,
    next_producer_id: i64,
    nodes: Vec<(i32, String)>,
    /// Nodes that accept connections and read requests but never answer (a hung broker).
    silent: Vec<i32>,
    /// Connections accepted, by node id.
    accepted: HashMap<i32, usize>,
    journal: Vec<Seen>,
    controls: Vec<Control>,
}

/// A running fake cluster; stops when dropped.
pub(crate) struct FakeCluster {
    state: Arc<Mutex<State>>,
    nodes: Vec<(i32, String)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl FakeCluster {
    /// Starts `count` nodes with ids 1, 2, ..., and transactions version 2. Node 1 is every
    /// coordinator.
    pub(crate) async fn start(count: i32) -> Self {
        let mut listeners = Vec::new();
        for node in 1..=count {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            listeners.push((node, listener, addr));
        }
        let nodes: Vec<(i32, String)> = listeners
            .iter()
            .map(|(node, _, addr)| (*node, addr.clone()))
            .collect();
        let state = Arc::new(Mutex::new(State {
            transaction_version: 2,
            next_producer_id: 1000,
            nodes: nodes.clone(),
            ..State::default()
        }));
        let tasks = listeners
            .into_iter()
            .map(|(node, listener, _)| {
                tokio::spawn(accept_loop(listener, node, Arc::clone(&state)))
            })
            .collect();
        Self {
            state,
            nodes,
            tasks,
        }
    }

    /// Makes node `node` accept connections and read requests but never answer anything, like
    /// a leader that hangs.
    pub(crate) fn silence(&self, node: i32) {
        self.with_state(|s| s.silent.push(node));
    }

    /// How many connections node `node` has accepted.
    pub(crate) fn accepted(&self, node: i32) -> usize {
        self.with_state(|s| s.accepted.get(&node).copied().unwrap_or(0))
    }

    /// Every Produce partition received so far, in arrival order: (node, topic, partition,
    /// base sequence, record count) of its first batch.
    pub(crate) fn produced(&self) -> Vec<(i32, String, i32, i32, i32)> {
        let mut produced = Vec::new();
        for seen in self.requests_of(ApiKey::Produce) {
            let RequestKind::Produce(request) = &seen.body else {
                continue;
            };
            for topic in &request.topic_data {
                for p in &topic.partition_data {
                    let records = p.records.clone().unwrap_or_default();
                    let field = |at: usize| {
                        records
                            .get(at..at + 4)
                            .map_or(-1, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    };
                    // Base sequence at byte 53, record count at 57 of a v2 batch header.
                    produced.push((
                        seen.node,
                        topic.name.0.to_string(),
                        p.index,
                        field(53),
                        field(57),
                    ));
                }
            }
        }
        produced
    }

    /// The bootstrap address of node `node`.
    pub(crate) fn addr(&self, node: i32) -> String {
        let (_, addr) = self
            .nodes
            .iter()
            .find(|(id, _)| *id == node)
            .expect("no such node");
        addr.clone()
    }

    /// Creates a topic whose partition `p` is led by `leaders[p]`.
    pub(crate) fn add_topic(&self, name: &str, leaders: &[i32]) {
        self.with_state(|s| {
            s.topics.insert(
                name.to_owned(),
                leaders.iter().map(|&l| (l, Vec::new())).collect(),
            );
        });
    }

    /// Runs `f` on the shared state.
    pub(crate) fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Installs a hook for requests of `key`; it is removed once it returns an action unless
    /// `keep` is set.
    pub(crate) fn control(
        &self,
        key: ApiKey,
        keep: bool,
        hook: impl FnMut(&Seen, &mut State) -> Option<Action> + Send + 'static,
    ) {
        self.with_state(|s| {
            s.controls.push(Control {
                key,
                keep,
                hook: Box::new(hook),
            })
        });
    }

    /// Every request seen so far, in arrival order.
    pub(crate) fn requests(&self) -> Vec<Seen> {
        self.with_state(|s| s.journal.clone())
    }

    /// The requests of one API seen so far.
    pub(crate) fn requests_of(&self, key: ApiKey) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|r| r.key == key)
            .collect()
    }

    /// A copy of transactional id `id`'s coordinator state (panics if there is none).
    pub(crate) fn txn(&self, id: &str) -> Txn {
        self.with_state(|s| s.txns.get(id).cloned().expect("no such transactional id"))
    }

    /// Sets the finalized `transaction.version` (1 or 2) the cluster advertises; call it before
    /// the client connects.
    pub(crate) fn set_transaction_version(&self, version: i16) {
        self.with_state(|s| s.transaction_version = version);
    }

    /// Every data batch in the logs: (topic, partition, producer epoch, record count), in offset
    /// order per partition (partitions in no particular order).
    pub(crate) fn batches(&self) -> Vec<(String, i32, i16, i32)> {
        self.with_state(|s| {
            let mut batches = Vec::new();
            for (topic, parts) in &s.topics {
                for (partition, (_, log)) in parts.iter().enumerate() {
                    for batch in log.iter().filter(|b| !is_control(b)) {
                        let epoch = batch
                            .get(51..53)
                            .map_or(-1, |b| i16::from_be_bytes([b[0], b[1]]));
                        batches.push((
                            topic.clone(),
                            partition as i32,
                            epoch,
                            batch_record_count(batch),
                        ));
                    }
                }
            }
            batches
        })
    }

    /// How many records were appended to `topic`/`partition` (all data batches, any
    /// transaction).
    pub(crate) fn record_count(&self, topic: &str, partition: i32) -> usize {
        self.with_state(|s| {
            s.topics.get(topic).map_or(0, |parts| {
                parts[partition as usize]
                    .1
                    .iter()
                    .filter(|b| !is_control(b))
                    .map(|b| batch_record_count(b) as usize)
                    .sum()
            })
        })
    }
}

/// Aborts a task when dropped, so connection tasks end with their accept loop.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn accept_loop(listener: TcpListener, node: i32, state: Arc<Mutex<State>>) {
    let mut connections = Vec::new();
    while let Ok((socket, _)) = listener.accept().await {
        connections.retain(|c: &AbortOnDrop| !c.0.is_finished());
        *state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .accepted
            .entry(node)
            .or_default() += 1;
        connections.push(AbortOnDrop(tokio::spawn(serve(
            socket,
            node,
            Arc::clone(&state),
        ))));
    }
}

/// Serves one connection: reads frames, decodes, consults hooks, answers. Answers go through
/// one writer task so that a delayed answer does not hold up the next request (the client
/// matches answers by correlation id).
async fn serve(socket: TcpStream, node: i32, state: Arc<Mutex<State>>) {
    let (mut read, mut write) = socket.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BytesMut>();
    let writer = AbortOnDrop(tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write.write_all(&frame).await.is_err() {
                return;
            }
        }
    }));
    while let Ok(size) = read.read_i32().await {
        let Ok(size) = usize::try_from(size) else {
            break;
        };
        let mut frame = vec![0; size];
        if read.read_exact(&mut frame).await.is_err() {
            break;
        }
        if state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .silent
            .contains(&node)
        {
            continue;
        }
        let mut frame = Bytes::from(frame);
        let Some((key, version, correlation_id, body)) = decode_request(&mut frame) else {
            break;
        };
        let seen = Seen {
            node,
            key,
            version,
            body,
        };
        let action = {
            let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
            let s = &mut *guard;
            s.journal.push(seen.clone());
            let mut decided = None;
            let mut controls = std::mem::take(&mut s.controls);
            let mut i = 0;
            while i < controls.len() {
                if controls[i].key == key {
                    if let Some(action) = (controls[i].hook)(&seen, s) {
                        if !controls[i].keep {
                            controls.remove(i);
                        }
                        decided = Some(action);
                        break;
                    }
                }
                i += 1;
            }
            controls.append(&mut s.controls);
            s.controls = controls;
            decided
        };
        let frame = move |response: ResponseKind| {
            let mut buf = BytesMut::new();
            buf.put_i32(0);
            ResponseHeader::default()
                .with_correlation_id(correlation_id)
                .encode(&mut buf, key.response_header_version(version))
                .expect("encode response header");
            response.encode(&mut buf, version);
            let len = (buf.len() - 4) as i32;
            buf[..4].copy_from_slice(&len.to_be_bytes());
            buf
        };
        match action {
            Some(Action::Respond(response)) => {
                let _ = tx.send(frame(response));
            }
            Some(Action::Cut) => return,
            Some(Action::DelayMs(ms)) => {
                let (tx, state) = (tx.clone(), Arc::clone(&state));
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let _ = tx.send(frame(handle(&seen, &state)));
                });
            }
            Some(Action::DropResponse) => {
                handle(&seen, &state);
            }
            Some(Action::CutAfterApply) => {
                handle(&seen, &state);
                return;
            }
            None => {
                let _ = tx.send(frame(handle(&seen, &state)));
            }
        }
    }
    // The peer closed: let the writer finish what is queued.
    drop(tx);
    let mut writer = writer;
    let _ = (&mut writer.0).await;
}

fn decode_request(frame: &mut Bytes) -> Option<(ApiKey, i16, i32, RequestKind)> {
    if frame.len() < 4 {
        return None;
    }
    let key = ApiKey::try_from(i16::from_be_bytes([frame[0], frame[1]])).ok()?;
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let header = RequestHeader::decode(frame, key.request_header_version(version)).ok()?;
    let body = decode_body(key, frame, version)?;
    Some((key, version, header.correlation_id, body))
}

fn kstr(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn versions<R: KafkaRequest>() -> ApiVersion
where
    R::Response: Send + 'static,
{
    ApiVersion::default()
        .with_api_key(R::KEY)
        .with_min_version(R::OURS.min)
        .with_max_version(R::OURS.max)
}

/// The record count field of a v2 record batch (offset 57), 0 if too short.
fn batch_record_count(batch: &[u8]) -> i32 {
    batch
        .get(57..61)
        .map_or(0, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Splits a produce request's records field into its batches.
fn split_batches(mut data: Bytes) -> Vec<Bytes> {
    let mut batches = Vec::new();
    while data.len() >= 12 {
        let len = i32::from_be_bytes([data[8], data[9], data[10], data[11]]);
        let total = 12 + len.max(0) as usize;
        if total > data.len() {
            break;
        }
        batches.push(data.split_to(total));
    }
    let _ = data.remaining();
    batches
}

/// The offset after the last batch of `log` (0 when empty).
fn log_end(log: &[Bytes]) -> i64 {
    log.last().map_or(0, |batch| {
        let base = i64::from_be_bytes(batch[..8].try_into().expect("8 bytes"));
        let last_delta = i32::from_be_bytes(batch[23..27].try_into().expect("4 bytes"));
        base + i64::from(last_delta) + 1
    })
}

/// Whether a v2 batch is a control batch (attributes bit 5, KIP-98).
fn is_control(batch: &[u8]) -> bool {
    batch.get(22).is_some_and(|a| a & (1 << 5) != 0)
}

/// A transaction marker at offset `at`: a control batch of one control record (KIP-98).
fn marker(at: i64, producer_id: i64, producer_epoch: i16, commit: bool) -> Bytes {
    use crate::protocol::compression::Compression;
    use crate::protocol::record_batch::{BatchProducerFields, RecordBatchBuilder};
    let mut builder = RecordBatchBuilder::new(Compression::None);
    // Key: version 0, type (0 abort, 1 commit); value: version 0, coordinator epoch 0.
    builder
        .append(0, Some(&[0, 0, 0, u8::from(commit)]), Some(&[0; 6]), &[])
        .expect("control record");
    let built = builder
        .build(BatchProducerFields {
            producer_id,
            producer_epoch,
            base_sequence: -1,
            is_transactional: true,
        })
        .expect("control batch");
    let mut batch = BytesMut::from(built);
    batch[..8].copy_from_slice(&at.to_be_bytes());
    // Attributes at bytes 21..23 (bit 5: control); the CRC (bytes 17..21) covers 21.. .
    batch[22] |= 1 << 5;
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch.freeze()
}

/// Fetch from the logs: every batch ending at or after the fetch offset, up to the end (data
/// and markers alike; no isolation level, no size limit).
fn fetch(s: &State, req: &FetchRequest) -> FetchResponse {
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let log = s
                        .topics
                        .get(t.topic.0.as_str())
                        .and_then(|parts| parts.get(p.partition as usize))
                        .map(|(_, log)| log.as_slice());
                    let Some(log) = log else {
                        return fetch_response::PartitionData::default()
                            .with_partition_index(p.partition)
                            .with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION);
                    };
                    let end = log_end(log);
                    let mut records = BytesMut::new();
                    for batch in log {
                        let base = i64::from_be_bytes(batch[..8].try_into().expect("8 bytes"));
                        let last_delta =
                            i32::from_be_bytes(batch[23..27].try_into().expect("4 bytes"));
                        if base + i64::from(last_delta) >= p.fetch_offset {
                            records.extend_from_slice(batch);
                        }
                    }
                    fetch_response::PartitionData::default()
                        .with_partition_index(p.partition)
                        .with_high_watermark(end)
                        .with_last_stable_offset(end)
                        .with_log_start_offset(0)
                        .with_records(Some(records.freeze()))
                })
                .collect();
            fetch_response::FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    FetchResponse::default().with_responses(topics)
}

/// The default handlers.
fn handle(seen: &Seen, state: &Arc<Mutex<State>>) -> ResponseKind {
    let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
    let s = &mut *guard;
    match &seen.body {
        RequestKind::ApiVersions(_) => {
            // Transactions version 2 (KIP-890) comes with Produce v12 and EndTxn v5; a version-1
            // cluster does not offer them.
            let v2 = s.transaction_version >= 2;
            let capped = |v: ApiVersion, max: i16| {
                if v2 {
                    v
                } else {
                    let top = v.max_version.min(max);
                    v.with_max_version(top)
                }
            };
            ResponseKind::ApiVersions(
                ApiVersionsResponse::default()
                    .with_api_keys(vec![
                        versions::<ApiVersionsRequest>(),
                        versions::<MetadataRequest>(),
                        capped(versions::<ProduceRequest>(), 11),
                        versions::<FetchRequest>(),
                        versions::<ListOffsetsRequest>(),
                        versions::<FindCoordinatorRequest>(),
                        versions::<InitProducerIdRequest>(),
                        versions::<AddPartitionsToTxnRequest>(),
                        versions::<AddOffsetsToTxnRequest>(),
                        versions::<TxnOffsetCommitRequest>(),
                        capped(versions::<EndTxnRequest>(), 4),
                        versions::<DescribeTransactionsRequest>(),
                        versions::<DescribeConfigsRequest>(),
                    ])
                    .with_finalized_features(vec![FinalizedFeatureKey::default()
                        .with_name(kstr("transaction.version"))
                        .with_min_version_level(s.transaction_version)
                        .with_max_version_level(s.transaction_version)]),
            )
        }
        RequestKind::Metadata(req) => {
            // Like the broker: the topics asked for (all when the list is null).
            let asked: Option<Vec<&str>> = req.topics.as_ref().map(|topics| {
                topics
                    .iter()
                    .filter_map(|t| t.name.as_ref().map(|n| n.0.as_str()))
                    .collect()
            });
            let brokers = s
                .nodes
                .iter()
                .map(|(id, addr)| {
                    let (host, port) = addr.rsplit_once(':').expect("host:port");
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(*id))
                        .with_host(kstr(host))
                        .with_port(port.parse().expect("port"))
                })
                .collect();
            let topics = s
                .topics
                .iter()
                .filter(|(name, _)| asked.as_ref().is_none_or(|a| a.contains(&name.as_str())))
                .map(|(name, parts)| {
                    MetadataResponseTopic::default()
                        .with_name(Some(TopicName(kstr(name))))
                        .with_partitions(
                            parts
                                .iter()
                                .enumerate()
                                .map(|(i, (leader, _))| {
                                    MetadataResponsePartition::default()
                                        .with_partition_index(i as i32)
                                        .with_leader_id(BrokerId(*leader))
                                        .with_replica_nodes(vec![BrokerId(*leader)])
                                        .with_isr_nodes(vec![BrokerId(*leader)])
                                })
                                .collect(),
                        )
                })
                .collect();
            ResponseKind::Metadata(
                MetadataResponse::default()
                    .with_brokers(brokers)
                    .with_topics(topics),
            )
        }
        RequestKind::FindCoordinator(req) => {
            let (coordinator, addr) = &s.nodes[0];
            let coordinator = BrokerId(*coordinator);
            let (host, port) = addr.rsplit_once(':').expect("host:port");
            let port: i32 = port.parse().expect("port");
            let keys: Vec<StrBytes> = if req.coordinator_keys.is_empty() {
                vec![req.key.clone()]
            } else {
                req.coordinator_keys.clone()
            };
            // v4+ (KIP-699) answers per key; older versions have one top-level coordinator.
            let response = if seen.version >= 4 {
                FindCoordinatorResponse::default().with_coordinators(
                    keys.into_iter()
                        .map(|key| {
                            Coordinator::default()
                                .with_key(key)
                                .with_node_id(coordinator)
                                .with_host(kstr(host))
                                .with_port(port)
                        })
                        .collect(),
                )
            } else {
                FindCoordinatorResponse::default()
                    .with_node_id(coordinator)
                    .with_host(kstr(host))
                    .with_port(port)
            };
            ResponseKind::FindCoordinator(response)
        }
        RequestKind::InitProducerId(req) => {
            let mut code = codes::NONE;
            let (producer_id, producer_epoch) = match &req.transactional_id {
                Some(id) => {
                    let next_id = s.next_producer_id;
                    let txn = s.txns.entry(id.to_string()).or_insert_with(|| Txn {
                        producer_id: next_id,
                        producer_epoch: -1,
                        state: "Empty".into(),
                        ..Txn::default()
                    });
                    if txn.producer_id == next_id {
                        s.next_producer_id += 1;
                    }
                    if req.producer_id.0 >= 0
                        && (req.producer_id.0 != txn.producer_id
                            || req.producer_epoch != txn.producer_epoch)
                    {
                        // KIP-360: a re-init with an id and epoch that are not the current ones.
                        code = codes::PRODUCER_FENCED;
                    } else {
                        txn.state = if txn.state == "Ongoing" {
                            "CompleteAbort".into()
                        } else {
                            "Empty".into()
                        };
                        txn.partitions.clear();
                        txn.producer_epoch += 1;
                    }
                    (txn.producer_id, txn.producer_epoch)
                }
                None => {
                    s.next_producer_id += 1;
                    (s.next_producer_id - 1, 0)
                }
            };
            ResponseKind::InitProducerId(
                InitProducerIdResponse::default()
                    .with_error_code(code)
                    .with_producer_id(ProducerId(producer_id))
                    .with_producer_epoch(producer_epoch),
            )
        }
        RequestKind::AddPartitionsToTxn(req) => {
            let txn = s.txns.get_mut(req.v3_and_below_transactional_id.0.as_str());
            let (code, txn) = match txn {
                Some(txn) if txn.producer_epoch == req.v3_and_below_producer_epoch => {
                    (codes::NONE, Some(txn))
                }
                Some(_) => (codes::PRODUCER_FENCED, None),
                None => (INVALID_PRODUCER_ID_MAPPING, None),
            };
            let mut results = Vec::new();
            let mut txn = txn;
            for t in &req.v3_and_below_topics {
                let mut partitions = Vec::new();
                for p in &t.partitions {
                    if let Some(txn) = txn.as_mut() {
                        let tp = (t.name.0.to_string(), *p);
                        if !txn.partitions.contains(&tp) {
                            txn.partitions.push(tp);
                        }
                        txn.state = "Ongoing".into();
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
                AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results),
            )
        }
        RequestKind::Produce(req) => {
            let mut responses = Vec::new();
            for topic in &req.topic_data {
                let mut partitions = Vec::new();
                for p in &topic.partition_data {
                    let records = p.records.clone().unwrap_or_default();
                    let tp = (topic.name.0.to_string(), p.index);
                    let mut code = codes::NONE;
                    if let Some(txn) = req
                        .transactional_id
                        .as_ref()
                        .and_then(|id| s.txns.get_mut(id.as_str()))
                    {
                        // The producer epoch at byte 51 of a v2 batch header.
                        let epoch = records
                            .get(51..53)
                            .map_or(-1, |b| i16::from_be_bytes([b[0], b[1]]));
                        code = if epoch != txn.producer_epoch {
                            codes::PRODUCER_FENCED
                        } else if s.transaction_version >= 2 && seen.version >= 12 {
                            // KIP-890: the partition leader adds the partition itself.
                            if !txn.partitions.contains(&tp) {
                                txn.partitions.push(tp.clone());
                            }
                            txn.state = "Ongoing".into();
                            codes::NONE
                        } else if txn.partitions.contains(&tp) {
                            codes::NONE
                        } else {
                            codes::INVALID_TXN_STATE
                        };
                    }
                    let mut base_offset = -1;
                    if code == codes::NONE {
                        match s
                            .topics
                            .get_mut(tp.0.as_str())
                            .and_then(|parts| parts.get_mut(p.index as usize))
                        {
                            Some((_, log)) => {
                                base_offset = log_end(log);
                                for batch in split_batches(records) {
                                    let mut batch = BytesMut::from(batch);
                                    let at = log_end(log);
                                    batch[..8].copy_from_slice(&at.to_be_bytes());
                                    log.push(batch.freeze());
                                }
                            }
                            None => code = codes::UNKNOWN_TOPIC_OR_PARTITION,
                        }
                    }
                    partitions.push(
                        PartitionProduceResponse::default()
                            .with_index(p.index)
                            .with_error_code(code)
                            .with_base_offset(base_offset),
                    );
                }
                responses.push(
                    TopicProduceResponse::default()
                        .with_name(topic.name.clone())
                        .with_partition_responses(partitions),
                );
            }
            ResponseKind::Produce(ProduceResponse::default().with_responses(responses))
        }
        RequestKind::EndTxn(req) => {
            // EndTxn v5 (KIP-890, transactions version 2) bumps the epoch and returns it.
            let bump = seen.version >= 5;
            let done = if req.committed {
                "CompleteCommit"
            } else {
                "CompleteAbort"
            };
            let mut markers = Vec::new();
            let mut response = EndTxnResponse::default();
            let code = match s.txns.get_mut(req.transactional_id.as_str()) {
                None => codes::INVALID_TXN_STATE,
                Some(txn) if txn.producer_id != req.producer_id.0 => INVALID_PRODUCER_ID_MAPPING,
                Some(txn) if txn.producer_epoch == req.producer_epoch && txn.state == "Ongoing" => {
                    txn.state = done.into();
                    txn.end_txns.push((req.producer_epoch, req.committed));
                    if bump {
                        txn.producer_epoch += 1;
                    }
                    // The markers carry the epoch EndTxn leaves (bumped under version 2).
                    for tp in std::mem::take(&mut txn.partitions) {
                        markers.push((tp, txn.producer_id, txn.producer_epoch));
                    }
                    response = response
                        .with_producer_id(ProducerId(txn.producer_id))
                        .with_producer_epoch(txn.producer_epoch);
                    codes::NONE
                }
                // A retry of the EndTxn that already completed (its answer was lost): like the
                // broker, answer success with the current epoch (under version 2 the retry
                // carries the epoch before the bump).
                Some(txn)
                    if txn.state == done
                        && req.producer_epoch == txn.producer_epoch - i16::from(bump) =>
                {
                    response = response
                        .with_producer_id(ProducerId(txn.producer_id))
                        .with_producer_epoch(txn.producer_epoch);
                    codes::NONE
                }
                Some(txn) if req.producer_epoch < txn.producer_epoch => codes::PRODUCER_FENCED,
                Some(_) => codes::INVALID_TXN_STATE,
            };
            for ((topic, partition), producer_id, producer_epoch) in markers {
                if let Some((_, log)) = s
                    .topics
                    .get_mut(&topic)
                    .and_then(|parts| parts.get_mut(partition as usize))
                {
                    let at = log_end(log);
                    log.push(marker(at, producer_id, producer_epoch, req.committed));
                }
            }
            if !bump {
                // The producer id and epoch fields exist from v5 (KIP-890) on.
                response = response
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1);
            }
            ResponseKind::EndTxn(response.with_error_code(code))
        }
        RequestKind::Fetch(req) => ResponseKind::Fetch(fetch(s, req)),
        RequestKind::DescribeTransactions(req) => ResponseKind::DescribeTransactions(
            DescribeTransactionsResponse::default().with_transaction_states(
                req.transactional_ids
                    .iter()
                    .map(|id| match s.txns.get(id.0.as_str()) {
                        Some(txn) => DescribedTxn::default()
                            .with_transactional_id(id.clone())
                            .with_transaction_state(kstr(&txn.state))
                            .with_producer_id(ProducerId(txn.producer_id))
                            .with_producer_epoch(txn.producer_epoch)
                            .with_topics(
                                txn.partitions
                                    .iter()
                                    .map(|(t, p)| {
                                        TopicData::default()
                                            .with_topic(TopicName(kstr(t)))
                                            .with_partitions(vec![*p])
                                    })
                                    .collect(),
                            ),
                        None => DescribedTxn::default()
                            .with_transactional_id(id.clone())
                            .with_error_code(105), // TRANSACTIONAL_ID_NOT_FOUND
                    })
                    .collect(),
            ),
        ),
        RequestKind::DescribeConfigs(req) => ResponseKind::DescribeConfigs(
            DescribeConfigsResponse::default().with_results(
                req.resources
                    .iter()
                    .map(|r| {
                        describe_configs_response::DescribeConfigsResult::default()
                            .with_resource_type(r.resource_type)
                            .with_resource_name(r.resource_name.clone())
                    })
                    .collect(),
            ),
        ),
        other => panic!("fake cluster: no default handler for {other:?}; install a hook"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Client, ClientConfig};

    #[tokio::test]
    async fn serves_metadata_and_journals_requests() {
        let cluster = FakeCluster::start(2).await;
        cluster.add_topic("t", &[1, 2]);
        let client = Client::connect(ClientConfig::new(&cluster.addr(1)))
            .await
            .expect("connect");
        assert_eq!(client.leader("t", 1).await.unwrap(), 2);
        let metadata = cluster.requests_of(ApiKey::Metadata);
        assert!(!metadata.is_empty());
        assert!(metadata.iter().all(|r| r.node == 1));
    }

    #[tokio::test]
    async fn a_hook_answers_once_then_the_default_handler_does() {
        let cluster = FakeCluster::start(1).await;
        cluster.add_topic("t", &[1]);
        // The first Metadata request after connecting says the partition has no leader.
        let client = Client::connect(ClientConfig::new(&cluster.addr(1)))
            .await
            .expect("connect");
        cluster.control(ApiKey::Metadata, false, |_, _| {
            Some(Action::Respond(ResponseKind::Metadata(
                MetadataResponse::default().with_topics(vec![MetadataResponseTopic::default()
                    .with_name(Some(TopicName(kstr("t"))))
                    .with_partitions(vec![MetadataResponsePartition::default()
                        .with_partition_index(0)
                        .with_leader_id(BrokerId(-1))])]),
            )))
        });
        client.refresh_metadata(&["t".to_owned()]).await.unwrap();
        assert_eq!(client.cached_leader("t", 0), None);
        // `leader` retries with a refresh, which the default handler answers.
        assert_eq!(client.leader("t", 0).await.unwrap(), 1);
    }

    use crate::client::producer::ProducerRecord;
    use crate::client::transaction::{TransactionConfig, TransactionalProducer};
    use crate::connection::ConnectionConfig;

    const CONCURRENT_TRANSACTIONS: i16 = 51;

    async fn txn_producer(cluster: &FakeCluster, id: &str) -> TransactionalProducer {
        txn_producer_with_deadline(cluster, id, 10_000).await
    }

    async fn txn_producer_with_deadline(
        cluster: &FakeCluster,
        id: &str,
        coordinator_deadline_ms: u64,
    ) -> TransactionalProducer {
        let mut config = ClientConfig::new(&cluster.addr(1));
        config.connection = ConnectionConfig {
            request_timeout_ms: 300,
            ..ConnectionConfig::default()
        };
        let client = Client::connect(config).await.expect("connect");
        let mut txn = TransactionConfig::new(id);
        txn.coordinator_deadline_ms = coordinator_deadline_ms;
        TransactionalProducer::init(client, txn)
            .await
            .expect("init")
    }

    fn end_txns(cluster: &FakeCluster) -> Vec<bool> {
        cluster
            .requests_of(ApiKey::EndTxn)
            .into_iter()
            .map(|r| match r.body {
                RequestKind::EndTxn(req) => req.committed,
                _ => unreachable!(),
            })
            .collect()
    }

    async fn one_transaction(producer: &TransactionalProducer) {
        producer.begin().await.expect("begin");
        producer
            .send(ProducerRecord::new("t", "v"))
            .await
            .expect("send")
            .await
            .expect("delivered");
        producer.commit().await.expect("commit");
    }

    #[tokio::test]
    async fn end_txn_concurrent_transactions_is_retried() {
        let cluster = FakeCluster::start(1).await;
        cluster.add_topic("t", &[1]);
        let producer = txn_producer(&cluster, "retry-end").await;
        cluster.control(ApiKey::EndTxn, false, |_, _| {
            Some(Action::Respond(ResponseKind::EndTxn(
                EndTxnResponse::default().with_error_code(CONCURRENT_TRANSACTIONS),
            )))
        });
        one_transaction(&producer).await;
        assert_eq!(end_txns(&cluster), vec![true, true]);
        assert_eq!(
            cluster.with_state(|s| s.txns["retry-end"].state.clone()),
            "CompleteCommit"
        );
    }

    #[tokio::test]
    async fn a_lost_end_txn_answer_is_never_followed_by_an_abort() {
        let cluster = FakeCluster::start(1).await;
        cluster.add_topic("t", &[1]);
        let producer = txn_producer(&cluster, "lost-end").await;
        // The coordinator applies the commit but the answer never arrives (the request times
        // out); the producer must find out that it committed, never abort.
        cluster.control(ApiKey::EndTxn, false, |_, _| Some(Action::DropResponse));
        one_transaction(&producer).await;
        assert!(
            end_txns(&cluster).iter().all(|&commit| commit),
            "an abort was sent"
        );
        assert_eq!(
            cluster.with_state(|s| s.txns["lost-end"].state.clone()),
            "CompleteCommit"
        );
    }
}
