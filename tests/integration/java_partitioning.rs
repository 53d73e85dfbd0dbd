//! Java's console producer and orderflow's producer put the same key in the same partition.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use orderflow::kafka::{request_producer_config, Topics};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::support::{read_all, settings};

const KEYS: [&str; 6] = [
    "order-42",
    "order-1",
    "order-7",
    "a",
    "order-1000000",
    "ÿ-unicode",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_and_orderflow_producers_agree_on_the_partition_of_each_key() {
    let settings = settings(12);
    Topics::connect(&settings.kafka)
        .unwrap()
        .ensure(&settings.topics)
        .await
        .unwrap();
    let topic = settings.topics.requests.clone();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/local/kafka.sh");
    let mut java = Command::new(script)
        .args([
            "tool",
            "console-producer",
            "--bootstrap-server",
            &settings.kafka.bootstrap_servers,
        ])
        .args([
            "--topic",
            &topic,
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=|",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("kafka.sh tool console-producer starts");
    {
        let mut stdin = java.stdin.take().unwrap();
        for key in KEYS {
            writeln!(stdin, "{key}|java").unwrap();
        }
    }
    let status = tokio::task::spawn_blocking(move || java.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "console producer failed: {status}");

    let producer: FutureProducer = request_producer_config(&settings.kafka, "test")
        .unwrap()
        .create()
        .unwrap();
    let mut rust_partitions = Vec::new();
    for key in KEYS {
        let delivery = producer
            .send(
                FutureRecord::to(&topic).key(key).payload("rust"),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        rust_partitions.push((key, delivery.partition));
    }

    let read = tokio::task::spawn_blocking(move || {
        read_all(
            &settings,
            &topic,
            12,
            2 * KEYS.len(),
            Duration::from_secs(20),
        )
    })
    .await
    .unwrap();
    assert_eq!(read.len(), 2 * KEYS.len());
    let mut distinct = std::collections::HashSet::new();
    for (key, rust_partition) in rust_partitions {
        let java_record = read
            .iter()
            .find(|m| m.key() == Some(key.as_bytes()) && m.payload() == Some(b"java".as_slice()))
            .unwrap_or_else(|| panic!("java record for {key}"));
        assert_eq!(java_record.partition(), rust_partition, "key {key}");
        assert_eq!(
            orderflow::kafka::partition_for(key.as_bytes(), 12),
            rust_partition,
            "orderflow's own murmur2 for {key}"
        );
        distinct.insert(rust_partition);
    }
    assert!(
        distinct.len() > 2,
        "the keys spread over several partitions, so agreement is not luck"
    );
}
