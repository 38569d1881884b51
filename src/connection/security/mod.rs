//! How a connection is secured: TLS (encryption, broker identity, optionally our own client
//! certificate) and SASL (who we are), configured in the vocabulary of librdkafka and the Java
//! client so that a user's existing settings carry over.
//!
//! Why both layers and in this order: Kafka's `security.protocol` names four listener kinds —
//! `PLAINTEXT`, `SSL` (TLS), `SASL_PLAINTEXT` and `SASL_SSL` (SASL inside TLS). On a SASL listener
//! the broker accepts exactly two things before authentication: ApiVersions and SaslHandshake
//! (KIP-152, <https://cwiki.apache.org/confluence/display/KAFKA/KIP-152+-+Improve+diagnostics+for+SASL+authentication+failures>;
//! <https://kafka.apache.org/protocol.html#sasl_handshake>). So a connection is: TCP, then the TLS
//! handshake ([`tls`]), then ApiVersions, then SaslHandshake + SaslAuthenticate ([`sasl`]), and
//! only then requests. The SASL exchange is carried in SaslAuthenticate requests (not raw bytes,
//! which only pre-KIP-152 clients use), so its failures come back with the broker's message.
//!
//! | key | values | meaning |
//! |---|---|---|
//! | `security.protocol` | `PLAINTEXT` (default), `SSL`, `SASL_PLAINTEXT`, `SASL_SSL` (any case) | the listener kind |
//! | `sasl.mechanism` (alias `sasl.mechanisms`) | `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `OAUTHBEARER` | required with a SASL protocol |
//! | `sasl.username`, `sasl.password` | text | PLAIN and SCRAM credentials |
//! | `sasl.oauthbearer.token` | text | OAUTHBEARER: a static bearer token (ours) |
//! | `sasl.oauthbearer.token.command` | shell command | OAUTHBEARER: run with `sh -c` at each (re)authentication; its trimmed stdout is the token (ours) |
//! | `ssl.ca.location` | PEM file | CAs trusted for the broker's certificate; default: the system's trust store |
//! | `ssl.certificate.location`, `ssl.key.location` | PEM files | client certificate (chain) and its private key: mutual TLS |
//! | `ssl.endpoint.identification.algorithm` | `https` (default), `none` | `none` skips the host name check (Java's key) |
//! | `enable.ssl.certificate.verification` | `true` (default), `false` | `false` accepts any certificate: **tests only** (librdkafka's key) |
//!
//! Secrets ([`Secret`]) print as `***` in `Debug` and `Display`, so a configuration can be
//! logged and no error ever carries a password or token.
//!
//! # Saying what to change
//!
//! A wrong setting must not look like an unreachable broker (retried until a deadline). TLS
//! and SASL failures are their own [`ConnectionError`] variants, fatal
//! ([`ConnectionError::is_security`]), each naming the key to change. Kafka does not always say
//! what went wrong, so the connection infers it where it can be sure:
//! - plaintext to a TLS listener: the broker answers with a TLS alert record (its header read
//!   as a frame size would be 350+ MB) → `TlsRequired`; if it closes without a word before
//!   ApiVersions is answered, a TLS ClientHello on a second connection tells
//!   (`tls::answers_tls`);
//! - TLS to a plaintext listener: it closes the connection at the ClientHello → `NotTls`;
//! - no SASL on a SASL listener: ApiVersions is answered, then the connection is closed at the
//!   first request; a SaslHandshake on a second connection lists the mechanisms
//!   (`sasl::listener_requires_sasl`) → `SaslRequired`; SASL on a listener without it:
//!   SaslHandshake answers ILLEGAL_SASL_STATE → `SaslNotEnabled`;
//! - the broker refusing our client certificate (TLS 1.3: an alert at the first read) → `Tls`
//!   naming `ssl.certificate.location`.
//!
//! When a probe cannot tell (the broker went away), the close stays a disconnect and is retried.

pub mod sasl;
pub(crate) mod scram;
pub mod tls;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use super::ConnectionError;

