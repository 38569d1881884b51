//! SASL against a scripted fake broker on 127.0.0.1 (ApiVersions, SaslHandshake,
//! SaslAuthenticate with the server side of SCRAM, Metadata): the cases a real broker cannot be
//! made to show — a server that does not know the password, a failing re-authentication — and
//! the error messages. The real broker tests cover the working paths.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiVersionsResponse, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use ring::{digest, hmac, pbkdf2};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::{SaslConfig, SaslMechanism, SecurityConfig, SecurityProtocol};
use crate::connection::{Connection, ConnectionConfig, ConnectionError};

/// How the fake broker behaves.
#[derive(Clone)]
pub(super) struct Script {
    pub mechanisms: Vec<&'static str>,
    /// SCRAM-SHA-256 or -512 credentials the server knows.
    pub user: &'static str,
    pub password: &'static str,
    /// Send a server signature computed with this password instead (an impostor).
    pub signing_password: Option<&'static str>,
    /// Refuse the first SaslAuthenticate with this message (error 58).
    pub refuse_with: Option<&'static str>,
    /// `session_lifetime_ms` in SaslAuthenticate answers.
    pub lifetime_ms: i64,
    /// Refuse re-authentications (every authentication after the first).
    pub refuse_reauthentication: bool,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            mechanisms: vec!["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
            user: "alice",
            password: "alice-secret",
            signing_password: None,
            refuse_with: None,
            lifetime_ms: 0,
            refuse_reauthentication: false,
        }
    }
}

pub(super) async fn read_request<S: AsyncRead + Unpin>(
    socket: &mut S,
) -> Option<(RequestHeader, Bytes)> {
    let size = socket.read_i32().await.ok()? as usize;
    let mut body = vec![0; size];
    socket.read_exact(&mut body).await.ok()?;
    let mut body = Bytes::from(body);
    let key = i16::from_be_bytes([body[0], body[1]]);
    let version = i16::from_be_bytes([body[2], body[3]]);
    let header_version = match key {
        17 => SaslHandshakeRequest::header_version(version),
        36 => SaslAuthenticateRequest::header_version(version),
        3 => MetadataRequest::header_version(version),
        _ => kafka_protocol::messages::ApiVersionsRequest::header_version(version),
    };
    let header = RequestHeader::decode(&mut body, header_version).unwrap();
    Some((header, body))
}

pub(super) async fn write_response<S: AsyncWrite + Unpin, M: Encodable + HeaderVersion>(
    socket: &mut S,
    header: &RequestHeader,
    body: &M,
) {
    let version = header.request_api_version;
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(header.correlation_id)
        .encode(&mut buf, M::header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    let _ = socket.write_all(&buf).await;
}

fn api(key: i16, max: i16) -> ApiVersion {
    ApiVersion::default()
        .with_api_key(key)
        .with_min_version(0)
        .with_max_version(max)
}

/// Serves one connection per the script; sends `()` on `auths` after each successful
/// authentication.
pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: S,
    script: Script,
    auths: mpsc::UnboundedSender<()>,
) {
    let mut mechanism = String::new();
    let mut scram: Option<ServerScram> = None;
    let mut authentications = 0;
    while let Some((header, mut body)) = read_request(&mut socket).await {
        let version = header.request_api_version;
        match header.request_api_key {
            18 => {
                let response = ApiVersionsResponse::default().with_api_keys(vec![
                    api(18, 3),
                    api(3, 12),
                    api(17, 1),
                    api(36, 2),
                ]);
                write_response(&mut socket, &header, &response).await;
            }
            17 => {
                let request = SaslHandshakeRequest::decode(&mut body, version).unwrap();
                mechanism = request.mechanism.to_string();
                let known = script.mechanisms.contains(&mechanism.as_str());
                let response = SaslHandshakeResponse::default()
                    .with_error_code(if known { 0 } else { 33 })
                    .with_mechanisms(
                        script
                            .mechanisms
                            .iter()
                            .map(|m| StrBytes::from_static_str(m))
                            .collect(),
                    );
                write_response(&mut socket, &header, &response).await;
            }
            36 => {
                let request = SaslAuthenticateRequest::decode(&mut body, version).unwrap();
                let refuse = (authentications == 0 && script.refuse_with.is_some())
                    || (authentications > 0 && script.refuse_reauthentication);
                let mut response = SaslAuthenticateResponse::default()
                    .with_session_lifetime_ms(script.lifetime_ms);
                let mut done = false;
                if refuse {
                    response = response.with_error_code(58).with_error_message(Some(
                        StrBytes::from_static_str(script.refuse_with.unwrap_or(
                            "Authentication failed during authentication due to invalid credentials with SASL mechanism",
                        )),
                    ));
                } else if mechanism == "PLAIN" {
                    assert_eq!(
                        request.auth_bytes,
                        format!("\0{}\0{}", script.user, script.password).as_bytes()
                    );
                    done = true;
                } else {
                    match scram.take() {
                        None => {
                            let (state, server_first) =
                                ServerScram::first(&mechanism, &request.auth_bytes, &script);
                            scram = Some(state);
                            response = response.with_auth_bytes(Bytes::from(server_first));
                        }
                        Some(state) => {
                            response = response.with_auth_bytes(Bytes::from(
                                state.last(&request.auth_bytes, &script),
                            ));
                            done = true;
                        }
                    }
                }
                write_response(&mut socket, &header, &response).await;
                if done {
                    authentications += 1;
                    let _ = auths.send(());
                }
                if refuse {
                    return;
                }
            }
            3 => {
                write_response(&mut socket, &header, &MetadataResponse::default()).await;
            }
            other => panic!("unexpected api key {other}"),
        }
    }
}

