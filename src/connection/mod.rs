//! One TCP connection to one broker: framing, correlation ids, pipelining, version negotiation.
//!
//! Kafka answers requests on a connection in the order it received them, each response carrying
//! the request's correlation id (<https://kafka.apache.org/protocol.html#protocol_network>). We
//! keep several requests in flight (bounded by `in_flight_max`) and match responses by id, the
//! way rskafka's messenger does.
//!
//! Two tasks own the socket halves:
//! - the **writer** takes whole, already-encoded frames from a bounded channel and writes them.
//!   A caller's future only ever hands a complete frame to the channel, so cancelling a caller
//!   can never leave half a request on the wire.
//! - the **reader** cuts frames with [`FrameDecoder`] (size checked before allocating) and hands
//!   each one to the waiting caller.
//!
//! When framing is lost (EOF, I/O error, an impossible length) the connection is **poisoned**: every in-flight request fails with
//! the same cause, and every later request fails at once. It never guesses where the next frame
//! starts. A request that gets no answer within `request_timeout_ms` poisons the connection too
//! (the broker is taken for gone, as the Java client does). A response whose caller gave up by
//! cancelling is read whole and dropped.
//! Reconnecting is the job of the layer above ([`crate::client`]).

pub mod backoff;
mod error;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, trace, warn};

pub use error::ConnectionError;

use crate::protocol::frame::FrameDecoder;
use crate::protocol::messages::{
    self, decode_response, encode_request, kstr, peek_correlation_id, KafkaRequest, Versions,
};

/// Connection settings. Every limit has a unit in its name.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Sent in every request header; shows up in broker logs and quotas.
    pub client_id: String,
    /// Largest response frame accepted; checked before allocating.
    pub frame_bytes_max: usize,
    /// How long one request may wait for its response.
    pub request_timeout_ms: u64,
    /// How long establishing TCP plus ApiVersions may take.
    pub connect_timeout_ms: u64,
    /// Requests in flight at once on this connection.
    pub in_flight_max: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            client_id: "exactly".to_owned(),
            frame_bytes_max: 100 * 1024 * 1024,
            request_timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
            in_flight_max: 32,
        }
    }
}

type Reply = oneshot::Sender<Result<Bytes, ConnectionError>>;

struct Shared {
    addr: String,
    state: Mutex<State>,
}

struct State {
    pending: HashMap<i32, Reply>,
    /// Set once; the reason every later request fails.
    poisoned: Option<ConnectionError>,
    /// The broker throttled us (KIP-219): send nothing new before this instant.
    throttled_until: Option<Instant>,
}

impl Shared {
    /// Marks the connection dead and fails every in-flight request with `cause`.
    fn poison(&self, cause: ConnectionError) {
        let pending = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.poisoned.is_some() {
                return;
            }
            debug!(addr = %self.addr, %cause, "connection poisoned");
            state.poisoned = Some(cause.clone());
            std::mem::take(&mut state.pending)
        };
        for (_, reply) in pending {
            let _ = reply.send(Err(cause.clone()));
        }
    }

    /// Records a response's `throttle_time_ms`: later requests wait until it has passed.
    fn throttle(&self, throttle_time_ms: i32) {
        if throttle_time_ms <= 0 {
            return;
        }
        let until = Instant::now() + Duration::from_millis(throttle_time_ms as u64);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.throttled_until.is_none_or(|t| t < until) {
            debug!(addr = %self.addr, throttle_time_ms, "broker throttles this connection");
            state.throttled_until = Some(until);
        }
    }

    /// The instant before which nothing may be sent, if the broker throttled us.
    fn throttled_until(&self) -> Option<Instant> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.throttled_until {
            Some(t) if t > Instant::now() => Some(t),
            _ => {
                state.throttled_until = None;
                None
            }
        }
    }

    fn poisoned(&self) -> Option<ConnectionError> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .poisoned
            .clone()
    }
}

/// Removes a pending entry when the caller's future is dropped before its response arrived.
struct PendingGuard {
    shared: Arc<Shared>,
    correlation_id: i32,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.pending.remove(&self.correlation_id);
    }
}