/// Which kind of listener the client talks to (`security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityProtocol {
    /// Neither TLS nor SASL.
    #[default]
    Plaintext,
    /// TLS, no SASL.
    Ssl,
    /// SASL without TLS: credentials in the clear unless the mechanism protects them (SCRAM).
    SaslPlaintext,
    /// SASL inside TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// Whether the connection is wrapped in TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether the client authenticates with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    /// The name as `security.protocol` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SecurityProtocol {
    type Err = SecurityConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Ok(Self::Plaintext),
            "SSL" => Ok(Self::Ssl),
            "SASL_PLAINTEXT" => Ok(Self::SaslPlaintext),
            "SASL_SSL" => Ok(Self::SaslSsl),
            _ => Err(SecurityConfigError::new(
                "security.protocol",
                format!("{s:?} is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
            )),
        }
    }
}

/// A password or token. Its `Debug` and `Display` print `***`; [`Secret::expose`] is the only
/// way to read it, used where it goes on the wire.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// TLS settings (`ssl.*`); used when [`SecurityProtocol::uses_tls`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of the CA certificates trusted for the broker's certificate
    /// (`ssl.ca.location`). `None`: the system's trust store.
    pub ca_location: Option<PathBuf>,
    /// PEM file of our certificate chain, for mutual TLS (`ssl.certificate.location`).
    pub certificate_location: Option<PathBuf>,
    /// PEM file of the private key of that certificate (`ssl.key.location`; PKCS#8, PKCS#1 or SEC1).
    pub key_location: Option<PathBuf>,
    /// Verify the broker's certificate chain. `false` accepts any certificate, which lets anyone
    /// in the middle read and change the traffic: for tests only
    /// ([`TlsConfig::danger_accept_any_certificate_for_tests_only`]); a warning is logged at
    /// each connection.
    pub verify_certificates: bool,
    /// Check that the certificate was issued for the host we connect to (the host part of the
    /// broker address; IP addresses match IP SANs).
    pub verify_hostname: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca_location: None,
            certificate_location: None,
            key_location: None,
            verify_certificates: true,
            verify_hostname: true,
        }
    }
}

impl TlsConfig {
    /// Turns certificate verification off. **Tests only**: the connection is then encrypted but
    /// not authenticated.
    pub fn danger_accept_any_certificate_for_tests_only(mut self) -> Self {
        self.verify_certificates = false;
        self
    }
}

/// A SASL mechanism (`sasl.mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// RFC 4616: user name and password in the clear (use it inside TLS only).
    Plain,
    /// RFC 5802 / RFC 7677 with SHA-256.
    ScramSha256,
    /// RFC 5802 with SHA-512.
    ScramSha512,
    /// RFC 7628: a bearer token (KIP-255).
    OAuthBearer,
}

impl SaslMechanism {
    /// The mechanism's name on the wire and in `sasl.mechanism`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SaslMechanism {
    type Err = SecurityConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(Self::Plain),
            "SCRAM-SHA-256" => Ok(Self::ScramSha256),
            "SCRAM-SHA-512" => Ok(Self::ScramSha512),
            "OAUTHBEARER" => Ok(Self::OAuthBearer),
            _ => Err(SecurityConfigError::new(
                "sasl.mechanism",
                format!("{s:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER"),
            )),
        }
    }
}

/// SASL settings (`sasl.*`); used when [`SecurityProtocol::uses_sasl`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslConfig {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// PLAIN / SCRAM user name (`sasl.username`).
    pub username: String,
    /// PLAIN / SCRAM password (`sasl.password`).
    pub password: Secret,
    /// OAUTHBEARER: a static token (`sasl.oauthbearer.token`).
    pub oauthbearer_token: Option<Secret>,
    /// OAUTHBEARER: a command run with `sh -c` at each (re)authentication whose trimmed stdout is
    /// the token (`sasl.oauthbearer.token.command`). Wins over a static token.
    pub oauthbearer_token_command: Option<String>,
}

impl SaslConfig {
    /// PLAIN or SCRAM credentials.
    pub fn new(mechanism: SaslMechanism, username: &str, password: &str) -> Self {
        Self {
            mechanism,
            username: username.to_owned(),
            password: Secret::new(password),
            oauthbearer_token: None,
            oauthbearer_token_command: None,
        }
    }
}

