//! A fault-injecting TCP proxy for tests: it sits between the client and the real broker on
//! loopback, reads Kafka frames in both directions, and on a chosen request delays it, drops the
//! broker's answer, or cuts the connection — the network failures a client must survive without
//! duplicating or losing data (the unknown commit outcome, a lost Produce acknowledgement).
//!
//! Kafka frames are a 4-byte size then the header (<https://kafka.apache.org/protocol.html#protocol_messages>):
//! requests start with api key, api version, correlation id; responses with the correlation id.
//! A broker answers the requests of one connection in order, so the proxy pairs each response
//! with the oldest unanswered request of that connection (and checks the correlation id).
//!
//! Brokers advertise their own address in Metadata and FindCoordinator responses; a client
//! would follow it and bypass the proxy. The proxy decodes those responses (kafka-protocol
//! crate) and rewrites every advertised `host:port` to a proxy listener of its own (one per
//! broker address, opened on first sight), so every connection of the client goes through it.
//!
//! # API
//! ```ignore
//! let proxy = FaultProxy::start(common::brokers()).await;      // listens on 127.0.0.1:<random>
//! let client = Client::connect(ClientConfig::new(&proxy.bootstrap())).await?;
//! // Cut the connection after the broker answered the 1st EndTxn(commit): it applied it, the
//! // client never hears so.
//! let rule = proxy.add_rule(
//!     Rule::new(ApiKey::EndTxn, Fault::CutAfterResponse)
//!         .when(|r| r.decode::<EndTxnRequest>().is_some_and(|r| r.committed))
//!         .nth(1),
//! );
//! ...
//! assert_eq!(proxy.fired(rule), 1);                              // the fault really happened
//! let sent: Vec<EndTxnRequest> = proxy.decoded();                // what went through, in order
//! ```
//! - Faults: [`Fault::Delay`] holds the request (and everything after it on that connection)
//!   before forwarding it. [`Fault::DropResponse`] forwards it and swallows its answer, leaving
//!   the connection open (the client times out; later answers still flow, which a real broker
//!   never does, so use it for a request alone in flight). [`Fault::Stall`] swallows that answer
//!   and every later one on the connection (a stalled connection). [`Fault::CutAfterResponse`]
//!   forwards it, waits for the answer and closes both sides instead of delivering it (the
//!   broker applied the request, the client sees a disconnect). [`Fault::edit_response`]
//!   delivers an edited answer (another error code, say) after the broker applied the request.
//!   [`Fault::CutBeforeForward`] closes both sides without forwarding (the broker never sees
//!   it). [`Fault::Nothing`] only counts.
//! - A [`Rule`] matches an API key, optionally a predicate on the request ([`Rule::when`]), fires
//!   on every match or only the n-th ([`Rule::nth`], 1-based, counted per rule) and at most
//!   [`Rule::times`] times; a fault on the answer can be made to depend on the answer
//!   ([`Rule::when_answer`], e.g. only once the broker applied the request). The first rule
//!   that fires decides; [`FaultProxy::fired`] counts the
//!   faults that took effect (a response fault counts only once the broker's answer arrived).
//! - [`FaultProxy::requests`] is the log of every request seen (with the broker's answer when it
//!   came, dropped or not), for assertions such as "no EndTxn(abort) was ever sent".
//!
//! Bounded: connecting upstream has a timeout, frames are size-checked before allocating, and
//! dropping the proxy stops every listener and connection task (closing their sockets).
//! Not supported: Produce with `acks=0` (no answer to pair), TLS/SASL.

#![allow(dead_code)] // a toolbox: not every test uses every part

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorResponse, MetadataResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Largest frame the proxy accepts in either direction; checked before allocating.
const FRAME_BYTES_MAX: usize = 128 * 1024 * 1024;
/// How long connecting to the broker may take.
const UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// What to do to a matched request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward it after this long (later requests of the connection wait behind it).
    Delay(Duration),
    /// Forward it; swallow the broker's answer; keep the connection open. Later answers on the
    /// connection still flow (a real broker never skips one: this is for the last request in
    /// flight, e.g. EndTxn, whose caller must time out).
    DropResponse,
    /// Forward it; swallow its answer and every later answer on the connection, keep forwarding
    /// requests and keep the connection open: a connection that stalled after the broker
    /// applied the request. The client must time out and give the connection up.
    Stall,
    /// Close the connection without forwarding it.
    CutBeforeForward,
    /// Forward it, wait for the broker's answer, then close the connection instead of
    /// delivering the answer.
    CutAfterResponse,
    /// Forward it and deliver an edited answer instead of the broker's (e.g. a different error
    /// code after the broker applied the request). Build it with [`Fault::edit_response`].
    EditResponse(ResponseEdit),
    /// Forward as usual; only count the match.
    Nothing,
}

