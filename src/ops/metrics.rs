//! Prometheus metrics: `orderflow_*`, units in names, `_total` for counters, small fixed label sets
//! (transition names come from the definition, reasons from a closed enum; never an order id).

use prometheus::{
    exponential_buckets, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use rdkafka::Statistics;

use crate::machine::{Definition, RejectCode};

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
    /// Time of each step of a committed transaction (`send`, `deliveries`, `offsets`, `commit`).
    pub transaction_step_seconds: HistogramVec,
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
    /// Memory the cached orders take (blocks and table slots).
    pub cached_order_bytes: IntGauge,
    /// Orders dropped from memory under the disk backend's budget (they stay in the local store).
    pub evicted_orders: IntCounter,
    /// Reads of orders not in memory, served by the local store.
    pub store_reads: IntCounter,
    /// Finished spans dropped because the export queue was full.
    pub trace_spans_dropped: IntCounter,
    /// Finished spans the OTLP collector accepted.
    pub trace_spans_exported: IntCounter,
    /// State records read by restores.
    pub restored_records: IntCounter,
    /// Time a partition's restore took.
    pub restore_seconds: Histogram,
    /// Records the consumer delivered again below an offset this instance had committed (skipped).
    pub redelivered_records: IntCounter,
    /// Committed transactions the local store could not take (their partitions caught up).
    pub store_write_failures: IntCounter,
    /// Requests not yet consumed, per owned partition of the requests topic.
    pub consumer_lag: IntGaugeVec,
    /// Average round-trip time to each broker, per client (`consumer`, `producer`).
    pub broker_rtt_seconds: GaugeVec,
    /// Records waiting in the producer's queue.
    pub producer_queue_messages: IntGauge,
    /// Bytes waiting in the producer's queue.
    pub producer_queue_bytes: IntGauge,
    /// Records fetched and waiting for the processing loop.
    pub consumer_fetch_queue_messages: IntGauge,
    /// 1 when every assigned partition is restored and processing (what `/readyz` answers).
    pub ready: IntGauge,
    /// Always 1, labelled with the version and the definition's short hash.
    pub build_info: IntGaugeVec,
    /// Read replica: state records not yet applied, per partition of the state topic.
    pub replica_lag: IntGaugeVec,
    /// Read replica: time from a state record's commit (its timestamp) to its application here.
    pub replica_apply_delay_seconds: Histogram,
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

/// The steps of a transaction, in order, as `orderflow_transaction_step_duration_seconds` labels them.
pub const TRANSACTION_STEPS: [&str; 4] = ["send", "deliveries", "offsets", "commit"];

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

/// Brings `counter` up to `total`, a count kept elsewhere (a counter only goes up).
fn raise_to(counter: &IntCounter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

impl Metrics {
    /// Brings `orderflow_evicted_orders_total` up to `evicted`, the orders the hot budget has
    /// dropped from memory so far (counted there, where no metrics handle is at hand).
    pub fn evicted_orders_are(&self, evicted: u64) {
        raise_to(&self.evicted_orders, evicted);
    }

    /// Brings `orderflow_store_reads_total` up to `reads`, the hot budget's count of lookups
    /// that missed memory.
    pub fn store_reads_are(&self, reads: u64) {
        raise_to(&self.store_reads, reads);
    }

    /// Brings the span export counters up to the exporter's own counts.
    pub fn spans_are(&self, exported: u64, dropped: u64) {
        raise_to(&self.trace_spans_exported, exported);
        raise_to(&self.trace_spans_dropped, dropped);
    }

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
            transaction_step_seconds: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "orderflow_transaction_step_duration_seconds",
                        "Time of each step of a committed transaction: send (records handed to \
                         the producer), deliveries (acknowledged by the brokers), offsets \
                         (consumer offsets added), commit (the coordinator's answer).",
                    )
                    .buckets(seconds.clone()),
                    &["step"],
                )?;
                r.register(Box::new(h.clone()))?;
                h
            },
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
            cached_order_bytes: gauge(
                &r,
                "orderflow_cached_order_bytes",
                "Memory the cached orders take (their blocks and table slots).",
            )?,
            evicted_orders: counter(
                &r,
                "orderflow_evicted_orders_total",
                "Orders dropped from memory under state.memory_budget_mb; they stay in the local store.",
            )?,
            store_reads: counter(
                &r,
                "orderflow_store_reads_total",
                "Orders looked up in the local store because they were not in memory (found there or not: a new order's create is one too).",
            )?,
            trace_spans_dropped: counter(
                &r,
                "orderflow_trace_spans_dropped_total",
                "Finished spans dropped because traces.queue_spans were already waiting for export (a slow or unreachable collector); the processor never waits for export.",
            )?,
            trace_spans_exported: counter(
                &r,
                "orderflow_trace_spans_exported_total",
                "Finished spans the OTLP collector accepted.",
            )?,
            restored_records: counter(
                &r,
                "orderflow_restored_records_total",
                "State records read by restores.",
            )?,
            redelivered_records: counter(
                &r,
                "orderflow_redelivered_records_total",
                "Records delivered again below an offset this instance had committed; skipped.",
            )?,
            store_write_failures: counter(
                &r,
                "orderflow_store_write_failures_total",
                "Committed transactions the local store could not take; their partitions caught up from the store's checkpoint.",
            )?,
            restore_seconds: histogram(
                &r,
                "orderflow_restore_duration_seconds",
                "Time a partition's restore took.",
                exponential_buckets(0.01, 2.0, 16)?,
            )?,
            replica_lag: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "orderflow_replica_lag_records",
                        "Read replica: state records not yet applied per partition (last stable offset - position).",
                    ),
                    &["partition"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            replica_apply_delay_seconds: histogram(
                &r,
                "orderflow_replica_apply_delay_seconds",
                "Read replica: time from a state record's timestamp (the processor's write) to its application in the replica.",
                exponential_buckets(0.001, 2.0, 16)?,
            )?,
            consumer_lag: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "orderflow_consumer_lag_records",
                        "Requests not yet consumed per owned partition (high watermark - position).",
                    ),
                    &["partition"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            broker_rtt_seconds: {
                let g = GaugeVec::new(
                    Opts::new(
                        "orderflow_kafka_broker_rtt_seconds",
                        "Average round-trip time to a broker over the last statistics window.",
                    ),
                    &["client", "broker"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            producer_queue_messages: gauge(
                &r,
                "orderflow_kafka_producer_queue_messages",
                "Records waiting in the transactional producer's queue.",
            )?,
            producer_queue_bytes: gauge(
                &r,
                "orderflow_kafka_producer_queue_bytes",
                "Bytes waiting in the transactional producer's queue.",
            )?,
            consumer_fetch_queue_messages: gauge(
                &r,
                "orderflow_kafka_consumer_fetch_queue_messages",
                "Records fetched and waiting for the processing loop.",
            )?,
            ready: gauge(
                &r,
                "orderflow_ready",
                "1 when every assigned partition is restored and processing, else 0.",
            )?,
            build_info: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "orderflow_build_info",
                        "Always 1: the running version and state-machine definition.",
                    ),
                    &["version", "definition_hash"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            registry: r,
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), definition.short_hash()])
            .set(1);
        for t in definition.transitions() {
            metrics.accepted.with_label_values(&[t.name.as_str()]);
        }
        for code in RejectCode::ALL {
            metrics.rejected.with_label_values(&[reason_label(code)]);
        }
        for kind in crate::codec::headers::dlq::kinds() {
            metrics.dead_letters.with_label_values(&[kind]);
        }
        for step in TRANSACTION_STEPS {
            metrics.transaction_step_seconds.with_label_values(&[step]);
        }
        for result in ["commit", "abort"] {
            metrics.transactions.with_label_values(&[result]);
        }
        Ok(metrics)
    }

    /// Takes what matters from librdkafka's statistics of the processor's `client`
    /// (`consumer` or `producer`).
    pub fn record_kafka_statistics(&self, client: &str, statistics: &Statistics) {
        for broker in statistics.brokers.values() {
            // Bootstrap entries (node id -1) are not brokers of the cluster.
            if broker.nodeid < 0 {
                continue;
            }
            if let Some(rtt) = &broker.rtt {
                self.broker_rtt_seconds
                    .with_label_values(&[client, &broker.nodeid.to_string()])
                    .set(rtt.avg as f64 / 1e6);
            }
        }
        match client {
            "producer" => {
                self.producer_queue_messages.set(statistics.msg_cnt as i64);
                self.producer_queue_bytes.set(statistics.msg_size as i64);
            }
            _ => {
                let fetched: i64 = statistics
                    .topics
                    .values()
                    .flat_map(|t| t.partitions.values())
                    .filter(|p| p.partition >= 0)
                    .map(|p| p.fetchq_cnt)
                    .sum();
                self.consumer_fetch_queue_messages.set(fetched);
            }
        }
    }

    /// Sets the lag of each assigned partition of `topic` from the consumer's statistics: the
    /// last stable offset minus the next offset the loop will see (or the committed offset, before
    /// the loop saw any record of the partition). Partitions no longer assigned disappear.
    pub fn record_consumer_lag(&self, statistics: &Statistics, topic: &str) {
        set_lags(&self.consumer_lag, statistics, topic);
    }

    /// Sets `orderflow_replica_lag_records` from librdkafka statistics of the replica's reader.
    pub fn record_replica_lag(&self, statistics: &Statistics, topic: &str) {
        set_lags(&self.replica_lag, statistics, topic);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
    }
}

/// Sets a per-partition lag gauge (end − position) from librdkafka statistics.
fn set_lags(gauge: &IntGaugeVec, statistics: &Statistics, topic: &str) {
    {
        let Some(topic) = statistics.topics.get(topic) else {
            return;
        };
        let lags: Vec<(i32, i64)> = topic
            .partitions
            .values()
            .filter(|p| p.partition >= 0 && p.desired)
            .filter_map(|p| {
                let position = if p.app_offset >= 0 {
                    p.app_offset
                } else {
                    p.committed_offset
                };
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                (position >= 0 && end >= 0).then(|| (p.partition, (end - position).max(0)))
            })
            .collect();
        gauge.reset();
        for (partition, lag) in lags {
            gauge.with_label_values(&[&partition.to_string()]).set(lag);
        }
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
