//! Prometheus metrics: `orderflow_*`, units in names, `_total` for counters, small fixed label sets
//! (transition names come from the definition, reasons from a closed enum; never an order id).

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::machine::{Definition, RejectCode};
use crate::processor::batch::BatchStats;

/// Every metric orderflow exports, registered in its own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Request records consumed (decodable or not).
    pub requests_consumed: IntCounter,
    /// Accepted transitions by transition name (duplicates excluded).
    pub accepted: IntCounterVec,
    /// Rejections by reason (duplicates excluded).
    pub rejected: IntCounterVec,
    /// Redeliveries answered with their recorded outcome.
    pub duplicates: IntCounter,
    /// Dead letters by error kind.
    pub dead_letters: IntCounterVec,
    /// Requests parked to wait for their order.
    pub parked: IntCounter,
    /// Parked requests rejected at their deadline.
    pub expired: IntCounter,
    /// Orders forgotten after their retention.
    pub forgotten: IntCounter,
    /// Transactions by result (`commit`, `abort`).
    pub transactions: IntCounterVec,
    /// Time from beginning a transaction to its commit.
    pub transaction_seconds: Histogram,
    /// Requests per committed batch.
    pub batch_records: Histogram,
    /// Time from a request's `requested_at` to its decision.
    pub decision_latency_seconds: Histogram,
    /// Partitions this instance owns.
    pub owned_partitions: IntGauge,
    /// Partitions being restored.
    pub restoring_partitions: IntGauge,
    /// Orders in the committed caches.
    pub cached_orders: IntGauge,
    /// State records read by restores.
    pub restored_records: IntCounter,
    /// Time a partition's restore took.
    pub restore_seconds: Histogram,
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> prometheus::Result<Histogram> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    /// Registers every metric; label values known up front (transitions, reasons) start at 0 so
    /// dashboards and alerts see them before the first event.
    pub fn new(definition: &Definition) -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let seconds = exponential_buckets(0.001, 2.0, 16)?;
        let metrics = Metrics {
            requests_consumed: counter(
                &r,
                "orderflow_requests_consumed_total",
                "Request records consumed.",
            )?,
            accepted: counter_vec(
                &r,
                "orderflow_accepted_total",
                "Accepted transitions by transition (duplicates excluded).",
                "transition",
            )?,
            rejected: counter_vec(
                &r,
                "orderflow_rejected_total",
                "Rejected requests by reason (duplicates excluded).",
                "reason",
            )?,
            duplicates: counter(
                &r,
                "orderflow_duplicates_total",
                "Redelivered requests answered with their recorded outcome.",
            )?,
            dead_letters: counter_vec(
                &r,
                "orderflow_dead_letters_total",
                "Records sent to the dead-letter topic by error kind.",
                "kind",
            )?,
            parked: counter(
                &r,
                "orderflow_parked_total",
                "Early requests parked with their order.",
            )?,
            expired: counter(
                &r,
                "orderflow_expired_total",
                "Parked requests rejected at their deadline.",
            )?,
            forgotten: counter(
                &r,
                "orderflow_forgotten_orders_total",
                "Orders forgotten after their state's retention.",
            )?,
            transactions: counter_vec(
                &r,
                "orderflow_transactions_total",
                "Kafka transactions by result.",
                "result",
            )?,
            transaction_seconds: histogram(
                &r,
                "orderflow_transaction_duration_seconds",
                "Time from beginning a transaction to its commit.",
                seconds.clone(),
            )?,
            batch_records: histogram(
                &r,
                "orderflow_batch_records",
                "Requests per committed batch.",
                exponential_buckets(1.0, 2.0, 16)?,
            )?,
            decision_latency_seconds: histogram(
                &r,
                "orderflow_decision_latency_seconds",
                "Time from a request's requested_at to its decision.",
                seconds.clone(),
            )?,
            owned_partitions: gauge(
                &r,
                "orderflow_owned_partitions",
                "Partitions this instance owns.",
            )?,
            restoring_partitions: gauge(
                &r,
                "orderflow_restoring_partitions",
                "Partitions being restored.",
            )?,
            cached_orders: gauge(
                &r,
                "orderflow_cached_orders",
                "Orders in the committed caches.",
            )?,
            restored_records: counter(
                &r,
                "orderflow_restored_records_total",
                "State records read by restores.",
            )?,
            restore_seconds: histogram(
                &r,
                "orderflow_restore_duration_seconds",
                "Time a partition's restore took.",
                exponential_buckets(0.01, 2.0, 16)?,
            )?,
            registry: r,
        };
        for t in definition.transitions() {
            metrics.accepted.with_label_values(&[t.name.as_str()]);
        }
        for code in RejectCode::ALL {
            metrics.rejected.with_label_values(&[reason_label(code)]);
        }
        for result in ["commit", "abort"] {
            metrics.transactions.with_label_values(&[result]);
        }
        Ok(metrics)
    }

    /// Adds a committed batch's counts.
    pub fn record_batch(&self, stats: &BatchStats) {
        self.duplicates.inc_by(stats.duplicates);
        self.parked.inc_by(stats.parked);
        self.expired.inc_by(stats.expired);
        self.forgotten.inc_by(stats.forgotten);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
    }
}

/// The label value of a rejection reason (lower case).
pub fn reason_label(code: RejectCode) -> &'static str {
    match code {
        RejectCode::UnknownTransition => "unknown_transition",
        RejectCode::InvalidTransition => "invalid_transition",
        RejectCode::UnknownOrder => "unknown_order",
        RejectCode::OrderAlreadyExists => "order_already_exists",
        RejectCode::VersionConflict => "version_conflict",
        RejectCode::TerminalState => "terminal_state",
        RejectCode::Expired => "expired",
        RejectCode::ParkingFull => "parking_full",
    }
}
