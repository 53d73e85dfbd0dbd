//! One batch, decided: input records in, the records to produce and the state changes out (the
//! records themselves are built by the `output` module).
//!
//! Pure apart from reading the committed caches: the processor runs this, writes the output in one
//! transaction, and applies `changes` to the caches only once that transaction committed. Later
//! requests in the same batch see earlier ones' effects through an overlay.

use std::collections::{BTreeMap, HashMap};

use super::output::{dead_letter, outcome_record, state_record};
use crate::codec::headers::{dlq, TRACEPARENT};
use crate::codec::{decode_request, encode_order_state, CodecError};
use crate::config::{ProcessorSettings, TopicSettings};
use crate::kafka::OutgoingRecord;
use crate::machine::{Decider, OrderState, Origin, Outcome, StateChange, Step, TransitionRequest};
use crate::state::{order_hash, PartitionCache};
use crate::telemetry::context::{Sampling, TraceParent};
use hashbrown::HashTable;

/// One consumed request record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRecord {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp (ms), if any.
    pub timestamp_ms: Option<i64>,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub value: Option<Vec<u8>>,
    /// Its headers that deciding uses (the processor keeps only `traceparent`).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl InputRecord {
    /// Its `traceparent` header, as it came.
    pub fn traceparent(&self) -> Option<&(String, Vec<u8>)> {
        self.headers.iter().find(|(k, _)| k == TRACEPARENT)
    }
}

/// What is fixed for every batch of a processor.
#[derive(Debug, Clone)]
pub struct BatchContext<'a> {
    /// Decides requests.
    pub decider: &'a Decider,
    /// Where outputs go.
    pub topics: &'a TopicSettings,
    /// Limits and sizes.
    pub limits: &'a ProcessorSettings,
    /// The consumer group, for dead-letter provenance.
    pub group_id: &'a str,
    /// Which requests get spans.
    pub sampling: Sampling,
}

/// Counts of what a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    /// Requests accepted (duplicates excluded).
    pub accepted: u64,
    /// Requests rejected (duplicates excluded).
    pub rejected: u64,
    /// Redeliveries answered with the recorded outcome.
    pub duplicates: u64,
    /// Records sent to the dead-letter topic.
    pub dead_letters: u64,
    /// Requests parked (answered later).
    pub parked: u64,
    /// Parked requests rejected at their deadline.
    pub expired: u64,
    /// Orders forgotten after their retention.
    pub forgotten: u64,
}

impl std::ops::AddAssign for BatchStats {
    fn add_assign(&mut self, other: BatchStats) {
        self.accepted += other.accepted;
        self.rejected += other.rejected;
        self.duplicates += other.duplicates;
        self.dead_letters += other.dead_letters;
        self.parked += other.parked;
        self.expired += other.expired;
        self.forgotten += other.forgotten;
    }
}

/// One order a batch changed.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderChange {
    /// Its partition.
    pub partition: i32,
    /// Its id.
    pub order_id: String,
    /// Its last state in the batch; `None` forgets it.
    pub state: Option<OrderState>,
    /// The next deadline of its committed state before the batch: the entry the processor's
    /// deadline index holds for it, to be moved.
    pub deadline_before: Option<i64>,
    /// Where its last state record is in the batch's `records` (what the local store keeps).
    pub record: usize,
}

/// The decided batch.
#[derive(Debug, Default)]
pub struct BatchOutput {
    /// Records to produce, in order.
    pub records: Vec<OutgoingRecord>,
    /// Each changed order, in first-change order.
    pub changes: Vec<OrderChange>,
    /// Per partition, the offset to commit (last consumed + 1).
    pub next_offsets: BTreeMap<i32, i64>,
    /// What happened.
    pub stats: BatchStats,
    /// Accepted transitions by transition name (duplicates excluded).
    pub accepted_by_transition: BTreeMap<String, u64>,
    /// Rejections by reason (duplicates excluded).
    pub rejected_by_reason: BTreeMap<crate::machine::RejectCode, u64>,
    /// Dead letters by error kind.
    pub dead_letters_by_kind: BTreeMap<&'static str, u64>,
    /// For each request answered for the first time: decision time minus `requested_at` (ms).
    pub decision_latencies_ms: Vec<i64>,
    /// The requests sampled for tracing, in input order.
    pub traced: Vec<TracedRequest>,
}

