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
    assert!(SinkTxnFailure::OutcomeUnknown.restart_helps());
    assert!(!SinkTxnFailure::Lost.restart_helps() && !SinkTxnFailure::Fenced.restart_helps());

    // Anything else stays a client error.
    assert!(matches!(
        classify(ClientError::broker("EndTxn", 53), None, "x"),
        RuntimeError::Client(_)
    ));
}

/// Recovery against the client's scripted fake cluster, for what the real broker cannot be
/// made to do on demand.
mod fake {
    use kafka_protocol::messages::{ApiKey, EndTxnResponse};

    use crate::client::fake_cluster::{Action, FakeCluster, RequestKind, ResponseKind};
    use crate::client::producer::ProducerRecord;
    use crate::client::transaction::TransactionalProducer;
    use crate::client::{Client, ClientConfig};
    use crate::protocol::error_codes::codes;
    use crate::runtime::sink::{
        recover, KafkaCommittable, KafkaSinkConfig, OwnerMap, SinkTxnFailure, SlotState,
        TwoPhaseCommitSink,
    };
    use crate::runtime::RuntimeError;

    async fn client(fake: &FakeCluster) -> Client {
        let mut config = ClientConfig::new(&fake.addr(1));
        config.connection.request_timeout_ms = 300;
        config.retry.deadline_ms = 2_000;
        Client::connect(config).await.expect("connect to the fake")
    }

    fn config() -> KafkaSinkConfig {
        let mut c = KafkaSinkConfig::new("job");
        c.commit_deadline_ms = 1_500;
        c.producer.linger_ms = 0;
        c
    }

    /// An open transaction of `id` with one acknowledged record on t/0.
    async fn open(fake: &FakeCluster, id: &str) -> TransactionalProducer {
        let p =
            TransactionalProducer::init(client(fake).await, config().transaction_config(id.into()))
                .await
                .expect("init against the fake");
        p.begin().await.unwrap();
        p.send(ProducerRecord::new("t", "v").with_partition(0))
            .await
            .unwrap()
            .await
            .unwrap();
        p
    }

    fn end_txns(fake: &FakeCluster) -> Vec<bool> {
        fake.requests_of(ApiKey::EndTxn)
            .into_iter()
            .map(|s| match s.body {
                RequestKind::EndTxn(r) => r.committed,
                _ => unreachable!(),
            })
            .collect()
    }

