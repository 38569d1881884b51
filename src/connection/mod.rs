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
//!
//! # Security
//!
//! The stream under the two tasks is TCP or TLS over TCP ([`security::tls`]); on a SASL listener
//! the connection authenticates right after ApiVersions and before any caller's request
//! ([`security::sasl`]). When the broker gives the session a lifetime (KIP-368,
//! <https://cwiki.apache.org/confluence/display/KAFKA/KIP-368%3A+Allow+SASL+Connections+to+Periodically+Re-Authenticate>),
//! a third task re-authenticates at 85–95% of it (jittered): it takes every in-flight slot —
//! so new requests queue (the semaphore is fair) and the ones in flight finish first — runs
//! SaslHandshake + SaslAuthenticate, then frees the slots. Callers' requests are delayed, never
//! failed or reordered. KIP-368 also lets a client re-authenticate with requests in flight, but
//! then responses to them and to the SASL requests interleave; draining first keeps the reader's
//! one rule (answers in request order) simple. A failed re-authentication poisons the
//! connection with its cause.

pub mod backoff;
mod error;
pub mod security;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, trace, warn};

pub use error::ConnectionError;
pub use security::{
    SaslConfig, SaslMechanism, Secret, SecurityConfig, SecurityConfigError, SecurityProtocol,
    TlsConfig, SECURITY_KEYS,
};

use crate::protocol::frame::FrameDecoder;
use crate::protocol::messages::messages::SaslAuthenticateRequest;
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
    /// TLS and SASL; `Default` is plaintext without authentication.
    pub security: SecurityConfig,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            client_id: "exactly".to_owned(),
            frame_bytes_max: 100 * 1024 * 1024,
            request_timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
            in_flight_max: 32,
            security: SecurityConfig::default(),
        }
    }
}

type Reply = oneshot::Sender<Result<Bytes, ConnectionError>>;

struct Shared {
    addr: String,
    state: Mutex<State>,
    /// Frames the reader has handed out: what an early close or strange bytes mean depends on
    /// whether the broker has answered anything yet.
    frames_read: AtomicU64,
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

