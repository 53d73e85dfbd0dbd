//! The spans of a batch's sampled requests and of the transaction that writes them, following
//! OpenTelemetry's messaging conventions: a `process` span (kind consumer) per request, a child
//! of the sender's context from its `traceparent`, linked to one span per transaction attempt;
//! the request's outcome record carries the `process` span's context onward. A parked request
//! answered later (released or expired) gets a second `process` span, under the context it
//! arrived with (kept with it in the order's state), saying how long it waited. A record that is
//! not a request gets a `process` span with status error and the dead letter's error kind, and
//! the dead letter carries its context. Spans exist only
//! for sampled requests (see [`Sampling`](crate::telemetry::context::Sampling)): a batch without
//! one makes none.

use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::decide::{BatchOutput, TracedOutcome};
use crate::codec::headers::set_traceparent;
use crate::config::Settings;
use crate::ops::metrics::reason_label;
use crate::telemetry::context::TraceParent;
use crate::telemetry::SPANS;

/// Links a transaction span keeps to the requests it decided at most (OpenTelemetry's default
/// limit per span is 128; the process spans link back to it, so none is lost).
pub const MAX_TRANSACTION_LINKS: usize = 128;

/// The open spans of one transaction attempt.
#[derive(Debug)]
pub struct BatchSpans {
    transaction: tracing::Span,
    requests: Vec<tracing::Span>,
}

impl BatchSpans {
    /// Starts the spans of `output`'s sampled requests and of their transaction (attempt
    /// `number`, `inputs` records consumed), and points each sampled request's outcome record
    /// at its span. `None` when no request of the batch is sampled.
    pub fn start(
        number: u64,
        inputs: usize,
        output: &mut BatchOutput,
        settings: &Settings,
    ) -> Option<BatchSpans> {
        if output.traced.is_empty() {
            return None;
        }
        let partitions = output.next_offsets.len();
        let transaction = tracing::info_span!(
            target: SPANS,
            "transaction",
            otel.name = "orderflow transaction",
            otel.kind = "internal",
            otel.status_code = Empty,
            orderflow.transaction.number = number as i64,
            orderflow.transaction.outcome = Empty,
            orderflow.transaction.partitions = partitions as i64,
            orderflow.transaction.records = output.records.len() as i64,
            orderflow.transaction.links_dropped = output.traced.len().saturating_sub(MAX_TRANSACTION_LINKS) as i64,
            messaging.batch.message_count = inputs as i64,
            messaging.system = "kafka",
        );
        let transaction_context = span_context(&transaction);
        let requests_topic = &settings.topics.requests;
        let name = format!("process {requests_topic}");
        let mut requests = Vec::with_capacity(output.traced.len());
        for traced in &output.traced {
            let (outcome, reason, error) = match traced.outcome {
                TracedOutcome::Accepted => ("accepted", None, None),
                TracedOutcome::Rejected(code) => ("rejected", Some(reason_label(code)), None),
                TracedOutcome::Duplicate => ("duplicate", None, None),
                TracedOutcome::Parked => ("parked", None, None),
                TracedOutcome::DeadLetter(kind) => ("dead_letter", None, Some(kind)),
            };
            let span = tracing::info_span!(
                target: SPANS,
                "process",
                otel.name = %name,
                otel.kind = "consumer",
                otel.status_code = Empty,
                messaging.system = "kafka",
                messaging.operation.type = "process",
                messaging.operation.name = "process",
                messaging.destination.name = %requests_topic,
                messaging.destination.partition.id = %traced.partition,
                messaging.kafka.offset = traced.offset,
                messaging.kafka.message.key = %traced.order_id,
                messaging.consumer.group.name = %settings.kafka.group_id,
                orderflow.order_id = %traced.order_id,
                orderflow.transition = (!traced.transition.is_empty()).then_some(traced.transition.as_str()),
                orderflow.outcome = outcome,
                orderflow.reject_reason = reason,
                orderflow.parked.waited_ms = traced.waited_ms,
                orderflow.transaction.number = number as i64,
                orderflow.transaction.aborted = Empty,
                error.type = error,
            );
            if error.is_some() {
                span.record("otel.status_code", "error");
            }
            if let Some(parent) = &traced.parent {
                let _ = span.set_parent(parent.parent_context());
            }
            span.add_link(transaction_context.clone());
            let context = span_context(&span);
            if requests.len() < MAX_TRANSACTION_LINKS {
                transaction.add_link(context.clone());
            }
            // Without an exporter the span has no context: the outcome keeps the sender's.
            if let (Some(record), true) = (traced.outcome_record, context.is_valid()) {
                if let Some(record) = output.records.get_mut(record) {
                    set_traceparent(
                        &mut record.headers,
                        TraceParent::of_span(&context).format().into_bytes(),
                    );
                }
            }
            requests.push(span);
        }
        Some(BatchSpans {
            transaction,
            requests,
        })
    }

    /// The transaction committed: every span ends as it is.
    pub fn committed(self) {
        self.transaction
            .record("orderflow.transaction.outcome", "commit");
    }

    /// The transaction was aborted: its spans end marked so (the redone attempt gets its own).
    pub fn aborted(self, why: &str) {
        for span in &self.requests {
            span.record("orderflow.transaction.aborted", true);
            span.record("otel.status_code", "error");
        }
        self.transaction
            .record("orderflow.transaction.outcome", "abort");
        self.transaction.record("otel.status_code", "error");
        self.transaction
            .set_attribute("orderflow.transaction.abort_reason", why.to_string());
    }
}

/// A span's OpenTelemetry context (invalid without the OpenTelemetry layer).
fn span_context(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}