/// The security settings of a client: `Default` is plaintext without authentication.
///
/// The TLS settings are turned into a rustls client configuration once (files read, keys
/// parsed) by [`SecurityConfig::prepare`], which [`crate::client::Client::connect`] calls so that
/// a missing or malformed file is reported when the client is created; every connection of the
/// client then shares it.
#[derive(Clone, Default)]
pub struct SecurityConfig {
    /// The listener kind.
    pub protocol: SecurityProtocol,
    /// TLS settings (ignored unless the protocol uses TLS).
    pub tls: TlsConfig,
    /// SASL settings (required when the protocol uses SASL).
    pub sasl: Option<SaslConfig>,
    /// The rustls configuration built from `tls`, with the `TlsConfig` it was built from (so a
    /// changed `tls` is never served a stale one). Shared by clones.
    built: Arc<Mutex<Option<BuiltTls>>>,
}

/// A rustls configuration and the settings it was built from.
type BuiltTls = (TlsConfig, Arc<rustls::ClientConfig>);

impl fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurityConfig")
            .field("protocol", &self.protocol)
            .field("tls", &self.tls)
            .field("sasl", &self.sasl)
            .finish()
    }
}

impl PartialEq for SecurityConfig {
    fn eq(&self, other: &Self) -> bool {
        self.protocol == other.protocol && self.tls == other.tls && self.sasl == other.sasl
    }
}

/// A security setting that is unknown, malformed or inconsistent with the others.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct SecurityConfigError {
    /// The configuration key at fault.
    pub key: String,
    /// What is wrong and what to change.
    pub message: String,
}

impl SecurityConfigError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// Every key [`SecurityConfig::from_properties`] accepts.
pub const SECURITY_KEYS: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "sasl.oauthbearer.token",
    "sasl.oauthbearer.token.command",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
];

