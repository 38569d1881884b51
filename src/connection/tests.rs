//! Connection behaviour that a real broker cannot be made to show on demand (a lost frame, a
//! slow answer), forced with a scripted fake broker on 127.0.0.1. The same features are covered
//! against the real broker by the protocol tests.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiVersionsResponse, MetadataRequest, MetadataResponse, ResponseHeader,
};
use kafka_protocol::protocol::Encodable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Connection, ConnectionConfig, ConnectionError};
use crate::protocol::ProtocolError;

async fn read_request(socket: &mut TcpStream) -> (i16, i16, i32) {
    let size = socket.read_i32().await.unwrap() as usize;
    let mut body = vec![0; size];
    socket.read_exact(&mut body).await.unwrap();
    let key = i16::from_be_bytes([body[0], body[1]]);
    let version = i16::from_be_bytes([body[2], body[3]]);
    let correlation_id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    (key, version, correlation_id)
}

async fn write_response<M: Encodable>(
    socket: &mut TcpStream,
    correlation_id: i32,
    header_version: i16,
    body: &M,
    version: i16,
) {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, header_version)
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    socket.write_all(&buf).await.unwrap();
}

/// Accepts one connection and answers its ApiVersions request (v3) with Metadata 0..=12.
async fn fake_broker() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

async fn accept_and_negotiate(listener: &TcpListener) -> TcpStream {
    let (mut socket, _) = listener.accept().await.unwrap();
    let (key, version, correlation_id) = read_request(&mut socket).await;
    assert_eq!((key, version), (18, 3));
    let response = ApiVersionsResponse::default().with_api_keys(vec![
        ApiVersion::default()
            .with_api_key(18)
            .with_min_version(0)
            .with_max_version(3),
        ApiVersion::default()
            .with_api_key(3)
            .with_min_version(0)
            .with_max_version(12),
    ]);
    write_response(&mut socket, correlation_id, 0, &response, 3).await;
    socket
}

fn config() -> ConnectionConfig {
    ConnectionConfig {
        frame_bytes_max: 1024,
        request_timeout_ms: 500,
        ..ConnectionConfig::default()
    }
}

#[tokio::test]
async fn oversized_frame_poisons_and_fails_every_in_flight_request() {
    let (listener, addr) = fake_broker().await;
    let server = tokio::spawn(async move {
        let mut socket = accept_and_negotiate(&listener).await;
        read_request(&mut socket).await;
        read_request(&mut socket).await;
        // A length prefix far beyond the limit: framing is lost.
        socket.write_i32(1 << 30).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let conn = Connection::connect(&addr, config()).await.expect("connect");
    let request = MetadataRequest::default();
    let (a, b) = tokio::join!(conn.request(&request), conn.request(&request));
    let expected = ConnectionError::Protocol {
        source: ProtocolError::FrameTooLarge {
            limit: 1024,
            actual: 1 << 30,
        },
    };
    assert_eq!(a.unwrap_err(), expected);
    assert_eq!(b.unwrap_err(), expected);
    // Later requests fail at once with the same cause.
    assert_eq!(conn.request(&request).await.unwrap_err(), expected);
    assert_eq!(conn.poisoned(), Some(expected));
    server.abort();
}

#[tokio::test]
async fn cancelled_request_does_not_disturb_the_next_one() {
    let (listener, addr) = fake_broker().await;
    let server = tokio::spawn(async move {
        let mut socket = accept_and_negotiate(&listener).await;
        // Answer the first request late (after its caller gave up), then the second at once.
        let (_, v1, c1) = read_request(&mut socket).await;
        let (_, v2, c2) = read_request(&mut socket).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        write_response(
            &mut socket,
            c1,
            1,
            &MetadataResponse::default().with_throttle_time_ms(1),
            v1,
        )
        .await;
        write_response(
            &mut socket,
            c2,
            1,
            &MetadataResponse::default().with_throttle_time_ms(2),
            v2,
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let conn = Connection::connect(&addr, config()).await.expect("connect");
    let request = MetadataRequest::default();
    let first = tokio::time::timeout(Duration::from_millis(20), conn.request(&request)).await;
    assert!(first.is_err(), "first request was cancelled by the timeout");
    let second = conn
        .request(&request)
        .await
        .expect("second request answered");
    assert_eq!(second.throttle_time_ms, 2);
    assert!(conn.poisoned().is_none());
    server.abort();
}

#[tokio::test]
async fn request_timeout_is_reported_with_the_api() {
    let (listener, addr) = fake_broker().await;
    let server = tokio::spawn(async move {
        let mut socket = accept_and_negotiate(&listener).await;
        read_request(&mut socket).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let conn = Connection::connect(&addr, config()).await.expect("connect");
    let err = conn.request(&MetadataRequest::default()).await.unwrap_err();
    assert_eq!(
        err,
        ConnectionError::Timeout {
            addr: addr.clone(),
            api: "Metadata",
            timeout_ms: 500
        }
    );
    assert_eq!(
        err.to_string(),
        format!("{addr}: Metadata got no response within 500 ms")
    );
    server.abort();
}

#[tokio::test]
async fn no_common_version_is_a_clear_error() {
    let (listener, addr) = fake_broker().await;
    let server = tokio::spawn(async move {
        let _socket = accept_and_negotiate(&listener).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let conn = Connection::connect(&addr, config()).await.expect("connect");
    let err = conn
        .version_of::<kafka_protocol::messages::FetchRequest>()
        .unwrap_err();
    assert_eq!(err.to_string(), format!("{addr}: no common version of Fetch: we implement 4..=12, the broker does not support it"));
    server.abort();
}

#[tokio::test]
async fn a_throttled_connection_holds_the_next_request_back() {
    const THROTTLE_MS: i32 = 300;
    let (listener, addr) = fake_broker().await;
    let (arrived_tx, arrived_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let mut socket = accept_and_negotiate(&listener).await;
        let (_, v1, c1) = read_request(&mut socket).await;
        write_response(
            &mut socket,
            c1,
            1,
            &MetadataResponse::default().with_throttle_time_ms(THROTTLE_MS),
            v1,
        )
        .await;
        let answered = std::time::Instant::now();
        let (_, v2, c2) = read_request(&mut socket).await;
        let _ = arrived_tx.send(answered.elapsed());
        write_response(&mut socket, c2, 1, &MetadataResponse::default(), v2).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let conn = Connection::connect(
        &addr,
        ConnectionConfig {
            request_timeout_ms: 5_000,
            ..config()
        },
    )
    .await
    .expect("connect");
    let request = MetadataRequest::default();
    let first = conn.request(&request).await.expect("first answered");
    assert_eq!(first.throttle_time_ms, THROTTLE_MS);
    conn.request(&request).await.expect("second answered");
    // KIP-219: nothing is sent to a broker that throttled us until its throttle time is over.
    let gap = arrived_rx.await.unwrap();
    assert!(
        gap >= Duration::from_millis(THROTTLE_MS as u64),
        "second request sent {gap:?} after a {THROTTLE_MS} ms throttle"
    );
    server.abort();
}