/// What a request's span says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TracedOutcome {
    /// Accepted.
    Accepted,
    /// Rejected, and why.
    Rejected(crate::machine::RejectCode),
    /// A redelivery answered with its recorded outcome.
    Duplicate,
    /// Parked: answered later (when the order catches up, or at its deadline).
    Parked,
    /// Not a request: sent to the dead-letter topic, with this error kind.
    DeadLetter(&'static str),
}

/// A request sampled for tracing: the processor gives it a span.
#[derive(Debug, Clone, PartialEq)]
pub struct TracedRequest {
    /// The sender's trace context; `None` starts a trace.
    pub parent: Option<TraceParent>,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its order (for a dead letter: its key, if any).
    pub order_id: String,
    /// Its transition (empty for a dead letter).
    pub transition: String,
    /// How it was decided.
    pub outcome: TracedOutcome,
    /// Where its outcome (or dead letter) record is in the batch's `records` (none while parked).
    pub outcome_record: Option<usize>,
    /// For a parked request answered now (released or expired): how long it waited (ms).
    pub waited_ms: Option<i64>,
}

/// Why a record is a dead letter rather than a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poison {
    /// The bytes are not a request.
    Codec(CodecError),
    /// The record has no value.
    EmptyValue,
    /// Too many or too large attributes.
    OversizedAttributes {
        /// Attributes carried.
        count: usize,
        /// Bytes of attribute keys and values.
        bytes: usize,
    },
}

impl Poison {
    /// The stable kind for headers and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Poison::Codec(e) => e.kind(),
            Poison::EmptyValue => dlq::POLICY_KINDS[0],
            Poison::OversizedAttributes { .. } => dlq::POLICY_KINDS[1],
        }
    }

    /// The reason in words, with what to do.
    pub fn message(&self, limits: &ProcessorSettings) -> String {
        match self {
            Poison::Codec(e) => e.to_string(),
            Poison::EmptyValue => {
                "the record has no value: requests must carry a TransitionRequest".into()
            }
            Poison::OversizedAttributes { count, bytes } => format!(
                "{count} attributes of {bytes} bytes exceed the limits ({} attributes, {} bytes): send large data by reference",
                limits.max_attributes, limits.max_attribute_bytes
            ),
        }
    }
}

/// Decodes and checks one input record.
pub fn parse_request(
    input: &InputRecord,
    limits: &ProcessorSettings,
) -> Result<TransitionRequest, Poison> {
    let value = input.value.as_deref().ok_or(Poison::EmptyValue)?;
    let request = decode_request(input.key.as_deref(), value).map_err(Poison::Codec)?;
    let bytes: usize = request
        .attributes
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if request.attributes.len() > limits.max_attributes || bytes > limits.max_attribute_bytes {
        return Err(Poison::OversizedAttributes {
            count: request.attributes.len(),
            bytes,
        });
    }
    Ok(request)
}

/// The batch's own state changes: read before the committed caches, applied to them after commit.
#[derive(Default)]
struct Overlay {
    /// Each changed order once, in first-change order (the order changes are applied in), with
    /// its latest state and the deadline of its committed state.
    changes: Vec<OrderChange>,
    /// Positions in `changes` by order id, filed under the caches' [`order_hash`]; the id and
    /// partition are compared inside the change, so looking an order up copies nothing.
    positions: HashTable<usize>,
}

