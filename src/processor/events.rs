//! Things worth observing in the processor, each one struct whose `emit` writes the log line and
//! updates the metrics together (vector's `internal_events` style): the processor never pokes a
//! metric or writes one of these log lines on its own.

use std::time::Duration;

use super::decide::BatchOutput;
use super::transaction::TransactionSteps;
use crate::kafka::TxnError;
use crate::ops::metrics::reason_label;
use crate::ops::Metrics;

/// A transaction taking longer than this is logged with the time each of its steps took.
const SLOW_TRANSACTION: Duration = Duration::from_millis(200);

/// A batch's (or an expiry pass's) transaction committed: its outcomes are visible.
#[derive(Debug)]
pub struct TransactionCommitted<'a> {
    /// The transaction's number in this processor's life.
    pub number: u64,
    /// Input records it consumed (0 for an expiry pass).
    pub inputs: usize,
    /// What it wrote.
    pub output: &'a BatchOutput,
    /// How long its steps took.
    pub steps: TransactionSteps,
}

impl TransactionCommitted<'_> {
    /// Counts the transaction and everything its batch decided; logs it (a warning when slow).
    pub fn emit(&self, metrics: &Metrics) {
        let (m, output) = (metrics, self.output);
        m.transactions.with_label_values(&["commit"]).inc();
        m.transaction_seconds
            .observe(self.steps.total().as_secs_f64());
        for (step, took) in TransactionSteps::NAMES.iter().zip(self.steps.durations()) {
            m.transaction_step_seconds
                .with_label_values(&[step])
                .observe(took.as_secs_f64());
        }
        if self.inputs > 0 {
            m.batch_records.observe(self.inputs as f64);
            m.requests_consumed.inc_by(self.inputs as u64);
        }
        m.duplicates.inc_by(output.stats.duplicates);
        m.forgotten.inc_by(output.stats.forgotten);
        for (transition, n) in &output.accepted_by_transition {
            m.accepted
                .with_label_values(&[transition.as_str()])
                .inc_by(*n);
        }
        for (code, n) in &output.rejected_by_reason {
            m.rejected
                .with_label_values(&[reason_label(*code)])
                .inc_by(*n);
        }
        for latency in &output.decision_latencies_ms {
            m.decision_latency_seconds
                .observe((*latency).max(0) as f64 / 1000.0);
        }
        DeadLettersWritten { output }.emit(m);
        RequestsParked {
            parked: output.stats.parked,
            expired: output.stats.expired,
        }
        .emit(m);
        let total = self.steps.total();
        if total >= SLOW_TRANSACTION {
            let [send, deliveries, offsets, commit] =
                self.steps.durations().map(|d| d.as_millis() as u64);
            // Which step took the time tells a slow broker (deliveries), a slow group
            // coordinator (offsets) and a slow transaction coordinator (commit) apart.
            tracing::warn!(
                number = self.number,
                records = output.records.len(),
                send_ms = send,
                deliveries_ms = deliveries,
                offsets_ms = offsets,
                commit_ms = commit,
                "slow transaction"
            );
        } else {
            tracing::debug!(
                number = self.number,
                records = output.records.len(),
                commit_ms = total.as_millis() as u64,
                "transaction committed"
            );
        }
    }
}

/// A transaction failed and was aborted (or left to a new producer): its batch is redone.
#[derive(Debug)]
pub struct TransactionAborted<'a> {
    /// Why.
    pub error: &'a TxnError,
    /// Records it had sent.
    pub records: usize,
    /// Whether the producer was replaced because it became unusable.
    pub producer_replaced: bool,
}

impl TransactionAborted<'_> {
    /// Counts the abort and says why.
    pub fn emit(&self, metrics: &Metrics) {
        metrics.transactions.with_label_values(&["abort"]).inc();
        if self.producer_replaced {
            tracing::warn!(
                error = %self.error,
                records = self.records,
                "the transactional producer is unusable; replaced it, redoing the batch"
            );
        } else {
            tracing::warn!(
                error = %self.error,
                records = self.records,
                "transaction failed; aborted, redoing the batch"
            );
        }
    }
}

/// The consumer delivered a record this instance had decided and committed already: skipped.
#[derive(Debug)]
pub struct RecordRedelivered {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

impl RecordRedelivered {
    /// Counts it and says so: the consumer's position went back behind this owner's commits.
    pub fn emit(&self, metrics: &Metrics) {
        metrics.redelivered_records.inc();
        tracing::warn!(
            partition = self.partition,
            offset = self.offset,
            "the consumer delivered a record this instance committed already; skipping it"
        );
    }
}

/// A committed transaction's changes could not be written to the local store (a full or failing
/// disk): the partitions it touched catch up from their store's checkpoint before they decide again.
#[derive(Debug)]
pub struct StoreFellBehind<'a> {
    /// The partitions whose store is behind their committed state.
    pub partitions: &'a [i32],
    /// The store's error.
    pub error: &'a crate::state::store::StoreError,
}

impl StoreFellBehind<'_> {
    /// Counts it and says what happens next.
    pub fn emit(&self, metrics: &Metrics) {
        metrics.store_write_failures.inc();
        tracing::error!(
            partitions = ?self.partitions,
            error = %self.error,
            "a committed transaction could not be written to the local store; its partitions are \
             paused and catch up from their checkpoint (if the disk stays unwritable, that \
             restore fails and the process exits: free space under state.dir or set \
             state.backend = \"memory\")"
        );
    }
}

/// A partition's state is restored: it is resumed and its requests are decided from now on.
#[derive(Debug)]
pub struct PartitionRestored {
    /// The partition.
    pub partition: i32,
    /// Orders in its state.
    pub orders: usize,
    /// State records read.
    pub records: u64,
    /// How long the restore took.
    pub elapsed: Duration,
}

impl PartitionRestored {
    /// Counts the restore and logs it.
    pub fn emit(&self, metrics: &Metrics) {
        metrics.restored_records.inc_by(self.records);
        metrics.restore_seconds.observe(self.elapsed.as_secs_f64());
        tracing::info!(
            partition = self.partition,
            orders = self.orders,
            records = self.records,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "partition ready"
        );
    }
}

/// Poison records of a committed batch went to the dead-letter topic.
#[derive(Debug)]
pub struct DeadLettersWritten<'a> {
    /// The batch (its dead letters by kind).
    pub output: &'a BatchOutput,
}

impl DeadLettersWritten<'_> {
    /// Counts them by kind; logs one line per batch that had any.
    pub fn emit(&self, metrics: &Metrics) {
        let by_kind = &self.output.dead_letters_by_kind;
        if by_kind.is_empty() {
            return;
        }
        for (kind, n) in by_kind {
            metrics.dead_letters.with_label_values(&[kind]).inc_by(*n);
        }
        tracing::info!(?by_kind, "dead letters written");
    }
}

/// Requests of a committed batch were parked until their order reaches a source state, or
/// rejected because their parking deadline passed.
#[derive(Debug)]
pub struct RequestsParked {
    /// Requests parked.
    pub parked: u64,
    /// Parked requests that expired.
    pub expired: u64,
}

impl RequestsParked {
    /// Counts them; logs at debug level when there were any.
    pub fn emit(&self, metrics: &Metrics) {
        if self.parked == 0 && self.expired == 0 {
            return;
        }
        metrics.parked.inc_by(self.parked);
        metrics.expired.inc_by(self.expired);
        tracing::debug!(
            parked = self.parked,
            expired = self.expired,
            "requests parked / expired"
        );
    }
}