/// The server side of SCRAM, enough to test the client (RFC 5802 section 3).
struct ServerScram {
    hash: (
        hmac::Algorithm,
        pbkdf2::Algorithm,
        &'static digest::Algorithm,
    ),
    client_first_bare: String,
    server_first: String,
    salt: Vec<u8>,
}

impl ServerScram {
    fn first(mechanism: &str, client_first: &[u8], script: &Script) -> (Self, String) {
        let hash = match mechanism {
            "SCRAM-SHA-256" => (
                hmac::HMAC_SHA256,
                pbkdf2::PBKDF2_HMAC_SHA256,
                &digest::SHA256,
            ),
            "SCRAM-SHA-512" => (
                hmac::HMAC_SHA512,
                pbkdf2::PBKDF2_HMAC_SHA512,
                &digest::SHA512,
            ),
            other => panic!("not SCRAM: {other}"),
        };
        let client_first = std::str::from_utf8(client_first).unwrap();
        let bare = client_first.strip_prefix("n,,").unwrap();
        assert!(bare.starts_with(&format!("n={},r=", script.user)), "{bare}");
        let nonce = bare.split_once(",r=").unwrap().1;
        let salt = b"fake-broker-salt".to_vec();
        let server_first = format!("r={nonce}srv-nonce,s={},i=4096", B64.encode(&salt));
        (
            Self {
                hash,
                client_first_bare: bare.to_owned(),
                server_first: server_first.clone(),
                salt,
            },
            server_first,
        )
    }

    fn salted(&self, password: &str) -> hmac::Key {
        let mut salted = vec![0; self.hash.2.output_len()];
        pbkdf2::derive(
            self.hash.1,
            std::num::NonZeroU32::new(4096).unwrap(),
            &self.salt,
            password.as_bytes(),
            &mut salted,
        );
        hmac::Key::new(self.hash.0, &salted)
    }

    /// Checks the client's proof, answers with the server signature (or an impostor's).
    fn last(&self, client_final: &[u8], script: &Script) -> String {
        let client_final = std::str::from_utf8(client_final).unwrap();
        let (without_proof, proof) = client_final.rsplit_once(",p=").unwrap();
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let salted = self.salted(script.password);
        let client_key = hmac::sign(&salted, b"Client Key");
        let stored_key = digest::digest(self.hash.2, client_key.as_ref());
        let client_signature = hmac::sign(
            &hmac::Key::new(self.hash.0, stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let recovered: Vec<u8> = B64
            .decode(proof)
            .unwrap()
            .iter()
            .zip(client_signature.as_ref())
            .map(|(p, s)| p ^ s)
            .collect();
        if digest::digest(self.hash.2, &recovered).as_ref() != stored_key.as_ref() {
            return "e=invalid-proof".to_owned();
        }
        let salted = self.salted(script.signing_password.unwrap_or(script.password));
        let server_key = hmac::sign(&salted, b"Server Key");
        let signature = hmac::sign(
            &hmac::Key::new(self.hash.0, server_key.as_ref()),
            auth_message.as_bytes(),
        );
        format!("v={}", B64.encode(signature.as_ref()))
    }
}

/// A fake broker for one connection; the receiver hears of each successful authentication.
async fn fake(script: Script) -> (String, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        serve(socket, script, tx).await;
    });
    (addr, rx)
}

