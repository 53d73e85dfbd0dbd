//! `orderflow loadgen`: drives a running orderflow with realistic order lifecycles at a target rate
//! (or as fast as it can), then reports what came back: outcomes by kind, requests whose outcome
//! is missing, repeated or not the one the plan expects, and the latency from each request's
//! `requested_at` to its outcome becoming visible to a read_committed reader.

pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde_json::json;
use uuid::Uuid;

use self::plan::{Expect, Plan, Planned, PoisonKind, Shares};
use crate::client::{assign_outputs, decode_outcome, Outcome};
use crate::clock::{Clock, SystemClock};
use crate::codec::encode_request;
use crate::codec::headers::TRACEPARENT;
use crate::config::Settings;
use crate::kafka::{committed_reader_config, request_producer_config};
use crate::machine::Definition;
use crate::telemetry::context::TraceParent;

/// What to generate.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Orders to walk through their lifecycle.
    pub orders: u64,
    /// Requests per second; 0 sends as fast as possible.
    pub rate: u64,
    /// Seed of the plan.
    pub seed: u64,
    /// Order ids are `<prefix>-<n>`.
    pub prefix: String,
    /// Orders in flight at once (interleaving).
    pub concurrency: usize,
    /// Shares of special requests.
    pub shares: Shares,
    /// How long to wait for the last outcomes after sending.
    pub wait: Duration,
    /// Show a live progress line on stderr.
    pub progress: bool,
    /// Requests sent this long after the start are checked like all others but left out of the
    /// latency percentiles: a freshly started processor's first transactions are slower than its
    /// steady state (new producer, partitions first written).
    pub warmup: Duration,
    /// With `Some(p)` every request carries a `traceparent` of its own trace, sampled with
    /// probability `p`.
    pub traced_share: Option<f64>,
}

/// Delivery reports: the (partition, offset) each planned record landed at.
#[derive(Default)]
struct Deliveries {
    positions: Mutex<Vec<(usize, i32, i64)>>,
    failed: AtomicU64,
}

struct LoadContext(Arc<Deliveries>);

impl ClientContext for LoadContext {}

impl ProducerContext for LoadContext {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, index: Box<usize>) {
        match result {
            Ok(message) => {
                use rdkafka::Message;
                self.0
                    .positions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((*index, message.partition(), message.offset()));
            }
            Err((error, _)) => {
                tracing::error!(%error, "a load record was not delivered");
                self.0.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What the reader saw for one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    kind: Expect,
    /// Request to visible outcome, and decision to visible outcome.
    latency_ms: Option<(i64, i64)>,
}

#[derive(Default)]
struct Observed {
    by_input: Mutex<HashMap<(i32, i64), Vec<Seen>>>,
    count: AtomicU64,
    rejected_by_reason: Mutex<BTreeMap<String, u64>>,
}

/// The final report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Records sent (requests and poison).
    pub sent: u64,
    /// Records the producer could not deliver.
    pub send_failures: u64,
    /// Sent records by expected outcome.
    pub expected: BTreeMap<String, u64>,
    /// Outcomes seen by kind (first outcome per input).
    pub outcomes: BTreeMap<String, u64>,
    /// Rejections by reason (including planned invalid ones).
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Inputs with no outcome.
    pub missing: u64,
    /// Inputs with more than one outcome.
    pub repeated: u64,
    /// Inputs whose outcome was not the planned one.
    pub unexpected: u64,
    /// Seconds spent sending.
    pub send_seconds: f64,
    /// Requests per second sent.
    pub send_rate: f64,
    /// Seconds from the first send to the last outcome.
    pub total_seconds: f64,
    /// Outcomes per second over `total_seconds`.
    pub outcome_rate: f64,
    /// Latency percentiles in ms (p50, p90, p99, p99.9, max), request to committed outcome, of
    /// the requests answered on arrival.
    pub latency_ms: BTreeMap<String, i64>,
    /// The same for requests whose outcome waits for a later request by design (parked, or a
    /// redelivery of a parked request): they measure the load's ordering, not orderflow.
    pub waiting_latency_ms: BTreeMap<String, i64>,
    /// Records sent during the warm-up (left out of the latency percentiles).
    pub warmup_sent: u64,
    /// Records whose latency is in `latency_ms` or `waiting_latency_ms`.
    pub measured: u64,
    /// Of `latency_ms`, the part after the decision (the transaction and its visibility to a
    /// read_committed reader); the rest is fetching and batching the request.
    pub after_decision_latency_ms: BTreeMap<String, i64>,
}

impl Report {
    /// Whether every input got exactly its planned outcome.
    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.repeated == 0 && self.unexpected == 0 && self.send_failures == 0
    }

