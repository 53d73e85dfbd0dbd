//! Send a transition request and wait for its outcome: the synchronous face of an asynchronous
//! service, for `orderflow send --wait` and `POST /orders/{id}/transitions`.
//!
//! One reader per gateway follows the three output topics (read_committed, from their ends when the
//! gateway starts) and hands each outcome to the caller waiting for that request id; a dead letter,
//! which has no request id, is matched by the request's partition and offset.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::assign_outputs;
use super::outcome::{decode_outcome, Outcome};
use crate::codec::encode_request;
use crate::config::{Settings, TopicSettings};
use crate::kafka::{committed_reader_config, request_producer_config, ClientConfigError};
use crate::machine::TransitionRequest;

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

/// Produces requests and awaits their outcomes.
pub struct Gateway {
    producer: FutureProducer,
    topics: TopicSettings,
    waiting: Arc<Mutex<Waiting>>,
    stop: Arc<AtomicBool>,
}

impl Gateway {
    /// Creates the producer and starts the outcome reader at the current end of the output topics
    /// (blocking: call it from a thread that may block).
    pub fn start(settings: &Settings, client_name: &str) -> Result<Gateway, GatewayError> {
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
        let topics = settings.topics.clone();
        assign_outputs(
            &reader,
            &[&topics.accepted, &topics.rejected, &topics.dead_letters],
            topics.partitions,
            false,
        )?;
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (waiting, stop, topics) = (Arc::clone(&waiting), Arc::clone(&stop), topics.clone());
            std::thread::Builder::new()
                .name("orderflow-outcomes".into())
                .spawn(move || follow_outcomes(reader, &topics, &waiting, &stop))
                .map_err(GatewayError::Thread)?;
        }
        Ok(Gateway {
            producer,
            topics,
            waiting,
            stop,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `request` and waits up to `timeout` for its outcome.
    pub async fn submit(
        &self,
        request: &TransitionRequest,
        headers: &[(String, Vec<u8>)],
        timeout: Duration,
    ) -> Result<Outcome, GatewayError> {
        let (tx, rx) = oneshot::channel();
        self.lock().by_request.insert(request.request_id, tx);
        let sent = self.send(request, headers).await;
        let position = match sent {
            Ok(position) => position,
            Err(e) => {
                self.lock().by_request.remove(&request.request_id);
                return Err(e);
            }
        };
        {
            let mut waiting = self.lock();
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
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            _ => {
                let mut waiting = self.lock();
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
        let record = FutureRecord::to(&self.topics.requests)
            .key(&request.order_id)
            .payload(&value)
            .headers(owned);
        let delivery = self
            .producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .map_err(kafka(format!("sending to {}", self.topics.requests)))?;
        Ok((delivery.partition, delivery.offset))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn follow_outcomes(
    reader: BaseConsumer,
    topics: &TopicSettings,
    waiting: &Mutex<Waiting>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        match reader.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "outcome reader"),
            Some(Ok(message)) => match decode_outcome(topics, &message) {
                Some(Ok(outcome)) => waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .deliver(outcome),
                Some(Err(e)) => tracing::warn!(error = %e, "undecodable outcome record"),
                None => {}
            },
        }
    }
}
