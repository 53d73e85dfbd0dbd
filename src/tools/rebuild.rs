//! `orderflow rebuild-state`: the compacted state topic rebuilt from the accepted-transitions log
//! alone (event sourcing), into a new topic the processors can be switched to.
//!
//! One partition at a time: the accepted transitions of a partition are read from the beginning,
//! folded per order with the state machine's replay, orders whose retention has ended are left out
//! (the live processor forgets them too), and the states are written to the same partition of the
//! new topic with their order id as key. `--compare` reads the live state topic and the new one back
//! and compares them order by order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;
use serde::Serialize;

use crate::client::scan_topic;
use crate::codec::{decode_accepted, decode_order_state, encode_order_state};
use crate::config::Settings;
use crate::kafka::{request_producer_config, Topics};
use crate::machine::replay::{replay, retention_ended, AcceptedStep};
use crate::machine::{Definition, OrderState, RecordedOutcome};

/// How long a partition's read may go without progress before the broker counts as gone.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What a rebuild did, and what the comparison with the live state found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RebuildReport {
    /// The topic written.
    pub into: String,
    /// Partitions rebuilt.
    pub partitions: i32,
    /// Accepted-transition records read.
    pub accepted_read: u64,
    /// Records answering a redelivered request (they change no state).
    pub duplicates_skipped: u64,
    /// Order states written.
    pub orders_written: u64,
    /// Orders left out because their state's retention has ended.
    pub forgotten: u64,
    /// Wall time of the whole rebuild.
    pub elapsed_secs: f64,
    /// The comparison with the live state topic, with `--compare`.
    pub comparison: Option<Comparison>,
}

/// The rebuilt state topic against the live one, order by order.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Comparison {
    /// Orders in the live state topic (tombstoned ones excluded).
    pub live_orders: u64,
    /// Orders with the same state, version, timestamps and remembered accepted requests.
    pub equal: u64,
    /// Orders in both topics that differ.
    pub different: u64,
    /// Orders only the live topic has (excluding those whose retention ended since).
    pub only_live: u64,
    /// Orders only the rebuilt topic has.
    pub only_rebuilt: u64,
    /// Live orders past their retention the processor has not forgotten yet (left out of the rebuild).
    pub due_to_be_forgotten: u64,
    /// Requests parked in live orders: they are not in the event log, so the rebuilt state lacks
    /// them (replay them from the requests topic after a switch).
    pub live_parked_requests: u64,
    /// Up to ten differences, described.
    pub examples: Vec<String>,
}

impl Comparison {
    /// True when every live order has an equal rebuilt one and nothing else was rebuilt.
    pub fn is_equal(&self) -> bool {
        self.different == 0 && self.only_live == 0 && self.only_rebuilt == 0
    }

    fn differ(&mut self, what: String) {
        if self.examples.len() < 10 {
            self.examples.push(what);
        }
    }
}

impl RebuildReport {
    /// A human-readable summary with what to do next.
    pub fn describe(&self, state_topic: &str) -> String {
        let mut text = format!(
            "rebuilt {into} from the accepted-transitions log: {partitions} partitions, {read} accepted records read ({dups} duplicates skipped), {written} orders written, {forgotten} left out (retention ended), {secs:.1} s ({rate:.0} records/s)",
            into = self.into,
            partitions = self.partitions,
            read = self.accepted_read,
            dups = self.duplicates_skipped,
            written = self.orders_written,
            forgotten = self.forgotten,
            secs = self.elapsed_secs,
            rate = self.accepted_read as f64 / self.elapsed_secs.max(1e-3),
        );
        if let Some(c) = &self.comparison {
            text.push_str(&format!(
                "\ncompared with {state_topic}: {live} live orders, {equal} equal, {different} different, {only_live} only live, {only_rebuilt} only rebuilt, {due} due to be forgotten, {parked} parked requests not in the log",
                live = c.live_orders,
                equal = c.equal,
                different = c.different,
                only_live = c.only_live,
                only_rebuilt = c.only_rebuilt,
                due = c.due_to_be_forgotten,
                parked = c.live_parked_requests,
            ));
            for example in &c.examples {
                text.push_str(&format!("\n  {example}"));
            }
            text.push_str(if c.is_equal() {
                "\nEQUAL: the rebuilt state matches the live one"
            } else {
                "\nDIFFERENT: do not switch before the differences above are understood"
            });
        }
        text.push_str(&format!(
            "\nto switch: stop the processors, set topics.state = \"{}\" (or ORDERFLOW_TOPICS__STATE), start them; they restore from the new topic",
            self.into
        ));
        text
    }
}

/// `rebuild-state`: rebuilds into `args.into`, with `--compare` compares, and reports.
pub async fn run(
    settings: &Settings,
    args: &crate::cli::RebuildArgs,
) -> anyhow::Result<RebuildCommandReport> {
    let definition = Arc::new(super::definition(settings)?);
    let report = rebuild(
        settings,
        definition,
        &args.into,
        args.compare,
        args.allow_running,
        crate::clock::wall_clock_ms(),
    )
    .await?;
    Ok(RebuildCommandReport {
        report,
        state_topic: settings.topics.state.clone(),
    })
}