/// A connection to one broker, shared by reference (`Arc<Connection>`).
pub struct Connection {
    shared: Arc<Shared>,
    config: ConnectionConfig,
    frames: mpsc::Sender<Bytes>,
    in_flight: Arc<Semaphore>,
    next_correlation_id: AtomicI32,
    versions: HashMap<i16, Versions>,
    finalized_features: Vec<(String, i16)>,
    tasks: [JoinHandle<()>; 2],
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Connection {
    /// Connects to `addr`, then negotiates API versions with ApiVersions.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future closes the half-made connection.
    pub async fn connect(addr: &str, config: ConnectionConfig) -> Result<Self, ConnectionError> {
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectionError::ConnectTimeout {
                addr: addr.to_owned(),
                timeout_ms: config.connect_timeout_ms,
            })?
            .map_err(|e| ConnectionError::io(addr, "connect", &e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| ConnectionError::io(addr, "set_nodelay", &e))?;
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared {
            addr: addr.to_owned(),
            state: Mutex::new(State {
                pending: HashMap::new(),
                poisoned: None,
                throttled_until: None,
            }),
        });
        let (frames_tx, frames_rx) = mpsc::channel(config.in_flight_max.max(1));
        let reader = tokio::spawn(read_loop(read, Arc::clone(&shared), config.frame_bytes_max));
        let writer = tokio::spawn(write_loop(write, frames_rx, Arc::clone(&shared)));
        let mut conn = Self {
            shared,
            in_flight: Arc::new(Semaphore::new(config.in_flight_max.max(1))),
            config,
            frames: frames_tx,
            next_correlation_id: AtomicI32::new(0),
            versions: HashMap::new(),
            finalized_features: Vec::new(),
            tasks: [reader, writer],
        };
        tokio::time::timeout(timeout, conn.negotiate_versions())
            .await
            .map_err(|_| ConnectionError::ConnectTimeout {
                addr: addr.to_owned(),
                timeout_ms: conn.config.connect_timeout_ms,
            })??;
        Ok(conn)
    }

    /// Asks the broker which versions it supports (ApiVersions v3, falling back to v0 when the
    /// broker answers UNSUPPORTED_VERSION, as KIP-511 specifies).
    async fn negotiate_versions(&mut self) -> Result<(), ConnectionError> {
        let request = messages::messages::ApiVersionsRequest::default()
            .with_client_software_name(kstr("exactly"))
            .with_client_software_version(kstr(env!("CARGO_PKG_VERSION")));
        let response = match self.request_at(&request, 3).await {
            Ok(r) if r.error_code == 0 => r,
            // The broker does not speak v3: it answered in v0 (which we then could not parse, or
            // parsed with an error code). Ask again in v0.
            Ok(_) | Err(ConnectionError::Protocol { .. }) => self.request_at(&request, 0).await?,
            Err(e) => return Err(e),
        };
        if response.error_code != 0 {
            return Err(ConnectionError::Broker {
                addr: self.shared.addr.clone(),
                api: "ApiVersions",
                code: crate::protocol::error_codes::lookup(response.error_code),
            });
        }
        self.versions = response
            .api_keys
            .iter()
            .map(|k| {
                (
                    k.api_key,
                    Versions {
                        min: k.min_version,
                        max: k.max_version,
                    },
                )
            })
            .collect();
        self.finalized_features = response
            .finalized_features
            .iter()
            .map(|f| (f.name.to_string(), f.max_version_level))
            .collect();
        trace!(addr = %self.shared.addr, apis = self.versions.len(), "versions negotiated");
        Ok(())
    }

    /// The broker's address.
    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// The version of `R` this connection will use: the highest both sides implement.
    pub fn version_of<R: KafkaRequest>(&self) -> Result<i16, ConnectionError>
    where
        R::Response: Send + 'static,
    {
        let broker = self.versions.get(&R::KEY).copied();
        broker
            .and_then(|b| R::OURS.highest_common(b))
            .ok_or(ConnectionError::UnsupportedVersion {
                addr: self.shared.addr.clone(),
                api: R::NAME,
                ours: R::OURS,
                broker,
            })
    }