fn config(mechanism: SaslMechanism, user: &str, password: &str) -> ConnectionConfig {
    ConnectionConfig {
        request_timeout_ms: 5_000,
        connect_timeout_ms: 5_000,
        security: SecurityConfig {
            protocol: SecurityProtocol::SaslPlaintext,
            sasl: Some(SaslConfig::new(mechanism, user, password)),
            ..SecurityConfig::default()
        },
        ..ConnectionConfig::default()
    }
}

#[tokio::test]
async fn scram_and_plain_authenticate_then_requests_flow() {
    for mechanism in [
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
        SaslMechanism::Plain,
    ] {
        let (addr, mut auths) = fake(Script::default()).await;
        let conn = Connection::connect(&addr, config(mechanism, "alice", "alice-secret"))
            .await
            .unwrap_or_else(|e| panic!("{mechanism}: {e}"));
        auths.recv().await.unwrap();
        conn.request(&MetadataRequest::default()).await.unwrap();
    }
}

#[tokio::test]
async fn a_server_that_cannot_prove_it_knows_the_password_is_rejected() {
    let (addr, _auths) = fake(Script {
        signing_password: Some("not-the-password"),
        ..Script::default()
    })
    .await;
    let err = Connection::connect(
        &addr,
        config(SaslMechanism::ScramSha256, "alice", "alice-secret"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            &err,
            ConnectionError::ServerAuthenticationFailed { mechanism: "SCRAM-SHA-256", reason, .. }
                if reason.contains("server signature does not verify")
        ),
        "{err:?}"
    );
    assert!(err.is_security());
    assert!(
        err.to_string()
            .contains("SASL SCRAM-SHA-256: the broker failed to authenticate itself"),
        "{err}"
    );
    assert!(!err.to_string().contains("alice-secret"));
}