    /// The report for people.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "sent {} records in {:.1} s ({:.0}/s); outcomes for all in {:.1} s ({:.0}/s)\n",
            self.sent, self.send_seconds, self.send_rate, self.total_seconds, self.outcome_rate
        );
        text += &format!(
            "  expected: {:?}\n  outcomes: {:?}\n",
            self.expected, self.outcomes
        );
        text += &format!("  rejected by reason: {:?}\n", self.rejected_by_reason);
        text += &format!(
            "  latency request -> committed outcome (ms){}: {:?}\n",
            if self.warmup_sent > 0 {
                format!(", after the first {} records (warm-up)", self.warmup_sent)
            } else {
                String::new()
            },
            self.latency_ms
        );
        text += &format!(
            "  of that, decision -> committed outcome (ms): {:?}\n",
            self.after_decision_latency_ms
        );
        text += &format!(
            "  of requests that waited for a later one (parked): {:?}\n",
            self.waiting_latency_ms
        );
        text += &format!(
            "  missing {}, repeated {}, unexpected {}, send failures {}: {}",
            self.missing,
            self.repeated,
            self.unexpected,
            self.send_failures,
            if self.is_clean() {
                "every request got exactly its planned outcome"
            } else {
                "NOT CLEAN"
            }
        );
        text
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        json!(self)
    }
}

fn label(kind: Expect) -> &'static str {
    match kind {
        Expect::Accepted => "accepted",
        Expect::Rejected => "rejected",
        Expect::Duplicate => "duplicate",
        Expect::DeadLetter => "dead_letter",
    }
}

/// The value and key of a planned record, with `requested_at` set to now.
fn encode(planned: &Planned, max_attributes: usize) -> (Option<Vec<u8>>, Vec<u8>) {
    let now = SystemClock.now_ms();
    match planned {
        Planned::Request { request, .. } => {
            let mut request = request.clone();
            request.requested_at_ms = now;
            let mut value = Vec::with_capacity(96);
            encode_request(&request, &mut value);
            (Some(request.order_id.into_bytes()), value)
        }
        Planned::Poison { order_id, kind } => {
            let key = Some(order_id.clone().into_bytes());
            let valid = |attributes: usize| {
                let mut request = crate::machine::TransitionRequest {
                    request_id: Uuid::new_v4(),
                    order_id: order_id.clone(),
                    transition: "confirm".into(),
                    expected_version: None,
                    requested_at_ms: now,
                    source: "loadgen-poison".into(),
                    attributes: BTreeMap::new(),
                };
                for i in 0..attributes {
                    request.attributes.insert(format!("a{i}"), "x".into());
                }
                let mut value = Vec::new();
                encode_request(&request, &mut value);
                value
            };
            match kind {
                PoisonKind::NotAvro => (key, format!("not avro: {order_id}").into_bytes()),
                PoisonKind::UnknownSchema => {
                    let mut value = vec![0xC3, 0x01];
                    value.extend(0x0BAD_5C4E_4A00_0000u64.to_le_bytes());
                    value.extend(b"payload");
                    (key, value)
                }
                PoisonKind::MissingKey => (None, valid(0)),
                PoisonKind::OversizedAttributes => (key, valid(max_attributes + 1)),
            }
        }
    }
}

