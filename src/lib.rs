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
//! - [`processor`]: the exactly-once loop, in its parts — poll (the consumer and the batch
//!   window), ownership (assigned → restoring → owned → revoked), decide, output records,
//!   transaction (the runner the benchmark's pipe shares), events (log line and metrics together).
//! - [`ops`]: Prometheus metrics, health and readiness, the ops HTTP server.
//! - [`service`]: the whole service as one library call (processor, ops server, gateway,
//!   watchdog, shutdown deadline); `main.rs` only maps how it ended to an exit code.
//! - [`replica`]: the read side — a query-only replica of the whole state topic (`orderflow serve`).
//! - [`client`]: requests in, outcomes out, as upstream services see orderflow (send and await).
//! - [`tools`]: one module per subcommand, each `run(&Settings, &Args)` returning a report that
//!   knows its words, its `--json` form and its exit code.
//! - [`telemetry`]: logging setup.
//! - [`cli`]: the command line and its exit-code table; `main.rs` only parses it, sets up
//!   logging, loads the settings, matches the subcommand and maps errors to exit codes.

#![warn(missing_docs)]

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
pub mod service;
pub mod state;
pub mod telemetry;
pub mod tools;
