//! orderflow: the order state machine of an online store, exactly once, on Apache Kafka.
//!
//! # Layout (in the order a request flows through it)
//! - [`config`]: settings from file, environment and flags; the only place defaults live.
//! - [`clock`]: the one clock every layer reads time from.
//! - [`kafka`]: librdkafka client settings (the one place its keys appear), topic provisioning,
//!   the transactional producer.
//! - [`codec`]: bytes ⇄ domain records (Avro single-object encoding, schemas in `schemas/`).
//! - [`machine`]: the pure core — the state machine as data, `decide(state, request)`, parking.
//! - [`state`]: per-partition committed caches and their restore from the compacted topic.
//! - [`processor`]: the exactly-once loop — poll, decide, produce, commit in one transaction.
//! - [`ops`]: Prometheus metrics, health and readiness, the ops HTTP server.
//! - [`replica`]: the read side — a query-only replica of the whole state topic (`orderflow serve`).
//! - [`client`]: requests in, outcomes out, as upstream services see orderflow (send and await).
//! - [`tools`]: commands for people and scripts (send, get, tail, dlq, demo).
//! - [`telemetry`]: logging setup.
//! - [`cli`]: the command line; `main.rs` only parses it and dispatches.

pub mod cli;
pub mod client;
pub mod clock;
pub mod codec;
pub mod config;
pub mod kafka;
pub mod machine;
pub mod ops;
pub mod processor;
pub mod replica;
pub mod state;
pub mod telemetry;
pub mod tools;