fn percentile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The `traceparent` of request `index`: a trace of its own (ids from the seed and the index),
/// sampled with probability `share`.
fn traceparent(seed: u64, index: u64, share: f64) -> String {
    let mix = |n: u64| {
        // splitmix64: well-spread ids from consecutive indexes.
        let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let (a, b, c) = (
        mix(seed ^ index),
        mix(index ^ 0x5555),
        mix(seed.rotate_left(17) ^ index),
    );
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&a.to_be_bytes());
    trace_id[8..].copy_from_slice(&b.to_be_bytes());
    let sampled = ((c >> 11) as f64 / (1u64 << 53) as f64) < share;
    TraceParent {
        trace_id,
        span_id: (c | 1).to_be_bytes(),
        flags: u8::from(sampled),
    }
    .format()
}

/// `orderflow loadgen`: the load `args` describe, against the topics of `settings`.
pub async fn run(settings: &Settings, args: &crate::cli::LoadgenArgs) -> anyhow::Result<Report> {
    let settings = crate::tools::connected(settings).await?;
    let definition = crate::tools::definition(&settings)?;
    let spec = LoadSpec {
        orders: args.orders,
        rate: args.rate,
        seed: args.seed,
        prefix: args
            .prefix
            .clone()
            .unwrap_or_else(|| format!("lg-{}", &Uuid::new_v4().simple().to_string()[..8])),
        concurrency: args.concurrency,
        shares: plan::Shares {
            invalid: args.invalid_share,
            duplicate: args.duplicate_share,
            out_of_order: args.out_of_order_share,
            poison: args.poison_share,
            cancel: args.cancel_share,
            returned: args.return_share,
        },
        wait: Duration::from_secs(args.wait_secs),
        progress: !args.no_progress,
        warmup: Duration::from_secs(args.warmup_secs),
        traced_share: args.traced_share,
    };
    if let Some(share) = spec.traced_share {
        anyhow::ensure!(
            (0.0..=1.0).contains(&share),
            crate::tools::Usage(format!("--traced-share {share} is not between 0 and 1"))
        );
    }
    tokio::task::spawn_blocking(move || generate(&settings, &definition, &spec))
        .await
        .context("the load generator thread")?
}

impl crate::tools::Report for Report {
    fn describe(&self) -> String {
        Report::describe(self)
    }

    fn to_json(&self) -> serde_json::Value {
        Report::to_json(self)
    }

    fn exit_code(&self) -> u8 {
        if self.is_clean() {
            0
        } else {
            1
        }
    }
}

