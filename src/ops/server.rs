//! The ops HTTP server: `/metrics` (Prometheus text), `/healthz` (the loop is alive), `/readyz`
//! (assigned partitions restored and processing), `GET /orders/{id}` (an order's committed state
//! when this instance owns its partition).

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Json;
use axum::Router;
use serde_json::json;

use super::health::Health;
use super::metrics::Metrics;
use super::owners::OwnerDirectory;
use crate::kafka::partition_for;
use crate::machine::Definition;
use crate::processor::{Clock, SystemClock};
use crate::state::SharedCaches;

/// What the handlers share.
#[derive(Clone)]
pub struct OpsState {
    /// The metrics to expose.
    pub metrics: Metrics,
    /// The loop's health.
    pub health: Arc<Health>,
    /// The committed state of the owned partitions.
    pub caches: SharedCaches,
    /// The definition, for state names.
    pub definition: Arc<Definition>,
    /// Partitions of the requests topic (to find an order's partition).
    pub partitions: i32,
    /// How long the loop may go without a heartbeat before `/healthz` fails (it beats at least
    /// every 100 ms while idle, and once per batch while busy).
    pub liveness_timeout_ms: i64,
    /// Where to look up the owner of a partition owned elsewhere.
    pub owners: Option<Arc<OwnerDirectory>>,
}

impl OpsState {
    /// The state of an ops server with the default liveness timeout (30 s) and no owner lookup.
    pub fn new(
        metrics: Metrics,
        health: Arc<Health>,
        caches: SharedCaches,
        definition: Arc<Definition>,
        partitions: i32,
    ) -> OpsState {
        OpsState {
            metrics,
            health,
            caches,
            definition,
            partitions,
            liveness_timeout_ms: 30_000,
            owners: None,
        }
    }
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn healthz(State(state): State<OpsState>) -> impl IntoResponse {
    if state
        .health
        .is_alive(SystemClock.now_ms(), state.liveness_timeout_ms)
    {
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

async fn order(State(state): State<OpsState>, Path(order_id): Path<String>) -> impl IntoResponse {
    let partition = partition_for(order_id.as_bytes(), state.partitions);
    // Outer None: the partition is not owned here; inner None: no such order.
    let found = state
        .caches
        .read()
        .get(&partition)
        .map(|cache| cache.get(&order_id).cloned());
    match found {
        None => {
            // Distinct from 404: the order may exist, but another instance owns its partition.
            let owner = match state.owners.clone() {
                Some(owners) => tokio::task::spawn_blocking(move || owners.owner(partition))
                    .await
                    .ok()
                    .flatten(),
                None => None,
            };
            (
                StatusCode::MISDIRECTED_REQUEST,
                Json(json!({
                    "error": "not owned",
                    "order_id": order_id,
                    "partition": partition,
                    "owner_instance": owner.as_ref().map(|o| o.instance_id.clone()),
                    "owner_url": owner.and_then(|o| o.url).map(|u| format!("{u}/orders/{order_id}")),
                    "detail": "another instance owns this order's partition (or it is being restored here); ask the owner",
                })),
            )
        }
        Some(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "unknown order", "order_id": order_id, "partition": partition})),
        ),
        Some(Some(s)) => (
            StatusCode::OK,
            Json(json!({
                "order_id": order_id,
                "partition": partition,
                "state": state.definition.state(s.state).name,
                "version": s.version,
                "created_at_ms": s.created_at_ms,
                "updated_at_ms": s.updated_at_ms,
                "parked_requests": s.parked.len(),
            })),
        ),
    }
}

/// The routes.
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/orders/{id}", get(order))
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