impl Fault {
    /// An [`Fault::EditResponse`] that decodes the broker's answer as `R::Response`, lets `edit`
    /// change it, and encodes it again (an answer that does not decode is delivered unchanged).
    pub fn edit_response<R: Request>(
        edit: impl Fn(&mut R::Response) + Send + Sync + 'static,
    ) -> Self {
        Self::EditResponse(ResponseEdit(Arc::new(move |version, frame| {
            rewrite::<R::Response>(frame, version, &edit)
        })))
    }
}

/// A function from (API version, answer frame) to the frame to deliver.
#[derive(Clone)]
pub struct ResponseEdit(Arc<dyn Fn(i16, Bytes) -> Bytes + Send + Sync>);

impl std::fmt::Debug for ResponseEdit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseEdit(..)")
    }
}

impl PartialEq for ResponseEdit {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ResponseEdit {}

type Predicate = Arc<dyn Fn(&SeenRequest) -> bool + Send + Sync>;

/// When a fault fires. See the module docs.
#[derive(Clone)]
pub struct Rule {
    api_key: ApiKey,
    fault: Fault,
    when: Option<Predicate>,
    when_answer: Option<Predicate>,
    nth: Option<u32>,
    times: Option<u32>,
}

impl Rule {
    /// Fires `fault` on every request with `api_key`.
    pub fn new(api_key: ApiKey, fault: Fault) -> Self {
        Self {
            api_key,
            fault,
            when: None,
            when_answer: None,
            nth: None,
            times: None,
        }
    }

    /// Only requests for which `predicate` holds match (e.g. decode the body and look at it).
    /// It runs under the proxy's lock: it must not call the proxy.
    pub fn when(
        mut self,
        predicate: impl Fn(&SeenRequest) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.when = Some(Arc::new(predicate));
        self
    }

    /// For faults on the answer (drop, stall, cut after, edit): apply only if the broker's answer
    /// satisfies `predicate` (it sees the request with [`SeenRequest::response`] set), e.g. only
    /// once the broker really applied the request (error code 0); other answers are delivered
    /// and do not count as fired. Runs under the proxy's lock: it must not call the proxy.
    pub fn when_answer(
        mut self,
        predicate: impl Fn(&SeenRequest) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.when_answer = Some(Arc::new(predicate));
        self
    }

    /// Fires only on the `n`-th matching request (1-based), counted from when the rule was added.
    pub fn nth(mut self, n: u32) -> Self {
        self.nth = Some(n);
        self
    }

    /// Fires at most `n` times.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }
}

/// Identifies a rule added with [`FaultProxy::add_rule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(usize);

/// One request that went through the proxy.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// Which client connection (numbered from 0 in accept order).
    pub connection: u64,
    /// Raw API key.
    pub api_key: i16,
    /// API version.
    pub api_version: i16,
    /// Correlation id.
    pub correlation_id: i32,
    /// The whole request frame (header and body, without the size prefix).
    pub frame: Bytes,
    /// The fault applied to it, if any.
    pub fault: Option<Fault>,
    /// The broker's answer (whole frame without the size prefix), once it came — also when the
    /// proxy dropped it.
    pub response: Option<Bytes>,
}

impl SeenRequest {
    /// The request body decoded as `R`, if this is an `R` and it decodes.
    pub fn decode<R: Request>(&self) -> Option<R> {
        if self.api_key != R::KEY {
            return None;
        }
        let mut buf = self.frame.clone();
        RequestHeader::decode(&mut buf, R::header_version(self.api_version)).ok()?;
        R::decode(&mut buf, self.api_version).ok()
    }

