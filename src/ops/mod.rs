//! Operability: Prometheus metrics, liveness/readiness, and the HTTP server exposing them.

pub(crate) mod health;
pub mod metrics;
pub(crate) mod owners;
pub(crate) mod server;

pub use health::Health;
pub use metrics::Metrics;
pub use owners::{Owner, OwnerDirectory};
pub use server::{serve, OpsState};
