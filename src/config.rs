//! Settings: one documented struct, layered file → environment (`ORDERFLOW_…`) → command-line flags.
//!
//! Every field has a named default, so an empty file (or none) runs against a local broker.
//! Environment variables address nested fields with a double underscore:
//! `ORDERFLOW_KAFKA__BOOTSTRAP_SERVERS=broker:9092` sets `kafka.bootstrap_servers`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source} (check --config / ORDERFLOW_CONFIG)")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("config file {path}: {message} (see the configuration table in README.md)")]
    Parse {
        /// The file, or the environment variable that made it invalid.
        path: String,
        /// toml's explanation, naming the key.
        message: String,
    },
    /// A value is out of range or contradicts another.
    #[error("invalid setting {key}: {message}")]
    Invalid {
        /// The setting's dotted name.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// A string that never appears in logs, `Debug` output or `orderflow config show`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for handing to librdkafka only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

/// All settings of an orderflow process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The state-machine definition file (TOML). Default: `machines/order-lifecycle.toml`.
    pub definition: PathBuf,
    /// This instance's stable id (e.g. the StatefulSet pod name); it names the transactional.id.
    /// Default: `orderflow-0`.
    pub instance_id: String,
    /// How to reach Kafka.
    pub kafka: KafkaSettings,
    /// Topic names and layout.
    pub topics: TopicSettings,
    /// Batching, transactions and limits of the processor.
    pub processor: ProcessorSettings,
    /// The ops HTTP server (metrics, health).
    pub ops: OpsSettings,
    /// Where owned orders are kept: in memory, or in a local store on disk.
    pub state: StateSettings,
    /// OpenTelemetry traces exported over OTLP.
    pub traces: TraceSettings,
}

/// OpenTelemetry traces: spans of decided requests and transactions, exported over OTLP/HTTP
/// to the collector the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) names,
/// under `OTEL_SERVICE_NAME` (default `orderflow`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceSettings {
    /// Whether spans are recorded and exported. Default: `false`.
    pub enabled: bool,
    /// The share of requests without a sampled-or-not trace context (no `traceparent`) that
    /// start a trace, between 0 and 1; a request with one follows its sampled flag. Default:
    /// `0.01`.
    pub root_sample_ratio: f64,
    /// Finished spans waiting for export at most; more are dropped (and counted in
    /// `orderflow_trace_spans_dropped_total`) rather than slowing the processor. Default: `8192`.
    pub queue_spans: usize,
}

impl Default for TraceSettings {
    fn default() -> TraceSettings {
        TraceSettings {
            enabled: false,
            root_sample_ratio: 0.01,
            queue_spans: 8192,
        }
    }
}

/// Which backend holds the owned partitions' orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// Every owned order in memory, restored from the state topic on assignment.
    Memory,
    /// Every owned order in a local store on disk (`state.dir`) with a checkpoint: an
    /// assignment replays only the state topic's tail.
    Disk,
}

/// The local state of owned partitions.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSettings {
    /// `disk` or `memory`. Default: `disk`.
    pub backend: StateBackend,
    /// The disk backend's directory; each instance id gets its own subdirectory, locked while
    /// the process runs. A cache of the state topic: it may be deleted at any time. Default:
    /// `orderflow-state` (under the working directory).
    pub dir: PathBuf,
    /// The disk backend's memory budget, in MB: the hot orders kept in memory (half) and the
    /// store engine's block cache and write buffers (a quarter each). Default: `256`.
    pub memory_budget_mb: u64,
}

impl StateSettings {
    /// The budget's part for the store engine (block cache and write buffers), in bytes.
    pub fn engine_bytes(&self) -> u64 {
        (self.memory_budget_mb << 20) / 2
    }

    /// The budget's part for the hot orders kept in memory, in bytes.
    pub fn hot_orders_bytes(&self) -> u64 {
        (self.memory_budget_mb << 20) - self.engine_bytes()
    }
}

