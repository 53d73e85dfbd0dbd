//! `orderflow demo`: produce order lifecycles as real transition requests and read them back.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::codec::{decode_request, encode_request};
use crate::config::Settings;
use crate::kafka::{committed_reader_config, request_producer_config};
use crate::machine::TransitionRequest;

/// The lifecycle each demo order walks through.
const LIFECYCLE: [&str; 4] = ["create", "confirm", "ship", "deliver"];

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Produces `orders` lifecycles to the requests topic and reads every request back, checking it.
pub async fn run(settings: &Settings, orders: u32) -> anyhow::Result<()> {
    let producer: FutureProducer = request_producer_config(&settings.kafka, "orderflow-demo")?
        .create()
        .context("creating the request producer")?;
    let run = &Uuid::new_v4().simple().to_string()[..8];
    let topic = &settings.topics.requests;
    let mut sent: HashMap<(i32, i64), TransitionRequest> = HashMap::new();
    println!(
        "producing {} requests to {topic}:",
        orders as usize * LIFECYCLE.len()
    );
    for n in 0..orders {
        let order_id = format!("demo-{run}-{n}");
        for transition in LIFECYCLE {
            let request = TransitionRequest {
                request_id: Uuid::new_v4(),
                order_id: order_id.clone(),
                transition: transition.into(),
                expected_version: None,
                requested_at_ms: now_ms(),
                source: "demo".into(),
                attributes: BTreeMap::from([("run".to_string(), run.to_string())]),
            };
            let mut payload = Vec::with_capacity(128);
            encode_request(&request, &mut payload);
            let delivery = producer
                .send(
                    FutureRecord::to(topic).key(&order_id).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .with_context(|| format!("producing {transition} for {order_id} to {topic}"))?;
            let (partition, offset) = (delivery.partition, delivery.offset);
            println!("  {order_id:<20} {transition:<10} -> partition {partition} offset {offset}");
            sent.insert((partition, offset), request);
        }
    }

    let consumer: BaseConsumer = committed_reader_config(
        &settings.kafka,
        "orderflow-demo-reader",
        &format!("orderflow-demo-{run}"),
    )?
    .create()
    .context("creating the reader")?;
    let mut assignment = TopicPartitionList::new();
    let mut first: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, offset) in sent.keys() {
        let entry = first.entry(*partition).or_insert(*offset);
        *entry = (*entry).min(*offset);
    }
    for (partition, offset) in &first {
        assignment.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut read_back = 0;
    while read_back < sent.len() {
        if Instant::now() > deadline {
            bail!(
                "read back only {read_back} of {} requests within 30 s",
                sent.len()
            );
        }
        // The demo reader is a plain blocking poll loop on a blocking thread.
        let message = tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(200)));
        let Some(message) = message else { continue };
        let message = message.context("reading requests back")?;
        let Some(expected) = sent.get(&(message.partition(), message.offset())) else {
            continue;
        };
        let decoded = decode_request(message.key(), message.payload().unwrap_or_default())
            .with_context(|| {
                format!(
                    "decoding partition {} offset {}",
                    message.partition(),
                    message.offset()
                )
            })?;
        if &decoded != expected {
            bail!(
                "request at partition {} offset {} came back changed",
                message.partition(),
                message.offset()
            );
        }
        read_back += 1;
    }
    println!("read back all {read_back} requests intact from {topic} (read_committed)");
    Ok(())
}
