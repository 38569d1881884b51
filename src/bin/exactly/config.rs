//! The configuration of `exactly run`, from four layers: built-in defaults, a TOML file
//! (`--config job.toml`), environment variables `EXACTLY_<KEY>`, and flags `--<key>`; each later
//! layer overrides the earlier ones, key by key.
//!
//! Keys are snake_case everywhere: `checkpoint_dir` in the file, `EXACTLY_CHECKPOINT_DIR` in the
//! environment, `--checkpoint-dir` on the command line (flags keep clap's kebab spelling).
//!
//! [`merge`] is pure (the file's text and the environment are passed in), so every rule is unit
//! tested here. A rejected value names its key and where it came from, because the person
//! reading the message has to know which of the four layers to fix. Unknown keys in the file are
//! errors (a typo must not silently fall back to a default); unknown `EXACTLY_*` variables are
//! not, since other tools of the project use that prefix too (`EXACTLY_LOG`, ...).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use exactly::runtime::sink::DeliveryGuarantee;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The built-in default.
    Default,
    /// The `--config` file (its path as given).
    File(String),
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag (its spelling, `--input`).
    Flag(String),
    /// Several keys together (a rule relating them); each key's own origin is in the message.
    Combination,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "the default"),
            Origin::File(path) => write!(f, "the config file {path}"),
            Origin::Env(var) => write!(f, "the environment variable {var}"),
            Origin::Flag(flag) => write!(f, "the flag {flag}"),
            Origin::Combination => write!(f, "their combination"),
        }
    }
}

/// A rejected configuration: which key, from where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: `{key}` from {origin}: {reason}")]
pub(crate) struct ConfigError {
    /// The key (snake_case), or keys joined by `+` for a rule relating several.
    pub(crate) key: String,
    /// Where the offending value came from.
    pub(crate) origin: Origin,
    /// What is wrong, with the value.
    pub(crate) reason: String,
}

/// What a key holds.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Text, not empty.
    Text,
    /// An integer in `min..=max`.
    Integer { min: i64, max: i64 },
}

/// One configuration key.
struct Key {
    name: &'static str,
    kind: Kind,
    /// `None`: no default (required unless listed in [`OPTIONAL`]).
    default: Option<&'static str>,
}

const fn int(name: &'static str, min: i64, max: i64, default: &'static str) -> Key {
    Key {
        name,
        kind: Kind::Integer { min, max },
        default: Some(default),
    }
}

const fn text(name: &'static str, default: Option<&'static str>) -> Key {
    Key {
        name,
        kind: Kind::Text,
        default,
    }
}

/// The upper limit of every duration, in ms: a day for timeouts and intervals.
const DAY_MS: i64 = 86_400_000;
/// Windows may be up to a year long.
const YEAR_MS: i64 = 365 * DAY_MS;
/// Subtasks per stage, at most.
pub(crate) const PARALLELISM_MAX: i64 = 1024;

/// Every key, with its kind and default (the README's configuration reference lists the same).
const KEYS: &[Key] = &[
    text("brokers", Some("127.0.0.1:9092")),
    text("input", None),
    text("output", None),
    text("dead_letter", None),
    text("checkpoint_dir", None),
    int("checkpoint_interval_ms", 1, DAY_MS, "1000"),
    int("checkpoint_timeout_ms", 1, DAY_MS, "10000"),
    text("transactional_id_prefix", Some("exactly-fraud")),
    int("parallelism", 1, PARALLELISM_MAX, "1"),
    int("window_ms", 1, YEAR_MS, "60000"),
    int("threshold", 0, i64::MAX, "10"),
    int("out_of_orderness_ms", 0, YEAR_MS, "5000"),
    int("idle_timeout_ms", 1, DAY_MS, "30000"),
    int("transaction_timeout_ms", 1, i32::MAX as i64, "60000"),
    text("metrics_addr", None),
    int("restarts", 0, 1_000_000, "10"),
    int("restart_delay_ms", 0, DAY_MS, "2000"),
    // --- delivery guarantee (issue 9: at-least-once without checkpoints) ---
    text("delivery_guarantee", Some("exactly-once")),
    // --- end delivery guarantee ---
];

/// Keys that may stay unset.
const OPTIONAL: &[&str] = &["dead_letter", "metrics_addr"];

