//! Helpers shared by the integration tests: the broker's address, unique names, settings.

use std::time::Duration;

use orderflow::config::{KafkaSettings, Settings, StateSettings, TopicSettings};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::TopicPartitionList;
use uuid::Uuid;

/// The broker under test: `ORDERFLOW_TEST_BOOTSTRAP`, else the port `make test` uses.
pub fn bootstrap() -> String {
    std::env::var("ORDERFLOW_TEST_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..12])
}

/// Settings pointing at the test broker with this test's own topics.
pub fn settings(partitions: i32) -> Settings {
    Settings {
        kafka: KafkaSettings {
            bootstrap_servers: bootstrap(),
            group_id: unique("group"),
            ..KafkaSettings::default()
        },
        topics: TopicSettings {
            partitions,
            ..TopicSettings::default()
        }
        .with_prefix(&format!("{}-", unique("t"))),
        // Each test's own store directory (the default backend is disk): instances restarted
        // within a test find their stores again, tests never share one.
        state: StateSettings {
            dir: test_state_root().join(unique("s")),
            ..StateSettings::default()
        },
        ..Settings::default()
    }
}

/// Where the tests' local stores live (`deploy/local/test.sh` empties it before a run).
pub fn test_state_root() -> std::path::PathBuf {
    std::env::temp_dir().join("orderflow-test-state")
}

/// Reads every record of `topic` (all `partitions`) from the start with read_committed,
/// stopping once `expected` records arrived or `timeout` passed.
pub fn read_all(
    settings: &Settings,
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = orderflow::kafka::committed_reader_config(
        &settings.kafka,
        "test-reader",
        &unique("reader"),
    )
    .unwrap()
    .create()
    .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expected && std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            out.push(message.expect("reading from the test broker").detach());
        }
    }
    out
}

/// The payload of a message, empty if it has none.
pub fn payload(message: &OwnedMessage) -> &[u8] {
    message.payload().unwrap_or_default()
}

/// The shipped definition.
pub fn definition() -> std::sync::Arc<orderflow::machine::Definition> {
    std::sync::Arc::new(
        orderflow::machine::Definition::parse(
            include_str!("../../machines/order-lifecycle.toml"),
            "order-lifecycle.toml",
        )
        .unwrap(),
    )
}

/// The service for `settings` (its ops server on a free port) and `definition`, not started yet:
/// its metrics, health and caches can be taken before [`RunningProcessor::run`].
pub fn service(
    settings: &Settings,
    definition: std::sync::Arc<orderflow::machine::Definition>,
) -> orderflow::service::Service {
    let mut settings = settings.clone();
    settings.ops.listen = "127.0.0.1:0".into();
    orderflow::service::Service::new(std::sync::Arc::new(settings), definition)
        .expect("the service starts")
}

/// The whole service (processor, ops server, gateway, watchdog) running through
/// `orderflow::service::Service::run` on its own thread and runtime in this test process.
pub struct RunningProcessor {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<std::thread::JoinHandle<Result<(), orderflow::service::ServiceError>>>,
}

impl RunningProcessor {
    /// Starts the service for `settings` with the shipped definition.
    pub fn start(settings: &Settings) -> RunningProcessor {
        RunningProcessor::start_with(settings, definition())
    }

    /// Starts the service for `settings` with `definition`.
    pub fn start_with(
        settings: &Settings,
        definition: std::sync::Arc<orderflow::machine::Definition>,
    ) -> RunningProcessor {
        RunningProcessor::run(service(settings, definition))
    }

    /// Runs `service` until stopped.
    pub fn run(service: orderflow::service::Service) -> RunningProcessor {
        init_test_log();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
                .block_on(service.run(async move {
                    let _ = stopped.await;
                }))
        });
        RunningProcessor {
            shutdown: Some(shutdown),
            handle: Some(handle),
        }
    }

    /// Asks it to stop and waits for how it ended.
    pub fn stop_and_wait(mut self) -> Result<(), orderflow::service::ServiceError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.wait()
    }

    /// Waits until it ends by itself.
    pub fn wait(mut self) -> Result<(), orderflow::service::ServiceError> {
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("service thread")
    }

    /// Asks it to stop and waits; panics if it failed.
    pub fn stop(self) {
        if let Err(error) = self.stop_and_wait() {
            panic!("the service ran cleanly: {error}");
        }
    }
}

