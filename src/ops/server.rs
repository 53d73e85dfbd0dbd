//! The ops HTTP server: `/metrics` (Prometheus text), `/healthz` (the loop is alive), `/readyz`
//! (assigned partitions restored and processing), `GET /orders/{id}` (an order's committed state
//! when this instance owns its partition, or any order on a read replica), `GET /states` (orders
//! per state among those held here) and `POST /orders/{id}/transitions` (send a request and answer
//! its outcome).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Json;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::health::Health;
use super::metrics::Metrics;
use super::owners::OwnerDirectory;
use crate::client::{Gateway, GatewayError, Outcome};
use crate::clock::{Clock, SystemClock};
use crate::codec::headers::TRACEPARENT;
use crate::kafka::partition_for;
use crate::machine::Definition;
use crate::machine::TransitionRequest;
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
    /// Sends requests and awaits their outcomes, for `POST /orders/{id}/transitions`.
    pub gateway: Option<Arc<Gateway>>,
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
            gateway: None,
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
        .map(|cache| cache.get(&order_id));
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

/// Orders per state among the orders this instance holds (its partitions; every partition on a
/// read replica). Counted on request: O(orders held).
async fn states(State(state): State<OpsState>) -> impl IntoResponse {
    let mut counts: BTreeMap<&str, u64> = state
        .definition
        .states()
        .iter()
        .map(|s| (s.name.as_str(), 0))
        .collect();
    let caches = state.caches.read();
    let mut partitions: Vec<i32> = caches.keys().copied().collect();
    partitions.sort_unstable();
    let mut orders = 0u64;
    for cache in caches.values() {
        cache.each_state(|order_state| {
            *counts
                .entry(state.definition.state(order_state).name.as_str())
                .or_default() += 1;
            orders += 1;
        });
    }
    (
        StatusCode::OK,
        Json(json!({"orders": orders, "states": counts, "partitions": partitions})),
    )
}

/// The body of `POST /orders/{id}/transitions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransitionBody {
    transition: String,
    expected_version: Option<u64>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    source: Option<String>,
    /// Reuse to retry idempotently; default: a new one.
    request_id: Option<Uuid>,
    /// How long to wait for the outcome; default 10 s, at most 60 s.
    timeout_ms: Option<u64>,
}

/// Sends a transition request and answers its outcome: 200 accepted, 409 rejected, 422 dead
/// letter, 504 no outcome in time (retry with the same request id), 400 bad body.
async fn post_transition(
    State(state): State<OpsState>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<TransitionBody>, JsonRejection>,
) -> (StatusCode, Json<Value>) {
    let Some(gateway) = state.gateway.clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "this instance does not accept requests over HTTP (no gateway)"})),
        );
    };
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "error": "bad request body",
                    "detail": rejection.body_text(),
                    "expected": {"transition": "ship", "expected_version": 2, "attributes": {"carrier": "dhl"}, "source": "warehouse", "request_id": "optional UUID", "timeout_ms": 10000},
                })),
            )
        }
    };
    let request = TransitionRequest {
        request_id: body.request_id.unwrap_or_else(Uuid::new_v4),
        order_id,
        transition: body.transition,
        expected_version: body.expected_version,
        requested_at_ms: SystemClock.now_ms(),
        source: body.source.unwrap_or_else(|| "http".into()),
        attributes: body.attributes,
    };
    let trace: Vec<(String, Vec<u8>)> = headers
        .get(TRACEPARENT)
        .map(|v| vec![(TRACEPARENT.to_string(), v.as_bytes().to_vec())])
        .unwrap_or_default();
    let timeout = Duration::from_millis(body.timeout_ms.unwrap_or(10_000).min(60_000));
    match gateway.submit(&request, &trace, timeout).await {
        Ok(outcome) => {
            let status = match outcome {
                Outcome::Accepted(_) => StatusCode::OK,
                Outcome::Rejected(_) => StatusCode::CONFLICT,
                Outcome::DeadLetter(_) => StatusCode::UNPROCESSABLE_ENTITY,
            };
            (status, Json(outcome.to_json()))
        }
        Err(e @ GatewayError::Timeout { .. }) => (
            StatusCode::GATEWAY_TIMEOUT,
            Json(json!({
                "error": "no outcome in time",
                "request_id": request.request_id.to_string(),
                "detail": e.to_string(),
            })),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "cannot send the request", "detail": e.to_string()})),
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
        .route("/states", get(states))
        .route("/orders/{id}/transitions", post(post_transition))
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