/// The validated settings of `exactly run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunSettings {
    pub(crate) brokers: String,
    pub(crate) input: String,
    pub(crate) output: String,
    pub(crate) dead_letter: Option<String>,
    pub(crate) checkpoint_dir: PathBuf,
    pub(crate) checkpoint_interval_ms: u64,
    pub(crate) checkpoint_timeout_ms: u64,
    pub(crate) transactional_id_prefix: String,
    pub(crate) parallelism: usize,
    pub(crate) window_ms: i64,
    pub(crate) threshold: u64,
    pub(crate) out_of_orderness_ms: i64,
    pub(crate) idle_timeout_ms: u64,
    pub(crate) transaction_timeout_ms: i32,
    pub(crate) metrics_addr: Option<String>,
    pub(crate) restarts: u32,
    pub(crate) restart_delay_ms: u64,
    // --- delivery guarantee (issue 9) ---
    /// `exactly-once` (checkpoints, two-phase commit) or `at-least-once` (no checkpoints, an
    /// idempotent producer; `checkpoint_dir` is then not needed and not used).
    pub(crate) delivery_guarantee: DeliveryGuarantee,
    // --- end delivery guarantee ---
}

/// A value before its kind is checked.
#[derive(Debug, Clone)]
enum Raw {
    Text(String),
    Integer(i64),
    /// A TOML value of another type (its type name).
    Other(&'static str),
}

impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Raw::Text(s) => write!(f, "{s:?}"),
            Raw::Integer(i) => write!(f, "{i}"),
            Raw::Other(t) => write!(f, "a {t}"),
        }
    }
}

/// The environment variable of `key`: `EXACTLY_` and the key in upper case.
pub(crate) fn env_var(key: &str) -> String {
    format!("EXACTLY_{}", key.to_ascii_uppercase())
}

/// The flag of `key`: `--` and the key in kebab case.
pub(crate) fn flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// The configuration file given with `--config`: its path (for messages) and text.
pub(crate) struct ConfigFile<'a> {
    pub(crate) path: &'a str,
    pub(crate) text: &'a str,
}

/// Merges the layers (defaults < file < environment < flags), then validates each key and the
/// rules between keys. `env` is the process environment (only `EXACTLY_<KEY>` of known keys are
/// read); `flags` are `(key, value)` for the flags given.
pub(crate) fn merge(
    file: Option<ConfigFile<'_>>,
    env: &[(String, String)],
    flags: &[(&str, String)],
) -> Result<RunSettings, ConfigError> {
    let mut values: BTreeMap<&'static str, (Raw, Origin)> = BTreeMap::new();
    for key in KEYS {
        if let Some(default) = key.default {
            values.insert(key.name, (Raw::Text(default.to_string()), Origin::Default));
        }
    }
    if let Some(file) = file {
        let origin = Origin::File(file.path.to_string());
        let table: toml::Table = file
            .text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError {
                key: "(file)".to_string(),
                origin: origin.clone(),
                reason: format!("not valid TOML: {}", e.message()),
            })?;
        for (name, value) in table {
            if name == KAFKA_TABLE {
                continue; // the security settings: read by `kafka_properties`
            }
            let Some(key) = KEYS.iter().find(|k| k.name == name) else {
                let snake = name.replace('-', "_");
                let hint = if let Some(hint) = kafka_table_hint(&name) {
                    hint
                } else if KEYS.iter().any(|k| k.name == snake) {
                    format!("; keys are snake_case: did you mean `{snake}`?")
                } else {
                    format!("; known keys: {}", names().join(", "))
                };
                return Err(ConfigError {
                    key: name,
                    origin,
                    reason: format!("unknown key{hint}"),
                });
            };
            let raw = match value {
                toml::Value::String(s) => Raw::Text(s),
                toml::Value::Integer(i) => Raw::Integer(i),
                other => Raw::Other(other.type_str()),
            };
            values.insert(key.name, (raw, origin.clone()));
        }
    }
    for key in KEYS {
        let var = env_var(key.name);
        if let Some((_, value)) = env.iter().rev().find(|(k, _)| *k == var) {
            values.insert(key.name, (Raw::Text(value.clone()), Origin::Env(var)));
        }
    }
    for (name, value) in flags {
        let Some(key) = KEYS.iter().find(|k| k.name == *name) else {
            // A flag the binary itself defines: a programming error, reported all the same.
            return Err(ConfigError {
                key: (*name).to_string(),
                origin: Origin::Flag(flag(name)),
                reason: "unknown key".to_string(),
            });
        };
        values.insert(
            key.name,
            (Raw::Text(value.clone()), Origin::Flag(flag(key.name))),
        );
    }
    let mut checked = Checked {
        values,
        origins: BTreeMap::new(),
    };
    // --- delivery guarantee (issue 9) ---
    let delivery_guarantee = checked.delivery_guarantee()?;
    // --- end delivery guarantee ---
    let settings = RunSettings {
        brokers: checked.text("brokers")?.expect("has a default"),
        input: checked.required("input")?,
        output: checked.required("output")?,
        dead_letter: checked.text("dead_letter")?,
        // Without checkpoints (at least once) there is nothing to keep: it may be left out.
        checkpoint_dir: PathBuf::from(match delivery_guarantee {
            DeliveryGuarantee::AtLeastOnce => checked.text("checkpoint_dir")?.unwrap_or_default(),
            _ => checked.required("checkpoint_dir")?,
        }),
        checkpoint_interval_ms: checked.integer("checkpoint_interval_ms")? as u64,
        checkpoint_timeout_ms: checked.integer("checkpoint_timeout_ms")? as u64,
        transactional_id_prefix: checked.text("transactional_id_prefix")?.expect("default"),
        parallelism: checked.integer("parallelism")? as usize,
        window_ms: checked.integer("window_ms")?,
        threshold: checked.integer("threshold")? as u64,
        out_of_orderness_ms: checked.integer("out_of_orderness_ms")?,
        idle_timeout_ms: checked.integer("idle_timeout_ms")? as u64,
        transaction_timeout_ms: checked.integer("transaction_timeout_ms")? as i32,
        metrics_addr: checked.text("metrics_addr")?,
        restarts: checked.integer("restarts")? as u32,
        restart_delay_ms: checked.integer("restart_delay_ms")? as u64,
        delivery_guarantee,
    };
    checked.relations(&settings)?;
    Ok(settings)
}

