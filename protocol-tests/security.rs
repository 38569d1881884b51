//! TLS and SASL against the project's broker's secured listeners (`scripts/kafka security` lists
//! them: SSL, SASL_PLAINTEXT, SASL_SSL, mutual TLS, a TLS listener whose certificate names
//! another host, and a SASL listener with 10 s sessions for re-authentication).
//!
//! Positive: produce, a committed and an aborted transaction, and a `read_committed` read over
//! every secured listener and SASL mechanism. Negative: each misconfiguration is a clear error
//! (the variant, and a message that says what to change) within a bounded time; no test waits
//! for a timeout to pass. End to end: the fraud job over SASL_SSL through the `exactly` binary
//! (settings by flag, `-X`, environment and the job's TOML), and records crossing between
//! `exactly` and Kafka's Java console tools over SASL_SSL.
//!
//! A broker without the secured listeners (an old `scripts/kafka`, or `EXACTLY_TEST_BROKERS`
//! naming another broker) is a loud failure, never a skip.

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use exactly::client::admin::{Admin, Isolation};
use exactly::client::producer::{Producer, ProducerConfig, ProducerRecord};
use exactly::client::transaction::{TransactionConfig, TransactionalProducer, TxnOutcome};
use exactly::client::types::SecurityConfig;
use exactly::client::{Client, ClientConfig, ClientError};
use exactly::connection::{Connection, ConnectionConfig, ConnectionError};
use exactly::protocol::messages::messages::MetadataRequest;

use crate::common::{
    brokers, exactly_bin, init_logging, kafka_tool, read_all, repo_root, unique_topic,
};

/// Longest a negative test may take: well above the connect timeout and retry deadline used
/// here, so that an error that only comes from a timeout still fails the test's assertions
/// rather than hanging it.
const NEGATIVE_DEADLINE: Duration = Duration::from_secs(60);
/// Longest any one `exactly` command may run.
const COMMAND_DEADLINE: Duration = Duration::from_secs(180);

/// The output of `scripts/kafka security` (KEY=VALUE lines), after the broker is up.
fn secured() -> &'static HashMap<String, String> {
    static MAP: OnceLock<HashMap<String, String>> = OnceLock::new();
    MAP.get_or_init(|| {
        let plaintext = brokers(); // starts the project's broker when EXACTLY_TEST_BROKERS is unset
        let output = Command::new("bash")
            .arg(repo_root().join("scripts/kafka"))
            .arg("security")
            .output()
            .expect("run scripts/kafka security");
        assert!(
            output.status.success(),
            "the security tests need the project's broker with its secured listeners \
             (scripts/kafka up; the broker at {plaintext} must be the one scripts/kafka manages, \
             with EXACTLY_KAFKA_PORT set to its port): `scripts/kafka security` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let map: HashMap<String, String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(
            map.get("PLAINTEXT_BOOTSTRAP").map(String::as_str),
            Some(plaintext),
            "scripts/kafka security describes another broker than the one under test \
             ({plaintext}): set EXACTLY_KAFKA_PORT to the test broker's port"
        );
        map
    })
}

fn get(key: &str) -> &'static str {
    secured()
        .get(key)
        .unwrap_or_else(|| panic!("scripts/kafka security printed no {key}"))
}

fn security(pairs: &[(&str, &str)]) -> SecurityConfig {
    SecurityConfig::from_properties(pairs.iter().copied())
        .unwrap_or_else(|e| panic!("security settings {pairs:?}: {e}"))
}

/// TLS trusting the test CA.
fn ssl() -> SecurityConfig {
    security(&[
        ("security.protocol", "SSL"),
        ("ssl.ca.location", get("SSL_CA_LOCATION")),
    ])
}

/// SASL (over TLS when `protocol` is SASL_SSL) with the first test user.
fn sasl(protocol: &str, mechanism: &str) -> SecurityConfig {
    security(&[
        ("security.protocol", protocol),
        ("sasl.mechanism", mechanism),
        ("sasl.username", get("SASL_USERNAME")),
        ("sasl.password", get("SASL_PASSWORD")),
        ("ssl.ca.location", get("SSL_CA_LOCATION")),
    ])
}