impl SecurityConfig {
    /// Plaintext, no authentication.
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// Reads `key = value` pairs in the librdkafka / Java vocabulary (see the module docs). A
    /// later pair overrides an earlier one with the same key. Unknown keys and inconsistent
    /// combinations are errors naming the key; `ssl.*` keys with a protocol without TLS are
    /// accepted and ignored, as librdkafka does.
    pub fn from_properties<K, V>(
        properties: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, SecurityConfigError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut config = Self::default();
        let mut mechanism: Option<(String, SaslMechanism)> = None;
        let mut username = None;
        let mut password = None;
        let mut token = None;
        let mut token_command = None;
        for (key, value) in properties {
            let (key, value) = (key.as_ref().trim(), value.as_ref());
            match key {
                "security.protocol" => config.protocol = value.parse()?,
                "sasl.mechanism" | "sasl.mechanisms" => {
                    let m = value.parse().map_err(|e: SecurityConfigError| {
                        SecurityConfigError::new(key, e.message)
                    })?;
                    mechanism = Some((key.to_owned(), m));
                }
                "sasl.username" => username = Some(value.to_owned()),
                "sasl.password" => password = Some(Secret::new(value)),
                "sasl.oauthbearer.token" => token = Some(Secret::new(value)),
                "sasl.oauthbearer.token.command" => token_command = Some(value.to_owned()),
                "ssl.ca.location" => config.tls.ca_location = Some(path(key, value)?),
                "ssl.certificate.location" => {
                    config.tls.certificate_location = Some(path(key, value)?)
                }
                "ssl.key.location" => config.tls.key_location = Some(path(key, value)?),
                "ssl.endpoint.identification.algorithm" => {
                    config.tls.verify_hostname = match value.trim().to_ascii_lowercase().as_str() {
                        "https" => true,
                        "none" | "" => false,
                        _ => {
                            return Err(SecurityConfigError::new(
                                key,
                                format!("{value:?} is not `https` (check the host name) or `none`"),
                            ))
                        }
                    }
                }
                "enable.ssl.certificate.verification" => {
                    config.tls.verify_certificates = parse_bool(key, value)?
                }
                "ssl.key.password" => {
                    return Err(SecurityConfigError::new(
                        key,
                        "encrypted private keys are not supported: decrypt the key (e.g. \
                         `openssl pkey -in KEY -out client-key.pem`), keep it readable only by \
                         the job's user, set ssl.key.location to it and drop ssl.key.password",
                    ))
                }
                _ => {
                    return Err(SecurityConfigError::new(
                        key,
                        format!(
                            "unknown security setting; known ones: {}",
                            SECURITY_KEYS.join(", ")
                        ),
                    ))
                }
            }
        }
        if (config.tls.certificate_location.is_some()) != (config.tls.key_location.is_some()) {
            let (given, missing) = if config.tls.certificate_location.is_some() {
                ("ssl.certificate.location", "ssl.key.location")
            } else {
                ("ssl.key.location", "ssl.certificate.location")
            };
            return Err(SecurityConfigError::new(
                missing,
                format!("{given} is set: mutual TLS needs both the certificate and its key"),
            ));
        }
        if !config.protocol.uses_sasl() {
            // sasl.* keys with a protocol without SASL: most likely a forgotten security.protocol.
            if let Some((key, m)) = &mechanism {
                return Err(SecurityConfigError::new(
                    "security.protocol",
                    format!(
                        "{key}={m} is set but security.protocol is {}: set security.protocol=SASL_SSL (or SASL_PLAINTEXT) to authenticate, or remove {key}",
                        config.protocol
                    ),
                ));
            }
            return Ok(config);
        }
        let Some((mechanism_key, mechanism)) = mechanism else {
            return Err(SecurityConfigError::new(
                "sasl.mechanism",
                format!(
                    "security.protocol={} needs a mechanism: set sasl.mechanism to PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER",
                    config.protocol
                ),
            ));
        };
        let sasl = match mechanism {
            SaslMechanism::Plain | SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
                let Some(username) = username.filter(|u| !u.is_empty()) else {
                    return Err(SecurityConfigError::new(
                        "sasl.username",
                        format!(
                            "{mechanism_key}={mechanism} needs sasl.username and sasl.password"
                        ),
                    ));
                };
                let Some(password) = password else {
                    return Err(SecurityConfigError::new(
                        "sasl.password",
                        format!(
                            "{mechanism_key}={mechanism} needs sasl.username and sasl.password"
                        ),
                    ));
                };
                SaslConfig {
                    mechanism,
                    username,
                    password,
                    oauthbearer_token: None,
                    oauthbearer_token_command: None,
                }
            }
            SaslMechanism::OAuthBearer => {
                if token.is_none() && token_command.is_none() {
                    return Err(SecurityConfigError::new(
                        "sasl.oauthbearer.token",
                        format!("{mechanism_key}=OAUTHBEARER needs a token: set sasl.oauthbearer.token or sasl.oauthbearer.token.command"),
                    ));
                }
                SaslConfig {
                    mechanism,
                    username: username.unwrap_or_default(),
                    password: password.unwrap_or_default(),
                    oauthbearer_token: token,
                    oauthbearer_token_command: token_command,
                }
            }
        };
        config.sasl = Some(sasl);
        Ok(config)
    }

    /// Checks the settings and builds the TLS configuration (reading the PEM files) once; later
    /// calls, and clones of this configuration, reuse it. Called by `Client::connect`, so that a
    /// missing file or a SASL protocol without credentials is reported before any connection.
    pub fn prepare(&self) -> Result<(), ConnectionError> {
        if self.protocol.uses_sasl() && self.sasl.is_none() {
            return Err(ConnectionError::SecurityConfig {
                key: "sasl.mechanism",
                message: format!(
                    "security.protocol={} needs SASL settings (mechanism and credentials)",
                    self.protocol
                ),
            });
        }
        if self.protocol.uses_tls() {
            self.rustls_config()?;
        }
        Ok(())
    }

    /// The rustls configuration for `self.tls`, built on first use and shared afterwards.
    pub(crate) fn rustls_config(&self) -> Result<Arc<rustls::ClientConfig>, ConnectionError> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((tls, config)) = built.as_ref() {
            if *tls == self.tls {
                return Ok(Arc::clone(config));
            }
        }
        let config = Arc::new(tls::client_config(&self.tls)?);
        *built = Some((self.tls.clone(), Arc::clone(&config)));
        Ok(config)
    }
}

fn path(key: &str, value: &str) -> Result<PathBuf, SecurityConfigError> {
    if value.trim().is_empty() {
        return Err(SecurityConfigError::new(key, "empty path"));
    }
    Ok(PathBuf::from(value.trim()))
}

fn parse_bool(key: &str, value: &str) -> Result<bool, SecurityConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(SecurityConfigError::new(
            key,
            format!("{value:?} is not `true` or `false`"),
        )),
    }
}

#[cfg(test)]
mod fake_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