/// Every key's name, in the reference order.
fn names() -> Vec<&'static str> {
    KEYS.iter().map(|k| k.name).collect()
}

/// The merged values being checked, and the origin of each checked one (for the rules between
/// keys).
struct Checked {
    values: BTreeMap<&'static str, (Raw, Origin)>,
    origins: BTreeMap<&'static str, Origin>,
}

impl Checked {
    fn error(&self, key: &str, reason: String) -> ConfigError {
        let origin = self
            .values
            .get(key)
            .map(|(_, o)| o.clone())
            .unwrap_or(Origin::Default);
        ConfigError {
            key: key.to_string(),
            origin,
            reason,
        }
    }

    fn entry(&mut self, key: &'static str) -> Option<Raw> {
        let (raw, origin) = self.values.get(key)?.clone();
        self.origins.insert(key, origin);
        Some(raw)
    }

    /// A text key: `None` if unset; empty text is an error.
    fn text(&mut self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.entry(key) {
            None => Ok(None),
            Some(Raw::Text(s)) if s.trim().is_empty() => {
                Err(self.error(key, "must not be empty".to_string()))
            }
            Some(Raw::Text(s)) => Ok(Some(s)),
            Some(other) => Err(self.error(key, format!("expected a string, got {other}"))),
        }
    }

    /// A text key that must be set.
    fn required(&mut self, key: &'static str) -> Result<String, ConfigError> {
        debug_assert!(!OPTIONAL.contains(&key));
        self.text(key)?.ok_or_else(|| ConfigError {
            key: key.to_string(),
            origin: Origin::Default,
            reason: format!(
                "required: set {}, {} or `{key}` in the --config file",
                flag(key),
                env_var(key)
            ),
        })
    }

    /// An integer key (all have defaults), within its range.
    fn integer(&mut self, key: &'static str) -> Result<i64, ConfigError> {
        let Some(Key {
            kind: Kind::Integer { min, max },
            ..
        }) = KEYS.iter().find(|k| k.name == key)
        else {
            unreachable!("{key} is an integer key");
        };
        let value = match self.entry(key).expect("integer keys have defaults") {
            Raw::Integer(i) => i,
            Raw::Text(s) => s.trim().parse::<i64>().map_err(|_| {
                self.error(key, format!("expected an integer, got {:?}", s.as_str()))
            })?,
            other => return Err(self.error(key, format!("expected an integer, got {other}"))),
        };
        if value < *min || value > *max {
            return Err(self.error(key, format!("must be in {min}..={max}, got {value}")));
        }
        Ok(value)
    }