#[tokio::test]
async fn a_refused_authentication_carries_the_brokers_message_and_what_to_check() {
    let (addr, _auths) = fake(Script {
        refuse_with: Some("Authentication failed: Invalid username or password"),
        ..Script::default()
    })
    .await;
    let err = Connection::connect(&addr, config(SaslMechanism::Plain, "alice", "wrong-pw"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ConnectionError::AuthenticationFailed {
                mechanism: "PLAIN",
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("Authentication failed: Invalid username or password"),
        "{text}"
    );
    assert!(
        text.contains("check sasl.username and sasl.password"),
        "{text}"
    );
    assert!(!text.contains("wrong-pw"), "{text}");
    assert!(err.is_security());
}

#[tokio::test]
async fn a_wrong_scram_password_is_an_authentication_failure() {
    // The fake broker checks the proof and answers e=invalid-proof, as SCRAM servers may.
    let (addr, _auths) = fake(Script::default()).await;
    let err = Connection::connect(
        &addr,
        config(SaslMechanism::ScramSha512, "alice", "wrong-pw"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ConnectionError::AuthenticationFailed { message, .. } if message.contains("invalid-proof")),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unsupported_mechanism_lists_the_enabled_ones() {
    let (addr, _auths) = fake(Script {
        mechanisms: vec!["PLAIN", "SCRAM-SHA-256"],
        ..Script::default()
    })
    .await;
    let err = Connection::connect(
        &addr,
        config(SaslMechanism::ScramSha512, "alice", "alice-secret"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err,
        ConnectionError::UnsupportedMechanism {
            addr: addr.clone(),
            mechanism: "SCRAM-SHA-512",
            enabled: vec!["PLAIN".into(), "SCRAM-SHA-256".into()],
        }
    );
    assert!(
        err.to_string()
            .contains("it enables: PLAIN, SCRAM-SHA-256: set sasl.mechanism to one of them"),
        "{err}"
    );
}

/// KIP-368: with a session lifetime the connection re-authenticates on its own, and requests
/// keep working across it.
#[tokio::test]
async fn the_connection_reauthenticates_before_the_session_ends() {
    let (addr, mut auths) = fake(Script {
        lifetime_ms: 400,
        ..Script::default()
    })
    .await;
    let conn = Arc::new(
        Connection::connect(
            &addr,
            config(SaslMechanism::ScramSha256, "alice", "alice-secret"),
        )
        .await
        .unwrap(),
    );
    auths.recv().await.unwrap();
    // Requests meanwhile, until two re-authentications happened.
    let requests = {
        let conn = Arc::clone(&conn);
        tokio::spawn(async move {
            let mut answered = 0u32;
            loop {
                conn.request(&MetadataRequest::default()).await.unwrap();
                answered += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                if answered > 1_000 {
                    return answered;
                }
            }
        })
    };
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), auths.recv())
            .await
            .expect("no re-authentication")
            .unwrap();
    }
    assert!(!requests.is_finished(), "{:?}", conn.poisoned());
    requests.abort();
    assert_eq!(conn.poisoned(), None);
    conn.request(&MetadataRequest::default()).await.unwrap();
}

#[tokio::test]
async fn a_failed_reauthentication_poisons_the_connection_with_its_cause() {
    let (addr, mut auths) = fake(Script {
        lifetime_ms: 300,
        refuse_reauthentication: true,
        ..Script::default()
    })
    .await;
    let conn = Connection::connect(&addr, config(SaslMechanism::Plain, "alice", "alice-secret"))
        .await
        .unwrap();
    auths.recv().await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Err(e) = conn.request(&MetadataRequest::default()).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the connection kept working");
    assert!(
        matches!(&err, ConnectionError::AuthenticationFailed { .. }),
        "{err:?}"
    );
    assert_eq!(conn.poisoned(), Some(err));
}

/// A listener that answers ApiVersions, closes the connection at any other request before a
/// SaslHandshake, and answers SaslHandshake with `handshake_code` and its mechanisms: a SASL
/// listener (code 0) or, with ILLEGAL_SASL_STATE (34), one without SASL that closes anyway.
async fn closing_after_api_versions(handshake_code: i16) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                while let Some((header, _)) = read_request(&mut socket).await {
                    match header.request_api_key {
                        18 => {
                            let response = ApiVersionsResponse::default().with_api_keys(vec![
                                api(18, 3),
                                api(3, 12),
                                api(17, 1),
                                api(36, 2),
                            ]);
                            write_response(&mut socket, &header, &response).await;
                        }
                        17 => {
                            let response = SaslHandshakeResponse::default()
                                .with_error_code(handshake_code)
                                .with_mechanisms(vec![
                                    StrBytes::from_static_str("PLAIN"),
                                    StrBytes::from_static_str("SCRAM-SHA-512"),
                                ]);
                            write_response(&mut socket, &header, &response).await;
                        }
                        _ => return,
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_client_without_sasl_is_told_that_the_listener_requires_it() {
    let addr = closing_after_api_versions(0).await;
    let conn = Connection::connect(&addr, ConnectionConfig::default())
        .await
        .unwrap();
    let err = conn.request(&MetadataRequest::default()).await.unwrap_err();
    assert_eq!(
        err,
        ConnectionError::SaslRequired {
            addr: addr.clone(),
            enabled: vec!["PLAIN".into(), "SCRAM-SHA-512".into()],
        }
    );
    assert!(
        err.to_string().contains(
            "requires SASL authentication on this listener (it closed the connection at the first request after ApiVersions; it enables PLAIN, SCRAM-SHA-512): set security.protocol=SASL_PLAINTEXT or SASL_SSL"
        ),
        "{err}"
    );
    assert!(err.is_security());
}

#[tokio::test]
async fn a_close_after_api_versions_from_a_listener_without_sasl_stays_a_disconnect() {
    let addr = closing_after_api_versions(34).await;
    let conn = Connection::connect(&addr, ConnectionConfig::default())
        .await
        .unwrap();
    let err = conn.request(&MetadataRequest::default()).await.unwrap_err();
    assert!(
        matches!(&err, ConnectionError::Closed { cause, .. } if cause.contains("a SASL listener does this")),
        "{err:?}"
    );
    assert!(err.is_disconnect() && !err.is_security());
}

#[tokio::test]
async fn a_sasl_client_against_a_listener_without_sasl_is_told_so() {
    let addr = closing_after_api_versions(34).await;
    let err = Connection::connect(&addr, config(SaslMechanism::Plain, "alice", "pw"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ConnectionError::SaslNotEnabled { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("this listener does not use SASL (SaslHandshake answered ILLEGAL_SASL_STATE"),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("set security.protocol=PLAINTEXT or SSL"));
    assert!(err.is_security());
}