impl Default for StateSettings {
    fn default() -> StateSettings {
        StateSettings {
            backend: StateBackend::Disk,
            dir: PathBuf::from("orderflow-state"),
            memory_budget_mb: 256,
        }
    }
}

/// The ops HTTP server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsSettings {
    /// Address of `/metrics`, `/healthz`, `/readyz` and `/orders/{id}`. Default: `0.0.0.0:9400`.
    pub listen: String,
    /// The ops URL of another instance, `{instance}` standing for its instance id (e.g.
    /// `http://{instance}.orderflow-peers:9400`); `GET /orders/{id}` names it for orders owned
    /// elsewhere. Default: none (only the owner's instance id is named).
    pub peer_url_template: Option<String>,
    /// `/healthz` fails when the processing loop has not beaten for this long. Default: `30000`.
    pub liveness_timeout_ms: u64,
}

impl Default for OpsSettings {
    fn default() -> OpsSettings {
        OpsSettings {
            listen: "0.0.0.0:9400".into(),
            peer_url_template: None,
            liveness_timeout_ms: 30_000,
        }
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            definition: PathBuf::from("machines/order-lifecycle.toml"),
            instance_id: "orderflow-0".into(),
            kafka: KafkaSettings::default(),
            topics: TopicSettings::default(),
            processor: ProcessorSettings::default(),
            ops: OpsSettings::default(),
            state: StateSettings::default(),
            traces: TraceSettings::default(),
        }
    }
}

/// How the processor batches, commits and bounds its work.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorSettings {
    /// Most requests in one transaction. Default: 2000. Under load, batches fill to this size
    /// (records wait in the consumer while the previous batch commits), amortising each commit.
    pub batch_max_records: usize,
    /// Longest wait from a batch's first request to its commit, in ms. Default: 5. Bounds the
    /// latency a lone request sees at low load; under load batches fill while the previous one
    /// commits, so a longer wait buys little (p50 40 → 28 ms at 5,800/s going from 20 to 5).
    pub batch_max_wait_ms: u64,
    /// Kafka's `transaction.timeout.ms`: how long a vanished instance's open transaction can hold
    /// back read_committed readers. Default: 10000.
    pub transaction_timeout_ms: u64,
    /// Consumer `session.timeout.ms`: how soon the group notices a dead instance. Default: 10000.
    pub session_timeout_ms: u64,
    /// Request ids remembered per order for duplicate detection (K). Default: 8.
    pub recent_requests: usize,
    /// Most attributes a request may carry; more is a dead letter. Default: 64.
    pub max_attributes: usize,
    /// Most bytes of attribute keys and values a request may carry; more is a dead letter.
    /// Default: 16384.
    pub max_attribute_bytes: usize,
    /// Early requests an order may hold while waiting for a source state (0 turns parking off).
    /// Default: 4.
    pub parking_max_per_order: usize,
    /// How long an early request may wait before it is rejected as EXPIRED, in ms.
    /// Default: 600000 (10 minutes).
    pub parking_max_wait_ms: u64,
    /// Largest dead-letter value; larger ones are truncated and say so in a header. Keep it below
    /// the DLQ topic's `max.message.bytes`. Default: 900000.
    pub dead_letter_max_bytes: usize,
    /// On SIGTERM/SIGINT, how long the batch in hand may take to finish before the process exits
    /// anyway, in ms. Keep it below Kubernetes' `terminationGracePeriodSeconds`. Default: 25000.
    pub shutdown_deadline_ms: u64,
    /// Static group membership: the consumer joins with `group.instance.id` = `instance_id`, so an
    /// instance restarted within `session_timeout_ms` gets its partitions back without a rebalance
    /// (no restore on the others). The price: a stopped instance's partitions wait for its session
    /// to time out before they move. Default: false.
    pub static_membership: bool,
    /// Restore consumers run side by side for newly assigned partitions; 0 picks the CPUs the
    /// process may use, at most 4. Default: 0.
    pub restore_threads: usize,
}