    /// Every EndTxn(commit) of the restored committable is answered PRODUCER_FENCED while the
    /// coordinator still holds the transaction: its outcome cannot be learned, so recovery
    /// stops with OutcomeUnknown — it never aborts it, and fences nothing (no InitProducerId
    /// after the original one, no lingering-transaction step).
    #[tokio::test]
    async fn a_fenced_commit_during_recovery_stops_before_any_fencing() {
        let fake = FakeCluster::start(1).await;
        fake.add_topic("t", &[1]);
        let producer = open(&fake, "job-0-0").await;
        let committable = KafkaCommittable {
            checkpoint_id: 3,
            subtask: 0,
            slot: 0,
            prepared: producer.prepare().await.unwrap(),
        };
        fake.control(ApiKey::EndTxn, true, |_, _| {
            Some(Action::Respond(ResponseKind::EndTxn(
                EndTxnResponse::default().with_error_code(codes::PRODUCER_FENCED),
            )))
        });
        let cfg = config();
        let err = recover(
            &client(&fake).await,
            &cfg,
            &[committable],
            &OwnerMap::new(&cfg, 1),
            1,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                RuntimeError::SinkTransaction {
                    failure: SinkTxnFailure::OutcomeUnknown,
                    checkpoint_id: Some(3),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("Restart from the same checkpoint"),
            "{err}"
        );
        assert!(
            end_txns(&fake).iter().all(|commit| *commit),
            "an abort was sent"
        );
        assert_eq!(
            fake.requests_of(ApiKey::InitProducerId).len(),
            1,
            "something was fenced"
        );
        assert_eq!(fake.txn("job-0-0").state, "Ongoing");
    }

    /// A cluster without ListTransactions (before Kafka 3.0): the owner map's ids are asked
    /// one by one, and the ongoing one is fenced.
    #[tokio::test]
    async fn without_list_transactions_the_owner_map_ids_are_checked() {
        let fake = FakeCluster::start(1).await;
        fake.add_topic("t", &[1]);
        let _crashed = open(&fake, "job-1-1").await;
        let _foreign = open(&fake, "jobb-0-0").await;
        let cfg = config();
        let report = recover(&client(&fake).await, &cfg, &[], &OwnerMap::new(&cfg, 2), 2)
            .await
            .unwrap();
        assert_eq!(report.lingering_aborted, ["job-1-1"]);
        assert_eq!(fake.txn("job-1-1").state, "CompleteAbort");
        assert_eq!(fake.txn("jobb-0-0").state, "Ongoing");
        assert!(fake.requests_of(ApiKey::ListTransactions).is_empty());
    }

    /// The sink's background commit loses every EndTxn answer (the commit applied) and cannot
    /// ask the coordinator either: the producer reports the outcome unknown, the sink never
    /// aborts, reads the commit marker from the log instead, and replaces the stopped producer
    /// with a fresh one for the same id.
    #[tokio::test]
    async fn a_lost_commit_answer_is_read_from_the_log_and_the_producer_replaced() {
        let fake = FakeCluster::start(1).await;
        fake.add_topic("t", &[1]);
        let mut sink = TwoPhaseCommitSink::open(client(&fake).await, config(), 0)
            .await
            .unwrap();
        for v in ["a", "b"] {
            sink.send(ProducerRecord::new("t", v).with_partition(0))
                .await
                .unwrap();
        }
        assert_eq!(sink.prepare(1).await.unwrap().len(), 1);
        fake.control(ApiKey::EndTxn, true, |_, _| Some(Action::DropResponse));
        fake.control(ApiKey::DescribeTransactions, true, |_, _| {
            Some(Action::DelayMs(60_000))
        });
        assert_eq!(sink.commit_up_to(1).unwrap(), 1);
        sink.wait_for_commits()
            .await
            .expect("the marker shows the commit");
        assert_eq!(sink.metrics().commits, 1);
        assert!(sink.pending().is_empty());
        assert_eq!(sink.slot_states()[0], SlotState::Free);
        assert!(
            end_txns(&fake).iter().all(|commit| *commit),
            "an abort was sent"
        );
        // Two producers opened, and slot 0's replaced.
        assert_eq!(fake.requests_of(ApiKey::InitProducerId).len(), 3);
    }

    /// `commit_up_to` hands the commit to the background: records go on into the next
    /// transaction while EndTxn is unanswered, and the commit completes afterwards.
    #[tokio::test]
    async fn writing_goes_on_while_a_commit_is_under_way() {
        let fake = FakeCluster::start(1).await;
        fake.add_topic("t", &[1]);
        let mut cfg = config();
        cfg.commit_deadline_ms = 10_000;
        let mut sink = TwoPhaseCommitSink::open(client(&fake).await, cfg, 0)
            .await
            .unwrap();
        sink.send(ProducerRecord::new("t", "a").with_partition(0))
            .await
            .unwrap();
        sink.prepare(1).await.unwrap();
        // The coordinator does not answer the first EndTxn (the retry after the request timeout
        // is answered).
        fake.control(ApiKey::EndTxn, false, |_, _| Some(Action::DelayMs(1_000)));
        assert_eq!(sink.commit_up_to(1).unwrap(), 1);
        for v in ["b", "c", "d"] {
            sink.send(ProducerRecord::new("t", v).with_partition(0))
                .await
                .unwrap();
        }
        let metrics = sink.metrics();
        assert_eq!(
            (
                metrics.commits,
                metrics.commits_in_flight,
                metrics.records_sent
            ),
            (0, 1, 4)
        );
        assert_eq!(
            sink.slot_states(),
            [
                SlotState::Committing { checkpoint_id: 1 },
                SlotState::Writing
            ]
        );
        sink.wait_for_commits().await.unwrap();
        assert_eq!(sink.metrics().commits, 1);
        assert_eq!(sink.metrics().commit_latency_us.len(), 1);
    }
}