    /// The broker's answer decoded as `R::Response`, if it came and decodes.
    pub fn decode_response<R: Request>(&self) -> Option<R::Response> {
        if self.api_key != R::KEY {
            return None;
        }
        let mut buf = self.response.clone()?;
        ResponseHeader::decode(
            &mut buf,
            <R::Response as HeaderVersion>::header_version(self.api_version),
        )
        .ok()?;
        R::Response::decode(&mut buf, self.api_version).ok()
    }
}

struct RuleState {
    rule: Rule,
    matched: u32,
    fired: u32,
    active: bool,
}

#[derive(Default)]
struct State {
    rules: Vec<RuleState>,
    seen: Vec<SeenRequest>,
    next_connection: u64,
    /// Upstream broker address → the proxy listener standing in for it.
    listeners: HashMap<String, (String, u16)>,
    tasks: Vec<AbortHandle>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, task: AbortHandle) {
        let mut state = self.lock();
        if state.closed {
            task.abort();
        } else {
            state.tasks.retain(|t| !t.is_finished());
            state.tasks.push(task);
        }
    }

    /// Records a request and decides its fault: the first active rule that fires wins.
    fn on_request(&self, mut seen: SeenRequest) -> (usize, Option<(usize, Fault)>) {
        let mut state = self.lock();
        let mut decision = None;
        for (i, rs) in state.rules.iter_mut().enumerate() {
            if !rs.active || rs.rule.api_key as i16 != seen.api_key {
                continue;
            }
            if let Some(pred) = &rs.rule.when {
                if !pred(&seen) {
                    continue;
                }
            }
            rs.matched += 1;
            if rs.rule.nth.is_some_and(|n| n != rs.matched) {
                continue;
            }
            if rs.rule.times.is_some_and(|t| rs.fired >= t) {
                continue;
            }
            // Request-side faults count now; response-side ones once the answer arrived.
            if matches!(
                rs.rule.fault,
                Fault::Delay(_) | Fault::CutBeforeForward | Fault::Nothing
            ) {
                rs.fired += 1;
            }
            decision = Some((i, rs.rule.fault.clone()));
            break;
        }
        seen.fault = decision.as_ref().map(|(_, f)| f.clone());
        state.seen.push(seen);
        (state.seen.len() - 1, decision)
    }

    /// Records the broker's answer; returns whether the request's answer fault applies.
    fn on_response(&self, seen_index: usize, rule: Option<usize>, frame: &Bytes) -> bool {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(seen) = state.seen.get_mut(seen_index) else {
            return false;
        };
        seen.response = Some(frame.clone());
        let Some(rs) = rule.and_then(|i| state.rules.get_mut(i)) else {
            return false;
        };
        if !matches!(
            rs.rule.fault,
            Fault::DropResponse | Fault::Stall | Fault::CutAfterResponse | Fault::EditResponse(_)
        ) {
            return true;
        }
        if rs.rule.when_answer.as_ref().is_some_and(|p| !p(seen)) {
            seen.fault = None;
            return false;
        }
        rs.fired += 1;
        true
    }
}

/// The proxy. Dropping it stops it. See the module docs.
pub struct FaultProxy {
    shared: Arc<Shared>,
    bootstrap: String,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let tasks = {
            let mut state = self.shared.lock();
            state.closed = true;
            std::mem::take(&mut state.tasks)
        };
        for task in tasks {
            task.abort();
        }
    }
}

