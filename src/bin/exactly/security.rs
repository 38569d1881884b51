//! TLS and SASL settings of every subcommand, in the librdkafka / Java vocabulary
//! (`security.protocol`, `sasl.mechanism`, `ssl.ca.location`, ...; the library's
//! [`SecurityConfig::from_properties`] owns the keys and their rules).
//!
//! Why layers: a password belongs in the environment or a file readable only by the job, not
//! on a command line that `ps` shows; a quick test wants a flag. So each key can come from
//!
//! 1. the `[kafka]` table of `exactly run --config FILE` (dotted keys as in a properties file),
//! 2. the environment: `EXACTLY_` and the key in upper case with `_` for `.`
//!    (`EXACTLY_SASL_PASSWORD`, the scheme of `exactly run`'s other keys),
//! 3. `-X key=value` (repeatable, as in librdkafka's tools; a later one wins), and the named flags
//!    `--security-protocol`, `--sasl-mechanism`, `--sasl-username`, `--sasl-password`,
//!    `--ssl-ca-location`, `--ssl-certificate-location`, `--ssl-key-location`, which override `-X`
//!    for their key,
//!
//! each later layer overriding the earlier ones key by key. A rejected setting names its key and
//! the layer it came from ([`ConfigError`]). Secrets (`sasl.password`, `sasl.oauthbearer.token`)
//! never appear in messages or logs: the library's `Secret` prints `***`, and so does this
//! module's `Debug` of the flags.

use std::collections::BTreeMap;
use std::fmt;

use clap::Args;
use exactly::client::types::{SecurityConfig, SECURITY_KEYS};

use crate::config::{kafka_properties, ConfigError, ConfigFile, Origin};

/// Keys whose values are secrets: never printed.
const SECRET_KEYS: &[&str] = &["sasl.password", "sasl.oauthbearer.token"];

/// The global security flags (see the module docs).
#[derive(Clone, Default, Args)]
pub(crate) struct SecurityArgs {
    /// A Kafka client setting, librdkafka style (repeatable): security.protocol, sasl.mechanism,
    /// sasl.username, sasl.password, sasl.oauthbearer.token, sasl.oauthbearer.token.command,
    /// ssl.ca.location, ssl.certificate.location, ssl.key.location,
    /// ssl.endpoint.identification.algorithm, enable.ssl.certificate.verification
    /// [env: EXACTLY_<KEY>, e.g. EXACTLY_SASL_PASSWORD].
    #[arg(short = 'X', global = true, value_name = "KEY=VALUE")]
    properties: Vec<String>,
    /// PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL [env: EXACTLY_SECURITY_PROTOCOL].
    #[arg(long, global = true, value_name = "PROTOCOL")]
    security_protocol: Option<String>,
    /// PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER [env: EXACTLY_SASL_MECHANISM].
    #[arg(long, global = true, value_name = "MECHANISM")]
    sasl_mechanism: Option<String>,
    /// SASL user name (PLAIN, SCRAM) [env: EXACTLY_SASL_USERNAME].
    #[arg(long, global = true, value_name = "NAME")]
    sasl_username: Option<String>,
    /// SASL password (PLAIN, SCRAM); prefer the environment, a flag shows in `ps`
    /// [env: EXACTLY_SASL_PASSWORD].
    #[arg(long, global = true, value_name = "PASSWORD")]
    sasl_password: Option<String>,
    /// PEM file of the CA(s) trusted for the brokers' certificates; default: the system's
    /// [env: EXACTLY_SSL_CA_LOCATION].
    #[arg(long, global = true, value_name = "FILE")]
    ssl_ca_location: Option<String>,
    /// PEM file of the client certificate, for mutual TLS [env: EXACTLY_SSL_CERTIFICATE_LOCATION].
    #[arg(long, global = true, value_name = "FILE")]
    ssl_certificate_location: Option<String>,
    /// PEM file of the client certificate's private key [env: EXACTLY_SSL_KEY_LOCATION].
    #[arg(long, global = true, value_name = "FILE")]
    ssl_key_location: Option<String>,
}

