//! `orderflow topics create`: idempotent, and refusing topics that break co-partitioning.

use orderflow::kafka::{TopicError, Topics};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::support::settings;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_topics_twice_creates_them_once_and_then_verifies_them() {
    let settings = settings(4);
    let topics = Topics::connect(&settings.kafka).unwrap();
    let first = topics.ensure(&settings.topics).await.unwrap();
    assert_eq!(first.len(), 5);
    assert!(
        first.iter().all(|s| s.created && s.partitions == 4),
        "{first:?}"
    );
    let second = topics.ensure(&settings.topics).await.unwrap();
    assert!(
        second.iter().all(|s| !s.created && s.partitions == 4),
        "{second:?}"
    );
    assert_eq!(topics.check(&settings.topics).await.unwrap(), 4);
    assert_eq!(
        topics.cleanup_policy(&settings.topics.state).await.unwrap(),
        "compact"
    );
}

async fn precreate(
    settings: &orderflow::config::Settings,
    name: &str,
    partitions: i32,
    config: &[(&str, &str)],
) {
    let admin: AdminClient<DefaultClientContext> =
        orderflow::kafka::base_config(&settings.kafka, "test-admin")
            .unwrap()
            .create()
            .unwrap();
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in config {
        topic = topic.set(k, v);
    }
    for result in admin
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_topic_with_another_partition_count_is_refused() {
    let settings = settings(4);
    precreate(&settings, &settings.topics.rejected, 2, &[]).await;
    let err = Topics::connect(&settings.kafka)
        .unwrap()
        .ensure(&settings.topics)
        .await
        .unwrap_err();
    match &err {
        TopicError::PartitionMismatch {
            topic,
            role,
            expected,
            found,
        } => {
            assert_eq!(
                (topic.as_str(), *role, *expected, *found),
                (settings.topics.rejected.as_str(), "rejected", 4, 2)
            );
        }
        other => panic!("expected a partition mismatch, got {other}"),
    }
    assert!(err.to_string().contains("same partition count"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_topic_that_is_not_compacted_is_refused() {
    let settings = settings(2);
    precreate(
        &settings,
        &settings.topics.state,
        2,
        &[("cleanup.policy", "delete")],
    )
    .await;
    let err = Topics::connect(&settings.kafka)
        .unwrap()
        .ensure(&settings.topics)
        .await
        .unwrap_err();
    assert!(matches!(err, TopicError::NotCompacted { .. }), "{err}");
    assert!(err.to_string().contains("must be compacted"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checking_topics_that_do_not_exist_names_the_missing_one() {
    let settings = settings(2);
    let err = Topics::connect(&settings.kafka)
        .unwrap()
        .check(&settings.topics)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TopicError::Missing {
                role: "requests",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_and_created_again_under_its_name_has_a_new_id() {
    let settings = settings(2);
    let topics = Topics::connect(&settings.kafka).unwrap();
    topics.ensure(&settings.topics).await.unwrap();
    let state = &settings.topics.state;
    let first = topics.topic_id(state).await.unwrap();
    assert_eq!(first.len(), 22, "a UUID in base64 without padding: {first}");
    assert_eq!(topics.topic_id(state).await.unwrap(), first, "stable");

    let admin: AdminClient<DefaultClientContext> =
        orderflow::kafka::base_config(&settings.kafka, "test-admin")
            .unwrap()
            .create()
            .unwrap();
    for result in admin
        .delete_topics(&[state.as_str()], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
    // Deletion is asynchronous on the broker: create again until the state topic is created
    // anew (until then it still exists, or its name is not free yet).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let created = match topics.ensure(&settings.topics).await {
            Ok(statuses) => statuses.iter().any(|s| &s.name == state && s.created),
            Err(_) => false,
        };
        if created {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the state topic was not created again within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let second = topics.topic_id(state).await.unwrap();
    assert_ne!(second, first, "the new topic has a new id");
    assert!(
        topics.topic_id("no-such-topic-here").await.is_err(),
        "a missing topic has no id"
    );
}