impl Drop for RunningProcessor {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Settings for a processor test: its own topics and group, short batches.
pub fn processor_settings(partitions: i32, instance: &str) -> Settings {
    let mut s = settings(partitions);
    s.instance_id = instance.to_string();
    s.processor.batch_max_wait_ms = 20;
    s.processor.session_timeout_ms = 6000;
    s
}

/// Creates the topics of `settings`.
pub async fn create_topics(settings: &Settings) {
    orderflow::kafka::Topics::connect(&settings.kafka)
        .unwrap()
        .ensure(&settings.topics)
        .await
        .expect("topics created");
}

/// A request with a fresh id.
pub fn request(order_id: &str, transition: &str) -> orderflow::machine::TransitionRequest {
    orderflow::machine::TransitionRequest {
        request_id: Uuid::new_v4(),
        order_id: order_id.into(),
        transition: transition.into(),
        expected_version: None,
        requested_at_ms: 1_764_000_000_000,
        source: "test".into(),
        attributes: Default::default(),
    }
}

/// Produces raw records (key, value) to the requests topic in order; returns (partition, offset) of each.
pub async fn produce_raw(
    settings: &Settings,
    records: &[(Option<Vec<u8>>, Vec<u8>)],
) -> Vec<(i32, i64)> {
    let records: Vec<_> = records
        .iter()
        .map(|(key, value)| (key.clone(), value.clone(), None))
        .collect();
    produce_raw_traced(settings, &records).await
}

/// A raw record: key, value and the `traceparent` header it carries, if any.
pub type RawRecord = (Option<Vec<u8>>, Vec<u8>, Option<String>);

/// [`produce_raw`] with a `traceparent` header on the records that give one.
pub async fn produce_raw_traced(settings: &Settings, records: &[RawRecord]) -> Vec<(i32, i64)> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer =
        orderflow::kafka::request_producer_config(&settings.kafka, "test")
            .unwrap()
            .create()
            .unwrap();
    let mut positions = Vec::new();
    for (key, value, traceparent) in records {
        let mut record = FutureRecord::to(&settings.topics.requests).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(traceparent) = traceparent {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(traceparent.as_bytes()),
            }));
        }
        let delivery = producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("delivered");
        positions.push((delivery.partition, delivery.offset));
    }
    positions
}

/// Produces requests in order; returns (partition, offset) of each.
pub async fn produce(
    settings: &Settings,
    requests: &[orderflow::machine::TransitionRequest],
) -> Vec<(i32, i64)> {
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = requests
        .iter()
        .map(|r| {
            let mut bytes = Vec::new();
            orderflow::codec::encode_request(r, &mut bytes);
            (Some(r.order_id.clone().into_bytes()), bytes)
        })
        .collect();
    produce_raw(settings, &records).await
}

/// Every outcome so far, read with read_committed.
#[derive(Debug, Default)]
pub struct Outcomes {
    /// Accepted records.
    pub accepted: Vec<orderflow::codec::AcceptedRecord>,
    /// Rejected records.
    pub rejected: Vec<orderflow::codec::RejectedRecord>,
    /// Dead letters.
    pub dead_letters: Vec<OwnedMessage>,
}

impl Outcomes {
    /// Outcomes per input position: (partition, offset) → count.
    pub fn per_input(&self) -> std::collections::HashMap<(i32, i64), usize> {
        let mut map = std::collections::HashMap::new();
        for a in &self.accepted {
            *map.entry((a.input.partition, a.input.offset)).or_default() += 1;
        }
        for r in &self.rejected {
            *map.entry((r.input.partition, r.input.offset)).or_default() += 1;
        }
        for d in &self.dead_letters {
            let p = header(d, "orderflow.dlq.original.partition")
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1);
            let o = header(d, "orderflow.dlq.original.offset")
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1);
            *map.entry((p, o)).or_default() += 1;
        }
        map
    }

    /// Total outcomes.
    pub fn len(&self) -> usize {
        self.accepted.len() + self.rejected.len() + self.dead_letters.len()
    }
}

/// A header's value as text.
pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    message.headers().and_then(|h| {
        h.iter()
            .find(|x| x.key == name)
            .and_then(|x| x.value)
            .map(|v| String::from_utf8_lossy(v).to_string())
    })
}

