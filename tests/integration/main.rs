//! Integration tests against a real Apache Kafka broker (KRaft, single node).
//!
//! `make test` starts one on 127.0.0.1:19092 with `deploy/local/kafka.sh` and sets
//! `ORDERFLOW_TEST_BOOTSTRAP`; every test makes its own uniquely named topics and groups.

mod support;

mod chaos;
mod cli;
mod crash;
mod java_avro;
mod java_partitioning;
mod kafka_script;
mod lifecycle;
mod ops;
mod outage;
mod processor;
mod rebuild;
mod replica;
mod round_trip;
mod service;
mod store;
mod tools;
mod topics;
mod traces;
mod zombie;