impl FaultProxy {
    /// Starts a proxy for the broker at `upstream` (`host:port`; the first of a comma-separated
    /// list). Must be called inside a tokio runtime.
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream
            .split(',')
            .map(str::trim)
            .find(|s| !s.is_empty())
            .expect("an upstream broker address")
            .to_owned();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
        });
        let (host, port) = listener_for(&shared, &upstream);
        Self {
            shared,
            bootstrap: format!("{host}:{port}"),
        }
    }

    /// The address to give the client as its bootstrap broker.
    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    /// Adds a rule; rules added earlier take precedence.
    pub fn add_rule(&self, rule: Rule) -> RuleId {
        let mut state = self.shared.lock();
        state.rules.push(RuleState {
            rule,
            matched: 0,
            fired: 0,
            active: true,
        });
        RuleId(state.rules.len() - 1)
    }

    /// Stops a rule from firing (its counts stay readable).
    pub fn disable(&self, id: RuleId) {
        if let Some(rs) = self.shared.lock().rules.get_mut(id.0) {
            rs.active = false;
        }
    }

    /// How many times the rule's fault took effect.
    pub fn fired(&self, id: RuleId) -> u32 {
        self.shared.lock().rules.get(id.0).map_or(0, |rs| rs.fired)
    }

    /// Every request seen so far, in arrival order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.lock().seen.clone()
    }

    /// The requests seen with `api_key`, in arrival order.
    pub fn requests_of(&self, api_key: ApiKey) -> Vec<SeenRequest> {
        self.shared
            .lock()
            .seen
            .iter()
            .filter(|s| s.api_key == api_key as i16)
            .cloned()
            .collect()
    }

    /// The requests seen with `R`'s API key, decoded, in arrival order.
    pub fn decoded<R: Request>(&self) -> Vec<R> {
        self.shared
            .lock()
            .seen
            .iter()
            .filter_map(SeenRequest::decode::<R>)
            .collect()
    }

    /// Client connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.lock().next_connection
    }
}

/// The proxy listener standing in for `upstream`, opened (and its accept loop started) on first
/// use.
fn listener_for(shared: &Arc<Shared>, upstream: &str) -> (String, u16) {
    if let Some(addr) = shared.lock().listeners.get(upstream) {
        return addr.clone();
    }
    let std_listener =
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port for the proxy");
    std_listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let port = std_listener.local_addr().expect("listener address").port();
    let listener = TcpListener::from_std(std_listener).expect("tokio listener");
    let addr = ("127.0.0.1".to_owned(), port);
    shared
        .lock()
        .listeners
        .insert(upstream.to_owned(), addr.clone());
    let task = tokio::spawn(accept_loop(
        Arc::downgrade(shared),
        listener,
        upstream.to_owned(),
    ));
    shared.register(task.abort_handle());
    addr
}

async fn accept_loop(shared: std::sync::Weak<Shared>, listener: TcpListener, upstream: String) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let connection = {
            let mut state = shared.lock();
            state.next_connection += 1;
            state.next_connection - 1
        };
        let task = tokio::spawn(serve(
            Arc::clone(&shared),
            client,
            upstream.clone(),
            connection,
        ));
        shared.register(task.abort_handle());
    }
}

/// What to do with the broker's answer to a forwarded request.
struct Pending {
    correlation_id: i32,
    api_key: i16,
    api_version: i16,
    seen_index: usize,
    rule: Option<usize>,
    fault: Option<Fault>,
}

/// One client connection: both directions run in this task, so ending either (a cut, EOF, an
/// error) drops — closes — both sockets.
async fn serve(shared: Arc<Shared>, client: TcpStream, upstream: String, connection: u64) {
    let broker = match tokio::time::timeout(
        Duration::from_millis(UPSTREAM_CONNECT_TIMEOUT_MS),
        TcpStream::connect(&upstream),
    )
    .await
    {
        Ok(Ok(s)) => s,
        _ => return, // the client sees the connection close
    };
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    let (client_rx, client_tx) = client.into_split();
    let (broker_rx, broker_tx) = broker.into_split();
    let pending = Arc::new(Mutex::new(VecDeque::<Pending>::new()));
    tokio::select! {
        _ = requests(&shared, client_rx, broker_tx, &pending, connection) => {}
        _ = responses(&shared, broker_rx, client_tx, &pending) => {}
    }
}

/// Client → broker. Returns when the connection is to end.
async fn requests(
    shared: &Arc<Shared>,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    pending: &Mutex<VecDeque<Pending>>,
    connection: u64,
) {
    loop {
        let Some(frame) = read_frame(&mut from).await else {
            return;
        };
        if frame.len() < 8 {
            return; // not a Kafka request
        }
        let mut header = frame.clone();
        let api_key = header.get_i16();
        let api_version = header.get_i16();
        let correlation_id = header.get_i32();
        let (seen_index, decision) = shared.on_request(SeenRequest {
            connection,
            api_key,
            api_version,
            correlation_id,
            frame: frame.clone(),
            fault: None,
            response: None,
        });
        let (rule, fault) = match decision {
            Some((rule, fault)) => (Some(rule), Some(fault)),
            None => (None, None),
        };
        match &fault {
            Some(Fault::CutBeforeForward) => return,
            Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
            _ => {}
        }
        pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(Pending {
                correlation_id,
                api_key,
                api_version,
                seen_index,
                rule,
                fault,
            });
        if write_frame(&mut to, &frame).await.is_err() {
            return;
        }
    }
}