/// Reads every committed record of `topic` up to its current end (last stable offset).
pub fn read_to_end(settings: &Settings, topic: &str, isolation: &str) -> Vec<OwnedMessage> {
    let mut config = orderflow::kafka::committed_reader_config(
        &settings.kafka,
        "test-reader",
        &unique("reader"),
    )
    .unwrap();
    config
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation);
    let consumer: BaseConsumer = config.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut pending = std::collections::HashSet::new();
    for p in 0..settings.topics.partitions {
        let high = orderflow::state::restore::end_offset(&consumer, topic, p)
            .unwrap_or_else(|e| panic!("end offset of {topic}/{p}: {e}"));
        if high > 0 {
            pending.insert(p);
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
                .unwrap();
        }
    }
    if pending.is_empty() {
        return Vec::new();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while !pending.is_empty() && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push(m.detach()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            _ => {}
        }
    }
    assert!(
        pending.is_empty(),
        "did not reach the end of {topic} partitions {pending:?}"
    );
    out
}

/// Reads outcomes (read_committed) until at least `expected` arrived or `timeout` passed.
pub fn wait_for_outcomes(settings: &Settings, expected: usize, timeout: Duration) -> Outcomes {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut outcomes = Outcomes::default();
        for m in read_to_end(settings, &settings.topics.accepted, "read_committed") {
            outcomes.accepted.push(
                orderflow::codec::decode_accepted(payload(&m)).expect("accepted record decodes"),
            );
        }
        for m in read_to_end(settings, &settings.topics.rejected, "read_committed") {
            outcomes.rejected.push(
                orderflow::codec::decode_rejected(payload(&m)).expect("rejected record decodes"),
            );
        }
        outcomes.dead_letters =
            read_to_end(settings, &settings.topics.dead_letters, "read_committed");
        if outcomes.len() >= expected || std::time::Instant::now() >= deadline {
            return outcomes;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The `traceparent` of the outcome (accepted or rejected, read_committed) of the request at
/// (`partition`, `offset`).
pub fn outcome_traceparent(settings: &Settings, partition: i32, offset: i64) -> Option<String> {
    for m in read_to_end(settings, &settings.topics.accepted, "read_committed") {
        let record =
            orderflow::codec::decode_accepted(payload(&m)).expect("accepted record decodes");
        if (record.input.partition, record.input.offset) == (partition, offset) {
            return header(&m, "traceparent");
        }
    }
    for m in read_to_end(settings, &settings.topics.rejected, "read_committed") {
        let record =
            orderflow::codec::decode_rejected(payload(&m)).expect("rejected record decodes");
        if (record.input.partition, record.input.offset) == (partition, offset) {
            return header(&m, "traceparent");
        }
    }
    panic!("no outcome for the request at {partition}/{offset}")
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    /// A clock showing `now_ms`.
    pub fn at(now_ms: i64) -> ManualClock {
        ManualClock(std::sync::atomic::AtomicI64::new(now_ms))
    }

    /// Moves the clock forward.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl orderflow::clock::Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// [`wait_for_outcomes`], run off the async workers.
pub async fn outcomes_within(settings: &Settings, expected: usize, timeout: Duration) -> Outcomes {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || wait_for_outcomes(&settings, expected, timeout))
        .await
        .expect("outcome reader task")
}

/// Logs of in-process services into the test's captured output (shown when it fails), at
/// `ORDERFLOW_TEST_LOG` (a tracing filter; default: orderflow's info and everyone's warnings).
pub fn init_test_log() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let filter =
            std::env::var("ORDERFLOW_TEST_LOG").unwrap_or_else(|_| "warn,orderflow=info".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .with_ansi(false)
            .try_init();
    });
}

/// A plain HTTP request with an optional JSON body: (status, body).
pub fn http(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    http_with(address, method, path, &[], body).unwrap()
}

/// An HTTP/1.0 request (so the answer is never chunked) with further headers and an optional
/// JSON body: (status, body); an error while nothing listens.
pub fn http_with(
    address: impl std::net::ToSocketAddrs,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or("");
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: test\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Serves `state` on a loopback port for the rest of the test; returns its address.
pub async fn serve_ops(state: orderflow::ops::OpsState) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(orderflow::ops::serve(
        listener,
        state,
        std::future::pending(),
    ));
    address
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
