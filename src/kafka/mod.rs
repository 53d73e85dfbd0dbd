//! Kafka I/O: client settings (the one place librdkafka keys appear), topic provisioning and the
//! transactional producer.

pub mod client;
pub mod group;
pub mod partitioner;
pub mod topics;
pub mod transactions;

pub use client::{
    base_config, committed_reader_config, parse_processor_client_id, processor_client_id,
    processor_consumer_config, request_producer_config, restore_consumer_config, transactional_id,
    transactional_producer_config, ClientConfigError,
};
pub use partitioner::partition_for;
pub use topics::{TopicError, TopicStatus, Topics};
pub use transactions::{
    classify, ErrorClass, OutgoingRecord, StatsCallback, TxnError, TxnProducer,
};
