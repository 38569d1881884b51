//! Version negotiation against the real broker.

use exactly::connection::{Connection, ConnectionConfig};
use exactly::protocol::messages::messages::{FetchRequest, MetadataRequest, ProduceRequest};
use exactly::protocol::messages::KafkaRequest;

use crate::common::brokers;

#[tokio::test]
async fn negotiates_highest_common_versions() {
    let addr = brokers().split(',').next().unwrap().to_owned();
    let conn = Connection::connect(&addr, ConnectionConfig::default())
        .await
        .expect("connect");
    // Kafka 4.x supports newer versions than we implement: we must use our maximum, no more.
    assert_eq!(
        conn.version_of::<ProduceRequest>().unwrap(),
        ProduceRequest::OURS.max
    );
    assert_eq!(
        conn.version_of::<FetchRequest>().unwrap(),
        FetchRequest::OURS.max
    );
    assert_eq!(
        conn.version_of::<MetadataRequest>().unwrap(),
        MetadataRequest::OURS.max
    );
    // Kafka 4.x reports its transaction protocol level as a finalized feature.
    let level = conn.finalized_feature("transaction.version");
    assert!(
        level.is_some(),
        "broker reported no transaction.version feature"
    );
    // A request at the negotiated version round-trips.
    let response = conn
        .request(&MetadataRequest::default().with_topics(Some(vec![])))
        .await
        .expect("metadata");
    assert!(!response.brokers.is_empty());
}
