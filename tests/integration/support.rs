//! Helpers shared by the integration tests: the broker's address, unique names, settings.

use std::time::Duration;

use orderflow::config::{KafkaSettings, Settings, TopicSettings};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::TopicPartitionList;
use uuid::Uuid;

/// The broker under test: `ORDERFLOW_TEST_BOOTSTRAP`, else the port `make test` uses.
pub fn bootstrap() -> String {
    std::env::var("ORDERFLOW_TEST_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..12])
}

/// Settings pointing at the test broker with this test's own topics.
pub fn settings(partitions: i32) -> Settings {
    Settings {
        kafka: KafkaSettings {
            bootstrap_servers: bootstrap(),
            group_id: unique("group"),
            ..KafkaSettings::default()
        },
        topics: TopicSettings {
            partitions,
            ..TopicSettings::default()
        }
        .with_prefix(&format!("{}-", unique("t"))),
        ..Settings::default()
    }
}

/// Reads every record of `topic` (all `partitions`) from the start with read_committed,
/// stopping once `expected` records arrived or `timeout` passed.
pub fn read_all(
    settings: &Settings,
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = orderflow::kafka::committed_reader_config(
        &settings.kafka,
        "test-reader",
        &unique("reader"),
    )
    .unwrap()
    .create()
    .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expected && std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            out.push(message.expect("reading from the test broker").detach());
        }
    }
    out
}

/// The payload of a message, empty if it has none.
pub fn payload(message: &OwnedMessage) -> &[u8] {
    message.payload().unwrap_or_default()
}
