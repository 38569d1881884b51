//! [`commit_prepared`](super::commit_prepared) against the scripted fake cluster, for what the
//! real broker cannot be made to do on demand: EndTxn applied but its answer lost, or never
//! answered at all. The fake keeps a partition log with transaction markers, so the outcome is
//! read from it as from a real broker's.

use kafka_protocol::messages::ApiKey;

use super::{commit_prepared, PreparedTxn, TransactionConfig, TransactionalProducer, TxnOutcome};
use crate::client::fake_cluster::{Action, FakeCluster};
use crate::client::producer::ProducerRecord;
use crate::client::{Client, ClientConfig, ClientError};

async fn client(fake: &FakeCluster) -> Client {
    let mut config = ClientConfig::new(&fake.addr(1));
    config.connection.request_timeout_ms = 300;
    config.retry.deadline_ms = 2_000;
    Client::connect(config).await.expect("connect to the fake")
}

/// A one-node fake cluster at transactions version 2 with topic "t" of two partitions.
async fn start() -> FakeCluster {
    let fake = FakeCluster::start(1).await;
    fake.add_topic("t", &[1, 1]);
    fake
}

/// A transaction with two records on t/0, prepared and left open.
async fn prepared(fake: &FakeCluster) -> PreparedTxn {
    let mut txn = TransactionConfig::new("fake-txn");
    txn.coordinator_deadline_ms = 1_500;
    txn.producer.linger_ms = 0;
    let p = TransactionalProducer::init(client(fake).await, txn)
        .await
        .expect("init against the fake");
    p.begin().await.unwrap();
    for v in ["a", "b"] {
        let delivery = p
            .send(ProducerRecord::new("t", v).with_partition(0))
            .await
            .expect("send");
        delivery.await.expect("delivered");
    }
    p.prepare().await.expect("prepare")
}

/// EndTxn applied, every answer lost: the commit marker in the log says it committed.
#[tokio::test]
async fn a_commit_whose_answers_were_lost_is_read_from_its_marker() {
    let fake = start().await;
    let prepared = prepared(&fake).await;
    assert_eq!(prepared.partitions.len(), 1, "{prepared:?}");
    assert_eq!(prepared.partitions[0].last_batch_offset, 1);
    fake.control(ApiKey::EndTxn, true, |_, _| Some(Action::DropResponse));
    let outcome = commit_prepared(&client(&fake).await, &prepared, 3_000)
        .await
        .expect("the marker shows the commit");
    assert_eq!(outcome, TxnOutcome::Committed);
    assert_eq!(fake.txn("fake-txn").end_txns, vec![(0, true)]);
}

/// EndTxn never answered and never applied: the log shows the transaction open and the
/// coordinator still holds it; the commit may yet apply, so the answer is "unknown", never an
/// abort and never "lost".
#[tokio::test]
async fn a_commit_never_answered_is_unknown_and_nothing_is_aborted() {
    let fake = start().await;
    let prepared = prepared(&fake).await;
    fake.control(ApiKey::EndTxn, true, |_, _| Some(Action::DelayMs(60_000)));
    let err = commit_prepared(&client(&fake).await, &prepared, 2_000)
        .await
        .expect_err("no answer");
    assert!(
        matches!(err, ClientError::CommitOutcomeUnknown { .. }),
        "expected CommitOutcomeUnknown, got {err:?}"
    );
    let state = fake.txn("fake-txn");
    assert!(state.end_txns.is_empty(), "{:?}", state.end_txns);
    assert_eq!(state.state, "Ongoing");
}
