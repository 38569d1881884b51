//! Unit tests of the sink's error classification.

use super::*;

#[test]
fn recovery_failures_are_classified_with_advice() {
    let lost = ClientError::PreparedTxnLost {
        action: "committed",
        transactional_id: "job-0-1".into(),
        producer_id: 7,
        producer_epoch: 3,
        reason: "it was aborted (abort marker at out/0 offset 12)".into(),
    };
    let e = classify(lost, Some(4), "job-0-1");
    assert!(matches!(
        e,
        RuntimeError::SinkTransaction {
            failure: SinkTxnFailure::Lost,
            checkpoint_id: Some(4),
            ..
        }
    ));
    let text = e.to_string();
    assert!(
        text.starts_with(
            "sink transaction \"job-0-1\" of checkpoint 4: was aborted before it could be \
             committed, so its records are lost (prepared transaction \"job-0-1\""
        ),
        "{text}"
    );
    assert!(text.contains("transaction_timeout_ms"), "{text}");

    let fenced = ClientError::TxnFatal {
        cause: Box::new(ClientError::broker("EndTxn", codes::PRODUCER_FENCED)),
    };
    let e = classify(fenced, None, "job-1-0");
    assert!(matches!(
        e,
        RuntimeError::SinkTransaction {
            failure: SinkTxnFailure::Fenced,
            checkpoint_id: None,
            ..
        }
    ));
    assert!(
        e.to_string()
            .starts_with("sink transaction \"job-1-0\": was fenced"),
        "{e}"
    );
    assert!(e.to_string().contains("stop it"), "{e}");

    let mapping = classify(
        ClientError::broker("EndTxn", INVALID_PRODUCER_ID_MAPPING),
        Some(2),
        "job-0-0",
    );
    assert!(matches!(
        mapping,
        RuntimeError::SinkTransaction {
            failure: SinkTxnFailure::ProducerIdMapping,
            ..
        }
    ));
    assert!(mapping
        .to_string()
        .contains("transactional.id.expiration.ms"));

    let unknown = classify(
        ClientError::CommitOutcomeUnknown {
            transactional_id: "job-0-0".into(),
            cause: Box::new(ClientError::broker("EndTxn", codes::REQUEST_TIMED_OUT)),
        },
        Some(9),
        "job-0-0",
    );
    assert!(matches!(
        unknown,
        RuntimeError::SinkTransaction {
            failure: SinkTxnFailure::OutcomeUnknown,
            ..
        }
    ));
    assert!(unknown.to_string().contains("nothing was aborted"));

    // Anything else stays a client error.
    assert!(matches!(
        classify(ClientError::broker("EndTxn", 53), None, "x"),
        RuntimeError::Client(_)
    ));
}
