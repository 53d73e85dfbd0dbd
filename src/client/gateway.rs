//! Send a transition request and wait for its outcome: the synchronous face of an asynchronous
//! service, for `orderflow send --wait` and `POST /orders/{id}/transitions`.
//!
//! One reader per gateway follows the three output topics (read_committed), but only the partition
//! numbers some caller is waiting on: each is read from its end as of just before the request is
//! sent, and dropped a while after its last caller got an answer. Each outcome goes to the caller
//! waiting for that request id; a dead letter, which has no request id, is matched by the request's
//! partition and offset.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::TopicPartitionList;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::outcome::{decode_outcome, Outcome};
use super::positions;
use crate::codec::encode_request;
use crate::codec::headers::{set_traceparent, TRACEPARENT};
use crate::config::{Settings, TopicSettings};
use crate::kafka::partitioner::partition_for;
use crate::kafka::{committed_reader_config, request_producer_config, ClientConfigError};
use crate::machine::TransitionRequest;
use crate::telemetry::context::{Sampling, TraceParent};
use crate::telemetry::SPANS;

/// Sending or awaiting a request failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The Kafka client settings are wrong.
    #[error(transparent)]
    Config(#[from] ClientConfigError),
    /// Kafka refused or could not be reached.
    #[error("{doing}: {source} (is Kafka reachable at kafka.bootstrap_servers?)")]
    Kafka {
        /// What was being done.
        doing: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The request landed in another partition than its order id hashes to among
    /// `topics.partitions`: the topic and the setting disagree.
    #[error("request sent to {topic} landed in partition {found}, but its order id hashes to partition {expected} of {partitions}: the topic's partition count differs from topics.partitions; set topics.partitions to the topics' real count (orderflow run refuses to start on this mismatch too). The request was sent; retrying with the same request id is safe")]
    PartitionMismatch {
        /// The requests topic.
        topic: String,
        /// Where murmur2 over topics.partitions puts the key.
        expected: i32,
        /// Where it landed.
        found: i32,
        /// topics.partitions.
        partitions: i32,
    },
    /// The outcome reader thread could not start.
    #[error("cannot start the outcome reader thread: {0}")]
    Thread(#[source] std::io::Error),
    /// No outcome arrived in time; the request may still be decided later.
    #[error("no outcome for request {request_id} within {waited:?}: it may be parked, waiting for its order to reach a source state (e.g. ship before confirm), or `orderflow run` is not running or keeping up. The request was sent; retrying with the same request id is safe (a duplicate is answered with the first outcome)")]
    Timeout {
        /// The request's id.
        request_id: Uuid,
        /// How long the caller waited.
        waited: Duration,
    },
}

/// A record's headers, as sent.
type RecordHeaders = Vec<(String, Vec<u8>)>;

impl GatewayError {
    /// A stable name of the error's kind (a span's `error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::Config(_) => "config",
            GatewayError::Kafka { .. } => "kafka",
            GatewayError::PartitionMismatch { .. } => "partition_mismatch",
            GatewayError::Thread(_) => "thread",
            GatewayError::Timeout { .. } => "timeout",
        }
    }
}

fn kafka(doing: impl Into<String>) -> impl FnOnce(KafkaError) -> GatewayError {
    let doing = doing.into();
    move |source| GatewayError::Kafka { doing, source }
}

#[derive(Default)]
struct Waiting {
    by_request: HashMap<Uuid, oneshot::Sender<Outcome>>,
    by_position: HashMap<(i32, i64), Uuid>,
    /// Dead letters that arrived before their request's position was known.
    unclaimed_dead_letters: HashMap<(i32, i64), Outcome>,
}

