//! Configuration parsing: keys, aliases, errors naming the key, secrets never printed.

use super::*;

fn parse(pairs: &[(&str, &str)]) -> Result<SecurityConfig, SecurityConfigError> {
    SecurityConfig::from_properties(pairs.iter().copied())
}

#[test]
fn default_is_plaintext_with_verification_on() {
    let config = parse(&[]).unwrap();
    assert_eq!(config, SecurityConfig::default());
    assert_eq!(config.protocol, SecurityProtocol::Plaintext);
    assert!(config.tls.verify_certificates && config.tls.verify_hostname);
    assert!(config.sasl.is_none());
}

#[test]
fn full_sasl_ssl_configuration() {
    let config = parse(&[
        ("security.protocol", "sasl_ssl"),
        ("sasl.mechanisms", "scram-sha-512"),
        ("sasl.username", "alice"),
        ("sasl.password", "s3cret-pw"),
        ("ssl.ca.location", "/etc/kafka/ca.pem"),
        ("ssl.certificate.location", "/etc/kafka/client.pem"),
        ("ssl.key.location", "/etc/kafka/client.key"),
        ("ssl.endpoint.identification.algorithm", "none"),
    ])
    .unwrap();
    assert_eq!(config.protocol, SecurityProtocol::SaslSsl);
    let sasl = config.sasl.as_ref().unwrap();
    assert_eq!(sasl.mechanism, SaslMechanism::ScramSha512);
    assert_eq!(sasl.username, "alice");
    assert_eq!(sasl.password.expose(), "s3cret-pw");
    assert_eq!(
        config.tls.ca_location.as_deref(),
        Some(std::path::Path::new("/etc/kafka/ca.pem"))
    );
    assert!(!config.tls.verify_hostname);
    assert!(config.tls.verify_certificates);
    // Secrets never reach Debug or Display.
    let debug = format!("{config:?}");
    assert!(!debug.contains("s3cret-pw"), "{debug}");
    assert!(debug.contains("password: ***"), "{debug}");
    assert_eq!(sasl.password.to_string(), "***");
}

#[test]
fn oauthbearer_token_and_command() {
    let config = parse(&[
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "OAUTHBEARER"),
        ("sasl.oauthbearer.token", "eyJ.secret.token"),
    ])
    .unwrap();
    let sasl = config.sasl.as_ref().unwrap();
    assert_eq!(
        sasl.oauthbearer_token.as_ref().unwrap().expose(),
        "eyJ.secret.token"
    );
    assert!(!format!("{config:?}").contains("eyJ"));
    let config = parse(&[
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", "OAUTHBEARER"),
        ("sasl.oauthbearer.token.command", "cat /run/token"),
    ])
    .unwrap();
    assert_eq!(
        config.sasl.unwrap().oauthbearer_token_command.as_deref(),
        Some("cat /run/token")
    );
}

#[test]
fn ssl_keys_with_a_protocol_without_tls_are_accepted() {
    let config = parse(&[("ssl.ca.location", "/ca.pem")]).unwrap();
    assert_eq!(config.protocol, SecurityProtocol::Plaintext);
}

#[test]
fn errors_name_the_key_and_what_to_change() {
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (
            &[("sasl.usernme", "a")],
            "sasl.usernme",
            "unknown security setting",
        ),
        (
            &[("security.protocol", "TLS")],
            "security.protocol",
            "is not one of PLAINTEXT",
        ),
        (
            &[("security.protocol", "SASL_SSL")],
            "sasl.mechanism",
            "set sasl.mechanism to PLAIN",
        ),
        (
            &[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "GSSAPI"),
            ],
            "sasl.mechanism",
            "\"GSSAPI\" is not one of",
        ),
        (
            &[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanisms", "GSSAPI"),
            ],
            "sasl.mechanisms",
            "\"GSSAPI\" is not one of",
        ),
        (
            &[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "PLAIN"),
                ("sasl.password", "pw"),
            ],
            "sasl.username",
            "needs sasl.username and sasl.password",
        ),
        (
            &[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "SCRAM-SHA-256"),
                ("sasl.username", "bob"),
            ],
            "sasl.password",
            "needs sasl.username and sasl.password",
        ),
        (
            &[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "OAUTHBEARER"),
            ],
            "sasl.oauthbearer.token",
            "set sasl.oauthbearer.token or sasl.oauthbearer.token.command",
        ),
        (
            &[("sasl.mechanism", "PLAIN")],
            "security.protocol",
            "set security.protocol=SASL_SSL",
        ),
        (
            &[("ssl.certificate.location", "/c.pem")],
            "ssl.key.location",
            "needs both",
        ),
        (
            &[("enable.ssl.certificate.verification", "maybe")],
            "enable.ssl.certificate.verification",
            "is not `true` or `false`",
        ),
        (
            &[("ssl.endpoint.identification.algorithm", "http")],
            "ssl.endpoint.identification.algorithm",
            "is not `https`",
        ),
        (
            &[("ssl.key.password", "passphrase")],
            "ssl.key.password",
            "encrypted private keys are not supported: decrypt the key",
        ),
    ];
    for (pairs, key, message) in cases {
        let err = parse(pairs).unwrap_err();
        assert_eq!(err.key, *key, "{pairs:?}: {err}");
        assert!(err.to_string().contains(message), "{pairs:?}: {err}");
    }
}

#[test]
fn a_password_never_appears_in_an_error() {
    let err = parse(&[
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "PLAIN"),
        ("sasl.password", "hunter2"),
    ])
    .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
}

#[test]
fn verification_off_is_the_test_only_switch() {
    let config = parse(&[
        ("security.protocol", "SSL"),
        ("enable.ssl.certificate.verification", "false"),
    ])
    .unwrap();
    assert!(!config.tls.verify_certificates);
    assert_eq!(
        TlsConfig::default().danger_accept_any_certificate_for_tests_only(),
        config.tls
    );
}

#[test]
fn prepare_reports_missing_files_with_their_key() {
    let config = parse(&[
        ("security.protocol", "SSL"),
        ("ssl.ca.location", "/nonexistent/ca.pem"),
    ])
    .unwrap();
    let err = config.prepare().unwrap_err();
    assert!(
        matches!(
            &err,
            ConnectionError::SecurityConfig {
                key: "ssl.ca.location",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    assert!(err.is_security());
    // The same path with a protocol without TLS is not read.
    let config = parse(&[("ssl.ca.location", "/nonexistent/ca.pem")]).unwrap();
    config.prepare().unwrap();
}