impl Overlay {
    fn with_capacity(orders: usize) -> Overlay {
        Overlay {
            changes: Vec::with_capacity(orders),
            positions: HashTable::with_capacity(orders),
        }
    }

    fn position(&self, partition: i32, order_id: &str) -> Option<usize> {
        self.positions
            .find(order_hash(order_id.as_bytes()), |&i| {
                self.changes[i].partition == partition && self.changes[i].order_id == order_id
            })
            .copied()
    }

    /// The batch's latest state for an order (`Some(None)`: forgotten in this batch).
    fn get(&self, partition: i32, order_id: &str) -> Option<&Option<OrderState>> {
        self.position(partition, order_id)
            .map(|i| &self.changes[i].state)
    }

    /// Records an order's latest state; `deadline_before` (its committed state's deadline) counts
    /// only on the order's first change.
    fn set(
        &mut self,
        partition: i32,
        order_id: &str,
        state: Option<OrderState>,
        deadline_before: Option<i64>,
        record: usize,
    ) {
        if let Some(i) = self.position(partition, order_id) {
            self.changes[i].state = state;
            self.changes[i].record = record;
            return;
        }
        let changes = &mut self.changes;
        self.positions
            .insert_unique(order_hash(order_id.as_bytes()), changes.len(), |&i| {
                order_hash(changes[i].order_id.as_bytes())
            });
        changes.push(OrderChange {
            partition,
            order_id: order_id.to_string(),
            state,
            deadline_before,
            record,
        });
    }

    /// The last state of each changed order, in first-change order.
    fn into_changes(self) -> Vec<OrderChange> {
        self.changes
    }
}

/// Decides every record of a batch against the committed `caches` plus the batch's own changes.
pub fn decide_batch(
    context: &BatchContext<'_>,
    caches: &HashMap<i32, PartitionCache>,
    inputs: &[InputRecord],
    now_ms: i64,
) -> BatchOutput {
    // Sized up front: growing these by doubling copied every record several times per batch.
    let mut output = BatchOutput {
        records: Vec::with_capacity(2 * inputs.len()),
        decision_latencies_ms: Vec::with_capacity(inputs.len()),
        ..BatchOutput::default()
    };
    let mut overlay = Overlay::with_capacity(inputs.len());
    for input in inputs {
        output
            .next_offsets
            .insert(input.partition, input.offset + 1);
        let request = match parse_request(input, context.limits) {
            Ok(request) => request,
            Err(poison) => {
                if let Some(parent) = sampled(context.sampling, input, input.traceparent()) {
                    output.traced.push(TracedRequest {
                        parent,
                        partition: input.partition,
                        offset: input.offset,
                        order_id: input
                            .key
                            .as_deref()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                            .unwrap_or_default(),
                        transition: String::new(),
                        outcome: TracedOutcome::DeadLetter(poison.kind()),
                        outcome_record: Some(output.records.len()),
                        waited_ms: None,
                    });
                }
                output.records.push(dead_letter(context, input, &poison));
                output.stats.dead_letters += 1;
                *output
                    .dead_letters_by_kind
                    .entry(poison.kind())
                    .or_default() += 1;
                continue;
            }
        };
        let (partition, order_id) = (input.partition, request.order_id.clone());
        let committed;
        let (current, deadline_before) = match overlay.get(partition, &order_id) {
            Some(state) => (state.as_ref(), None),
            None => {
                committed = caches.get(&partition).and_then(|c| c.get(&order_id));
                let deadline = committed
                    .as_ref()
                    .and_then(|s| context.decider.next_deadline(s));
                (committed.as_ref(), deadline)
            }
        };
        let origin = Origin {
            partition: input.partition,
            offset: input.offset,
        };
        let trace = input.traceparent().cloned();
        // Taken before the request moves into the decider; only for a sampled request.
        let traced = sampled(context.sampling, input, trace.as_ref())
            .map(|parent| (parent, request.transition.clone()));
        let waiting = current.map(waiting_traces).unwrap_or_default();
        let mut step = context
            .decider
            .decide_input(current, request, origin, now_ms);
        if step.answers.is_empty() {
            output.stats.parked += 1;
        }
        if let (Some((_, header)), StateChange::Put(next)) = (&trace, &mut step.change) {
            keep_trace_context(next, origin, header);
        }
        let own = emit_step(
            context,
            &mut output,
            &mut overlay,
            (partition, &order_id, deadline_before),
            step,
            now_ms,
            InputTrace {
                header: trace.map(|t| (origin, t)),
                traced: traced.is_some().then_some(origin),
                waiting,
            },
        );
        if let Some((parent, transition)) = traced {
            let (outcome, outcome_record) = match own {
                Some((record, outcome)) => (outcome, Some(record)),
                None => (TracedOutcome::Parked, None),
            };
            output.traced.push(TracedRequest {
                parent,
                partition,
                offset: input.offset,
                order_id,
                transition,
                outcome,
                outcome_record,
                waited_ms: None,
            });
        }
    }
    output.changes = overlay.into_changes();
    output
}