impl Waiting {
    fn deliver(&mut self, outcome: Outcome) {
        let request_id = match &outcome {
            Outcome::Accepted(a) => Some(a.request_id),
            Outcome::Rejected(r) => Some(r.request_id),
            Outcome::DeadLetter(d) => match d.original_position() {
                Some(position) => match self.by_position.get(&position) {
                    Some(id) => Some(*id),
                    None => {
                        // Bounded: dead letters of other senders are never claimed.
                        if self.unclaimed_dead_letters.len() >= 10_000 {
                            self.unclaimed_dead_letters.clear();
                        }
                        self.unclaimed_dead_letters.insert(position, outcome);
                        return;
                    }
                },
                None => None,
            },
        };
        let Some(request_id) = request_id else {
            return;
        };
        if let Some(waiter) = self.by_request.remove(&request_id) {
            self.by_position.retain(|_, id| *id != request_id);
            let _ = waiter.send(outcome);
        }
    }
}

/// How long a partition stays followed after its last caller got an answer: a steady trickle of
/// synchronous requests to one partition should not pay an end-offset lookup each.
pub const FOLLOW_LINGER: Duration = Duration::from_secs(30);

/// A partition of the output topics being read for waiting callers.
struct Followed {
    /// Callers waiting on it now.
    waiting: usize,
    /// When the last of them stopped waiting.
    idle_since: Instant,
}

/// What the caller side and the reader thread share.
struct Shared {
    reader: BaseConsumer,
    topics: TopicSettings,
    waiting: Mutex<Waiting>,
    /// The followed partitions; held across the end-offset lookup so the reader thread cannot drop
    /// a partition a caller is about to rely on.
    followed: Mutex<HashMap<i32, Followed>>,
    linger: Duration,
    stop: AtomicBool,
}

