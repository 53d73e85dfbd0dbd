//! The processor's consumer: its context (rebalance events, librdkafka's fetch states), filling
//! a batch — how long each poll may wait and when the batch is done — and what deciding needs out
//! of a consumed record. The processor and the benchmark's exactly-once pipe fill their batches
//! with the same [`BatchWindow`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::ops::Metrics;

use super::decide::InputRecord;
use crate::codec::headers::TRACEPARENT;

/// Rebalance events, recorded by the consumer context and handled by the loop after `poll`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// Partitions assigned (and paused until restored).
    Assigned(Vec<i32>),
    /// Partitions revoked or lost.
    Revoked(Vec<i32>),
}

/// Consumer context: pauses newly assigned partitions (they must be restored first) and records
/// assignment changes for the loop.
pub struct ProcessorContext {
    topic: String,
    events: Mutex<Vec<RebalanceEvent>>,
    metrics: Metrics,
    /// librdkafka's fetch state per partition of the requests topic, from its statistics.
    fetch_states: Mutex<HashMap<i32, String>>,
}

impl ProcessorContext {
    /// The context of a consumer of `topic`, reporting librdkafka's statistics to `metrics`.
    pub fn new(topic: String, metrics: Metrics) -> ProcessorContext {
        ProcessorContext {
            topic,
            events: Mutex::new(Vec::new()),
            metrics,
            fetch_states: Mutex::new(HashMap::new()),
        }
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect()
    }

    fn push(&self, event: RebalanceEvent) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }

    /// The events since the last call.
    pub fn take(&self) -> Vec<RebalanceEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The partition's fetch state as of the last statistics (`active` while its fetcher runs).
    pub fn fetch_state(&self, partition: i32) -> Option<String> {
        self.fetch_states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&partition)
            .cloned()
    }
}

impl ClientContext for ProcessorContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.metrics
            .record_kafka_statistics("consumer", &statistics);
        self.metrics.record_consumer_lag(&statistics, &self.topic);
        if let Some(topic) = statistics.topics.get(&self.topic) {
            let states = topic
                .partitions
                .values()
                .filter(|p| p.partition >= 0)
                .map(|p| (p.partition, p.fetch_state.clone()))
                .collect();
            *self.fetch_states.lock().unwrap_or_else(|e| e.into_inner()) = states;
        }
    }
}

impl ConsumerContext for ProcessorContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(partitions = ?self.partitions(tpl), "partitions revoked");
            self.push(RebalanceEvent::Revoked(self.partitions(tpl)));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions = self.partitions(tpl);
            tracing::info!(
                ?partitions,
                "partitions assigned; pausing them until restored"
            );
            if let Err(e) = consumer.pause(tpl) {
                tracing::error!(error = %e, "cannot pause assigned partitions");
            }
            self.push(RebalanceEvent::Assigned(partitions));
        }
    }
}

/// How long a poll waits while the batch is empty.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// One batch being filled: at most `max_records`, and no longer than `max_wait` after its first
/// record arrived.
#[derive(Debug, Clone, Copy)]
pub struct BatchWindow {
    max_records: usize,
    max_wait: Duration,
    deadline: Option<Instant>,
}

impl BatchWindow {
    /// An empty batch.
    pub fn new(max_records: usize, max_wait: Duration) -> BatchWindow {
        BatchWindow {
            max_records,
            max_wait,
            deadline: None,
        }
    }

    /// How long the next poll may wait.
    pub fn poll_timeout(&self) -> Duration {
        match self.deadline {
            None => IDLE_POLL,
            Some(d) => d.saturating_duration_since(Instant::now()),
        }
    }

    /// A record was taken into the batch: the first one starts the batch's wait.
    pub fn took(&mut self) {
        self.deadline
            .get_or_insert_with(|| Instant::now() + self.max_wait);
    }

    /// Whether a batch of `len` records is done: full, its wait over, or empty after a poll that
    /// brought nothing (or with a shutdown asked for).
    pub fn done(&self, len: usize, stopping: bool) -> bool {
        let full = len >= self.max_records;
        let due = self.deadline.is_some_and(|d| Instant::now() >= d);
        full || due || (len == 0 && (self.deadline.is_none() || stopping))
    }
}

/// Copies what deciding needs out of a consumed record: key, value and, of the headers, only the
/// trace context (the one header carried onto outcomes).
pub fn to_input(message: &BorrowedMessage<'_>) -> InputRecord {
    let headers = message
        .headers()
        .map(|h| {
            h.iter()
                .filter(|header| header.key == TRACEPARENT)
                .map(|header| {
                    (
                        header.key.to_string(),
                        header.value.unwrap_or_default().to_vec(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    InputRecord {
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_batch_is_done_after_an_empty_poll_and_a_started_one_waits_for_its_deadline() {
        let mut window = BatchWindow::new(3, Duration::from_secs(60));
        assert_eq!(window.poll_timeout(), IDLE_POLL);
        assert!(window.done(0, false), "nothing arrived: done");
        window.took();
        assert!(!window.done(1, false), "waits for more");
        assert!(window.poll_timeout() > Duration::from_secs(59));
        assert!(window.done(3, false), "full");
        assert!(
            !window.done(0, false),
            "emptied by a revocation: waits out its window"
        );
        assert!(window.done(0, true), "unless stopping");
    }

    #[test]
    fn a_batch_is_done_when_its_wait_is_over() {
        let mut window = BatchWindow::new(100, Duration::ZERO);
        window.took();
        assert!(window.done(1, false));
        assert_eq!(window.poll_timeout(), Duration::ZERO);
    }
}