/// The trace contexts parked requests of `state` arrived with: a step may answer them.
fn waiting_traces(state: &OrderState) -> Vec<Waiting> {
    state
        .parked
        .iter()
        .filter_map(|parked| {
            let context = TraceParent::parse(parked.traceparent.as_deref()?.as_bytes())?;
            Some(Waiting {
                origin: Origin {
                    partition: parked.partition,
                    offset: parked.offset,
                },
                context,
                parked_at_ms: parked.parked_at_ms,
            })
        })
        .collect()
}

/// Keeps the trace context of an input that `next` parked with the parked request, so its later
/// outcome continues the trace. Only a valid context is kept (at most 55 bytes in the state).
fn keep_trace_context(next: &mut OrderState, origin: Origin, header: &[u8]) {
    let parked = next
        .parked
        .iter_mut()
        .find(|p| p.partition == origin.partition && p.offset == origin.offset);
    if let Some(parked) = parked.filter(|p| p.traceparent.is_none()) {
        parked.traceparent = TraceParent::parse(header).map(|context| context.format());
    }
}

/// `Some(parent)` when the input is sampled for tracing (`parent` is `None` for a root).
#[allow(clippy::option_option)]
fn sampled(
    sampling: Sampling,
    input: &InputRecord,
    trace: Option<&(String, Vec<u8>)>,
) -> Option<Option<TraceParent>> {
    if !sampling.enabled {
        return None;
    }
    let parent = trace.and_then(|(_, value)| TraceParent::parse(value));
    let mut where_ = [0u8; 12];
    where_[..4].copy_from_slice(&input.partition.to_le_bytes());
    where_[4..].copy_from_slice(&input.offset.to_le_bytes());
    let key = order_hash(&where_);
    sampling.decide(parent.as_ref(), key).then_some(parent)
}

/// The trace context of the input a step decided.
#[derive(Debug, Default)]
struct InputTrace {
    /// Its origin and `traceparent` header, copied onto its outcome.
    header: Option<(Origin, (String, Vec<u8>))>,
    /// Its origin, when it is sampled for tracing.
    traced: Option<Origin>,
    /// The trace contexts of the order's parked requests, which the step may answer.
    waiting: Vec<Waiting>,
}

/// A parked request's trace context.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    /// The request's input record.
    origin: Origin,
    /// The context it arrived with.
    context: TraceParent,
    /// When it was parked (ms).
    parked_at_ms: i64,
}