impl fmt::Debug for SecurityArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: Vec<String> = self
            .properties
            .iter()
            .map(|p| match p.split_once('=') {
                Some((k, _)) if is_secret(k) => format!("{k}=***"),
                _ => p.clone(),
            })
            .collect();
        f.debug_struct("SecurityArgs")
            .field("properties", &properties)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password.as_ref().map(|_| "***"))
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("ssl_certificate_location", &self.ssl_certificate_location)
            .field("ssl_key_location", &self.ssl_key_location)
            .finish()
    }
}

/// The named flags and their keys.
const NAMED_FLAGS: &[(&str, &str)] = &[
    ("security.protocol", "--security-protocol"),
    ("sasl.mechanism", "--sasl-mechanism"),
    ("sasl.username", "--sasl-username"),
    ("sasl.password", "--sasl-password"),
    ("ssl.ca.location", "--ssl-ca-location"),
    ("ssl.certificate.location", "--ssl-certificate-location"),
    ("ssl.key.location", "--ssl-key-location"),
];

impl SecurityArgs {
    /// The named flags given, as `(key, flag, value)`.
    fn named(&self) -> Vec<(&'static str, &'static str, String)> {
        let values = [
            &self.security_protocol,
            &self.sasl_mechanism,
            &self.sasl_username,
            &self.sasl_password,
            &self.ssl_ca_location,
            &self.ssl_certificate_location,
            &self.ssl_key_location,
        ];
        NAMED_FLAGS
            .iter()
            .zip(values)
            .filter_map(|((k, f), v)| v.clone().map(|v| (*k, *f, v)))
            .collect()
    }
}

fn is_secret(key: &str) -> bool {
    SECRET_KEYS.contains(&key.trim())
}

/// The environment variable of a security key: `EXACTLY_SASL_PASSWORD` for `sasl.password`.
pub(crate) fn env_var(key: &str) -> String {
    format!("EXACTLY_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// `sasl.mechanisms` (librdkafka's plural) is the same setting as `sasl.mechanism`: one slot,
/// so that the layers override each other whichever spelling each uses.
fn canonical(key: &str) -> &str {
    match key.trim() {
        "sasl.mechanisms" => "sasl.mechanism",
        k => k,
    }
}

/// The settings after layering, each with its origin.
#[derive(Debug, Default)]
pub(crate) struct Resolved {
    /// The client's security configuration.
    pub(crate) config: SecurityConfig,
    /// Whether any security key was given at all (the demo refuses them).
    pub(crate) any_given: bool,
}

/// Layers the `[kafka]` table of `file` (for `exactly run`), the environment and the flags, and
/// checks the result with the library's rules.
pub(crate) fn resolve(
    file: Option<&ConfigFile<'_>>,
    env: &[(String, String)],
    args: &SecurityArgs,
) -> Result<Resolved, ConfigError> {
    let mut values: BTreeMap<String, (String, Origin)> = BTreeMap::new();
    if let Some(file) = file {
        for (key, value) in kafka_properties(file)? {
            let origin = Origin::File(file.path.to_string());
            values.insert(canonical(&key).to_string(), (value, origin));
        }
    }
    for key in SECURITY_KEYS {
        let var = env_var(key);
        if let Some((_, value)) = env.iter().rev().find(|(k, _)| *k == var) {
            values.insert(
                canonical(key).to_string(),
                (value.clone(), Origin::Env(var)),
            );
        }
    }
    for property in &args.properties {
        let Some((key, value)) = property.split_once('=') else {
            // The argument is not echoed: it might be a secret given without its key.
            return Err(ConfigError {
                key: "-X".to_string(),
                origin: Origin::Flag("-X".to_string()),
                reason: "expected KEY=VALUE (e.g. -X security.protocol=SASL_SSL), got an \
                         argument without `=`"
                    .to_string(),
            });
        };
        let key = key.trim();
        values.insert(
            canonical(key).to_string(),
            (value.to_string(), Origin::Flag(format!("-X {key}"))),
        );
    }
    for (key, flag, value) in args.named() {
        values.insert(key.to_string(), (value, Origin::Flag(flag.to_string())));
    }
    let any_given = !values.is_empty();
    let config =
        SecurityConfig::from_properties(values.iter().map(|(k, (v, _))| (k.as_str(), v.as_str())))
            .map_err(|e| {
                let key = canonical(&e.key).to_string();
                match values.get(&key) {
                    Some((_, origin)) => ConfigError {
                        key,
                        origin: origin.clone(),
                        reason: e.message,
                    },
                    None => ConfigError {
                        reason: format!("{} ({})", e.message, where_to_set(&key)),
                        key,
                        origin: Origin::Default,
                    },
                }
            })?;
    Ok(Resolved { config, any_given })
}

/// Where a key can be set, for the message about a missing one.
fn where_to_set(key: &str) -> String {
    let flag = NAMED_FLAGS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, f)| format!("{f}, "))
        .unwrap_or_default();
    format!(
        "set it with {flag}-X {key}=..., {} or `{key}` in the [kafka] table of the --config file",
        env_var(key)
    )
}