/// A rebuild's report with the state topic it names.
#[derive(Debug)]
pub struct RebuildCommandReport {
    /// What the rebuild did and found.
    pub report: RebuildReport,
    /// The live state topic.
    pub state_topic: String,
}

impl super::Report for RebuildCommandReport {
    fn describe(&self) -> String {
        self.report.describe(&self.state_topic)
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.report).unwrap_or_default()
    }

    fn exit_code(&self) -> u8 {
        let equal = self.report.comparison.as_ref().is_none_or(|c| c.is_equal());
        if equal {
            0
        } else {
            1
        }
    }
}

/// Rebuilds the state topic into the new topic `into`; with `compare`, compares it with the live
/// state topic. Refuses while the processors' group has members, unless `allow_running`.
pub async fn rebuild(
    settings: &Settings,
    definition: Arc<Definition>,
    into: &str,
    compare: bool,
    allow_running: bool,
    now_ms: i64,
) -> anyhow::Result<RebuildReport> {
    if into == settings.topics.state {
        bail!("--into {into} is the live state topic: rebuild into a new topic, then switch to it");
    }
    let topics = Topics::connect(&settings.kafka)?;
    let partitions = topics
        .check(&settings.topics)
        .await
        .context("checking the topics (create them with `orderflow topics create`)")?;
    let members = topics.group_members(&settings.kafka.group_id).await?;
    if members > 0 && !allow_running {
        bail!(
            "the processors' consumer group {} has {members} active member(s): stop them first (e.g. `kubectl scale statefulset/orderflow --replicas=0`) so the event log does not grow while it is read. --allow-running skips this check for a rebuild you only compare and do not switch to",
            settings.kafka.group_id
        );
    }
    let mut topic_settings = settings.topics.clone();
    topic_settings.partitions = partitions;
    topics.create_state_topic(&topic_settings, into).await?;

    let (settings, into) = (settings.clone(), into.to_string());
    tokio::task::spawn_blocking(move || {
        rebuild_all(&settings, &definition, &into, partitions, compare, now_ms)
    })
    .await
    .context("the rebuild thread")?
}