impl Shared {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn followed(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Followed>> {
        self.followed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn output_topics(&self) -> [&str; 3] {
        [
            &self.topics.accepted,
            &self.topics.rejected,
            &self.topics.dead_letters,
        ]
    }

    /// Counts one more caller waiting on `partition`, and starts reading it from the current end of
    /// the output topics if nobody was (blocking). Outcomes are co-partitioned with their request,
    /// and a request's outcome is written after the request, so it lies after that end.
    fn follow(&self, partition: i32) -> Result<(), GatewayError> {
        let mut followed = self.followed();
        if let Some(entry) = followed.get_mut(&partition) {
            entry.waiting += 1;
            return Ok(());
        }
        let assignment = positions(
            &self.reader,
            &self.output_topics(),
            [partition].into_iter(),
            false,
        )?;
        self.reader
            .incremental_assign(&assignment)
            .map_err(kafka(format!(
                "reading partition {partition} of the outputs"
            )))?;
        followed.insert(
            partition,
            Followed {
                waiting: 1,
                idle_since: Instant::now(),
            },
        );
        Ok(())
    }

    /// One caller stopped waiting on `partition`.
    fn unfollow(&self, partition: i32) {
        if let Some(entry) = self.followed().get_mut(&partition) {
            entry.waiting = entry.waiting.saturating_sub(1);
            entry.idle_since = Instant::now();
        }
    }

    /// Stops reading partitions nobody has waited on for the linger time.
    fn drop_idle_partitions(&self) {
        let mut followed = self.followed();
        let idle: Vec<i32> = followed
            .iter()
            .filter(|(_, f)| f.waiting == 0 && f.idle_since.elapsed() >= self.linger)
            .map(|(p, _)| *p)
            .collect();
        if idle.is_empty() {
            return;
        }
        let mut assignment = TopicPartitionList::new();
        for partition in &idle {
            for topic in self.output_topics() {
                assignment.add_partition(topic, *partition);
            }
        }
        match self.reader.incremental_unassign(&assignment) {
            Ok(()) => {
                for partition in idle {
                    followed.remove(&partition);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the outcome reader could not drop idle partitions")
            }
        }
    }
}

/// Counts a caller as waiting on a partition until dropped (also when the caller's future is
/// cancelled, e.g. an HTTP client that hung up).
struct FollowGuard {
    shared: Arc<Shared>,
    partition: i32,
}

impl Drop for FollowGuard {
    fn drop(&mut self) {
        self.shared.unfollow(self.partition);
    }
}

/// Produces requests and awaits their outcomes. Its reader follows only the output partitions
/// callers are waiting on (outcomes share their request's partition number), so a pod's HTTP API
/// does not read every outcome of the whole service.
pub struct Gateway {
    producer: FutureProducer,
    shared: Arc<Shared>,
    /// Which submissions get a client span (`traces`).
    sampling: Sampling,
}

impl Gateway {
    /// Creates the producer and the outcome reader thread (blocking: call it from a thread that
    /// may block).
    pub fn start(settings: &Settings, client_name: &str) -> Result<Gateway, GatewayError> {
        Gateway::start_lingering(settings, client_name, FOLLOW_LINGER)
    }

    /// [`Gateway::start`] with partitions followed for `linger` after their last caller.
    pub fn start_lingering(
        settings: &Settings,
        client_name: &str,
        linger: Duration,
    ) -> Result<Gateway, GatewayError> {
        let producer: FutureProducer = request_producer_config(&settings.kafka, client_name)?
            .create()
            .map_err(kafka("creating the request producer"))?;
        let reader: BaseConsumer = committed_reader_config(
            &settings.kafka,
            &format!("{client_name}-outcomes"),
            &format!("{client_name}-outcomes-{}", Uuid::new_v4().simple()),
        )?
        .create()
        .map_err(kafka("creating the outcome reader"))?;
        let shared = Arc::new(Shared {
            reader,
            topics: settings.topics.clone(),
            waiting: Mutex::new(Waiting::default()),
            followed: Mutex::new(HashMap::new()),
            linger,
            stop: AtomicBool::new(false),
        });
        {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("orderflow-outcomes".into())
                .spawn(move || follow_outcomes(&shared))
                .map_err(GatewayError::Thread)?;
        }
        Ok(Gateway {
            producer,
            shared,
            sampling: Sampling::of(&settings.traces),
        })
    }

    /// The partitions of the output topics the reader is assigned now, by topic.
    pub fn followed_partitions(&self) -> Result<BTreeMap<String, BTreeSet<i32>>, GatewayError> {
        let assignment = self
            .shared
            .reader
            .assignment()
            .map_err(kafka("reading the outcome reader's assignment"))?;
        let mut by_topic: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
        for element in assignment.elements() {
            by_topic
                .entry(element.topic().to_string())
                .or_default()
                .insert(element.partition());
        }
        Ok(by_topic)
    }

    /// Sends `request` and waits up to `timeout` for its outcome. A sampled submission (its
    /// `traceparent` header sampled, or a root picked by `traces.root_sample_ratio`) gets a
    /// client span (`send <requests topic>`, kind producer) whose context the request carries.
    pub async fn submit(
        &self,
        request: &TransitionRequest,
        headers: &[(String, Vec<u8>)],
        timeout: Duration,
    ) -> Result<Outcome, GatewayError> {
        use tracing::Instrument;
        let Some((span, traced)) = self.client_span(request, headers) else {
            return self.submit_untraced(request, headers, timeout).await;
        };
        let result = self
            .submit_untraced(request, &traced, timeout)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(outcome) => {
                span.record(
                    "orderflow.outcome",
                    match outcome {
                        Outcome::Accepted(_) => "accepted",
                        Outcome::Rejected(_) => "rejected",
                        Outcome::DeadLetter(_) => "dead_letter",
                    },
                );
            }
            Err(e) => {
                span.record("otel.status_code", "error");
                span.record("error.type", e.kind());
            }
        }
        result
    }

    /// The client span of a sampled submission and the headers that carry its context.
    fn client_span(
        &self,
        request: &TransitionRequest,
        headers: &[(String, Vec<u8>)],
    ) -> Option<(tracing::Span, RecordHeaders)> {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        if !self.sampling.enabled {
            return None;
        }
        let parent = headers
            .iter()
            .find(|(k, _)| k == TRACEPARENT)
            .and_then(|(_, v)| TraceParent::parse(v));
        // A v4 request id's random half picks the share of roots.
        let id = request.request_id.as_u64_pair().1;
        if !self.sampling.decide(parent.as_ref(), id) {
            return None;
        }
        let topic = &self.shared.topics.requests;
        let span = tracing::info_span!(
            target: SPANS,
            "send",
            otel.name = %format!("send {topic}"),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = %topic,
            messaging.kafka.message.key = %request.order_id,
            messaging.message.id = %request.request_id,
            orderflow.order_id = %request.order_id,
            orderflow.transition = %request.transition,
            orderflow.outcome = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        if let Some(parent) = parent {
            let _ = span.set_parent(parent.parent_context());
        }
        let context = span.context().span().span_context().clone();
        // Without an exporter the span has no context: the request goes out as it came.
        if !context.is_valid() {
            return None;
        }
        let mut traced: RecordHeaders = headers.to_vec();
        set_traceparent(
            &mut traced,
            TraceParent::of_span(&context).format().into_bytes(),
        );
        Some((span, traced))
    }

    async fn submit_untraced(
        &self,
        request: &TransitionRequest,
        headers: &[(String, Vec<u8>)],
        timeout: Duration,
    ) -> Result<Outcome, GatewayError> {
        // The partition the producer's murmur2 partitioner will choose, followed before the
        // request exists so that its outcome cannot slip past the reader.
        let partition = partition_for(request.order_id.as_bytes(), self.shared.topics.partitions);
        let guard = {
            let shared = Arc::clone(&self.shared);
            tokio::task::spawn_blocking(move || {
                shared
                    .follow(partition)
                    .map(|()| FollowGuard { shared, partition })
            })
            .await
            .map_err(|e| GatewayError::Thread(std::io::Error::other(e)))??
        };
        let (tx, rx) = oneshot::channel();
        self.shared
            .waiting()
            .by_request
            .insert(request.request_id, tx);
        let sent = self.send(request, headers).await;
        let position = match sent {
            Ok(position) => position,
            Err(e) => {
                self.shared.waiting().by_request.remove(&request.request_id);
                return Err(e);
            }
        };
        if position.0 != partition {
            self.shared.waiting().by_request.remove(&request.request_id);
            return Err(GatewayError::PartitionMismatch {
                topic: self.shared.topics.requests.clone(),
                expected: partition,
                found: position.0,
                partitions: self.shared.topics.partitions,
            });
        }
        {
            let mut waiting = self.shared.waiting();
            match waiting.unclaimed_dead_letters.remove(&position) {
                Some(dead_letter) => {
                    waiting.by_request.remove(&request.request_id);
                    return Ok(dead_letter);
                }
                None => {
                    waiting.by_position.insert(position, request.request_id);
                }
            }
        }
        let answer = tokio::time::timeout(timeout, rx).await;
        drop(guard);
        match answer {
            Ok(Ok(outcome)) => Ok(outcome),
            _ => {
                let mut waiting = self.shared.waiting();
                waiting.by_request.remove(&request.request_id);
                waiting.by_position.remove(&position);
                Err(GatewayError::Timeout {
                    request_id: request.request_id,
                    waited: timeout,
                })
            }
        }
    }

    /// Sends `request` without waiting for its outcome; returns its (partition, offset).
    pub async fn send(
        &self,
        request: &TransitionRequest,
        headers: &[(String, Vec<u8>)],
    ) -> Result<(i32, i64), GatewayError> {
        let mut value = Vec::with_capacity(128);
        encode_request(request, &mut value);
        let mut owned = OwnedHeaders::new();
        for (key, value) in headers {
            owned = owned.insert(Header {
                key,
                value: Some(value),
            });
        }
        let topic = &self.shared.topics.requests;
        let record = FutureRecord::to(topic)
            .key(&request.order_id)
            .payload(&value)
            .headers(owned);
        let delivery = self
            .producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .map_err(kafka(format!("sending to {topic}")))?;
        Ok((delivery.partition, delivery.offset))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

fn follow_outcomes(shared: &Shared) {
    let mut last_sweep = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        match shared.reader.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "outcome reader"),
            Some(Ok(message)) => match decode_outcome(&shared.topics, &message) {
                Some(Ok(outcome)) => shared.waiting().deliver(outcome),
                Some(Err(e)) => tracing::warn!(error = %e, "undecodable outcome record"),
                None => {}
            },
        }
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            shared.drop_idle_partitions();
            last_sweep = Instant::now();
        }
    }
}
