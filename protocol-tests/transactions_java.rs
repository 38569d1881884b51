//! read_committed versus read_uncommitted over transactions written by Kafka's Java producer.

use std::collections::BTreeSet;

use exactly::client::admin::{Admin, Isolation, OffsetSpec};

use crate::common::read_all;
use crate::common::{brokers, client, create_topic, run_java, settle, unique_topic};

#[tokio::test]
async fn aborted_java_transactions_are_filtered() {
    let client = client().await;
    let topic = create_topic(&client, "java-txn", 2).await;
    let txn_id = unique_topic("java-writer");
    // 12 transactions of 10 records; every 3rd is aborted.
    let out = run_java("TxnWriter", &[brokers(), &topic, "12", "10", "3", &txn_id]);
    assert!(
        out.contains("committed 80") && out.contains("aborted 40"),
        "{out}"
    );
    settle(&client, &topic, 2).await;

    let mut committed = BTreeSet::new();
    let mut everything = BTreeSet::new();
    for p in 0..2 {
        for r in read_all(&client, &topic, p, Isolation::ReadCommitted).await {
            let v = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
            assert!(committed.insert(v.clone()), "duplicate {v}");
        }
        for r in read_all(&client, &topic, p, Isolation::ReadUncommitted).await {
            everything.insert(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
        }
        // Nothing hangs: the last stable offset caught up with the high watermark.
        let admin = Admin::new(client.clone());
        let lso = admin
            .list_offset(&topic, p, OffsetSpec::Latest, Isolation::ReadCommitted)
            .await
            .unwrap();
        let hw = admin
            .list_offset(&topic, p, OffsetSpec::Latest, Isolation::ReadUncommitted)
            .await
            .unwrap();
        assert_eq!(lso, hw, "partition {p}: LSO equals high watermark");
    }
    let aborted = |v: &String| {
        let t: u32 = v.split('-').nth(1).unwrap().parse().unwrap();
        (t + 1) % 3 == 0
    };
    assert_eq!(committed.len(), 80);
    assert!(
        committed.iter().all(|v| !aborted(v)),
        "an aborted record surfaced under read_committed"
    );
    assert_eq!(
        everything.len(),
        120,
        "read_uncommitted shows aborted records too"
    );
    assert_eq!(everything.iter().filter(|v| aborted(v)).count(), 40);
}
