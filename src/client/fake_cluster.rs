//! A scripted fake Kafka cluster on loopback, for client tests of paths a single real broker
//! cannot show on demand (a leader that never answers, a partition led elsewhere).
//!
//! Modelled on franz-go's `pkg/kfake`: each broker answers by API key with a default handler
//! (ApiVersions, Metadata, Produce), and a test can take over one API key with
//! [`FakeCluster::control`] — answer differently, or not at all. A broker can also be made
//! [`silent`](FakeCluster::silence): it accepts connections and never answers anything, like a
//! leader that hangs. The real broker stays the judge of the common paths.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, MetadataResponse, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One decoded request as a handler sees it.
pub(crate) struct FakeRequest {
    /// The broker that received it.
    pub(crate) node_id: i32,
    /// The API key.
    pub(crate) api_key: i16,
    /// The request version.
    pub(crate) version: i16,
    /// The request body (after the header).
    pub(crate) body: Bytes,
}

impl FakeRequest {
    /// Decodes the body as `M`.
    pub(crate) fn decode<M: Decodable>(&self) -> M {
        M::decode(&mut self.body.clone(), self.version).expect("decode request")
    }
}

/// What a handler answers.
pub(crate) enum FakeReply {
    /// This encoded response body.
    Body(BytesMut),
    /// Nothing (the request hangs until the client gives up).
    #[allow(dead_code)] // for tests of lost answers (e.g. a lost EndTxn response)
    Silent,
    /// Fall through to the default handler.
    Default,
}

impl FakeReply {
    /// Encodes `body` at the request's version.
    pub(crate) fn of<M: Encodable>(request: &FakeRequest, body: &M) -> Self {
        let mut buf = BytesMut::new();
        body.encode(&mut buf, request.version)
            .expect("encode response");
        Self::Body(buf)
    }
}

type Handler = Arc<dyn Fn(&FakeRequest) -> FakeReply + Send + Sync>;

#[derive(Default)]
struct ClusterState {
    brokers: Vec<(i32, String)>,
    /// Topic name → leader of each partition.
    topics: Vec<(String, Vec<i32>)>,
    controls: HashMap<i16, Handler>,
    silent: Vec<i32>,
    /// Next offset of each (topic, partition), for Produce answers.
    offsets: HashMap<(String, i32), i64>,
    /// Connections accepted, by node id.
    accepted: HashMap<i32, usize>,
    /// Every Produce partition received: (node, topic, partition, base sequence, record count).
    produced: Vec<(i32, String, i32, i32, i32)>,
}

/// A cluster of fake brokers on 127.0.0.1. Dropping it stops them.
pub(crate) struct FakeCluster {
    state: Arc<Mutex<ClusterState>>,
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
    /// Starts `brokers` brokers with node ids 1, 2, ...
    pub(crate) async fn start(brokers: i32) -> Self {
        let state = Arc::new(Mutex::new(ClusterState::default()));
        let mut tasks = Vec::new();
        for node_id in 1..=brokers {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            state.lock().unwrap().brokers.push((node_id, addr));
            tasks.push(tokio::spawn(accept_loop(
                listener,
                node_id,
                Arc::clone(&state),
            )));
        }
        Self { state, tasks }
    }

    /// The address of broker `node_id`.
    pub(crate) fn addr(&self, node_id: i32) -> String {
        let state = self.state.lock().unwrap();
        let (_, addr) = state.brokers.iter().find(|(id, _)| *id == node_id).unwrap();
        addr.clone()
    }

    /// Adds a topic whose partition `i` is led by `leaders[i]`.
    pub(crate) fn add_topic(&self, name: &str, leaders: &[i32]) {
        self.state
            .lock()
            .unwrap()
            .topics
            .push((name.to_owned(), leaders.to_vec()));
    }

    /// Makes broker `node_id` accept connections and never answer anything.
    pub(crate) fn silence(&self, node_id: i32) {
        self.state.lock().unwrap().silent.push(node_id);
    }

    /// Takes over `api_key` on every broker (`FakeReply::Default` falls through).
    pub(crate) fn control(
        &self,
        api_key: ApiKey,
        handler: impl Fn(&FakeRequest) -> FakeReply + Send + Sync + 'static,
    ) {
        self.state
            .lock()
            .unwrap()
            .controls
            .insert(api_key as i16, Arc::new(handler));
    }

    /// How many connections broker `node_id` has accepted.
    pub(crate) fn accepted(&self, node_id: i32) -> usize {
        self.state
            .lock()
            .unwrap()
            .accepted
            .get(&node_id)
            .copied()
            .unwrap_or(0)
    }

    /// Every Produce partition received so far: (node, topic, partition, base sequence, records).
    pub(crate) fn produced(&self) -> Vec<(i32, String, i32, i32, i32)> {
        self.state.lock().unwrap().produced.clone()
    }
}

