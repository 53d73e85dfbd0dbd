//! Operability: Prometheus metrics, liveness/readiness, and the HTTP server exposing them.

pub mod health;
pub mod metrics;
pub mod owners;
pub mod server;

pub use health::Health;
pub use metrics::Metrics;
pub use owners::{Owner, OwnerDirectory};
pub use server::{serve, OpsState};
