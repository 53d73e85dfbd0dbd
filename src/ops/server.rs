//! The ops HTTP server: `/metrics` (Prometheus text), `/healthz` (the loop is alive), `/readyz`
//! (assigned partitions restored and processing).

use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::health::Health;
use super::metrics::Metrics;

/// How long the loop may go without a heartbeat before `/healthz` fails (it beats at least every
/// 100 ms while idle, and once per batch while busy).
pub const MAX_LOOP_SILENCE_MS: i64 = 30_000;

/// What the handlers share.
#[derive(Clone)]
pub struct OpsState {
    /// The metrics to expose.
    pub metrics: Metrics,
    /// The loop's health.
    pub health: Arc<Health>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn healthz(State(state): State<OpsState>) -> impl IntoResponse {
    if state.health.is_alive(now_ms(), MAX_LOOP_SILENCE_MS) {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the processing loop is stuck or failed\n",
        )
    }
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: joining the group or restoring partitions\n",
        )
    }
}

/// The routes.
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves the ops endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: OpsState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
