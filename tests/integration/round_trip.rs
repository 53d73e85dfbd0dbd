//! Requests produced with orderflow's producer settings come back intact, keyed and partitioned.

use std::collections::BTreeMap;
use std::time::Duration;

use orderflow::codec::{decode_request, encode_request};
use orderflow::kafka::{request_producer_config, Topics};
use orderflow::machine::TransitionRequest;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use crate::support::{payload, read_all, settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_produced_to_the_broker_come_back_with_their_keys_and_content() {
    let settings = settings(3);
    Topics::connect(&settings.kafka)
        .unwrap()
        .ensure(&settings.topics)
        .await
        .expect("topics created");
    let producer: FutureProducer = request_producer_config(&settings.kafka, "test")
        .unwrap()
        .create()
        .unwrap();
    let mut sent = Vec::new();
    for n in 0..20 {
        let request = TransitionRequest {
            request_id: Uuid::new_v4(),
            order_id: format!("order-{n}"),
            transition: "create".into(),
            expected_version: (n % 2 == 0).then_some(0),
            requested_at_ms: 1_764_000_000_000 + n,
            source: "test".into(),
            attributes: BTreeMap::from([("n".to_string(), n.to_string())]),
        };
        let mut bytes = Vec::new();
        encode_request(&request, &mut bytes);
        let delivery = producer
            .send(
                FutureRecord::to(&settings.topics.requests)
                    .key(&request.order_id)
                    .payload(&bytes),
                Duration::from_secs(10),
            )
            .await
            .expect("delivered");
        sent.push((delivery.partition, delivery.offset, request));
    }
    let topic = settings.topics.requests.clone();
    let read = tokio::task::spawn_blocking(move || {
        read_all(&settings, &topic, 3, 20, Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert_eq!(read.len(), 20);
    for message in &read {
        let (_, _, expected) = sent
            .iter()
            .find(|(p, o, _)| *p == message.partition() && *o == message.offset())
            .expect("every record read was one we sent");
        assert_eq!(message.key(), Some(expected.order_id.as_bytes()));
        let decoded = decode_request(message.key(), payload(message)).unwrap();
        assert_eq!(&decoded, expected);
    }
    // One order's requests all land in one partition: keys decide partitions.
    let partitions: std::collections::HashSet<i32> = sent.iter().map(|(p, _, _)| *p).collect();
    assert!(
        partitions.len() > 1,
        "20 keys spread over more than one of 3 partitions"
    );
}