    /// Like [`Shared::poison`], but replaces an earlier cause: for a failed re-authentication,
    /// whose refusal the broker follows by closing the connection (the reader may see that
    /// close first). No caller saw the earlier cause: re-authentication holds every in-flight
    /// slot.
    fn poison_overriding(&self, cause: ConnectionError) {
        let pending = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
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
    link: Link,
    config: ConnectionConfig,
    in_flight: Arc<Semaphore>,
    versions: HashMap<i16, Versions>,
    finalized_features: Vec<(String, i16)>,
    /// Reader, writer and, on a SASL connection with a session lifetime, the re-authenticator.
    tasks: Vec<JoinHandle<()>>,
}

/// What sends a request and returns its response future, without taking an in-flight slot:
/// shared by the connection and its re-authentication task.
#[derive(Clone)]
pub(crate) struct Link {
    shared: Arc<Shared>,
    frames: mpsc::Sender<Bytes>,
    next_correlation_id: Arc<AtomicI32>,
    client_id: Arc<str>,
    request_timeout_ms: u64,
}

impl Link {
    pub(crate) fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// Sends `request` at `version` and waits for the response (no in-flight slot, no throttle
    /// wait: for the connection's own SASL requests).
    pub(crate) async fn send<R: KafkaRequest>(
        &self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, ConnectionError>
    where
        R::Response: Send + 'static,
    {
        self.enqueue(request, version, None).await?.await
    }

    async fn enqueue<R: KafkaRequest>(
        &self,
        request: &R,
        version: i16,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<ResponseFuture<R>, ConnectionError>
    where
        R::Response: Send + 'static,
    {
        let correlation_id = self.next_correlation_id.fetch_add(1, Ordering::Relaxed) & i32::MAX;
        let mut buf = BytesMut::new();
        encode_request(&mut buf, request, version, correlation_id, &self.client_id)?;
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
                .unwrap_or_else(|| ConnectionError::Closed {
                    addr: self.shared.addr.clone(),
                    cause: "writer stopped".to_owned(),
                })
        })?;
        Ok(ResponseFuture {
            reply: reply_rx,
            guard,
            _permit: permit,
            version,
            timeout_ms: self.request_timeout_ms,
            _request: std::marker::PhantomData,
        })
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.link.shared.addr)
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
        // One budget for TCP, TLS, ApiVersions and SASL.
        let deadline = Instant::now() + Duration::from_millis(config.connect_timeout_ms);
        let timeout_ms = config.connect_timeout_ms;
        let timed_out = || ConnectionError::ConnectTimeout {
            addr: addr.to_owned(),
            timeout_ms,
        };
        let security = &config.security;
        // Before any I/O: a missing PEM file or SASL settings is not a network problem.
        security.prepare()?;
        let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| ConnectionError::io(addr, "connect", &e))?;
        tcp.set_nodelay(true)
            .map_err(|e| ConnectionError::io(addr, "set_nodelay", &e))?;
        let shared = Arc::new(Shared {
            addr: addr.to_owned(),
            state: Mutex::new(State {
                pending: HashMap::new(),
                poisoned: None,
                throttled_until: None,
            }),
            frames_read: AtomicU64::new(0),
        });
        let (frames_tx, frames_rx) = mpsc::channel(config.in_flight_max.max(1));
        let hints = ReadHints {
            plaintext: !security.protocol.uses_tls(),
            sasl: security.protocol.uses_sasl(),
            tls: if security.protocol.uses_tls() {
                Some(security.rustls_config()?)
            } else {
                None
            },
            probe_timeout_ms: timeout_ms,
        };
        let tasks = if security.protocol.uses_tls() {
            let rustls = security.rustls_config()?;
            let stream = tokio::time::timeout_at(
                deadline,
                security::tls::handshake(addr, tcp, rustls, &security.tls),
            )
            .await
            .map_err(|_| timed_out())??;
            let (read, write) = tokio::io::split(stream);
            vec![
                tokio::spawn(read_loop(
                    read,
                    Arc::clone(&shared),
                    config.frame_bytes_max,
                    hints.clone(),
                )),
                tokio::spawn(write_loop(write, frames_rx, Arc::clone(&shared))),
            ]
        } else {
            let (read, write) = tcp.into_split();
            vec![
                tokio::spawn(read_loop(
                    read,
                    Arc::clone(&shared),
                    config.frame_bytes_max,
                    hints.clone(),
                )),
                tokio::spawn(write_loop(write, frames_rx, Arc::clone(&shared))),
            ]
        };
        let mut conn = Self {
            link: Link {
                shared,
                frames: frames_tx,
                next_correlation_id: Arc::new(AtomicI32::new(0)),
                client_id: Arc::from(config.client_id.as_str()),
                request_timeout_ms: config.request_timeout_ms,
            },
            in_flight: Arc::new(Semaphore::new(config.in_flight_max.max(1))),
            config,
            versions: HashMap::new(),
            finalized_features: Vec::new(),
            tasks,
        };
        match tokio::time::timeout_at(deadline, conn.negotiate_versions()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // Closed before any answer on a plaintext connection: a Kafka TLS listener does
                // that (without a TLS alert). Ask the port in TLS, within the same budget.
                let unanswered = hints.plaintext
                    && conn.link.shared.frames_read.load(Ordering::Relaxed) == 0
                    && e.is_disconnect();
                if unanswered
                    && tokio::time::timeout_at(deadline, security::tls::answers_tls(addr))
                        .await
                        .unwrap_or(false)
                {
                    return Err(ConnectionError::TlsRequired {
                        addr: addr.to_owned(),
                        evidence: "it closed the plaintext connection without answering ApiVersions, and answers a TLS ClientHello".to_owned(),
                    });
                }
                return Err(e);
            }
            Err(_) => return Err(timed_out()),
        }
        if let Some(sasl) = conn.config.security.sasl.clone().filter(|_| hints.sasl) {
            let version = conn.version_of::<SaslAuthenticateRequest>()?;
            let session = tokio::time::timeout_at(
                deadline,
                security::sasl::authenticate(&conn.link, &sasl, version),
            )
            .await
            .map_err(|_| timed_out())??;
            debug!(addr, mechanism = %sasl.mechanism, session_lifetime_ms = session.lifetime_ms, "authenticated");
            if session.lifetime_ms > 0 {
                conn.tasks.push(tokio::spawn(reauthenticate(
                    conn.link.clone(),
                    Arc::clone(&conn.in_flight),
                    conn.config.in_flight_max.max(1),
                    sasl,
                    version,
                    session.lifetime_ms,
                    conn.config.connect_timeout_ms,
                )));
            }
        }
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
                addr: self.link.shared.addr.clone(),
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
        trace!(addr = %self.link.shared.addr, apis = self.versions.len(), "versions negotiated");
        Ok(())
    }

    /// The broker's address.
    pub fn addr(&self) -> &str {
        &self.link.shared.addr
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
                addr: self.link.shared.addr.clone(),
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
        self.link.shared.poisoned()
    }

    /// Kills the connection as a network failure would: in-flight requests fail with
    /// [`ConnectionError::Closed`]. Used by tests to force retries.
    pub fn kill(&self) {
        self.link.shared.poison(ConnectionError::Closed {
            addr: self.link.shared.addr.clone(),
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
        if let Some(until) = self.link.shared.throttled_until() {
            tokio::time::sleep_until(until).await;
        }
        let permit = Arc::clone(&self.in_flight)
            .acquire_owned()
            .await
            .map_err(|_| self.closed("semaphore closed"))?;
        self.link.enqueue(request, version, Some(permit)).await
    }

    fn closed(&self, cause: &str) -> ConnectionError {
        ConnectionError::Closed {
            addr: self.link.shared.addr.clone(),
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
    _permit: Option<OwnedSemaphorePermit>,
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
    mut socket: impl AsyncWrite + Unpin,
    mut frames: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    while let Some(frame) = frames.recv().await {
        if let Err(e) = socket.write_all(&frame).await {
            shared.poison(security::tls::socket_error(&shared.addr, "write", &e));
            return;
        }
    }
    let _ = socket.shutdown().await;
}

/// What the reader knows of the connection, to explain an early close or foreign bytes.
#[derive(Clone)]
struct ReadHints {
    /// No TLS: a TLS record header as the first bytes means the listener wants TLS.
    plaintext: bool,
    /// The connection authenticates with SASL.
    sasl: bool,
    /// The TLS settings, for a probe connection.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The bound on such a probe (the connect timeout).
    probe_timeout_ms: u64,
}

async fn read_loop(
    mut socket: impl AsyncRead + Unpin,
    shared: Arc<Shared>,
    frame_bytes_max: usize,
    hints: ReadHints,
) {
    let mut decoder = FrameDecoder::new(frame_bytes_max);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let cause = loop {
        // A TLS listener answers a plaintext request with a TLS alert (or handshake) record:
        // as a frame size its header is 350+ MB. Say what it is rather than "frame too large".
        if hints.plaintext
            && shared.frames_read.load(Ordering::Relaxed) == 0
            && security::tls::looks_like_tls_record(&buf)
        {
            break ConnectionError::TlsRequired {
                addr: shared.addr.clone(),
                evidence: format!(
                    "it answered with a TLS record (bytes {:02x?}), not a Kafka response",
                    &buf[..buf.len().min(5)]
                ),
            };
        }
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) => {
                shared.frames_read.fetch_add(1, Ordering::Relaxed);
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
        let closed = match socket.read_buf(&mut buf).await {
            Ok(0) => ConnectionError::Closed {
                addr: shared.addr.clone(),
                cause: early_close_cause(shared.frames_read.load(Ordering::Relaxed), &hints),
            },
            Ok(_) => continue,
            Err(e) => security::tls::socket_error(&shared.addr, "read", &e),
        };
        // Closed at the first request after ApiVersions without SASL: what a SASL listener does
        // to a client that skips authentication. Ask it (bounded) so that the caller is told
        // to configure SASL instead of retrying until its deadline; requests in flight wait for
        // the answer.
        if !hints.sasl && shared.frames_read.load(Ordering::Relaxed) == 1 {
            let probe = security::sasl::listener_requires_sasl(&shared.addr, hints.tls.clone());
            if let Ok(Some(enabled)) =
                tokio::time::timeout(Duration::from_millis(hints.probe_timeout_ms), probe).await
            {
                break ConnectionError::SaslRequired {
                    addr: shared.addr.clone(),
                    enabled,
                };
            }
        }
        break closed;
    };
    if !matches!(cause, ConnectionError::Closed { .. }) && !cause.is_security() {
        warn!(addr = %shared.addr, %cause, "connection lost framing");
    }
    shared.poison(cause);
}

/// Why the broker may have closed the connection, from how far it got. Kafka closes without a
/// word when the client speaks plaintext to a TLS listener (before answering ApiVersions) or
/// skips SASL on a SASL listener (after ApiVersions, at the first other request).
fn early_close_cause(frames_read: u64, hints: &ReadHints) -> String {
    match frames_read {
        0 if hints.plaintext => "closed by the broker before answering ApiVersions (a TLS listener does this to a plaintext client: if so, set security.protocol=SSL or SASL_SSL)".to_owned(),
        1 if !hints.sasl => "closed by the broker after ApiVersions, before answering the first request (a SASL listener does this to a client that does not authenticate: if so, set security.protocol=SASL_PLAINTEXT or SASL_SSL and sasl.mechanism)".to_owned(),
        _ => "closed by the broker".to_owned(),
    }
}

/// Re-authenticates before each session lifetime runs out (KIP-368), draining the connection
/// first (see the module docs); poisons it if re-authentication fails.
async fn reauthenticate(
    link: Link,
    in_flight: Arc<Semaphore>,
    slots: usize,
    sasl: SaslConfig,
    version: i16,
    mut lifetime_ms: i64,
    timeout_ms: u64,
) {
    use rand::Rng;
    let slots = u32::try_from(slots).unwrap_or(u32::MAX);
    while lifetime_ms > 0 {
        // 85–95% of the lifetime, so that connections made together do not re-authenticate
        // together, and at least the time a re-authentication may take before the end.
        let fraction = rand::rng().random_range(0.85..0.95);
        let due_ms = ((lifetime_ms as f64 * fraction) as u64)
            .min((lifetime_ms as u64).saturating_sub(timeout_ms.min(lifetime_ms as u64 / 2)));
        tokio::time::sleep(Duration::from_millis(due_ms)).await;
        let Ok(drained) = Arc::clone(&in_flight).acquire_many_owned(slots).await else {
            return;
        };
        if link.shared.poisoned().is_some() {
            return;
        }
        let result = tokio::time::timeout(
            Duration::from_millis(timeout_ms),
            security::sasl::authenticate(&link, &sasl, version),
        )
        .await;
        match result {
            Ok(Ok(session)) => {
                debug!(addr = %link.shared.addr, session_lifetime_ms = session.lifetime_ms, "re-authenticated");
                lifetime_ms = session.lifetime_ms;
            }
            Ok(Err(cause)) => {
                warn!(addr = %link.shared.addr, %cause, "re-authentication failed");
                link.shared.poison_overriding(cause);
                return;
            }
            Err(_) => {
                link.shared.poison(ConnectionError::Timeout {
                    addr: link.shared.addr.clone(),
                    api: "SaslAuthenticate (re-authentication)",
                    timeout_ms,
                });
                return;
            }
        }
        drop(drained);
    }
}