fn mtls() -> SecurityConfig {
    security(&[
        ("security.protocol", "SSL"),
        ("ssl.ca.location", get("SSL_CA_LOCATION")),
        ("ssl.certificate.location", get("SSL_CERTIFICATE_LOCATION")),
        ("ssl.key.location", get("SSL_KEY_LOCATION")),
    ])
}

fn config(bootstrap: &str, security: SecurityConfig) -> ClientConfig {
    let mut config = ClientConfig::new(bootstrap);
    config.connection.security = security;
    config.connection.connect_timeout_ms = 10_000;
    config.retry.deadline_ms = 20_000;
    config
}

async fn connect(bootstrap: &str, security: SecurityConfig) -> Result<Client, ClientError> {
    init_logging();
    Client::connect(config(bootstrap, security)).await
}

/// Produces, commits one transaction and aborts another over `client`, then reads the topic
/// `read_committed` and `read_uncommitted` over the same client.
async fn round_trip(client: Client, what: &str) {
    let topic = unique_topic(&format!("sec-{what}"));
    Admin::new(client.clone())
        .create_topic(&topic, 1, &[])
        .await
        .unwrap_or_else(|e| panic!("{what}: create topic: {e}"));
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap_or_else(|e| panic!("{what}: producer: {e}"));
    let mut deliveries = Vec::new();
    for i in 0..5 {
        deliveries.push(
            producer
                .send(ProducerRecord::new(topic.clone(), format!("plain-{i}")))
                .await
                .unwrap_or_else(|e| panic!("{what}: send: {e}")),
        );
    }
    producer.flush().await.unwrap();
    for d in deliveries {
        d.await.unwrap_or_else(|e| panic!("{what}: delivery: {e}"));
    }
    let txn = TransactionalProducer::init(
        client.clone(),
        TransactionConfig::new(unique_topic(&format!("sec-{what}-txn"))),
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: init transactions: {e}"));
    txn.begin().await.unwrap();
    for i in 0..3 {
        txn.send(ProducerRecord::new(topic.clone(), format!("committed-{i}")))
            .await
            .unwrap();
    }
    assert_eq!(txn.commit().await.unwrap(), TxnOutcome::Committed, "{what}");
    txn.begin().await.unwrap();
    for i in 0..3 {
        txn.send(ProducerRecord::new(topic.clone(), format!("aborted-{i}")))
            .await
            .unwrap();
    }
    txn.flush().await.unwrap();
    txn.abort().await.unwrap();
    let values = |records: Vec<exactly::client::types::Record>| -> Vec<String> {
        records
            .into_iter()
            .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
            .collect()
    };
    let committed = values(read_all(&client, &topic, 0, Isolation::ReadCommitted).await);
    let want: Vec<String> = (0..5)
        .map(|i| format!("plain-{i}"))
        .chain((0..3).map(|i| format!("committed-{i}")))
        .collect();
    assert_eq!(committed, want, "{what}: read_committed");
    let all = values(read_all(&client, &topic, 0, Isolation::ReadUncommitted).await);
    assert_eq!(
        all.len(),
        11,
        "{what}: read_uncommitted sees the aborted records: {all:?}"
    );
}

async fn connected(bootstrap: &str, security: SecurityConfig, what: &str) -> Client {
    connect(bootstrap, security)
        .await
        .unwrap_or_else(|e| panic!("{what}: cannot connect to {bootstrap}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_round_trip() {
    let client = connected(get("SSL_BOOTSTRAP"), ssl(), "SSL").await;
    round_trip(client, "ssl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_round_trip() {
    let client = connected(get("MTLS_BOOTSTRAP"), mtls(), "mTLS").await;
    round_trip(client, "mtls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_round_trip_with_each_mechanism() {
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let client = connected(
            get("SASL_SSL_BOOTSTRAP"),
            sasl("SASL_SSL", mechanism),
            mechanism,
        )
        .await;
        round_trip(client, &mechanism.to_ascii_lowercase()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plaintext_round_trip() {
    let client = connected(
        get("SASL_PLAINTEXT_BOOTSTRAP"),
        sasl("SASL_PLAINTEXT", "SCRAM-SHA-256"),
        "SASL_PLAINTEXT",
    )
    .await;
    round_trip(client, "sasl-plaintext").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_round_trip() {
    let static_token = security(&[
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "OAUTHBEARER"),
        ("sasl.oauthbearer.token", get("OAUTHBEARER_TOKEN")),
        ("ssl.ca.location", get("SSL_CA_LOCATION")),
    ]);
    let client = connected(get("SASL_SSL_BOOTSTRAP"), static_token, "OAUTHBEARER").await;
    round_trip(client, "oauthbearer").await;
    // The token from a command, run at each authentication.
    let command = format!("printf '%s' '{}'", get("OAUTHBEARER_TOKEN"));
    let from_command = security(&[
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", "OAUTHBEARER"),
        ("sasl.oauthbearer.token.command", &command),
    ]);
    let client = connected(
        get("SASL_PLAINTEXT_BOOTSTRAP"),
        from_command,
        "OAUTHBEARER (command)",
    )
    .await;
    Admin::new(client).broker_ids().await.unwrap();
}

/// KIP-368: on the REAUTH listener the broker ends each session after REAUTH_MS and closes a
/// connection used after that without re-authenticating. One connection kept busy for more than
/// two session lifetimes must keep working (the client re-authenticates on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_connection_outlives_its_sasl_session() {
    init_logging();
    let lifetime_ms: u64 = get("REAUTH_MS").parse().unwrap();
    let config = ConnectionConfig {
        security: sasl("SASL_PLAINTEXT", "SCRAM-SHA-512"),
        ..ConnectionConfig::default()
    };
    let conn = Connection::connect(get("REAUTH_BOOTSTRAP"), config)
        .await
        .expect("connect to the REAUTH listener");
    let began = Instant::now();
    let mut requests = 0;
    while began.elapsed() < Duration::from_millis(lifetime_ms * 5 / 2) {
        conn.request(&MetadataRequest::default().with_topics(Some(vec![])))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "request {requests} after {:?} on one connection (session lifetime \
                     {lifetime_ms} ms): {e}",
                    began.elapsed()
                )
            });
        requests += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(conn.poisoned().is_none(), "{:?}", conn.poisoned());
}

// ---- Negative: each a clear error, within a bounded time ----

/// Connects with `security` to `bootstrap` and makes one request, expecting a failure within
/// [`NEGATIVE_DEADLINE`]; returns the error and its message.
async fn refused_any(
    bootstrap: &str,
    security: SecurityConfig,
    what: &str,
) -> (ClientError, String) {
    let began = Instant::now();
    let result = tokio::time::timeout(NEGATIVE_DEADLINE, async {
        // A client that connected must still fail at its first real request.
        let client = connect(bootstrap, security).await?;
        Admin::new(client).broker_ids().await.map(|_| ())
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: no error within {NEGATIVE_DEADLINE:?}: it hangs"));
    let error = match result {
        Ok(()) => panic!("{what}: connected to {bootstrap}, expected a refusal"),
        Err(e) => e,
    };
    let message = error.to_string();
    eprintln!(
        "{what}: refused after {} ms: {message}",
        began.elapsed().as_millis()
    );
    (error, message)
}

/// [`refused_any`], expecting a connection-level error (TLS and SASL failures are).
async fn refused(
    bootstrap: &str,
    security: SecurityConfig,
    what: &str,
) -> (ConnectionError, String) {
    match refused_any(bootstrap, security, what).await {
        (ClientError::Connection(e), message) => (e, message),
        (other, _) => panic!("{what}: expected a connection error, got {other:?} ({other})"),
    }
}

fn assert_says(what: &str, message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            message.contains(needle),
            "{what}: the message should say {needle:?}: {message}"
        );
    }
    for secret in [get("SASL_PASSWORD"), get("OAUTHBEARER_TOKEN")] {
        assert!(
            !message.contains(secret),
            "{what}: the message shows a secret: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_an_authentication_error() {
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let wrong = security(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", mechanism),
            ("sasl.username", get("SASL_USERNAME")),
            ("sasl.password", "not-the-password"),
            ("ssl.ca.location", get("SSL_CA_LOCATION")),
        ]);
        let (e, msg) = refused(get("SASL_SSL_BOOTSTRAP"), wrong, mechanism).await;
        assert!(
            matches!(e, ConnectionError::AuthenticationFailed { .. }),
            "{mechanism}: {e:?}"
        );
        assert_says(mechanism, &msg, &["sasl.username", "sasl.password"]);
        assert!(!msg.contains("not-the-password"), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_and_bad_token_are_authentication_errors() {
    let nobody = security(&[
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", "nobody"),
        ("sasl.password", "whatever"),
    ]);
    let (e, msg) = refused(get("SASL_PLAINTEXT_BOOTSTRAP"), nobody, "unknown user").await;
    assert!(
        matches!(e, ConnectionError::AuthenticationFailed { .. }),
        "{e:?}"
    );
    assert_says("unknown user", &msg, &["sasl.username"]);
    let garbage = security(&[
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", "OAUTHBEARER"),
        ("sasl.oauthbearer.token", "not-a-jws"),
    ]);
    let (e, msg) = refused(get("SASL_PLAINTEXT_BOOTSTRAP"), garbage, "bad token").await;
    assert!(
        matches!(e, ConnectionError::AuthenticationFailed { .. }),
        "{e:?}"
    );
    assert_says("bad token", &msg, &["sasl.oauthbearer.token"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_ca_is_a_certificate_error() {
    let untrusted = security(&[
        ("security.protocol", "SSL"),
        ("ssl.ca.location", get("UNTRUSTED_CA_LOCATION")),
    ]);
    let (e, msg) = refused(get("SSL_BOOTSTRAP"), untrusted, "untrusted CA").await;
    assert!(
        matches!(e, ConnectionError::CertificateNotTrusted { .. }),
        "{e:?}"
    );
    assert_says("untrusted CA", &msg, &["ssl.ca.location"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_hostname_is_refused_unless_the_check_is_off() {
    let (e, msg) = refused(get("WRONGHOST_BOOTSTRAP"), ssl(), "wrong host").await;
    assert!(
        matches!(e, ConnectionError::HostnameMismatch { .. }),
        "{e:?}"
    );
    assert_says("wrong host", &msg, &["127.0.0.1"]);
    // Java's `ssl.endpoint.identification.algorithm=` (empty or none) turns the check off: the
    // chain is still verified, so the same listener then works.
    let unchecked = security(&[
        ("security.protocol", "SSL"),
        ("ssl.ca.location", get("SSL_CA_LOCATION")),
        ("ssl.endpoint.identification.algorithm", "none"),
    ]);
    let client = connected(get("WRONGHOST_BOOTSTRAP"), unchecked, "no host check").await;
    Admin::new(client).broker_ids().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_client_against_tls_listener_is_told_to_use_tls() {
    for listener in ["SSL_BOOTSTRAP", "SASL_SSL_BOOTSTRAP"] {
        let (e, msg) = refused(get(listener), SecurityConfig::plaintext(), listener).await;
        assert!(
            matches!(e, ConnectionError::TlsRequired { .. }),
            "{listener}: {e:?}"
        );
        assert_says(listener, &msg, &["security.protocol=SSL"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_against_plaintext_listener_is_told_it_is_not_tls() {
    for listener in ["PLAINTEXT_BOOTSTRAP", "SASL_PLAINTEXT_BOOTSTRAP"] {
        let (e, msg) = refused(get(listener), ssl(), listener).await;
        assert!(
            matches!(e, ConnectionError::NotTls { .. }),
            "{listener}: {e:?}"
        );
        assert_says(listener, &msg, &["security.protocol=PLAINTEXT"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_listener_without_sasl_is_told_to_authenticate() {
    let (e, msg) = refused(
        get("SASL_PLAINTEXT_BOOTSTRAP"),
        SecurityConfig::plaintext(),
        "no SASL",
    )
    .await;
    // The broker just closes the connection after ApiVersions; the client asks the listener
    // (a SaslHandshake on a new connection), which lists its mechanisms.
    assert!(matches!(e, ConnectionError::SaslRequired { .. }), "{e:?}");
    assert_says(
        "no SASL",
        &msg,
        &[
            "security.protocol=SASL_PLAINTEXT or SASL_SSL",
            "sasl.mechanism",
        ],
    );
}

/// The broker refuses the client's certificate (missing, or from a CA it does not trust). With
/// TLS 1.3 the client learns it from the broker's alert after its side of the handshake is
/// done, at the first read. The client currently reports that alert as an I/O error of an
/// unreachable broker (retried until the retry deadline) rather than as a TLS error; the test
/// accepts both and checks that the message names the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_listener_refuses_a_missing_or_untrusted_client_certificate() {
    let stranger = security(&[
        ("security.protocol", "SSL"),
        ("ssl.ca.location", get("SSL_CA_LOCATION")),
        (
            "ssl.certificate.location",
            get("UNTRUSTED_CERTIFICATE_LOCATION"),
        ),
        ("ssl.key.location", get("UNTRUSTED_KEY_LOCATION")),
    ]);
    for (what, security) in [
        ("no client certificate", ssl()),
        ("untrusted client certificate", stranger),
    ] {
        let (e, msg) = refused_any(get("MTLS_BOOTSTRAP"), security, what).await;
        let tls = matches!(e, ClientError::Connection(ConnectionError::Tls { .. }));
        let alert = matches!(
            &e,
            ClientError::NoBrokers { last_error, .. }
                if matches!(&**last_error, ConnectionError::Io { message, .. }
                    if message.contains("fatal alert") && message.contains("Certificate"))
        );
        assert!(tls || alert, "{what}: {e:?}");
        assert!(
            msg.to_ascii_lowercase().contains("certificate"),
            "{what}: {msg}"
        );
    }
}

/// The REAUTH listener does not enable OAUTHBEARER (`scripts/kafka security`:
/// REAUTH_MECHANISMS): the error names the mechanisms it does enable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mechanism_the_listener_lacks_is_named() {
    let oauth = security(&[
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", "OAUTHBEARER"),
        ("sasl.oauthbearer.token", get("OAUTHBEARER_TOKEN")),
    ]);
    let (e, msg) = refused(get("REAUTH_BOOTSTRAP"), oauth, "OAUTHBEARER not enabled").await;
    assert!(
        matches!(e, ConnectionError::UnsupportedMechanism { .. }),
        "{e:?}"
    );
    assert_says(
        "OAUTHBEARER not enabled",
        &msg,
        &["sasl.mechanism", "SCRAM-SHA-512"],
    );
}

// ---- The binary: the fraud job over SASL_SSL, and interop with Kafka's Java tools ----

/// Runs `exactly ARGS` with extra environment variables, killing it after [`COMMAND_DEADLINE`].
async fn exactly(args: Vec<String>, env: Vec<(String, String)>, stdin: Option<Vec<u8>>) -> Output {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut cmd = Command::new(exactly_bin());
        cmd.args(&args)
            .env_remove("EXACTLY_BROKERS")
            .env("EXACTLY_LOG", "info")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("run the exactly binary");
        if let Some(data) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(&data).expect("write stdin");
        }
        let began = Instant::now();
        loop {
            if child.try_wait().expect("wait for exactly").is_some() {
                let out = child.wait_with_output().expect("collect output");
                let stderr = String::from_utf8_lossy(&out.stderr);
                for secret in [get("SASL_PASSWORD"), get("OAUTHBEARER_TOKEN")] {
                    assert!(
                        !stderr.contains(secret),
                        "exactly {args:?} printed a secret: {stderr}"
                    );
                }
                return out;
            }
            if began.elapsed() > COMMAND_DEADLINE {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "exactly {args:?} ran longer than {COMMAND_DEADLINE:?}; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap()
}

fn ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// `gen` → `run --bounded` → `verify` over SASL_SSL with SCRAM-SHA-512: `gen` gets the settings
/// as named flags, `run` from its TOML `[kafka]` table (password from the environment), `verify`
/// as `-X` pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_job_end_to_end_over_sasl_ssl() {
    let bootstrap = get("SASL_SSL_BOOTSTRAP");
    let (ca, user, password) = (
        get("SSL_CA_LOCATION"),
        get("SASL_USERNAME"),
        get("SASL_PASSWORD"),
    );
    let input = unique_topic("sec-e2e-in");
    let output = unique_topic("sec-e2e-out");
    let client = connected(bootstrap, sasl("SASL_SSL", "SCRAM-SHA-512"), "e2e").await;
    Admin::new(client)
        .create_topic(&output, 2, &[])
        .await
        .unwrap();

    let mut args = strings(&[
        "--brokers",
        bootstrap,
        "--security-protocol",
        "SASL_SSL",
        "--sasl-mechanism",
        "SCRAM-SHA-512",
        "--sasl-username",
        user,
        "--sasl-password",
        password,
        "--ssl-ca-location",
        ca,
        "gen",
        "--topic",
        &input,
        "--users",
        "40",
        "--count",
        "1500",
        "--seed",
        "11",
        "--start-ms",
        "1700000000000",
        "--partitions",
        "2",
    ]);
    let out = exactly(args.clone(), vec![], None).await;
    ok("gen over SASL_SSL (flags)", &out);

    let dir = std::env::temp_dir().join(unique_topic("sec-e2e-ck"));
    std::fs::create_dir_all(&dir).unwrap();
    let toml = dir.join("job.toml");
    std::fs::write(
        &toml,
        format!(
            "input = \"{input}\"\noutput = \"{output}\"\ncheckpoint_dir = \"{}\"\n\
             transactional_id_prefix = \"{}\"\n\n[kafka]\nsecurity.protocol = \"SASL_SSL\"\n\
             sasl.mechanism = \"SCRAM-SHA-512\"\nsasl.username = \"{user}\"\n\
             ssl.ca.location = \"{ca}\"\n",
            dir.join("ck").display(),
            unique_topic("sec-e2e")
        ),
    )
    .unwrap();
    args = strings(&[
        "--brokers",
        bootstrap,
        "run",
        "--config",
        toml.to_str().unwrap(),
        "--bounded",
    ]);
    let out = exactly(
        args,
        vec![("EXACTLY_SASL_PASSWORD".into(), password.into())],
        None,
    )
    .await;
    ok("run over SASL_SSL (TOML + environment)", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("configuration") && stderr.contains("***"),
        "the configuration log line should show the password as ***: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);

    let x = |kv: &str| ["-X".to_owned(), kv.to_owned()];
    let mut args = strings(&["--brokers", bootstrap]);
    for kv in [
        "security.protocol=SASL_SSL".to_owned(),
        "sasl.mechanism=SCRAM-SHA-512".to_owned(),
        format!("sasl.username={user}"),
        format!("sasl.password={password}"),
        format!("ssl.ca.location={ca}"),
    ] {
        args.extend(x(&kv));
    }
    args.extend(strings(&[
        "verify", "--input", &input, "--output", &output, "--format", "json",
    ]));
    let out = exactly(args, vec![], None).await;
    ok("verify over SASL_SSL (-X)", &out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify's JSON");
    assert_eq!(report["ok"], serde_json::Value::Bool(true), "{report}");
}

/// The settings for `exactly` over SASL_SSL with SCRAM-SHA-512, as environment variables.
fn sasl_ssl_env() -> Vec<(String, String)> {
    [
        ("EXACTLY_SECURITY_PROTOCOL", "SASL_SSL"),
        ("EXACTLY_SASL_MECHANISM", "SCRAM-SHA-512"),
        ("EXACTLY_SASL_USERNAME", get("SASL_USERNAME")),
        ("EXACTLY_SASL_PASSWORD", get("SASL_PASSWORD")),
        ("EXACTLY_SSL_CA_LOCATION", get("SSL_CA_LOCATION")),
        ("EXACTLY_BROKERS", get("SASL_SSL_BOOTSTRAP")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Records written over SASL_SSL by `exactly produce` (settings from the environment) are read
/// by Kafka's Java console consumer with the same credentials, and the reverse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_with_java_console_tools_over_sasl_ssl() {
    let bootstrap = get("SASL_SSL_BOOTSTRAP");
    let java_config = get("JAVA_SASL_SSL_CONFIG");
    let client = connected(bootstrap, sasl("SASL_SSL", "SCRAM-SHA-512"), "interop").await;
    let (ours, theirs) = (unique_topic("sec-interop-a"), unique_topic("sec-interop-b"));
    for t in [&ours, &theirs] {
        Admin::new(client.clone())
            .create_topic(t, 1, &[])
            .await
            .unwrap();
    }

    let lines: Vec<String> = (0..20).map(|i| format!("from-exactly-{i}")).collect();
    let out = exactly(
        strings(&["produce", &ours]),
        sasl_ssl_env(),
        Some(format!("{}\n", lines.join("\n")).into_bytes()),
    )
    .await;
    ok("exactly produce over SASL_SSL", &out);
    let topic = ours.clone();
    let consumed = tokio::task::spawn_blocking(move || {
        kafka_tool(
            &[
                "console-consumer",
                "--bootstrap-server",
                bootstrap,
                "--consumer.config",
                java_config,
                "--topic",
                &topic,
                "--from-beginning",
                "--max-messages",
                "20",
                "--timeout-ms",
                "30000",
            ],
            None,
        )
    })
    .await
    .unwrap();
    let consumed: Vec<String> = String::from_utf8(consumed)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(consumed, lines, "the Java consumer over SASL_SSL");

    let lines: Vec<String> = (0..20).map(|i| format!("from-java-{i}")).collect();
    let input = format!("{}\n", lines.join("\n")).into_bytes();
    let topic = theirs.clone();
    tokio::task::spawn_blocking(move || {
        kafka_tool(
            &[
                "console-producer",
                "--bootstrap-server",
                bootstrap,
                "--producer.config",
                java_config,
                "--topic",
                &topic,
            ],
            Some(&input),
        )
    })
    .await
    .unwrap();
    let out = exactly(
        strings(&["consume", &theirs, "--format", "value", "--exit-at-end"]),
        sasl_ssl_env(),
        None,
    )
    .await;
    ok("exactly consume over SASL_SSL", &out);
    let got: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(got, lines, "exactly consume of the Java producer's records");
}

/// A misconfiguration given to the binary names the key and where it came from, and a wrong
/// password is an error that says what to change (and not the password), without hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reports_bad_security_settings() {
    let mut env = sasl_ssl_env();
    env.retain(|(k, _)| k != "EXACTLY_SASL_MECHANISM");
    env.push(("EXACTLY_SASL_MECHANISM".into(), "KERBEROS".into()));
    let out = exactly(strings(&["topics", "list"]), env, None).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sasl.mechanism") && stderr.contains("EXACTLY_SASL_MECHANISM"),
        "{stderr}"
    );
    let mut env = sasl_ssl_env();
    env.retain(|(k, _)| k != "EXACTLY_SASL_PASSWORD");
    env.push(("EXACTLY_SASL_PASSWORD".into(), "wrong-password-123".into()));
    let out = exactly(strings(&["topics", "list"]), env, None).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sasl.password"), "{stderr}");
    assert!(!stderr.contains("wrong-password-123"), "{stderr}");
    // The demo runs its own plaintext broker: security settings there are a mistake.
    let out = exactly(
        strings(&["--security-protocol", "SSL", "demo"]),
        vec![],
        None,
    )
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the demo runs against the local plaintext broker"),
        "{stderr}"
    );
}
