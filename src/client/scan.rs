//! Reading a topic's committed records from the beginning to its current end, for the tools that
//! look back (`orderflow get`, `orderflow dlq list|replay`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use super::GatewayError;
use crate::config::KafkaSettings;
use crate::kafka::{committed_reader_config, read_in_bulk, EndOfPartitionIsNews};

/// Visits every committed record of `partitions` of `topic`, from the beginning up to the end each
/// partition had when the scan reached it; returns how many were visited. Gives up after `timeout`
/// without progress (a broker that went away).
pub fn scan_topic(
    kafka: &KafkaSettings,
    client_name: &str,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
    mut visit: impl FnMut(&BorrowedMessage<'_>),
) -> Result<u64, GatewayError> {
    let mut config = committed_reader_config(
        kafka,
        client_name,
        &format!("{client_name}-{}", Uuid::new_v4().simple()),
    )?;
    read_in_bulk(&mut config);
    let consumer: BaseConsumer<EndOfPartitionIsNews> = config
        .set("enable.partition.eof", "true")
        .create_with_context(EndOfPartitionIsNews)
        .map_err(|source| GatewayError::Kafka {
            doing: format!("creating a reader of {topic}"),
            source,
        })?;
    let mut assignment = TopicPartitionList::new();
    for &partition in partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .map_err(|source| GatewayError::Kafka {
                doing: format!("assigning {topic}"),
                source,
            })?;
    }
    consumer
        .assign(&assignment)
        .map_err(|source| GatewayError::Kafka {
            doing: format!("assigning {topic}"),
            source,
        })?;
    let mut open: BTreeSet<i32> = partitions.iter().copied().collect();
    let mut visited = 0;
    let mut last_progress = Instant::now();
    while !open.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => {
                visited += 1;
                last_progress = Instant::now();
                visit(&message);
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                open.remove(&partition);
                last_progress = Instant::now();
            }
            Some(Err(e)) => tracing::debug!(error = %e, topic, "reader"),
        }
        if last_progress.elapsed() > timeout {
            return Err(GatewayError::Kafka {
                doing: format!(
                    "reading {topic}: no progress for {timeout:?} (partitions {open:?} not finished)"
                ),
                source: KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut),
            });
        }
    }
    Ok(visited)
}
