//! SASL authentication in Kafka framing: SaslHandshake v1 (which mechanism; the broker lists the
//! ones it enables) then one or more SaslAuthenticate round trips carrying the mechanism's
//! messages (KIP-152, <https://cwiki.apache.org/confluence/display/KAFKA/KIP-152+-+Improve+diagnostics+for+SASL+authentication+failures>,
//! <https://kafka.apache.org/protocol.html#sasl_handshake>). Sent right after ApiVersions, as the
//! Java client does; a failure comes back as SaslAuthenticate's error code and message, which we
//! pass on ([`ConnectionError::AuthenticationFailed`]).
//!
//! Mechanisms: PLAIN (RFC 4616), SCRAM-SHA-256/512 (`super::scram`, RFC 5802/7677, server
//! signature verified), OAUTHBEARER (RFC 7628: GS2 header `n,,`, then `auth=Bearer <token>`
//! between 0x01 separators; the token is static or the trimmed stdout of a command run at each
//! authentication, so that re-authentication picks up a refreshed token).
//!
//! SaslAuthenticate v1+ returns `session_lifetime_ms` (KIP-368,
//! <https://cwiki.apache.org/confluence/display/KAFKA/KIP-368%3A+Allow+SASL+Connections+to+Periodically+Re-Authenticate>):
//! the broker closes a connection that has not re-authenticated by then. The connection
//! re-runs this exchange before it runs out (see `crate::connection`'s re-authentication task).

use bytes::Bytes;

use super::scram::{ScramClient, ScramHash, ServerFinal};
use super::{SaslConfig, SaslMechanism};
use crate::connection::{ConnectionError, Link};
use crate::protocol::error_codes;
use crate::protocol::messages::kstr;
use crate::protocol::messages::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};

/// Error codes of the SaslHandshake answer.
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const ILLEGAL_SASL_STATE: i16 = 34;

/// What a successful authentication tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Session {
    /// Milliseconds until the broker closes the connection unless it re-authenticates; 0 when
    /// the broker does not require it (or SaslAuthenticate v0 was used).
    pub(crate) lifetime_ms: i64,
}

/// The first client message of the GS2-framed OAUTHBEARER exchange (RFC 7628 section 3.1).
pub(crate) fn oauthbearer_initial_response(token: &str) -> Vec<u8> {
    format!("n,,\x01auth=Bearer {token}\x01\x01").into_bytes()
}

/// PLAIN (RFC 4616): authorization id (empty), user name, password, separated by NUL.
pub(crate) fn plain_initial_response(username: &str, password: &str) -> Vec<u8> {
    format!("\0{username}\0{password}").into_bytes()
}

