//! Kafka I/O: client settings (the one place librdkafka keys appear) and topic provisioning.

pub mod client;
pub mod topics;

pub use client::{
    base_config, committed_reader_config, request_producer_config, ClientConfigError,
};
pub use topics::{TopicError, TopicStatus, Topics};