/// Records a step's state change and answers in the batch output and overlay; returns where
/// the answer to the input itself went and what it was (none while the input is parked).
fn emit_step(
    context: &BatchContext<'_>,
    output: &mut BatchOutput,
    overlay: &mut Overlay,
    (partition, order_id, deadline_before): (i32, &str, Option<i64>),
    step: Step,
    now_ms: i64,
    input: InputTrace,
) -> Option<(usize, TracedOutcome)> {
    let InputTrace {
        header: trace,
        traced: traced_origin,
        waiting,
    } = input;
    let mut own = None;
    let definition = context.decider.definition();
    let next = match step.change {
        StateChange::Unchanged => None,
        StateChange::Put(next) => {
            let mut value = Vec::with_capacity(256);
            encode_order_state(definition, order_id, &next, &mut value);
            Some((Some(value), Some(next)))
        }
        StateChange::Delete => {
            output.stats.forgotten += 1;
            Some((None, None))
        }
    };
    if let Some((value, state)) = next {
        output
            .records
            .push(state_record(context.topics, partition, order_id, value));
        let record = output.records.len() - 1;
        overlay.set(partition, order_id, state, deadline_before, record);
    }
    for answer in step.answers {
        let outcome = match &answer.outcome {
            Outcome::Accepted {
                duplicate: false, ..
            } => {
                output.stats.accepted += 1;
                // Counted without copying the name each time: it is new only once per batch.
                match output
                    .accepted_by_transition
                    .get_mut(&answer.request.transition)
                {
                    Some(count) => *count += 1,
                    None => {
                        output
                            .accepted_by_transition
                            .insert(answer.request.transition.clone(), 1);
                    }
                }
                output
                    .decision_latencies_ms
                    .push(now_ms - answer.request.requested_at_ms);
                TracedOutcome::Accepted
            }
            Outcome::Rejected {
                duplicate: false,
                reason,
                ..
            } => {
                output.stats.rejected += 1;
                *output.rejected_by_reason.entry(reason.code()).or_default() += 1;
                output
                    .decision_latencies_ms
                    .push(now_ms - answer.request.requested_at_ms);
                if reason.code() == crate::machine::RejectCode::Expired {
                    output.stats.expired += 1;
                }
                TracedOutcome::Rejected(reason.code())
            }
            _ => {
                output.stats.duplicates += 1;
                TracedOutcome::Duplicate
            }
        };
        let record = output.records.len();
        if traced_origin == Some(answer.origin) {
            own = Some((record, outcome));
        }
        let mut header = trace
            .as_ref()
            .filter(|(origin, _)| *origin == answer.origin)
            .map(|(_, h)| h.clone());
        if let Some(released) = waiting.iter().find(|w| w.origin == answer.origin) {
            header = Some((
                TRACEPARENT.to_string(),
                released.context.format().into_bytes(),
            ));
            if context.sampling.decide(Some(&released.context), 0) {
                output.traced.push(TracedRequest {
                    parent: Some(released.context),
                    partition: answer.origin.partition,
                    offset: answer.origin.offset,
                    order_id: order_id.to_string(),
                    transition: answer.request.transition.clone(),
                    outcome,
                    outcome_record: Some(record),
                    waited_ms: Some(now_ms - released.parked_at_ms),
                });
            }
        }
        output.records.push(outcome_record(
            definition,
            context.topics,
            answer,
            now_ms,
            header,
        ));
    }
    own
}

/// Runs the expiry pass for orders whose deadline is due: expired parked requests are rejected,
/// orders past their state's retention are forgotten (tombstones).
pub fn expire_orders(
    context: &BatchContext<'_>,
    caches: &HashMap<i32, PartitionCache>,
    due: &[(i32, String)],
    now_ms: i64,
) -> BatchOutput {
    let mut output = BatchOutput::default();
    let mut overlay = Overlay::default();
    for (partition, order_id) in due {
        let Some(state) = caches.get(partition).and_then(|c| c.get(order_id)) else {
            continue;
        };
        let step = context.decider.expire(&state, now_ms);
        if step.change == StateChange::Unchanged && step.answers.is_empty() {
            continue;
        }
        let deadline_before = context.decider.next_deadline(&state);
        emit_step(
            context,
            &mut output,
            &mut overlay,
            (*partition, order_id, deadline_before),
            step,
            now_ms,
            InputTrace {
                waiting: waiting_traces(&state),
                ..InputTrace::default()
            },
        );
    }
    output.changes = overlay.into_changes();
    output
}

