//! Kafka I/O: client settings (the one place librdkafka keys appear), topic provisioning and the
//! transactional producer.

pub mod client;
pub(crate) mod group;
pub mod partitioner;
pub mod topic_id;
pub(crate) mod topics;
pub(crate) mod transactions;

pub use client::{
    base_config, check_client_settings, committed_reader_config, parse_processor_client_id,
    processor_client_id, processor_consumer_config, read_in_bulk, request_producer_config,
    restore_consumer_config, transactional_id, transactional_producer_config, ClientConfigError,
};
pub use partitioner::partition_for;
pub use topics::{TopicError, TopicStatus, Topics};
pub use transactions::{
    classify, is_fenced, CallWatch, ErrorClass, OutgoingRecord, StatsCallback, TxnError,
    TxnProducer,
};

/// A consumer context for readers that wait for the end of partitions (restore, scans): reaching
/// the end is what they wait for, so it is not logged as an error; anything else is a warning.
pub struct EndOfPartitionIsNews;

impl rdkafka::ClientContext for EndOfPartitionIsNews {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // librdkafka reports it as a global error, not as KafkaError::PartitionEOF.
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            tracing::debug!(%error, reason, "end of partition");
        } else {
            tracing::warn!(%error, reason, "consumer");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndOfPartitionIsNews {}