/// Runs the load and returns its report.
pub fn generate(
    settings: &Settings,
    definition: &Definition,
    spec: &LoadSpec,
) -> anyhow::Result<Report> {
    let plan = Plan::new(
        definition,
        spec.seed,
        &spec.prefix,
        spec.orders,
        spec.concurrency,
        spec.shares,
    )
    .map_err(anyhow::Error::msg)?;
    let topics = &settings.topics;

    // The reader starts at the current end of the outputs, before the first request is sent.
    let reader: BaseConsumer = committed_reader_config(
        &settings.kafka,
        "orderflow-loadgen-reader",
        &format!("orderflow-loadgen-{}", Uuid::new_v4().simple()),
    )?
    .set("fetch.wait.max.ms", "10")
    .create()
    .context("creating the outcome reader")?;
    assign_outputs(
        &reader,
        &[&topics.accepted, &topics.rejected, &topics.dead_letters],
        topics.partitions,
        false,
    )?;
    let observed = Arc::new(Observed::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader_thread = {
        let (observed, stop, topics) = (Arc::clone(&observed), Arc::clone(&stop), topics.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(Ok(message)) = reader.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let Some(Ok(outcome)) = decode_outcome(&topics, &message) else {
                    continue;
                };
                let now = SystemClock.now_ms();
                let times = |requested_at_ms: i64, decided_at_ms: i64| {
                    Some((now - requested_at_ms, now - decided_at_ms))
                };
                let (kind, latency_ms) = match &outcome {
                    Outcome::Accepted(a) if a.duplicate => {
                        (Expect::Duplicate, times(a.requested_at_ms, a.decided_at_ms))
                    }
                    Outcome::Accepted(a) => {
                        (Expect::Accepted, times(a.requested_at_ms, a.decided_at_ms))
                    }
                    Outcome::Rejected(r) if r.duplicate => {
                        (Expect::Duplicate, times(r.requested_at_ms, r.decided_at_ms))
                    }
                    Outcome::Rejected(r) => {
                        *observed
                            .rejected_by_reason
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(r.reason.as_str().to_string())
                            .or_default() += 1;
                        (Expect::Rejected, times(r.requested_at_ms, r.decided_at_ms))
                    }
                    Outcome::DeadLetter(_) => (Expect::DeadLetter, None),
                };
                if let Some(position) = outcome.input_position() {
                    observed
                        .by_input
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(position)
                        .or_default()
                        .push(Seen { kind, latency_ms });
                    observed.count.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let deliveries = Arc::new(Deliveries::default());
    let producer: ThreadedProducer<LoadContext> =
        request_producer_config(&settings.kafka, "orderflow-loadgen")?
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "500000")
            .create_with_context(LoadContext(Arc::clone(&deliveries)))
            .context("creating the request producer")?;

    let progress = if spec.progress {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4))
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} sent {pos} ({per_sec}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let mut expectations: Vec<Expect> = Vec::new();
    let mut waits: Vec<bool> = Vec::new();
    let started = Instant::now();
    let mut measured_from: Option<usize> = None;
    for (index, planned) in plan.enumerate() {
        if spec.rate > 0 {
            let due = started + Duration::from_secs_f64(index as f64 / spec.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        if measured_from.is_none() && started.elapsed() >= spec.warmup {
            measured_from = Some(index);
        }
        expectations.push(planned.expect());
        waits.push(planned.waits());
        let (key, value) = encode(&planned, settings.processor.max_attributes);
        let trace = spec
            .traced_share
            .map(|share| traceparent(spec.seed, index as u64, share));
        let mut opaque = Box::new(index);
        loop {
            let mut record = BaseRecord::with_opaque_to(&topics.requests, opaque).payload(&value);
            if let Some(key) = &key {
                record = record.key(key);
            }
            if let Some(trace) = &trace {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: TRACEPARENT,
                    value: Some(trace.as_bytes()),
                }));
            }
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), record)) => {
                    opaque = record.delivery_opaque;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => return Err(e).context("sending a load record"),
            }
        }
        if index % 1024 == 0 {
            progress.set_position(index as u64);
            progress.set_message(format!(
                "outcomes {}",
                observed.count.load(Ordering::Relaxed)
            ));
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flushing the load")?;
    let send_seconds = started.elapsed().as_secs_f64();
    let sent = expectations.len() as u64;
    let measured_from = measured_from.unwrap_or(expectations.len());
    progress.set_position(sent);

    // Wait until every delivered input has an outcome, or the wait is over.
    let positions: Vec<(usize, i32, i64)> = std::mem::take(
        &mut *deliveries
            .positions
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    let deadline = Instant::now() + spec.wait;
    let mut last_outcome_at = Instant::now();
    let mut last_count = 0;
    loop {
        let answered = {
            let seen = observed.by_input.lock().unwrap_or_else(|e| e.into_inner());
            positions
                .iter()
                .filter(|(_, p, o)| seen.contains_key(&(*p, *o)))
                .count()
        };
        let count = observed.count.load(Ordering::Relaxed);
        if count != last_count {
            last_count = count;
            last_outcome_at = Instant::now();
        }
        progress.set_message(format!(
            "outcomes {count}, answered {answered}/{}",
            positions.len()
        ));
        if answered == positions.len() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Give a repeated outcome (a bug) a moment to show up.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let _ = reader_thread.join();
    progress.finish_and_clear();
    let total_seconds = last_outcome_at.duration_since(started).as_secs_f64();

    let seen = observed.by_input.lock().unwrap_or_else(|e| e.into_inner());
    let mut report = Report {
        sent,
        send_failures: deliveries.failed.load(Ordering::Relaxed),
        expected: BTreeMap::new(),
        outcomes: BTreeMap::new(),
        rejected_by_reason: observed
            .rejected_by_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        missing: 0,
        repeated: 0,
        unexpected: 0,
        send_seconds,
        send_rate: sent as f64 / send_seconds.max(1e-9),
        total_seconds,
        outcome_rate: positions.len() as f64 / total_seconds.max(1e-9),
        latency_ms: BTreeMap::new(),
        waiting_latency_ms: BTreeMap::new(),
        warmup_sent: measured_from as u64,
        measured: 0,
        after_decision_latency_ms: BTreeMap::new(),
    };
    let mut latencies = Vec::with_capacity(positions.len());
    let mut after_decision = Vec::with_capacity(positions.len());
    let mut waiting_latencies = Vec::new();
    for expect in &expectations {
        *report.expected.entry(label(*expect).into()).or_default() += 1;
    }
    for (index, partition, offset) in &positions {
        let Some(got) = seen.get(&(*partition, *offset)) else {
            report.missing += 1;
            continue;
        };
        if got.len() > 1 {
            report.repeated += 1;
        }
        let first = got[0];
        *report.outcomes.entry(label(first.kind).into()).or_default() += 1;
        if expectations.get(*index) != Some(&first.kind) {
            report.unexpected += 1;
        }
        if *index < measured_from {
            continue;
        }
        if let Some((latency, since_decision)) = first.latency_ms {
            if waits.get(*index) == Some(&true) {
                waiting_latencies.push(latency);
            } else {
                latencies.push(latency);
                after_decision.push(since_decision);
            }
        }
    }
    report.measured = (latencies.len() + waiting_latencies.len()) as u64;
    report.latency_ms = percentiles(latencies);
    report.after_decision_latency_ms = percentiles(after_decision);
    report.waiting_latency_ms = percentiles(waiting_latencies);
    Ok(report)
}

/// p50, p90, p99, p99.9 and max of `values` (nearest rank); empty when there are none.
pub fn percentiles(mut values: Vec<i64>) -> BTreeMap<String, i64> {
    if values.is_empty() {
        return BTreeMap::new();
    }
    values.sort_unstable();
    [
        ("p50", 0.5),
        ("p90", 0.9),
        ("p99", 0.99),
        ("p99.9", 0.999),
        ("max", 1.0),
    ]
    .into_iter()
    .map(|(name, q)| (name.to_string(), percentile(&values, q)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<i64> = (1..=1000).collect();
        assert_eq!(percentile(&values, 0.5), 500);
        assert_eq!(percentile(&values, 0.99), 990);
        assert_eq!(percentile(&values, 0.999), 999);
        assert_eq!(percentile(&values, 1.0), 1000);
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(percentile(&[7], 0.001), 7);
    }

    #[test]
    fn poison_records_are_broken_the_way_their_kind_says() {
        let decode = |planned: &Planned| {
            let (key, value) = encode(planned, 2);
            crate::codec::decode_request(key.as_deref(), &value)
        };
        let poison = |kind| Planned::Poison {
            order_id: "o-1".into(),
            kind,
        };
        assert_eq!(
            decode(&poison(PoisonKind::NotAvro)).unwrap_err().kind(),
            "not_avro"
        );
        assert_eq!(
            decode(&poison(PoisonKind::UnknownSchema))
                .unwrap_err()
                .kind(),
            "unknown_schema"
        );
        assert_eq!(
            decode(&poison(PoisonKind::MissingKey)).unwrap_err().kind(),
            "missing_key"
        );
        // Decodable, but over the attribute limit the processor enforces.
        assert_eq!(
            decode(&poison(PoisonKind::OversizedAttributes))
                .unwrap()
                .attributes
                .len(),
            3
        );
    }
}