#[cfg(test)]
pub(in crate::processor) mod tests {
    use std::sync::Arc;

    use uuid::Uuid;

    use super::*;
    use crate::codec::encode_request;
    use crate::machine::Definition;

    pub(in crate::processor) fn lifecycle() -> Arc<Definition> {
        Arc::new(
            Definition::parse(
                include_str!("../../machines/order-lifecycle.toml"),
                "order-lifecycle.toml",
            )
            .unwrap(),
        )
    }

    /// A batch context writing to the default topics with default limits.
    pub(in crate::processor) fn batch_context<'a>(
        decider: &'a Decider,
        settings: &'a (TopicSettings, ProcessorSettings),
        sampling: Sampling,
    ) -> BatchContext<'a> {
        BatchContext {
            decider,
            topics: &settings.0,
            limits: &settings.1,
            group_id: "g",
            sampling,
        }
    }

    pub(in crate::processor) fn request(order_id: &str, transition: &str) -> TransitionRequest {
        TransitionRequest {
            request_id: Uuid::new_v4(),
            order_id: order_id.into(),
            transition: transition.into(),
            expected_version: None,
            requested_at_ms: 1_000,
            source: "test".into(),
            attributes: BTreeMap::new(),
        }
    }

    pub(in crate::processor) fn input(offset: i64, request: &TransitionRequest) -> InputRecord {
        let mut value = Vec::new();
        encode_request(request, &mut value);
        InputRecord {
            partition: 0,
            offset,
            timestamp_ms: None,
            key: Some(request.order_id.clone().into_bytes()),
            value: Some(value),
            headers: Vec::new(),
        }
    }

    #[test]
    fn a_change_carries_the_deadline_of_the_committed_state_it_replaces() {
        let definition = lifecycle();
        let decider = Decider::new(Arc::clone(&definition), 8);
        let mut delivered = None;
        for transition in ["create", "confirm", "ship", "deliver"] {
            let decision = decider.decide(delivered.as_ref(), &request("o-1", transition), 1_000);
            if let StateChange::Put(next) = decision.change {
                delivered = Some(next);
            }
        }
        let delivered = delivered.unwrap();
        let committed_deadline = decider.next_deadline(&delivered);
        assert!(
            committed_deadline.is_some(),
            "a delivered order waits out its return window"
        );
        let mut cache = PartitionCache::new();
        cache.apply("o-1", Some(&delivered));
        let caches = HashMap::from([(0, cache)]);
        let settings = (TopicSettings::default(), ProcessorSettings::default());
        let topics = &settings.0;
        let context = batch_context(&decider, &settings, Sampling::OFF);
        // Two changes of o-1 in one batch (returned, then a rejection remembered), and a new order.
        let inputs = [
            input(0, &request("o-1", "return")),
            input(1, &request("o-1", "ship")),
            input(2, &request("o-2", "create")),
        ];
        let output = decide_batch(&context, &caches, &inputs, 2_000);
        let summary: Vec<_> = output
            .changes
            .iter()
            .map(|c| {
                (
                    c.order_id.as_str(),
                    c.deadline_before,
                    c.state.as_ref().map(|s| s.version),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![("o-1", committed_deadline, Some(5)), ("o-2", None, Some(1))]
        );
        let returned = output.changes[0].state.as_ref().unwrap();
        assert_ne!(decider.next_deadline(returned), committed_deadline);
        // Each change points at its order's last state record, which holds its last state.
        for change in &output.changes {
            let record = &output.records[change.record];
            assert_eq!(record.topic, topics.state);
            assert_eq!(record.key.as_deref(), Some(change.order_id.as_bytes()));
            let (_, stored) =
                crate::codec::decode_order_state(&definition, record.value.as_deref().unwrap())
                    .unwrap();
            assert_eq!(Some(&stored), change.state.as_ref(), "{}", change.order_id);
        }
    }

    #[test]
    fn a_parked_request_keeps_its_trace_context_for_the_outcome_it_gets_later() {
        let definition = lifecycle();
        let decider = Decider::new(definition, 8).with_parking(crate::machine::ParkingPolicy {
            max_per_order: 4,
            max_wait_ms: 60_000,
        });
        let settings = (TopicSettings::default(), ProcessorSettings::default());
        let topics = &settings.0;
        let sampling = Sampling {
            enabled: true,
            root_ratio: 0.0,
        };
        let context = batch_context(&decider, &settings, sampling);
        let sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let unsampled = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-00";
        let traced_input = |offset, request: &TransitionRequest, traceparent: &str| {
            let mut input = input(offset, request);
            input.headers = vec![(TRACEPARENT.into(), traceparent.as_bytes().to_vec())];
            input
        };
        let traceparent_of = |output: &BatchOutput, transition: &str| {
            output
                .records
                .iter()
                .filter(|r| r.topic == topics.accepted || r.topic == topics.rejected)
                .find(|r| String::from_utf8_lossy(r.value.as_deref().unwrap()).contains(transition))
                .and_then(|r| r.headers.iter().find(|(k, _)| k == TRACEPARENT))
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        let apply = |caches: &mut HashMap<i32, PartitionCache>, output: &BatchOutput| {
            for change in &output.changes {
                caches
                    .entry(change.partition)
                    .or_default()
                    .apply(&change.order_id, change.state.as_ref());
            }
        };

        // o-1's ship (sampled context) and o-2's ship (unsampled) arrive before confirm: parked.
        let mut caches = HashMap::from([(0, PartitionCache::new())]);
        let parked = decide_batch(
            &context,
            &caches,
            &[
                input(0, &request("o-1", "create")),
                traced_input(1, &request("o-1", "ship"), sampled),
                input(2, &request("o-2", "create")),
                traced_input(3, &request("o-2", "ship"), unsampled),
            ],
            1_000,
        );
        assert_eq!(parked.stats.parked, 2);
        let kept: Vec<_> = parked
            .changes
            .iter()
            .map(|c| c.state.as_ref().unwrap().parked[0].traceparent.as_deref())
            .collect();
        assert_eq!(kept, vec![Some(sampled), Some(unsampled)]);
        apply(&mut caches, &parked);

        // Confirming o-1 releases its ship: the outcome carries the context the ship came with,
        // and a span is due under it, saying how long the ship waited.
        let released = decide_batch(
            &context,
            &caches,
            &[input(4, &request("o-1", "confirm"))],
            1_500,
        );
        assert_eq!(traceparent_of(&released, "ship").as_deref(), Some(sampled));
        assert_eq!(released.traced.len(), 1);
        let span = &released.traced[0];
        assert_eq!(
            (
                span.parent.map(|p| p.format()),
                span.offset,
                span.outcome,
                span.waited_ms
            ),
            (
                Some(sampled.to_string()),
                1,
                TracedOutcome::Accepted,
                Some(500)
            )
        );
        assert_eq!(
            released.records[span.outcome_record.unwrap()].headers,
            vec![(TRACEPARENT.to_string(), sampled.as_bytes().to_vec())]
        );
        apply(&mut caches, &released);

        // o-2's ship expires: its rejection carries its (unsampled) context and gets no span.
        let expired = expire_orders(&context, &caches, &[(0, "o-2".to_string())], 61_001);
        assert_eq!(expired.stats.expired, 1);
        assert_eq!(traceparent_of(&expired, "ship").as_deref(), Some(unsampled));
        assert!(expired.traced.is_empty());
    }
}