#[cfg(test)]
mod tests {
    use exactly::client::types::{SaslMechanism, SecurityProtocol};

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    fn file(text: &str) -> ConfigFile<'_> {
        ConfigFile {
            path: "job.toml",
            text,
        }
    }

    fn x(pairs: &[&str]) -> SecurityArgs {
        SecurityArgs {
            properties: pairs.iter().map(|p| (*p).to_string()).collect(),
            ..SecurityArgs::default()
        }
    }

    #[test]
    fn nothing_given_is_plaintext() {
        let r = resolve(None, &env(&[("EXACTLY_LOG", "debug")]), &x(&[])).unwrap();
        assert_eq!(r.config.protocol, SecurityProtocol::Plaintext);
        assert!(r.config.sasl.is_none());
        assert!(!r.any_given);
    }

    #[test]
    fn the_kafka_table_is_read_with_dotted_and_quoted_keys() {
        let text = r#"
            input = "cards"
            [kafka]
            security.protocol = "SASL_SSL"
            "sasl.mechanism" = "SCRAM-SHA-512"
            sasl.username = "alice"
            sasl.password = "file-secret"
            ssl.ca.location = "/etc/ca.pem"
            enable.ssl.certificate.verification = true
        "#;
        let r = resolve(Some(&file(text)), &[], &x(&[])).unwrap();
        assert_eq!(r.config.protocol, SecurityProtocol::SaslSsl);
        let sasl = r.config.sasl.as_ref().unwrap();
        assert_eq!(sasl.mechanism, SaslMechanism::ScramSha512);
        assert_eq!(sasl.username, "alice");
        assert_eq!(sasl.password.expose(), "file-secret");
        assert_eq!(
            r.config.tls.ca_location.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        // The run keys ignore the table, and the table alone parses without a [kafka] table.
        let r = resolve(Some(&file("input = \"cards\"")), &[], &x(&[])).unwrap();
        assert!(!r.any_given);
    }

    #[test]
    fn flags_override_x_override_env_override_file() {
        let text = "[kafka]\nsecurity.protocol = \"SSL\"\nsasl.username = \"file-user\"\n\
                    sasl.password = \"file-pw\"\nsasl.mechanism = \"PLAIN\"";
        let e = env(&[
            ("EXACTLY_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
            ("EXACTLY_SASL_USERNAME", "env-user"),
            ("EXACTLY_SASL_PASSWORD", "env-pw"),
        ]);
        let mut args = x(&["sasl.username=x-user", "security.protocol=SASL_SSL"]);
        args.sasl_username = Some("flag-user".into());
        let r = resolve(Some(&file(text)), &e, &args).unwrap();
        assert_eq!(r.config.protocol, SecurityProtocol::SaslSsl, "-X over env");
        let sasl = r.config.sasl.unwrap();
        assert_eq!(sasl.username, "flag-user", "named flag over -X");
        assert_eq!(sasl.password.expose(), "env-pw", "env over file");
        assert_eq!(sasl.mechanism, SaslMechanism::Plain, "file");
        // librdkafka's plural spelling is the same slot.
        let r = resolve(
            Some(&file(text)),
            &[],
            &x(&[
                "sasl.mechanisms=SCRAM-SHA-256",
                "security.protocol=SASL_SSL",
            ]),
        )
        .unwrap();
        assert_eq!(r.config.sasl.unwrap().mechanism, SaslMechanism::ScramSha256);
    }

    #[test]
    fn errors_name_the_key_and_the_layer() {
        let e = resolve(None, &[], &x(&["security.protocol=TLS"])).unwrap_err();
        assert_eq!(e.key, "security.protocol");
        assert_eq!(e.origin, Origin::Flag("-X security.protocol".into()));
        assert!(e.to_string().contains("SASL_SSL"), "{e}");
        let e = resolve(
            None,
            &env(&[
                ("EXACTLY_SASL_MECHANISM", "GSSAPI"),
                ("EXACTLY_SECURITY_PROTOCOL", "SASL_SSL"),
            ]),
            &x(&[]),
        )
        .unwrap_err();
        assert_eq!(e.key, "sasl.mechanism");
        assert_eq!(e.origin, Origin::Env("EXACTLY_SASL_MECHANISM".into()));
        let e = resolve(
            Some(&file("[kafka]\nbootstrap.servers = \"x:1\"")),
            &[],
            &x(&[]),
        )
        .unwrap_err();
        assert_eq!(e.key, "bootstrap.servers");
        assert_eq!(e.origin, Origin::File("job.toml".into()));
        assert!(e.reason.contains("unknown"), "{e}");
        let e = resolve(Some(&file("[kafka]\nsasl.username = [1]")), &[], &x(&[])).unwrap_err();
        assert_eq!(e.key, "kafka.sasl.username");
        let e = resolve(Some(&file("kafka = 3")), &[], &x(&[])).unwrap_err();
        assert_eq!(e.key, "kafka");
        // A missing key says where to set it.
        let mut args = x(&["security.protocol=SASL_SSL", "sasl.mechanism=SCRAM-SHA-256"]);
        args.sasl_username = Some("alice".into());
        let e = resolve(None, &[], &args).unwrap_err();
        assert_eq!(e.key, "sasl.password");
        assert!(
            e.reason
                .contains("--sasl-password, -X sasl.password=..., EXACTLY_SASL_PASSWORD"),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_x_is_rejected_without_echoing_it() {
        let e = resolve(None, &[], &x(&["hunter2"])).unwrap_err();
        assert_eq!(e.key, "-X");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn secrets_are_never_printed() {
        let text = "[kafka]\nsecurity.protocol = \"SASL_SSL\"\nsasl.mechanism = \"PLAIN\"\n\
                    sasl.username = \"alice\"\nsasl.password = \"file-hunter2\"";
        let r = resolve(Some(&file(text)), &[], &x(&[])).unwrap();
        let shown = format!("{:?}", r.config);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
        let mut args = x(&[
            "security.protocol=SASL_SSL",
            "sasl.mechanism=OAUTHBEARER",
            "sasl.oauthbearer.token=tok-hunter2",
            "sasl.password=x-hunter2",
        ]);
        args.sasl_password = Some("flag-hunter2".into());
        let shown = format!("{args:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let r = resolve(None, &[], &args).unwrap();
        let shown = format!("{r:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        // A rejected setting next to a secret does not print the secret either.
        let mut args = x(&["security.protocol=SASL_SSL", "sasl.mechanism=NOPE"]);
        args.sasl_password = Some("flag-hunter2".into());
        let e = resolve(None, &[], &args).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