    /// The broker's finalized feature level (e.g. `transaction.version`), if it reported one.
    pub fn finalized_feature(&self, name: &str) -> Option<i16> {
        self.finalized_features
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, level)| *level)
    }

    /// Whether the connection is dead (and why).
    pub fn poisoned(&self) -> Option<ConnectionError> {
        self.shared.poisoned()
    }

    /// Kills the connection as a network failure would: in-flight requests fail with
    /// [`ConnectionError::Closed`]. Used by tests to force retries.
    pub fn kill(&self) {
        self.shared.poison(ConnectionError::Closed {
            addr: self.shared.addr.clone(),
            cause: "killed by the client".to_owned(),
        });
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Sends a request at the negotiated version and waits for its response.
    ///
    /// # Cancel safety
    /// Cancel safe. If the future is dropped before the frame was handed to the writer, nothing
    /// is sent; afterwards the whole frame is sent and its response discarded on arrival.
    pub async fn request<R: KafkaRequest>(
        &self,
        request: &R,
    ) -> Result<R::Response, ConnectionError>
    where
        R::Response: Send + 'static,
    {
        let version = self.version_of::<R>()?;
        self.request_at(request, version).await
    }

    /// Like [`Connection::request`], also returning the version used.
    ///
    /// # Cancel safety
    /// As [`Connection::request`].
    pub async fn request_versioned<R: KafkaRequest>(
        &self,
        request: &R,
    ) -> Result<(i16, R::Response), ConnectionError>
    where
        R::Response: Send + 'static,
    {
        let version = self.version_of::<R>()?;
        Ok((version, self.request_at(request, version).await?))
    }

    /// Like [`Connection::request_versioned`], at no higher version than `version_max`: for
    /// requests whose newer versions change semantics the cluster has not enabled (EndTxn v5
    /// bumps the epoch, KIP-890, which clients use only once `transaction.version` is 2).
    ///
    /// # Cancel safety
    /// As [`Connection::request`].
    pub async fn request_versioned_max<R: KafkaRequest>(
        &self,
        request: &R,
        version_max: i16,
    ) -> Result<(i16, R::Response), ConnectionError>
    where
        R::Response: Send + 'static,
    {
        let version = self.version_of::<R>()?.min(version_max);
        Ok((version, self.request_at(request, version).await?))
    }

    async fn request_at<R: KafkaRequest>(
        &self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, ConnectionError>
    where
        R::Response: Send + 'static,
    {
        self.enqueue_at(request, version).await?.await
    }

    /// Hands a request to the writer and returns a future for its response. Requests enqueued
    /// one after another by the same task are written in that order, which is what lets the
    /// idempotent producer keep several batches of one partition in flight.
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped before it completes, the request was either not queued at all or
    /// queued whole (and its response is then discarded).
    pub async fn enqueue<R: KafkaRequest>(
        &self,
        request: &R,
    ) -> Result<ResponseFuture<R>, ConnectionError>
    where
        R::Response: Send + 'static,
    {
        let version = self.version_of::<R>()?;
        self.enqueue_at(request, version).await
    }

    async fn enqueue_at<R: KafkaRequest>(
        &self,
        request: &R,
        version: i16,
    ) -> Result<ResponseFuture<R>, ConnectionError>
    where
        R::Response: Send + 'static,
    {
        // KIP-219: a throttled client must not send to the broker until the throttle time has
        // passed (the broker answered at once and mutes the channel otherwise). Waiting here,
        // before anything is queued, keeps cancellation clean.
        if let Some(until) = self.shared.throttled_until() {
            tokio::time::sleep_until(until).await;
        }
        let permit = Arc::clone(&self.in_flight)
            .acquire_owned()
            .await
            .map_err(|_| self.closed("semaphore closed"))?;
        let correlation_id = self.next_correlation_id.fetch_add(1, Ordering::Relaxed) & i32::MAX;
        let mut buf = BytesMut::new();
        encode_request(
            &mut buf,
            request,
            version,
            correlation_id,
            &self.config.client_id,
        )?;
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(cause) = &state.poisoned {
                return Err(cause.clone());
            }
            state.pending.insert(correlation_id, reply_tx);
        }
        let guard = PendingGuard {
            shared: Arc::clone(&self.shared),
            correlation_id,
        };
        self.frames.send(buf.freeze()).await.map_err(|_| {
            self.shared
                .poisoned()
                .unwrap_or_else(|| self.closed("writer stopped"))
        })?;
        Ok(ResponseFuture {
            reply: reply_rx,
            guard,
            _permit: permit,
            version,
            timeout_ms: self.config.request_timeout_ms,
            _request: std::marker::PhantomData,
        })
    }

    fn closed(&self, cause: &str) -> ConnectionError {
        ConnectionError::Closed {
            addr: self.shared.addr.clone(),
            cause: cause.to_owned(),
        }
    }
}