    // --- delivery guarantee (issue 9) ---
    /// `delivery_guarantee`: `exactly-once` or `at-least-once`.
    fn delivery_guarantee(&mut self) -> Result<DeliveryGuarantee, ConfigError> {
        let text = self.text("delivery_guarantee")?.expect("has a default");
        text.parse()
            .map_err(|reason| self.error("delivery_guarantee", reason))
    }
    // --- end delivery guarantee ---

    /// The rules between keys, once each is valid on its own.
    fn relations(&self, s: &RunSettings) -> Result<(), ConfigError> {
        let at = |key: &str| -> String {
            match self.origins.get(key) {
                Some(origin) => format!("{key} from {origin}"),
                None => key.to_string(),
            }
        };
        let both = |a: &str, b: &str, reason: String| ConfigError {
            key: format!("{a}+{b}"),
            origin: Origin::Combination,
            reason: format!("{reason} ({}; {})", at(a), at(b)),
        };
        // The sink's transactions stay open from one checkpoint to the commit after the next:
        // a broker timing them out earlier aborts output the checkpoint already promised.
        let needed = s.checkpoint_interval_ms + s.checkpoint_timeout_ms;
        if (s.transaction_timeout_ms as u64) <= needed {
            let mut e = both(
                "checkpoint_interval_ms",
                "checkpoint_timeout_ms",
                format!(
                    "transaction_timeout_ms ({}) must be above checkpoint_interval_ms + \
                     checkpoint_timeout_ms ({needed})",
                    s.transaction_timeout_ms
                ),
            );
            e.key = "transaction_timeout_ms".to_string();
            e.origin = self
                .origins
                .get("transaction_timeout_ms")
                .cloned()
                .unwrap_or(Origin::Default);
            return Err(e);
        }
        let topics = [
            ("input", Some(&s.input)),
            ("output", Some(&s.output)),
            ("dead_letter", s.dead_letter.as_ref()),
        ];
        for (i, (a, ta)) in topics.iter().enumerate() {
            for (b, tb) in &topics[i + 1..] {
                if let (Some(ta), Some(tb)) = (ta, tb) {
                    if ta == tb {
                        return Err(both(a, b, format!("the same topic {ta:?} twice")));
                    }
                }
            }
        }
        for broker in s.brokers.split(',') {
            if !host_port(broker.trim()) {
                return Err(self.error(
                    "brokers",
                    format!("expected comma-separated HOST:PORT, got {:?}", s.brokers),
                ));
            }
        }
        if let Some(addr) = &s.metrics_addr {
            if !host_port(addr) {
                return Err(self.error(
                    "metrics_addr",
                    format!("expected HOST:PORT (e.g. 127.0.0.1:9898), got {addr:?}"),
                ));
            }
        }
        Ok(())
    }
}

// --- Kafka client settings (TLS and SASL, issue 10) -------------------------------------------
// The `[kafka]` table of the `--config` file holds client settings in the librdkafka / Java
// vocabulary, spelled as in those clients' properties files, because that is what a user copies
// from their cluster's connection instructions:
//
//     [kafka]
//     security.protocol = "SASL_SSL"
//     sasl.mechanism = "SCRAM-SHA-512"
//     sasl.username = "fraud-job"
//
// TOML reads `security.protocol = ...` inside `[kafka]` as nested tables; they are flattened back
// into dotted keys here (a quoted `"security.protocol"` works too). The keys are checked by
// `crate::security`, which also layers the environment and the flags over them.

/// The table of the `--config` file holding the Kafka client settings.
pub(crate) const KAFKA_TABLE: &str = "kafka";

/// The `[kafka]` table of the `--config` file as `(dotted key, value)` pairs (none when the file
/// has no such table). Strings, integers and booleans are accepted (`enable.ssl.certificate.verification
/// = false`); other types are errors naming the key and the file.
pub(crate) fn kafka_properties(
    file: &ConfigFile<'_>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let origin = Origin::File(file.path.to_string());
    let table: toml::Table = file
        .text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError {
            key: "(file)".to_string(),
            origin: origin.clone(),
            reason: format!("not valid TOML: {}", e.message()),
        })?;
    let Some(kafka) = table.get(KAFKA_TABLE) else {
        return Ok(Vec::new());
    };
    let Some(kafka) = kafka.as_table() else {
        return Err(ConfigError {
            key: KAFKA_TABLE.to_string(),
            origin,
            reason: format!(
                "expected a table of client settings (`[kafka]` followed by lines like \
                 `security.protocol = \"SASL_SSL\"`), got a {}",
                kafka.type_str()
            ),
        });
    };
    let mut out = Vec::new();
    flatten(kafka, "", &origin, &mut out)?;
    Ok(out)
}

