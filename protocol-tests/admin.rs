//! Admin operations and metadata refresh against the real broker.

use exactly::client::admin::{Admin, ConfigResource, Isolation, OffsetSpec};
use exactly::client::ClientError;

use crate::common::{client, unique_topic};

#[tokio::test]
async fn create_list_describe_delete() {
    let client = client().await;
    let admin = Admin::new(client.clone());
    let topic = unique_topic("admin");
    admin
        .create_topic(&topic, 3, &[("cleanup.policy", "compact")])
        .await
        .expect("create");
    let info = client.topic(&topic).await.expect("metadata");
    assert_eq!(info.partitions.len(), 3);
    assert!(info.partitions.iter().all(|p| p.leader >= 0));
    assert!(client
        .topics()
        .await
        .unwrap()
        .iter()
        .any(|t| t.name == topic));

    let configs = admin
        .describe_configs(ConfigResource::Topic, &topic)
        .await
        .expect("describe");
    let policy = configs
        .iter()
        .find(|c| c.name == "cleanup.policy")
        .expect("cleanup.policy listed");
    assert_eq!(policy.value.as_deref(), Some("compact"));
    let broker = admin
        .describe_configs(ConfigResource::Broker, "1")
        .await
        .expect("describe broker");
    assert!(broker
        .iter()
        .any(|c| c.name == "transaction.max.timeout.ms"));

    for p in 0..3 {
        assert_eq!(
            admin
                .list_offset(&topic, p, OffsetSpec::Earliest, Isolation::ReadUncommitted)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            admin
                .list_offset(&topic, p, OffsetSpec::Latest, Isolation::ReadCommitted)
                .await
                .unwrap(),
            0
        );
    }
    let err = admin.create_topic(&topic, 3, &[]).await.unwrap_err();
    assert!(err.to_string().contains("TOPIC_ALREADY_EXISTS"), "{err}");

    admin.delete_topics(&[&topic]).await.expect("delete");
    // Deletion propagates asynchronously; metadata must stop listing the topic. `topic()` answers
    // from the cache, so each look asks the broker again (a refresh that still listed the topic
    // would otherwise be cached for good: seen failing on a loaded machine).
    let mut gone = false;
    for _ in 0..300 {
        client
            .refresh_metadata(std::slice::from_ref(&topic))
            .await
            .expect("refresh metadata");
        if matches!(
            client.topic(&topic).await,
            Err(ClientError::UnknownTopic { .. })
        ) {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "topic still in metadata after delete");
}

#[tokio::test]
async fn metadata_refreshes_for_topics_created_elsewhere() {
    let watcher = client().await;
    let topic = unique_topic("refresh");
    assert!(matches!(
        watcher.topic(&topic).await,
        Err(ClientError::UnknownTopic { .. })
    ));
    // Another client creates it; the first must find it on its next lookup, with a leader.
    let creator = client().await;
    Admin::new(creator)
        .create_topic(&topic, 2, &[])
        .await
        .expect("create");
    let info = watcher.topic(&topic).await.expect("found after refresh");
    assert_eq!(info.partitions.len(), 2);
    assert!(watcher.leader(&topic, 1).await.unwrap() >= 0);
    let err = watcher.leader(&topic, 2).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("topic {topic:?} has 2 partitions; partition 2 does not exist")
    );
}

#[tokio::test]
async fn unreachable_broker_is_a_clear_error() {
    let mut config = exactly::client::ClientConfig::new("127.0.0.1:1");
    config.retry.deadline_ms = 300;
    let err = exactly::client::Client::connect(config).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
}