/// The response to a request already handed to the writer. Holds its in-flight slot until
/// dropped.
pub struct ResponseFuture<R: KafkaRequest>
where
    R::Response: Send + 'static,
{
    reply: oneshot::Receiver<Result<Bytes, ConnectionError>>,
    guard: PendingGuard,
    _permit: tokio::sync::OwnedSemaphorePermit,
    version: i16,
    timeout_ms: u64,
    _request: std::marker::PhantomData<fn() -> R>,
}

impl<R: KafkaRequest> ResponseFuture<R>
where
    R::Response: Send + 'static,
{
    /// The API version the request was sent with.
    pub fn version(&self) -> i16 {
        self.version
    }
}

impl<R: KafkaRequest> std::future::IntoFuture for ResponseFuture<R>
where
    R::Response: Send + 'static,
{
    type Output = Result<R::Response, ConnectionError>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let Self {
                reply,
                guard,
                _permit,
                version,
                timeout_ms,
                ..
            } = self;
            let addr = || guard.shared.addr.clone();
            let frame = match tokio::time::timeout(Duration::from_millis(timeout_ms), reply).await {
                Ok(Ok(result)) => result?,
                Ok(Err(_)) => {
                    return Err(guard.shared.poisoned().unwrap_or_else(|| {
                        ConnectionError::Closed {
                            addr: addr(),
                            cause: "reply dropped".to_owned(),
                        }
                    }))
                }
                Err(_) => {
                    let cause = ConnectionError::Timeout {
                        addr: addr(),
                        api: R::NAME,
                        timeout_ms,
                    };
                    // A broker that does not answer within the request timeout is treated as
                    // gone, as the Java client does: the connection is closed (every request
                    // in flight on it fails with this cause) and the next request reconnects,
                    // rather than queueing behind a stalled socket until delivery timeouts.
                    guard.shared.poison(cause.clone());
                    return Err(cause);
                }
            };
            let response = decode_response::<R>(frame, version)?;
            guard.shared.throttle(R::throttle_time_ms(&response));
            drop(guard);
            Ok(response)
        })
    }
}

async fn write_loop(
    mut socket: OwnedWriteHalf,
    mut frames: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    while let Some(frame) = frames.recv().await {
        if let Err(e) = socket.write_all(&frame).await {
            shared.poison(ConnectionError::io(&shared.addr, "write", &e));
            return;
        }
    }
    let _ = socket.shutdown().await;
}

async fn read_loop(mut socket: OwnedReadHalf, shared: Arc<Shared>, frame_bytes_max: usize) {
    let mut decoder = FrameDecoder::new(frame_bytes_max);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let cause = loop {
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) => {
                let correlation_id = match peek_correlation_id(&frame) {
                    Ok(id) => id,
                    Err(e) => break ConnectionError::from(e),
                };
                let reply = {
                    let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                    state.pending.remove(&correlation_id)
                };
                match reply {
                    Some(reply) => {
                        let _ = reply.send(Ok(frame));
                    }
                    // The caller gave up (timeout or cancellation); its response is dropped.
                    None => {
                        trace!(addr = %shared.addr, correlation_id, "response for a cancelled request")
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break ConnectionError::from(e),
        }
        match socket.read_buf(&mut buf).await {
            Ok(0) => {
                break ConnectionError::Closed {
                    addr: shared.addr.clone(),
                    cause: "closed by the broker".to_owned(),
                }
            }
            Ok(_) => {}
            Err(e) => break ConnectionError::io(&shared.addr, "read", &e),
        }
    };
    if !matches!(cause, ConnectionError::Closed { .. }) {
        warn!(addr = %shared.addr, %cause, "connection lost framing");
    }
    shared.poison(cause);
}