/// Runs SaslHandshake then SaslAuthenticate on `link` (whose ApiVersions is done).
///
/// # Cancel safety
/// Not cancel safe in the sense that a dropped authentication leaves the connection unusable:
/// the caller drops (connect) or poisons (re-authentication) it.
pub(crate) async fn authenticate(
    link: &Link,
    sasl: &SaslConfig,
    authenticate_version: i16,
) -> Result<Session, ConnectionError> {
    let addr = link.addr();
    let mechanism = sasl.mechanism.name();
    let handshake = link
        .send(
            &SaslHandshakeRequest::default().with_mechanism(kstr(mechanism)),
            1,
        )
        .await?;
    match handshake.error_code {
        0 => {}
        UNSUPPORTED_SASL_MECHANISM => {
            return Err(ConnectionError::UnsupportedMechanism {
                addr: addr.to_owned(),
                mechanism,
                enabled: handshake.mechanisms.iter().map(|m| m.to_string()).collect(),
            })
        }
        ILLEGAL_SASL_STATE => {
            return Err(ConnectionError::SaslNotEnabled {
                addr: addr.to_owned(),
                code: error_codes::lookup(ILLEGAL_SASL_STATE),
            })
        }
        code => {
            return Err(ConnectionError::AuthenticationFailed {
                addr: addr.to_owned(),
                mechanism,
                message: format!("SaslHandshake: {}", error_codes::lookup(code)),
            });
        }
    }
    let exchange = Exchange {
        link,
        mechanism,
        version: authenticate_version,
    };
    match sasl.mechanism {
        SaslMechanism::Plain => exchange
            .round(plain_initial_response(
                &sasl.username,
                sasl.password.expose(),
            ))
            .await
            .map(|(_, session)| session),
        SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
            let hash = if sasl.mechanism == SaslMechanism::ScramSha256 {
                ScramHash::Sha256
            } else {
                ScramHash::Sha512
            };
            let mut scram = ScramClient::new(hash, &sasl.username, sasl.password.expose())
                .map_err(|reason| exchange.server_failed(reason))?;
            let (server_first, _) = exchange.round(scram.client_first()).await?;
            let client_final = scram
                .client_final(&server_first)
                .map_err(|reason| exchange.server_failed(reason))?;
            let (server_final, session) = exchange.round(client_final).await?;
            match scram.verify_server_final(&server_final) {
                Ok(()) => Ok(session),
                Err(ServerFinal::Error(e)) => Err(ConnectionError::AuthenticationFailed {
                    addr: addr.to_owned(),
                    mechanism,
                    message: format!("SCRAM error from the broker: {e}"),
                }),
                Err(ServerFinal::Invalid(reason)) => Err(exchange.server_failed(reason)),
            }
        }
        SaslMechanism::OAuthBearer => {
            let token = oauthbearer_token(sasl).await?;
            let (challenge, session) = exchange
                .round(oauthbearer_initial_response(token.expose()))
                .await?;
            if challenge.is_empty() {
                return Ok(session);
            }
            // RFC 7628 3.2.2: an error challenge (JSON status); the client answers 0x01 and the
            // server then fails the exchange. Tell the JSON, which carries no secret.
            let status = String::from_utf8_lossy(&challenge).into_owned();
            match exchange.round(vec![0x01]).await {
                Err(ConnectionError::AuthenticationFailed {
                    addr,
                    mechanism,
                    message,
                }) => Err(ConnectionError::AuthenticationFailed {
                    addr,
                    mechanism,
                    message: format!("{message} ({status})"),
                }),
                Err(e) => Err(e),
                Ok(_) => Err(ConnectionError::AuthenticationFailed {
                    addr: addr.to_owned(),
                    mechanism,
                    message: format!("the broker refused the token: {status}"),
                }),
            }
        }
    }
}

struct Exchange<'a> {
    link: &'a Link,
    mechanism: &'static str,
    version: i16,
}

impl Exchange<'_> {
    /// One SaslAuthenticate round trip: the server's bytes, or its refusal with its message.
    async fn round(&self, bytes: Vec<u8>) -> Result<(Bytes, Session), ConnectionError> {
        let response = self
            .link
            .send(
                &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes)),
                self.version,
            )
            .await?;
        if response.error_code != 0 {
            let code = error_codes::lookup(response.error_code);
            let message = match response.error_message.as_deref() {
                Some(m) if !m.is_empty() => format!("{code}: {m}"),
                _ => code.to_string(),
            };
            return Err(ConnectionError::AuthenticationFailed {
                addr: self.link.addr().to_owned(),
                mechanism: self.mechanism,
                message,
            });
        }
        Ok((
            response.auth_bytes,
            Session {
                lifetime_ms: response.session_lifetime_ms.max(0),
            },
        ))
    }

    fn server_failed(&self, reason: String) -> ConnectionError {
        ConnectionError::ServerAuthenticationFailed {
            addr: self.link.addr().to_owned(),
            mechanism: self.mechanism,
            reason,
        }
    }
}