/// Broker → client. Returns when the connection is to end.
async fn responses(
    shared: &Arc<Shared>,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    pending: &Mutex<VecDeque<Pending>>,
) {
    let mut stalled = false;
    loop {
        let Some(frame) = read_frame(&mut from).await else {
            return;
        };
        if frame.len() < 4 {
            return;
        }
        let correlation_id = (&frame[..4]).get_i32();
        let Some(request) = pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
        else {
            return; // an answer to nothing: framing is lost
        };
        if request.correlation_id != correlation_id {
            return; // the broker answers in order; anything else means lost framing
        }
        let fault = if shared.on_response(request.seen_index, request.rule, &frame) {
            request.fault
        } else {
            None
        };
        if fault == Some(Fault::Stall) {
            stalled = true;
        }
        if stalled {
            continue;
        }
        let frame = match fault {
            Some(Fault::DropResponse) => continue,
            Some(Fault::CutAfterResponse) => return,
            Some(Fault::EditResponse(edit)) => (edit.0)(request.api_version, frame),
            _ => rewrite_addresses(shared, request.api_key, request.api_version, frame),
        };
        if write_frame(&mut to, &frame).await.is_err() {
            return;
        }
    }
}

/// Points advertised broker addresses (Metadata, FindCoordinator) at proxy listeners.
fn rewrite_addresses(shared: &Arc<Shared>, api_key: i16, version: i16, frame: Bytes) -> Bytes {
    match ApiKey::try_from(api_key) {
        Ok(ApiKey::Metadata) => rewrite::<MetadataResponse>(frame, version, |r| {
            for b in &mut r.brokers {
                (b.host, b.port) = proxied(shared, &b.host, b.port);
            }
        }),
        Ok(ApiKey::FindCoordinator) => rewrite::<FindCoordinatorResponse>(frame, version, |r| {
            if version < 4 {
                if r.error_code == 0 {
                    (r.host, r.port) = proxied(shared, &r.host, r.port);
                }
            } else {
                for c in &mut r.coordinators {
                    if c.error_code == 0 {
                        (c.host, c.port) = proxied(shared, &c.host, c.port);
                    }
                }
            }
        }),
        _ => frame,
    }
}

fn proxied(shared: &Arc<Shared>, host: &StrBytes, port: i32) -> (StrBytes, i32) {
    let (host, port) = listener_for(shared, &format!("{}:{port}", host.as_str()));
    (StrBytes::from_string(host), i32::from(port))
}

/// Decodes a response, edits it, encodes it again (header included). A response that does not
/// decode is passed through unchanged: the client's own decoder is what is under test.
fn rewrite<R: Decodable + Encodable + HeaderVersion>(
    frame: Bytes,
    version: i16,
    edit: impl FnOnce(&mut R),
) -> Bytes {
    let header_version = R::header_version(version);
    let mut buf = frame.clone();
    let Ok(header) = ResponseHeader::decode(&mut buf, header_version) else {
        return frame;
    };
    let Ok(mut body) = R::decode(&mut buf, version) else {
        return frame;
    };
    edit(&mut body);
    let mut out = BytesMut::new();
    if header.encode(&mut out, header_version).is_err() || body.encode(&mut out, version).is_err() {
        return frame;
    }
    out.freeze()
}

async fn read_frame(from: &mut OwnedReadHalf) -> Option<Bytes> {
    let size = from.read_i32().await.ok()?;
    let size = usize::try_from(size)
        .ok()
        .filter(|s| *s <= FRAME_BYTES_MAX)?;
    let mut buf = vec![0; size];
    from.read_exact(&mut buf).await.ok()?;
    Some(Bytes::from(buf))
}

async fn write_frame(to: &mut OwnedWriteHalf, frame: &[u8]) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(4 + frame.len());
    out.put_i32(i32::try_from(frame.len()).unwrap_or(i32::MAX));
    out.put_slice(frame);
    to.write_all(&out).await
}