fn rebuild_all(
    settings: &Settings,
    definition: &Definition,
    into: &str,
    partitions: i32,
    compare: bool,
    now_ms: i64,
) -> anyhow::Result<RebuildReport> {
    let started = Instant::now();
    let context = DeliveryErrors::default();
    let producer: BaseProducer<DeliveryErrors> =
        request_producer_config(&settings.kafka, "orderflow-rebuild")?
            .create_with_context(context)
            .context("creating the producer of the rebuilt state")?;
    let mut report = RebuildReport {
        into: into.to_string(),
        partitions,
        comparison: compare.then(Comparison::default),
        ..RebuildReport::default()
    };
    for partition in 0..partitions {
        let orders = fold_partition(settings, definition, partition, &mut report)?;
        let mut value = Vec::with_capacity(256);
        for (order_id, order) in &orders {
            if retention_ended(definition, order, now_ms) {
                report.forgotten += 1;
                continue;
            }
            value.clear();
            encode_order_state(definition, order_id, order, &mut value);
            send(&producer, into, partition, order_id, &value)?;
            report.orders_written += 1;
        }
        producer
            .flush(Duration::from_secs(60))
            .with_context(|| format!("writing partition {partition} of {into}"))?;
        if let Some(error) = producer.context().first() {
            bail!("writing partition {partition} of {into} failed: {error}. Delete {into} and run the rebuild again");
        }
        if let Some(comparison) = report.comparison.as_mut() {
            compare_partition(settings, definition, into, partition, now_ms, comparison)?;
        }
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Every order of one partition folded from its accepted transitions.
fn fold_partition(
    settings: &Settings,
    definition: &Definition,
    partition: i32,
    report: &mut RebuildReport,
) -> anyhow::Result<HashMap<String, OrderState>> {
    let window = settings.processor.recent_requests;
    let mut orders: HashMap<String, OrderState> = HashMap::new();
    let mut failure: Option<anyhow::Error> = None;
    scan_topic(
        &settings.kafka,
        "orderflow-rebuild",
        &settings.topics.accepted,
        &[partition],
        READ_TIMEOUT,
        |message| {
            if failure.is_some() {
                return;
            }
            report.accepted_read += 1;
            let position = format!(
                "{}:{}:{}",
                settings.topics.accepted,
                rdkafka::Message::partition(message),
                rdkafka::Message::offset(message)
            );
            let record = match decode_accepted(
                rdkafka::Message::payload(message).unwrap_or_default(),
            ) {
                Ok(record) => record,
                Err(e) => {
                    failure = Some(anyhow::anyhow!("accepted record {position} cannot be decoded ({e}): the log holds records orderflow did not write, or a newer version did"));
                    return;
                }
            };
            if record.duplicate {
                report.duplicates_skipped += 1;
                return;
            }
            let step = AcceptedStep {
                request_id: record.request_id,
                transition: &record.transition,
                from_state: record.from_state.as_deref(),
                to_state: &record.to_state,
                version: record.version,
                decided_at_ms: record.decided_at_ms,
            };
            let previous = orders.remove(&record.order_id);
            match replay(definition, window, previous, &step) {
                Ok(next) => {
                    orders.insert(record.order_id, next);
                }
                Err(e) => {
                    failure = Some(anyhow::anyhow!(
                        "order {}: accepted record {position}: {e}. The log is not a history this definition produced; nothing was switched",
                        record.order_id
                    ))
                }
            }
        },
    )?;
    match failure {
        Some(e) => Err(e),
        None => Ok(orders),
    }
}

/// The latest state per order of one partition of a state topic (tombstoned orders removed).
fn read_states(
    settings: &Settings,
    definition: &Definition,
    topic: &str,
    partition: i32,
) -> anyhow::Result<HashMap<String, OrderState>> {
    let mut states = HashMap::new();
    let mut failure: Option<anyhow::Error> = None;
    scan_topic(
        &settings.kafka,
        "orderflow-rebuild",
        topic,
        &[partition],
        READ_TIMEOUT,
        |message| {
            let key = rdkafka::Message::key(message)
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            match rdkafka::Message::payload(message) {
                None => {
                    states.remove(&key);
                }
                Some(value) => match decode_order_state(definition, value) {
                    Ok((order_id, state)) => {
                        states.insert(order_id, state);
                    }
                    Err(e) if failure.is_none() => {
                        failure = Some(anyhow::anyhow!(
                            "state record {topic}:{partition}:{} cannot be decoded: {e}",
                            rdkafka::Message::offset(message)
                        ))
                    }
                    Err(_) => {}
                },
            }
        },
    )?;
    match failure {
        Some(e) => Err(e),
        None => Ok(states),
    }
}

fn compare_partition(
    settings: &Settings,
    definition: &Definition,
    into: &str,
    partition: i32,
    now_ms: i64,
    comparison: &mut Comparison,
) -> anyhow::Result<()> {
    let live = read_states(settings, definition, &settings.topics.state, partition)?;
    let mut rebuilt = read_states(settings, definition, into, partition)?;
    let name = |o: &OrderState| definition.state(o.state).name.clone();
    for (order_id, live_order) in &live {
        comparison.live_orders += 1;
        comparison.live_parked_requests += live_order.parked.len() as u64;
        let Some(rebuilt_order) = rebuilt.remove(order_id) else {
            if retention_ended(definition, live_order, now_ms) {
                comparison.due_to_be_forgotten += 1;
            } else {
                comparison.only_live += 1;
                comparison.differ(format!(
                    "order {order_id}: live {} v{}, not in the rebuilt topic",
                    name(live_order),
                    live_order.version
                ));
            }
            continue;
        };
        let live_accepted: Vec<_> = live_order
            .recent
            .iter()
            .filter(|r| r.outcome == RecordedOutcome::Accepted)
            .copied()
            .collect();
        let same = (
            live_order.state,
            live_order.version,
            live_order.created_at_ms,
            live_order.updated_at_ms,
        ) == (
            rebuilt_order.state,
            rebuilt_order.version,
            rebuilt_order.created_at_ms,
            rebuilt_order.updated_at_ms,
        ) && rebuilt_order.recent.ends_with(&live_accepted);
        if same {
            comparison.equal += 1;
        } else {
            comparison.different += 1;
            comparison.differ(format!(
                "order {order_id}: live {} v{} (created {}, updated {}), rebuilt {} v{} (created {}, updated {})",
                name(live_order),
                live_order.version,
                live_order.created_at_ms,
                live_order.updated_at_ms,
                name(&rebuilt_order),
                rebuilt_order.version,
                rebuilt_order.created_at_ms,
                rebuilt_order.updated_at_ms
            ));
        }
    }
    for (order_id, order) in rebuilt {
        comparison.only_rebuilt += 1;
        comparison.differ(format!(
            "order {order_id}: rebuilt {} v{}, not in the live topic",
            name(&order),
            order.version
        ));
    }
    Ok(())
}

/// Sends one state record, waiting for room when the producer's queue is full.
fn send(
    producer: &BaseProducer<DeliveryErrors>,
    topic: &str,
    partition: i32,
    key: &str,
    value: &[u8],
) -> anyhow::Result<()> {
    let mut record = BaseRecord::to(topic)
        .partition(partition)
        .key(key)
        .payload(value);
    loop {
        match producer.send(record) {
            Ok(()) => {
                producer.poll(Duration::ZERO);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(50));
            }
            Err((e, _)) => {
                return Err(e).with_context(|| format!("writing order {key} to {topic}"));
            }
        }
    }
}

/// Remembers the first failed delivery (the idempotent producer retries transient ones itself).
#[derive(Default)]
struct DeliveryErrors(Mutex<Option<String>>);

impl DeliveryErrors {
    fn first(&self) -> Option<String> {
        self.0.lock().ok().and_then(|e| e.clone())
    }
}

impl ClientContext for DeliveryErrors {}

impl ProducerContext for DeliveryErrors {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        if let Err((error, _)) = result {
            if let Ok(mut first) = self.0.lock() {
                first.get_or_insert_with(|| error.to_string());
            }
        }
    }
}