/// The OAUTHBEARER token: the command's trimmed stdout (run now, so that each authentication
/// gets a fresh one), else the static token.
async fn oauthbearer_token(sasl: &SaslConfig) -> Result<super::Secret, ConnectionError> {
    let Some(command) = &sasl.oauthbearer_token_command else {
        return sasl
            .oauthbearer_token
            .clone()
            .ok_or_else(|| ConnectionError::SecurityConfig {
                key: "sasl.oauthbearer.token",
                message:
                    "OAUTHBEARER needs sasl.oauthbearer.token or sasl.oauthbearer.token.command"
                        .into(),
            });
    };
    let failed = |message: String| ConnectionError::TokenCommand {
        command: command.clone(),
        message,
    };
    // stderr goes to ours (not into errors: it may hold secrets); the caller's connect timeout
    // bounds the wait, and kill_on_drop ends the command if it is exceeded.
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| failed(format!("could not run it: {e}")))?;
    if !output.status.success() {
        return Err(failed(format!("it exited with {}", output.status)));
    }
    let token =
        String::from_utf8(output.stdout).map_err(|_| failed("its output is not UTF-8".into()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(failed("it printed no token".into()));
    }
    Ok(super::Secret::new(token))
}

/// Whether the listener at `addr` expects SASL: a SaslHandshake v1 on a new connection (with
/// the same TLS settings) is answered with its mechanism list, where a listener without SASL
/// answers ILLEGAL_SASL_STATE. Returns the enabled mechanisms if so; `None` when it does not, or
/// when the probe cannot tell (the broker is gone, anything unexpected).
///
/// # Cancel safety
/// Cancel safe: the probe connection is dropped.
pub(crate) async fn listener_requires_sasl(
    addr: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Option<Vec<String>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    match tls {
        Some(config) => {
            let name = super::tls::server_name(addr).ok()?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .ok()?;
            handshake_probe(stream).await
        }
        None => handshake_probe(tcp).await,
    }
}

async fn handshake_probe<S>(mut stream: S) -> Option<Vec<String>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// A mechanism list is small; anything larger is not the answer we look for.
    const ANSWER_BYTES_MAX: i32 = 64 * 1024;
    let mut buf = bytes::BytesMut::new();
    let request = SaslHandshakeRequest::default().with_mechanism(kstr("PLAIN"));
    crate::protocol::messages::encode_request(&mut buf, &request, 1, 0, "exactly").ok()?;
    stream.write_all(&buf).await.ok()?;
    let size = stream.read_i32().await.ok()?;
    if !(4..=ANSWER_BYTES_MAX).contains(&size) {
        return None;
    }
    let mut frame = vec![0; size as usize];
    stream.read_exact(&mut frame).await.ok()?;
    let response =
        crate::protocol::messages::decode_response::<SaslHandshakeRequest>(Bytes::from(frame), 1)
            .ok()?;
    match response.error_code {
        0 | UNSUPPORTED_SASL_MECHANISM => {
            Some(response.mechanisms.iter().map(|m| m.to_string()).collect())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauthbearer_gs2_header() {
        assert_eq!(
            oauthbearer_initial_response("abc.def.ghi"),
            b"n,,\x01auth=Bearer abc.def.ghi\x01\x01"
        );
        assert_eq!(plain_initial_response("alice", "pw"), b"\0alice\0pw");
    }

    #[tokio::test]
    async fn the_token_command_is_run_and_trimmed() {
        let mut sasl = SaslConfig::new(SaslMechanism::OAuthBearer, "", "");
        sasl.oauthbearer_token = Some(super::super::Secret::new("static"));
        assert_eq!(oauthbearer_token(&sasl).await.unwrap().expose(), "static");
        sasl.oauthbearer_token_command = Some("printf '  tok-1\\n'".into());
        assert_eq!(oauthbearer_token(&sasl).await.unwrap().expose(), "tok-1");
        sasl.oauthbearer_token_command = Some("exit 3".into());
        let err = oauthbearer_token(&sasl).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("\"exit 3\" failed: it exited with exit status: 3"),
            "{err}"
        );
        assert!(err.is_security());
    }
}