/// Aborts a task when dropped, so connection tasks end with their accept loop.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn accept_loop(listener: TcpListener, node_id: i32, state: Arc<Mutex<ClusterState>>) {
    let mut connections = Vec::new();
    while let Ok((socket, _)) = listener.accept().await {
        connections.retain(|c: &AbortOnDrop| !c.0.is_finished());
        *state.lock().unwrap().accepted.entry(node_id).or_default() += 1;
        let task = tokio::spawn(serve(socket, node_id, Arc::clone(&state)));
        connections.push(AbortOnDrop(task));
    }
}

async fn serve(mut socket: TcpStream, node_id: i32, state: Arc<Mutex<ClusterState>>) {
    loop {
        let Ok(size) = socket.read_i32().await else {
            return;
        };
        let mut frame = vec![0; size.max(0) as usize];
        if socket.read_exact(&mut frame).await.is_err() {
            return;
        }
        if state.lock().unwrap().silent.contains(&node_id) {
            continue;
        }
        let mut buf = Bytes::from(frame);
        let api_key = i16::from_be_bytes([buf[0], buf[1]]);
        let version = i16::from_be_bytes([buf[2], buf[3]]);
        let key = ApiKey::try_from(api_key).expect("known api key");
        let header =
            RequestHeader::decode(&mut buf, key.request_header_version(version)).expect("header");
        let request = FakeRequest {
            node_id,
            api_key,
            version,
            body: buf.copy_to_bytes(buf.remaining()),
        };
        let control = state.lock().unwrap().controls.get(&api_key).cloned();
        let reply = match control.map(|c| c(&request)) {
            Some(FakeReply::Default) | None => default_reply(&request, &state),
            Some(reply) => reply,
        };
        let FakeReply::Body(body) = reply else {
            continue;
        };
        let mut out = BytesMut::new();
        out.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(header.correlation_id)
            .encode(&mut out, key.response_header_version(version))
            .expect("encode header");
        out.extend_from_slice(&body);
        let size = (out.len() - 4) as i32;
        out[..4].copy_from_slice(&size.to_be_bytes());
        if socket.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn default_reply(request: &FakeRequest, state: &Mutex<ClusterState>) -> FakeReply {
    let mut state = state.lock().unwrap();
    match ApiKey::try_from(request.api_key).expect("known api key") {
        ApiKey::ApiVersions => {
            let range = |key: ApiKey, min, max| {
                ApiVersion::default()
                    .with_api_key(key as i16)
                    .with_min_version(min)
                    .with_max_version(max)
            };
            FakeReply::of(
                request,
                &ApiVersionsResponse::default().with_api_keys(vec![
                    range(ApiKey::ApiVersions, 0, 3),
                    range(ApiKey::Metadata, 12, 12),
                    range(ApiKey::Produce, 9, 9),
                    range(ApiKey::InitProducerId, 4, 4),
                ]),
            )
        }
        ApiKey::Metadata => {
            let brokers = state
                .brokers
                .iter()
                .map(|(id, addr)| {
                    let (host, port) = addr.rsplit_once(':').unwrap();
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(*id))
                        .with_host(StrBytes::from_string(host.to_owned()))
                        .with_port(port.parse().unwrap())
                })
                .collect();
            let topics = state
                .topics
                .iter()
                .map(|(name, leaders)| {
                    MetadataResponseTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(name.clone()))))
                        .with_partitions(
                            leaders
                                .iter()
                                .enumerate()
                                .map(|(i, leader)| {
                                    MetadataResponsePartition::default()
                                        .with_partition_index(i as i32)
                                        .with_leader_id(BrokerId(*leader))
                                })
                                .collect(),
                        )
                })
                .collect();
            FakeReply::of(
                request,
                &MetadataResponse::default()
                    .with_brokers(brokers)
                    .with_topics(topics),
            )
        }
        ApiKey::Produce => {
            let produce: ProduceRequest = request.decode();
            let mut responses = Vec::new();
            for topic in &produce.topic_data {
                let name = topic.name.0.to_string();
                let mut partitions = Vec::new();
                for p in &topic.partition_data {
                    let records = p.records.as_ref().expect("records");
                    // Base sequence at byte 53, record count at 57 of a v2 batch header.
                    let sequence = i32::from_be_bytes(records[53..57].try_into().unwrap());
                    let count = i32::from_be_bytes(records[57..61].try_into().unwrap());
                    state
                        .produced
                        .push((request.node_id, name.clone(), p.index, sequence, count));
                    let next = state.offsets.entry((name.clone(), p.index)).or_default();
                    let base_offset = *next;
                    *next += i64::from(count);
                    partitions.push(
                        PartitionProduceResponse::default()
                            .with_index(p.index)
                            .with_base_offset(base_offset),
                    );
                }
                responses.push(
                    TopicProduceResponse::default()
                        .with_name(topic.name.clone())
                        .with_partition_responses(partitions),
                );
            }
            FakeReply::of(
                request,
                &ProduceResponse::default().with_responses(responses),
            )
        }
        other => panic!("fake cluster: no default handler for {other:?}"),
    }
}