fn flatten(
    table: &toml::Table,
    prefix: &str,
    origin: &Origin,
    out: &mut Vec<(String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let text = match value {
            toml::Value::Table(inner) => {
                flatten(inner, &key, origin, out)?;
                continue;
            }
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(ConfigError {
                    key: format!("{KAFKA_TABLE}.{key}"),
                    origin: origin.clone(),
                    reason: format!("expected a string, got a {}", other.type_str()),
                })
            }
        };
        out.push((key, text));
    }
    Ok(())
}
/// For a top-level key of the file that is a client setting (`security_protocol`,
/// `sasl.username` — the latter parses as a table `sasl`): where it belongs.
fn kafka_table_hint(name: &str) -> Option<String> {
    const PREFIXES: &[&str] = &["security", "sasl", "ssl", "enable_ssl", "enable"];
    let first = name.split(['.', '_', '-']).next().unwrap_or(name);
    PREFIXES.contains(&first).then(|| {
        format!(
            "; TLS and SASL settings go in the [{KAFKA_TABLE}] table with their dotted names, \
             e.g. `[{KAFKA_TABLE}]` then `security.protocol = \"SASL_SSL\"`"
        )
    })
}
// --- end Kafka client settings ------------------------------------------------------------------

/// `HOST:PORT` with a non-empty host and a port number (IPv6 in brackets: `[::1]:9898`).
fn host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    const REQUIRED: &[(&str, &str)] = &[
        ("input", "cards"),
        ("output", "alerts"),
        ("checkpoint_dir", "/tmp/ck"),
    ];

    fn file(text: &str) -> Option<ConfigFile<'_>> {
        Some(ConfigFile {
            path: "job.toml",
            text,
        })
    }

    fn err(r: Result<RunSettings, ConfigError>) -> ConfigError {
        r.expect_err("should be rejected")
    }

    #[test]
    fn defaults_fill_what_is_not_given() {
        let s = merge(None, &[], &flags(REQUIRED)).unwrap();
        assert_eq!(
            s,
            RunSettings {
                brokers: "127.0.0.1:9092".into(),
                input: "cards".into(),
                output: "alerts".into(),
                dead_letter: None,
                checkpoint_dir: "/tmp/ck".into(),
                checkpoint_interval_ms: 1_000,
                checkpoint_timeout_ms: 10_000,
                transactional_id_prefix: "exactly-fraud".into(),
                parallelism: 1,
                window_ms: 60_000,
                threshold: 10,
                out_of_orderness_ms: 5_000,
                idle_timeout_ms: 30_000,
                transaction_timeout_ms: 60_000,
                metrics_addr: None,
                restarts: 10,
                restart_delay_ms: 2_000,
                delivery_guarantee: DeliveryGuarantee::ExactlyOnce,
            }
        );
    }

    #[test]
    fn flags_override_env_override_file() {
        let text = r#"
            input = "file-in"
            output = "file-out"
            checkpoint_dir = "/file"
            parallelism = 2
            window_ms = 1000
            threshold = 3
            dead_letter = "file-dlq"
        "#;
        let s = merge(
            file(text),
            &env(&[
                ("EXACTLY_PARALLELISM", "3"),
                ("EXACTLY_WINDOW_MS", "2000"),
                ("EXACTLY_BROKERS", "k1:9092,k2:9092"),
                ("EXACTLY_LOG", "debug"),
                ("EXACTLY_NOT_A_KEY", "whatever"),
            ]),
            &flags(&[("parallelism", "4"), ("input", "flag-in")]),
        )
        .unwrap();
        assert_eq!(s.input, "flag-in");
        assert_eq!(s.output, "file-out");
        assert_eq!(s.parallelism, 4, "flag over env over file");
        assert_eq!(s.window_ms, 2000, "env over file");
        assert_eq!(s.threshold, 3, "file over default");
        assert_eq!(s.brokers, "k1:9092,k2:9092");
        assert_eq!(s.dead_letter.as_deref(), Some("file-dlq"));
        assert_eq!(s.checkpoint_dir, PathBuf::from("/file"));
    }

    #[test]
    fn unknown_file_keys_are_rejected_with_a_hint() {
        let e = err(merge(
            file("checkpoint-dir = \"/x\""),
            &[],
            &flags(REQUIRED),
        ));
        assert_eq!(e.key, "checkpoint-dir");
        assert_eq!(e.origin, Origin::File("job.toml".into()));
        assert!(e.reason.contains("did you mean `checkpoint_dir`"), "{e}");
        let e = err(merge(file("paralelism = 2"), &[], &flags(REQUIRED)));
        assert_eq!(e.key, "paralelism");
        assert!(e.reason.contains("known keys: brokers, input"), "{e}");
        let e = err(merge(file("[job]\ninput = \"x\""), &[], &flags(REQUIRED)));
        assert_eq!(e.key, "job");
    }

    #[test]
    fn bad_toml_and_wrong_types_name_the_key_and_the_file() {
        let e = err(merge(file("input = "), &[], &flags(REQUIRED)));
        assert_eq!(e.origin, Origin::File("job.toml".into()));
        assert!(e.reason.contains("not valid TOML"), "{e}");
        let e = err(merge(file("parallelism = \"four\""), &[], &flags(REQUIRED)));
        assert_eq!(
            (e.key.as_str(), &e.origin),
            ("parallelism", &Origin::File("job.toml".into()))
        );
        assert!(e.reason.contains("expected an integer"), "{e}");
        let e = err(merge(file("window_ms = 1.5"), &[], &flags(REQUIRED)));
        assert_eq!(e.key, "window_ms");
        assert!(e.reason.contains("a float"), "{e}");
        let e = err(merge(file("output = 7"), &[], &flags(&REQUIRED[..1])));
        assert_eq!(e.key, "output");
        assert!(e.reason.contains("expected a string"), "{e}");
    }

    #[test]
    fn impossible_values_name_the_key_and_the_layer() {
        let e = err(merge(
            None,
            &env(&[("EXACTLY_PARALLELISM", "0")]),
            &flags(REQUIRED),
        ));
        assert_eq!(e.key, "parallelism");
        assert_eq!(e.origin, Origin::Env("EXACTLY_PARALLELISM".into()));
        assert!(e.to_string().contains("EXACTLY_PARALLELISM"), "{e}");
        let mut f = flags(REQUIRED);
        f.push(("window_ms", "0".to_string()));
        let e = err(merge(None, &[], &f));
        assert_eq!(
            (e.key.as_str(), &e.origin),
            ("window_ms", &Origin::Flag("--window-ms".into()))
        );
        assert!(e.to_string().contains("--window-ms"), "{e}");
        let e = err(merge(file("window_ms = -5"), &[], &flags(REQUIRED)));
        assert_eq!(e.origin, Origin::File("job.toml".into()));
        let e = err(merge(
            None,
            &env(&[("EXACTLY_THRESHOLD", "ten")]),
            &flags(REQUIRED),
        ));
        assert_eq!(e.key, "threshold");
        let e = err(merge(
            None,
            &env(&[("EXACTLY_TRANSACTION_TIMEOUT_MS", "3000000000")]),
            &flags(REQUIRED),
        ));
        assert_eq!(e.key, "transaction_timeout_ms");
        let mut f = flags(REQUIRED);
        f.push(("transactional_id_prefix", " ".to_string()));
        assert_eq!(err(merge(None, &[], &f)).key, "transactional_id_prefix");
    }

    #[test]
    fn transaction_timeout_must_exceed_interval_plus_checkpoint_timeout() {
        let text = "checkpoint_interval_ms = 20000\ncheckpoint_timeout_ms = 40000";
        let e = err(merge(file(text), &[], &flags(REQUIRED)));
        assert_eq!(e.key, "transaction_timeout_ms");
        assert_eq!(e.origin, Origin::Default);
        assert!(e.reason.contains("(60000)"), "{e}");
        assert!(
            e.reason
                .contains("checkpoint_interval_ms from the config file job.toml"),
            "{e}"
        );
        let mut f = flags(REQUIRED);
        f.push(("transaction_timeout_ms", "60001".to_string()));
        let s = merge(file(text), &[], &f).unwrap();
        assert_eq!(s.transaction_timeout_ms, 60_001);
    }

    #[test]
    fn required_keys_and_topic_collisions() {
        let e = err(merge(None, &[], &flags(&REQUIRED[1..])));
        assert_eq!(e.key, "input");
        assert!(
            e.reason.contains("--input, EXACTLY_INPUT or `input`"),
            "{e}"
        );
        let mut f = flags(REQUIRED);
        f.push(("dead_letter", "cards".to_string()));
        let e = err(merge(None, &[], &f));
        assert_eq!(e.key, "input+dead_letter");
        assert!(
            e.reason.contains("dead_letter from the flag --dead-letter"),
            "{e}"
        );
    }

    // --- delivery guarantee (issue 9) ---
    #[test]
    fn delivery_guarantee_from_each_layer_and_bad_values_name_the_key() {
        let s = merge(
            file("delivery_guarantee = \"at-least-once\""),
            &[],
            &flags(REQUIRED),
        );
        assert_eq!(
            s.unwrap().delivery_guarantee,
            DeliveryGuarantee::AtLeastOnce
        );
        let s = merge(
            file("delivery_guarantee = \"at-least-once\""),
            &env(&[("EXACTLY_DELIVERY_GUARANTEE", "exactly-once")]),
            &flags(REQUIRED),
        );
        assert_eq!(
            s.unwrap().delivery_guarantee,
            DeliveryGuarantee::ExactlyOnce
        );
        let mut f = flags(REQUIRED);
        f.push(("delivery_guarantee", "AT_LEAST_ONCE".to_string()));
        assert_eq!(
            merge(None, &[], &f).unwrap().delivery_guarantee,
            DeliveryGuarantee::AtLeastOnce
        );
        let e = err(merge(
            None,
            &env(&[("EXACTLY_DELIVERY_GUARANTEE", "twice")]),
            &flags(REQUIRED),
        ));
        assert_eq!(
            (e.key.as_str(), &e.origin),
            (
                "delivery_guarantee",
                &Origin::Env("EXACTLY_DELIVERY_GUARANTEE".into())
            )
        );
        assert!(e.reason.contains("\"at-least-once\""), "{e}");
        assert!(e.to_string().contains("`delivery_guarantee`"), "{e}");
        let e = err(merge(file("delivery_guarantee = 1"), &[], &flags(REQUIRED)));
        assert_eq!(e.key, "delivery_guarantee");
        assert!(e.reason.contains("expected a string"), "{e}");
    }

    #[test]
    fn at_least_once_needs_no_checkpoint_dir() {
        let mut f = flags(&REQUIRED[..2]);
        let e = err(merge(None, &[], &f));
        assert_eq!(e.key, "checkpoint_dir", "exactly-once still needs it");
        f.push(("delivery_guarantee", "at-least-once".to_string()));
        let s = merge(None, &[], &f).unwrap();
        assert_eq!(s.checkpoint_dir, PathBuf::new());
    }
    // --- end delivery guarantee ---

    #[test]
    fn client_settings_outside_the_kafka_table_are_pointed_there() {
        for text in ["security_protocol = \"SSL\"", "sasl.username = \"alice\""] {
            let e = err(merge(file(text), &[], &flags(REQUIRED)));
            assert!(e.reason.contains("[kafka] table"), "{e}");
        }
        // The table itself is not a job key.
        let s = merge(
            file("[kafka]\nsecurity.protocol = \"SSL\""),
            &[],
            &flags(REQUIRED),
        );
        assert!(s.is_ok(), "{s:?}");
    }

    #[test]
    fn addresses_are_host_and_port() {
        let mut f = flags(REQUIRED);
        f.push(("metrics_addr", "9898".to_string()));
        assert_eq!(err(merge(None, &[], &f)).key, "metrics_addr");
        let e = err(merge(
            None,
            &env(&[("EXACTLY_BROKERS", "k1:9092,k2")]),
            &flags(REQUIRED),
        ));
        assert_eq!(
            (e.key.as_str(), &e.origin),
            ("brokers", &Origin::Env("EXACTLY_BROKERS".into()))
        );
        let mut f = flags(REQUIRED);
        f.push(("metrics_addr", "[::1]:0".to_string()));
        assert_eq!(
            merge(None, &[], &f).unwrap().metrics_addr.as_deref(),
            Some("[::1]:0")
        );
    }
}