impl Default for ProcessorSettings {
    fn default() -> ProcessorSettings {
        ProcessorSettings {
            batch_max_records: 2000,
            batch_max_wait_ms: 5,
            transaction_timeout_ms: 10_000,
            session_timeout_ms: 10_000,
            recent_requests: crate::machine::DEFAULT_RECENT_WINDOW,
            max_attributes: 64,
            max_attribute_bytes: 16_384,
            parking_max_per_order: 4,
            parking_max_wait_ms: 600_000,
            dead_letter_max_bytes: 900_000,
            shutdown_deadline_ms: 25_000,
            static_membership: false,
            restore_threads: 0,
        }
    }
}

/// Connection to the Kafka cluster.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list. Default: `127.0.0.1:9092` (`make kafka-up`).
    pub bootstrap_servers: String,
    /// The consumer group all orderflow instances share. Default: `orderflow`.
    pub group_id: String,
    /// `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`. Default: `PLAINTEXT`.
    pub security_protocol: String,
    /// SASL mechanism (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`), if SASL is used.
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    pub sasl_username: Option<String>,
    /// SASL password (never logged or shown).
    pub sasl_password: Option<Secret>,
    /// CA certificate file for TLS.
    pub ssl_ca_location: Option<PathBuf>,
    /// Client certificate file for mutual TLS.
    pub ssl_certificate_location: Option<PathBuf>,
    /// Client key file for mutual TLS.
    pub ssl_key_location: Option<PathBuf>,
    /// Password of the client key (never logged or shown).
    pub ssl_key_password: Option<Secret>,
    /// Further librdkafka properties passed through as they are (e.g. `client.rack`). Keys orderflow
    /// sets itself are refused, naming the setting to use instead.
    pub extra: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> KafkaSettings {
        KafkaSettings {
            bootstrap_servers: "127.0.0.1:9092".into(),
            group_id: "orderflow".into(),
            security_protocol: "PLAINTEXT".into(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_key_password: None,
            extra: BTreeMap::new(),
        }
    }
}

/// Topic names and layout. All five topics have the same partition count (co-partitioning).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicSettings {
    /// Put before each of the five topic names (e.g. `staging-` or a test run's own prefix), so
    /// one setting moves a whole topic set. Applied once when the settings are loaded. Default:
    /// none.
    pub prefix: String,
    /// Transition requests from upstream. Default: `order-transition-requests`.
    pub requests: String,
    /// Latest state per order, compacted. Default: `order-state`.
    pub state: String,
    /// Accepted transitions (the event log). Default: `order-transitions`.
    pub accepted: String,
    /// Rejected requests with reasons. Default: `order-transition-rejections`.
    pub rejected: String,
    /// Undecodable or invalid requests. Default: `order-transition-requests-dlq`.
    pub dead_letters: String,
    /// Partitions of every topic, used by `orderflow topics create`. Default: 12.
    pub partitions: i32,
    /// Replicas of every topic, used by `orderflow topics create`. Default: 1 (local broker).
    pub replication_factor: i32,
    /// `min.insync.replicas` of every topic created by `orderflow topics create`; 0 means one less
    /// than the replication factor, at least 1 (3 replicas → 2). Default: 0.
    pub min_insync_replicas: i32,
}

impl Default for TopicSettings {
    fn default() -> TopicSettings {
        TopicSettings {
            prefix: String::new(),
            requests: "order-transition-requests".into(),
            state: "order-state".into(),
            accepted: "order-transitions".into(),
            rejected: "order-transition-rejections".into(),
            dead_letters: "order-transition-requests-dlq".into(),
            partitions: 12,
            replication_factor: 1,
            min_insync_replicas: 0,
        }
    }
}

impl TopicSettings {
    /// Puts `prefix` before the five topic names, once: afterwards the prefix is empty, so
    /// settings shown by `config show` and loaded again name the same topics.
    pub fn apply_prefix(&mut self) {
        if self.prefix.is_empty() {
            return;
        }
        let prefix = std::mem::take(&mut self.prefix);
        for name in [
            &mut self.requests,
            &mut self.state,
            &mut self.accepted,
            &mut self.rejected,
            &mut self.dead_letters,
        ] {
            name.insert_str(0, &prefix);
        }
    }

    /// The `min.insync.replicas` new topics get: the configured value, or one less than the
    /// replication factor (at least 1), so a cluster keeps accepting writes with one broker down.
    pub fn effective_min_insync_replicas(&self) -> i32 {
        if self.min_insync_replicas > 0 {
            self.min_insync_replicas
        } else {
            (self.replication_factor - 1).max(1)
        }
    }

    /// All five topic names with a short role each.
    pub fn all(&self) -> [(&'static str, &str); 5] {
        [
            ("requests", &self.requests),
            ("state", &self.state),
            ("accepted", &self.accepted),
            ("rejected", &self.rejected),
            ("dead_letters", &self.dead_letters),
        ]
    }

    /// The same layout with every name prefixed (tests give each run its own topics).
    pub fn with_prefix(&self, prefix: &str) -> TopicSettings {
        let mut topics = TopicSettings {
            prefix: prefix.to_string(),
            ..self.clone()
        };
        topics.apply_prefix();
        topics
    }
}

/// The prefix of environment variables that override settings.
pub const ENV_PREFIX: &str = "ORDERFLOW_";

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Whether `listen` is `ip:port` or `host:port` with a port number (checked offline; binding it
/// is [`Settings::check_ops_listen_free`]).
fn is_listen_address(listen: &str) -> bool {
    if listen.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    listen.rsplit_once(':').is_some_and(|(host, port)| {
        port.parse::<u16>().is_ok()
            && !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
    })
}

/// `ORDERFLOW_` variables that are not settings: the config file's path, the log format, the
/// scripts' jar cache and the crash-test failpoint (and `ORDERFLOW_TEST_*`, the test harness's).
pub const RESERVED_ENV: [&str; 4] = ["CONFIG", "LOG_FORMAT", "CACHE", "FAILPOINT"];

impl Settings {
    /// Loads settings: defaults, then `file` if given, then `ORDERFLOW_…` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut table = match file {
            None => toml::Table::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path.display().to_string(),
                        message: match e.span() {
                            Some(span) => {
                                let (line, column) = line_and_column(&text, span.start);
                                format!("line {line}, column {column}: {}", e.message())
                            }
                            None => e.message().to_string(),
                        },
                    })?
            }
        };
        let label = file.map_or("<defaults>".to_string(), |p| p.display().to_string());
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if RESERVED_ENV.contains(&rest) || rest.starts_with("TEST_") {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            set_path(&mut table, &path, parse_env_value(&value)).map_err(|message| {
                ConfigError::Parse {
                    path: format!("environment variable {name}"),
                    message,
                }
            })?;
        }
        let mut settings: Settings = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::Parse {
                path: format!("{label} + ORDERFLOW_* environment"),
                message: format!("{}: {}", e.path(), e.inner().message()),
            })?;
        settings.topics.apply_prefix();
        settings.validate()?;
        Ok(settings)
    }

    /// Checks that `ops.listen` can be bound now (it is free and this process may use it), by
    /// binding it and letting it go.
    pub fn check_ops_listen_free(&self) -> Result<(), ConfigError> {
        std::net::TcpListener::bind(&self.ops.listen)
            .map(drop)
            .map_err(|e| ConfigError::Invalid {
                key: "ops.listen".into(),
                message: format!(
                    "cannot listen on {}: {e} (another process uses the port? set ops.listen / ORDERFLOW_OPS__LISTEN to a free address)",
                    self.ops.listen
                ),
            })
    }

    /// Checks ranges and relations serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(invalid(
                "kafka.bootstrap_servers",
                "is empty: set it to host:port of at least one broker".into(),
            ));
        }
        let ratio = self.traces.root_sample_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(invalid(
                "traces.root_sample_ratio",
                format!("{ratio} is not between 0 and 1 (0.01 samples one request in a hundred)"),
            ));
        }
        if !(1..=1_000_000).contains(&self.traces.queue_spans) {
            return Err(invalid(
                "traces.queue_spans",
                format!("{} is not between 1 and 1000000", self.traces.queue_spans),
            ));
        }
        if !(1..=10_000).contains(&self.topics.partitions) {
            return Err(invalid(
                "topics.partitions",
                format!("{} is not between 1 and 10000", self.topics.partitions),
            ));
        }
        if !(1..=32).contains(&self.topics.replication_factor) {
            return Err(invalid(
                "topics.replication_factor",
                format!("{} is not between 1 and 32", self.topics.replication_factor),
            ));
        }
        if !(0..=self.topics.replication_factor).contains(&self.topics.min_insync_replicas) {
            return Err(invalid(
                "topics.min_insync_replicas",
                format!(
                    "{} is not between 0 (derived) and the replication factor {}: a write can never have more replicas in sync than there are replicas",
                    self.topics.min_insync_replicas, self.topics.replication_factor
                ),
            ));
        }
        if self.instance_id.is_empty()
            || !self
                .instance_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                "instance_id",
                format!(
                    "{:?} must be non-empty letters, digits, '-', '_' or '.' (it becomes part of the transactional.id)",
                    self.instance_id
                ),
            ));
        }
        let p = &self.processor;
        if p.batch_max_records == 0 || p.batch_max_records > 100_000 {
            return Err(invalid(
                "processor.batch_max_records",
                format!("{} is not between 1 and 100000", p.batch_max_records),
            ));
        }
        if p.batch_max_wait_ms > p.transaction_timeout_ms / 2 {
            return Err(invalid(
                "processor.batch_max_wait_ms",
                format!(
                    "{} ms must be at most half of processor.transaction_timeout_ms ({} ms)",
                    p.batch_max_wait_ms, p.transaction_timeout_ms
                ),
            ));
        }
        if !(1000..=900_000).contains(&p.transaction_timeout_ms) {
            return Err(invalid(
                "processor.transaction_timeout_ms",
                format!(
                    "{} is not between 1000 and 900000 (the broker's transaction.max.timeout.ms)",
                    p.transaction_timeout_ms
                ),
            ));
        }
        if p.parking_max_per_order > 64 {
            return Err(invalid(
                "processor.parking_max_per_order",
                format!(
                    "{} is above 64: parked requests live in the order's state record",
                    p.parking_max_per_order
                ),
            ));
        }
        if p.dead_letter_max_bytes < 1024 {
            return Err(invalid(
                "processor.dead_letter_max_bytes",
                format!(
                    "{} is below 1024: dead letters would lose their payload",
                    p.dead_letter_max_bytes
                ),
            ));
        }
        if p.restore_threads > 64 {
            return Err(invalid(
                "processor.restore_threads",
                format!(
                    "{} is above 64 (0 picks the CPUs, at most 4)",
                    p.restore_threads
                ),
            ));
        }
        if !(1000..=600_000).contains(&p.shutdown_deadline_ms) {
            return Err(invalid(
                "processor.shutdown_deadline_ms",
                format!("{} is not between 1000 and 600000", p.shutdown_deadline_ms),
            ));
        }
        if !(1..=1_048_576).contains(&self.state.memory_budget_mb) {
            return Err(invalid(
                "state.memory_budget_mb",
                format!(
                    "{} is not between 1 and 1048576",
                    self.state.memory_budget_mb
                ),
            ));
        }
        if self.state.backend == StateBackend::Disk && self.state.dir.as_os_str().is_empty() {
            return Err(invalid(
                "state.dir",
                "is empty: name the directory of the local store (e.g. /var/lib/orderflow)".into(),
            ));
        }
        if !is_listen_address(&self.ops.listen) {
            return Err(invalid(
                "ops.listen",
                format!(
                    "{:?} is not an address to listen on: write host:port, e.g. 0.0.0.0:9400 or 127.0.0.1:0 (any free port)",
                    self.ops.listen
                ),
            ));
        }
        if self.ops.liveness_timeout_ms < 1000 {
            return Err(invalid(
                "ops.liveness_timeout_ms",
                format!(
                    "{} is below 1000: an idle loop beats every 100 ms, a busy one once per batch",
                    self.ops.liveness_timeout_ms
                ),
            ));
        }
        if let Some(template) = &self.ops.peer_url_template {
            if !template.contains("{instance}") {
                return Err(invalid(
                    "ops.peer_url_template",
                    format!("{template:?} lacks {{instance}}, the placeholder for the owner's instance id"),
                ));
            }
        }
        let names: Vec<&str> = self.topics.all().iter().map(|(_, n)| *n).collect();
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() || names[..i].contains(name) {
                return Err(invalid(
                    "topics",
                    format!("topic name {name:?} is empty or used twice: every role needs its own topic"),
                ));
            }
        }
        Ok(())
    }

    /// The settings as TOML with secrets masked, for `orderflow config show`.
    pub fn to_display_toml(&self) -> String {
        let mut shown = self.clone();
        for (key, value) in shown.kafka.extra.iter_mut() {
            if is_secret_key(key) {
                *value = "***".into();
            }
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// True for librdkafka keys whose values are secrets.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("secret") || key.ends_with(".key.pem")
}

/// Environment values are TOML scalars when they parse as one (numbers, booleans), else strings.
fn parse_env_value(value: &str) -> toml::Value {
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"));
    match parsed {
        Some(v @ (toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Float(_))) => v,
        _ => toml::Value::String(value.to_string()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty setting name".into()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => set_path(inner, rest, value),
                _ => Err(format!("{first} is not a section")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_file_and_no_environment_gives_the_local_defaults() {
        let s = Settings::load(None, env(&[])).unwrap();
        assert_eq!(s.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(s.topics.partitions, 12);
    }

    #[test]
    fn min_insync_replicas_defaults_to_one_less_than_the_replicas_and_is_bounded_by_them() {
        let s =
            Settings::load(None, env(&[("ORDERFLOW_TOPICS__REPLICATION_FACTOR", "3")])).unwrap();
        assert_eq!(s.topics.effective_min_insync_replicas(), 2);
        let s = Settings::load(None, env(&[])).unwrap();
        assert_eq!(s.topics.effective_min_insync_replicas(), 1);
        let s = Settings::load(
            None,
            env(&[
                ("ORDERFLOW_TOPICS__REPLICATION_FACTOR", "5"),
                ("ORDERFLOW_TOPICS__MIN_INSYNC_REPLICAS", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(s.topics.effective_min_insync_replicas(), 3);
        let err = Settings::load(
            None,
            env(&[
                ("ORDERFLOW_TOPICS__REPLICATION_FACTOR", "3"),
                ("ORDERFLOW_TOPICS__MIN_INSYNC_REPLICAS", "4"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("topics.min_insync_replicas"), "{err}");
    }

    #[test]
    fn a_topic_prefix_moves_all_five_topics_once() {
        let s = Settings::load(None, env(&[("ORDERFLOW_TOPICS__PREFIX", "run7-")])).unwrap();
        assert_eq!(s.topics.requests, "run7-order-transition-requests");
        assert_eq!(s.topics.state, "run7-order-state");
        assert_eq!(s.topics.accepted, "run7-order-transitions");
        assert_eq!(s.topics.rejected, "run7-order-transition-rejections");
        assert_eq!(s.topics.dead_letters, "run7-order-transition-requests-dlq");
        // Shown and loaded again: the same topics, not prefixed twice.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shown.toml");
        std::fs::write(&path, s.to_display_toml()).unwrap();
        let again = Settings::load(Some(&path), env(&[])).unwrap();
        assert_eq!(again.topics.requests, s.topics.requests);
        // An explicit name gets the prefix too.
        let s = Settings::load(
            None,
            env(&[
                ("ORDERFLOW_TOPICS__PREFIX", "p-"),
                ("ORDERFLOW_TOPICS__STATE", "states"),
            ]),
        )
        .unwrap();
        assert_eq!(s.topics.state, "p-states");
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[kafka]\nbootstrap_servers = \"a:1\"\n[topics]\npartitions = 3\n",
        )
        .unwrap();
        let s = Settings::load(
            Some(&path),
            env(&[
                ("ORDERFLOW_KAFKA__BOOTSTRAP_SERVERS", "b:2"),
                ("ORDERFLOW_KAFKA__EXTRA__CLIENT.RACK", "eu-1a"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(s.kafka.bootstrap_servers, "b:2");
        assert_eq!(s.topics.partitions, 3);
        assert_eq!(
            s.kafka.extra.get("client.rack").map(String::as_str),
            Some("eu-1a")
        );
    }

    #[test]
    fn an_unknown_key_in_the_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[kafka]\nbootstrap_server = \"a:1\"\n").unwrap();
        let err = Settings::load(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bootstrap_server"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_toml_is_an_error_naming_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[kafka]\nbootstrap_servers = \"a:1\"\ngroup_id = = 3\n",
        )
        .unwrap();
        let err = Settings::load(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3, column 12"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn lines_and_columns_count_from_one_in_characters() {
        assert_eq!(line_and_column("abc", 0), (1, 1));
        assert_eq!(line_and_column("a\nbc", 3), (2, 2));
        assert_eq!(line_and_column("é\nxé y", 6), (2, 3));
        assert_eq!(line_and_column("ab", 99), (1, 3));
    }

    #[test]
    fn ops_listen_must_be_an_address() {
        for good in [
            "0.0.0.0:9400",
            "127.0.0.1:0",
            "[::1]:9400",
            "localhost:9400",
        ] {
            let s = Settings::load(None, env(&[("ORDERFLOW_OPS__LISTEN", good)]));
            assert!(s.is_ok(), "{good}: {s:?}");
        }
        for bad in ["9400", "localhost", "0.0.0.0:99999", ":9400", "http://x:1"] {
            let err = Settings::load(None, env(&[("ORDERFLOW_OPS__LISTEN", bad)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("ops.listen"), "{bad}: {err}");
        }
    }

    #[test]
    fn an_ops_address_in_use_is_a_settings_error_naming_ops_listen() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap().to_string();
        let s = Settings::load(None, env(&[("ORDERFLOW_OPS__LISTEN", &address)])).unwrap();
        let err = s.check_ops_listen_free().unwrap_err().to_string();
        assert!(err.contains("ops.listen"), "{err}");
        drop(taken);
        assert!(s.check_ops_listen_free().is_ok());
    }

    #[test]
    fn a_bad_environment_value_is_an_error_naming_the_setting() {
        let err = Settings::load(None, env(&[("ORDERFLOW_TOPICS__PARTITIONS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("partitions"), "{err}");
        let err = Settings::load(None, env(&[("ORDERFLOW_TOPICS__PARTITIONS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("topics.partitions"), "{err}");
    }

    #[test]
    fn a_missing_config_file_names_the_path() {
        let err = Settings::load(Some(Path::new("/nope/orderflow.toml")), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nope/orderflow.toml"), "{err}");
    }

    #[test]
    fn secrets_never_show() {
        let s = Settings::load(
            None,
            env(&[
                ("ORDERFLOW_KAFKA__SASL_PASSWORD", "hunter2"),
                ("ORDERFLOW_KAFKA__EXTRA__SSL.KEYSTORE.PASSWORD", "swordfish"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.kafka.sasl_password.as_ref().map(Secret::expose),
            Some("hunter2")
        );
        let shown = format!("{}\n{:?}", s.to_display_toml(), s.kafka.sasl_password);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("swordfish"), "{shown}");
    }

    #[test]
    fn one_topic_for_two_roles_is_refused() {
        let err = Settings::load(
            None,
            env(&[("ORDERFLOW_TOPICS__STATE", "order-transition-requests")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("used twice"), "{err}");
    }
}
