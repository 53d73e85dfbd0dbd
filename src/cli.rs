//! The command line: what each `orderflow` subcommand takes. `main.rs` dispatches on it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The exit codes of every subcommand (also in README.md).
pub const EXIT_CODES: &str = "\
Exit codes:
  0   success
  1   a runtime failure (Kafka unreachable or failing, the processor stopped on a fatal error) or a
      check that failed (`check` found a violation, `loadgen` missed an outcome, `machine diff`
      found the change unsafe, `rebuild-state --compare` found a difference, `dlq replay` was
      given records that are not dead letters)
  2   bad usage, settings or definition, named in the message; `run` exits with it before it
      connects to anything
  3   `send --wait`: rejected; `get`: no such order
  4   `send --wait`: dead-lettered
  5   `send --wait`: no outcome within --timeout-secs
  70  `run`: a transactional call hung past 3 x processor.transaction_timeout_ms (the restart
      fences it)";

/// orderflow: the order state machine of an online store, exactly once, on Apache Kafka.
///
/// Upstream services produce transition requests ("ship order 42") keyed by order id; orderflow
/// decides each against the order's state and a state machine defined as data, and emits an
/// accepted or rejected outcome, exactly once.
#[derive(Debug, Parser)]
#[command(
    name = "orderflow",
    version,
    propagate_version = true,
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Settings file (TOML); environment variables ORDERFLOW_SECTION__KEY override it.
    #[arg(long, global = true, env = "ORDERFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    /// Overrides kafka.bootstrap_servers.
    #[arg(long, global = true)]
    pub bootstrap_servers: Option<String>,
    /// Overrides instance_id (the stable id behind this instance's transactional.id).
    #[arg(long, global = true)]
    pub instance_id: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the processor: consume requests, decide, produce outcomes, exactly once, until SIGTERM.
    Run,
    /// Create or check the five topics (requests, state, accepted, rejected, dead letters).
    Topics {
        /// create or check.
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Check, draw or compare state-machine definitions (no Kafka needed).
    Machine {
        /// check, draw or diff.
        #[command(subcommand)]
        action: MachineAction,
    },
    /// Show or check the effective settings (no Kafka needed).
    Config {
        /// show or check.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Send a telling set of requests to a running processor and print each one's outcome.
    Demo(DemoArgs),
    /// Send one transition request, and with --wait print its outcome.
    ///
    /// Exit codes with --wait: 0 accepted, 3 rejected, 4 dead letter, 5 no outcome in time.
    /// Example: orderflow send --order 42 --transition ship --attr carrier=dhl --wait
    Send(SendArgs),
    /// Print an order's current state: from the state topic, or from a running instance (--via).
    ///
    /// Exit code 3 when the order is unknown.
    Get(GetArgs),
    /// Follow outcomes as they are committed (accepted, rejected, dead letters), like kcat -C.
    Tail(TailArgs),
    /// Drive a running orderflow with realistic order lifecycles and report what came back.
    ///
    /// Orders go create -> confirm -> ship -> out_for_delivery -> deliver (some skip
    /// out_for_delivery, some are cancelled, some returned), interleaved across --concurrency
    /// orders, with shares of invalid, duplicate, out-of-order and poison records. The report
    /// checks every request got exactly its planned outcome (exit 1 if not) and gives the latency
    /// from requested_at to the outcome being visible to a read_committed reader.
    /// Example: orderflow loadgen --orders 100000 --rate 5800 --seed 7
    Loadgen(LoadgenArgs),
    /// Plan a deployment: partitions, pods, broker bytes, storage and memory for an order volume.
    ///
    /// Uses the per-pod rate and memory per order measured by the last `make bench`
    /// (bench/last-run.json) unless given, and record sizes from the real codec (no Kafka needed).
    /// Example: orderflow capacity --orders-per-day 100M --peak-factor 10
    Capacity(CapacityArgs),
    /// Check the topics' whole history for exactly-once: every request one outcome, every poison
    /// record one dead letter, legal paths with versions 1, 2, 3…, state = fold of transitions.
    ///
    /// Reads with read_committed and knows only the definition and the request limits; run it
    /// when no requests are being produced. Exit 1 when anything is lost, duplicated, illegal or
    /// mismatched.
    Check(CheckArgs),
    /// Inspect dead letters and re-publish chosen ones to the requests topic after a fix.
    Dlq {
        /// list or replay.
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Run a query-only read replica: materialize the whole state topic (every partition,
    /// read_committed, kept up to date) and answer GET /orders/{id} for any order and GET /states
    /// (orders per state) on ops.listen. Joins no group and writes nothing: scale it independently.
    Serve,
    /// Rebuild the compacted state topic from the accepted-transitions log alone, into a NEW topic
    /// (same partitions, compacted), then switch the processors to it by setting topics.state.
    ///
    /// Stop the processors first: the log must not grow while it is read. The rebuilt state has
    /// every order's state, version, timestamps and last accepted request ids; it lacks what the
    /// log does not hold (remembered rejections, parked requests — `--compare` counts them).
    /// Example: orderflow rebuild-state --into order-state-rebuilt --compare
    RebuildState(RebuildArgs),
}

/// `orderflow check`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `orderflow rebuild-state`
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The new topic to write (must not exist).
    #[arg(long)]
    pub into: String,
    /// Read the live state topic and the new one back and compare them order by order
    /// (exit 1 when they differ).
    #[arg(long)]
    pub compare: bool,
    /// Rebuild although processors are running (for a comparison only: do not switch to it).
    #[arg(long)]
    pub allow_running: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `orderflow send`
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The order id (also the record key).
    #[arg(long)]
    pub order: String,
    /// The transition to ask for (a name from the definition, e.g. ship).
    #[arg(long)]
    pub transition: String,
    /// Apply only if the order is at exactly this version (optimistic concurrency).
    #[arg(long)]
    pub expect_version: Option<u64>,
    /// An attribute carried to the outcome, as key=value; repeat for more.
    #[arg(long = "attr", value_parser = parse_attribute)]
    pub attributes: Vec<(String, String)>,
    /// The sending service, recorded in the outcome.
    #[arg(long, default_value = "cli")]
    pub source: String,
    /// The request id (a UUID); reuse one to retry idempotently. Default: a new one.
    #[arg(long)]
    pub request_id: Option<uuid::Uuid>,
    /// Wait for the outcome and print it.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Parses `key=value`.
pub fn parse_attribute(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not key=value")),
    }
}

/// `orderflow loadgen`
#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// Orders to walk through their lifecycle (about 5 requests each).
    #[arg(long, default_value_t = 10_000)]
    pub orders: u64,
    /// Requests per second; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Seed: the same seed sends the same sequence of requests.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Order ids are PREFIX-N. Default: `lg-<random>`, so runs do not collide.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Orders in flight at once.
    #[arg(long, default_value_t = 1_000)]
    pub concurrency: usize,
    /// Share of requests that must be rejected (unknown transition, wrong expected version).
    #[arg(long, default_value_t = 0.02)]
    pub invalid_share: f64,
    /// Share of redelivered requests (same request id).
    #[arg(long, default_value_t = 0.02)]
    pub duplicate_share: f64,
    /// Share of steps sent before the step they depend on (they park, then apply).
    #[arg(long, default_value_t = 0.02)]
    pub out_of_order_share: f64,
    /// Share of poison records (not Avro, unknown schema, no key, too many attributes).
    #[arg(long, default_value_t = 0.002)]
    pub poison_share: f64,
    /// Share of orders cancelled before shipping.
    #[arg(long, default_value_t = 0.10)]
    pub cancel_share: f64,
    /// Share of orders returned after delivery.
    #[arg(long, default_value_t = 0.05)]
    pub return_share: f64,
    /// How long to wait for the last outcomes after sending, in seconds.
    #[arg(long, default_value_t = 120)]
    pub wait_secs: u64,
    /// Leave the requests of the first N seconds out of the latency percentiles (their outcomes
    /// are still checked): a freshly started processor's first transactions are slower.
    #[arg(long, default_value_t = 0)]
    pub warmup_secs: u64,
    /// Every request carries a W3C `traceparent` of its own trace, sampled with this
    /// probability (0 to 1; unsampled otherwise), as upstream services with parent-based
    /// sampling send them. Default: no trace context.
    #[arg(long)]
    pub traced_share: Option<f64>,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
    /// No live progress line.
    #[arg(long)]
    pub no_progress: bool,
}

/// `orderflow capacity`
#[derive(Debug, Args)]
pub struct CapacityArgs {
    /// Orders created per day (suffixes k, M, B: 100M).
    #[arg(long, value_parser = crate::tools::capacity::parse_count)]
    pub orders_per_day: f64,
    /// Transition requests per order over its life.
    #[arg(long, default_value_t = 5.0)]
    pub transitions_per_order: f64,
    /// Peak rate over the daily average.
    #[arg(long, default_value_t = 10.0)]
    pub peak_factor: f64,
    /// Requests per second one pod decides. Default: the last `make bench` (--last-run).
    #[arg(long)]
    pub per_pod_rate: Option<f64>,
    /// The measurements of the last `make bench`. Default: bench/last-run.json in the current
    /// directory, else in the orderflow clone this binary was built from.
    #[arg(long)]
    pub last_run: Option<PathBuf>,
    /// Days an order stays cached (in flight + retention of its final state).
    #[arg(long, default_value_t = 35.0)]
    pub cached_days: f64,
    /// Retention of the requests topic, in days.
    #[arg(long, default_value_t = 7.0)]
    pub input_retention_days: f64,
    /// Retention of the accepted-transitions log, in days.
    #[arg(long, default_value_t = 30.0)]
    pub event_log_retention_days: f64,
    /// Replicas per partition.
    #[arg(long, default_value_t = 3.0)]
    pub replication_factor: f64,
    /// Memory a pod may give its caches, in GB (its limit less headroom).
    #[arg(long, default_value_t = 12.0)]
    pub pod_cache_gb: f64,
    /// Largest cache per partition, in GB: bounds each restore and rebalance (memory backend).
    #[arg(long, default_value_t = 2.0)]
    pub partition_cache_gb: f64,
    /// The state backend planned for: `disk` or `memory`. Default: `state.backend`.
    #[arg(long, value_parser = crate::tools::capacity::parse_backend)]
    pub backend: Option<crate::config::StateBackend>,
    /// The disk backend's memory budget per pod, in MiB as the setting. Default: `state.memory_budget_mb`.
    #[arg(long)]
    pub memory_budget_mb: Option<f64>,
    /// Memory a pod uses outside its budget (code, Kafka clients' queues, allocator), in MiB:
    /// 313 measured by `make bench-aged` (anonymous memory at a 16 MB budget less its parts).
    #[arg(long, default_value_t = 313.0)]
    pub pod_overhead_mb: f64,
    /// Largest local volume per pod, in GB (disk backend).
    #[arg(long, default_value_t = 500.0)]
    pub pod_disk_gb: f64,
    /// Bytes an order takes in the local store. Default: its state record's size (real codec).
    #[arg(long)]
    pub disk_bytes_per_order: Option<f64>,
    /// Disk the store may use over its live data (LSM compaction, old segments).
    #[arg(long, default_value_t = 2.0)]
    pub space_amplification: f64,
    /// Longest full restore of one partition from the state topic, in minutes (disk backend: the
    /// cost of a lost volume; bounds the orders per partition).
    #[arg(long, default_value_t = 10.0)]
    pub max_full_restore_minutes: f64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `orderflow get`
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The order id.
    pub order: String,
    /// Ask a running instance's ops server instead of reading the state topic, e.g.
    /// http://127.0.0.1:9400 (follows a 421 answer to the owning instance when it names one).
    #[arg(long)]
    pub via: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `orderflow tail`
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Start at the beginning of the output topics instead of their end.
    #[arg(long)]
    pub from_beginning: bool,
    /// Only outcomes of this order.
    #[arg(long)]
    pub order: Option<String>,
    /// Which outputs to follow; repeat or comma-separate. Default: all three.
    #[arg(long = "only", value_enum, value_delimiter = ',')]
    pub only: Vec<OutputKind>,
    /// Stop after this many outcomes.
    #[arg(long)]
    pub max: Option<u64>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The three output topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputKind {
    /// Accepted transitions.
    Accepted,
    /// Rejected requests.
    Rejected,
    /// Dead letters.
    Dlq,
}

/// `orderflow dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Print every dead letter with where it came from and why it is there.
    List {
        /// Only dead letters of this error kind (e.g. not_avro).
        #[arg(long)]
        kind: Option<String>,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-publish dead letters' original key and value to the requests topic (after the producer
    /// or the definition was fixed). Truncated dead letters are refused: their bytes are incomplete.
    Replay {
        /// A dead letter's position in the dead-letter topic, as PARTITION:OFFSET (see `dlq list`);
        /// repeat for more.
        #[arg(long = "record", value_parser = parse_position)]
        records: Vec<(i32, i64)>,
        /// Every dead letter of this error kind.
        #[arg(long)]
        kind: Option<String>,
        /// Show what would be re-published, send nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Parses `PARTITION:OFFSET`.
pub fn parse_position(text: &str) -> Result<(i32, i64), String> {
    let parsed = text
        .split_once(':')
        .and_then(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)));
    parsed.ok_or_else(|| format!("{text:?} is not PARTITION:OFFSET (e.g. 3:1042)"))
}

/// `orderflow topics ...`
#[derive(Debug, Subcommand)]
pub enum TopicsAction {
    /// Create missing topics and verify existing ones (idempotent): same partition count for all
    /// five, state topic compacted.
    Create {
        /// Overrides topics.partitions.
        #[arg(long)]
        partitions: Option<i32>,
        /// Overrides topics.replication_factor.
        #[arg(long)]
        replication_factor: Option<i32>,
        /// Overrides topics.min_insync_replicas (0: one less than the replication factor, at least 1).
        #[arg(long)]
        min_insync_replicas: Option<i32>,
    },
    /// Verify that all five topics exist, are co-partitioned and the state topic is compacted.
    Check,
}

/// `orderflow machine ...`
#[derive(Debug, Subcommand)]
pub enum MachineAction {
    /// Validate a definition: prints OK, or every problem with its fix (exit code 1).
    Check {
        /// The definition file (TOML).
        file: PathBuf,
    },
    /// Print a definition as a diagram.
    Draw {
        /// The definition file (TOML).
        file: PathBuf,
        /// mermaid (for Markdown) or dot (Graphviz).
        #[arg(long, value_enum, default_value_t = DrawFormat::Mermaid)]
        format: DrawFormat,
    },
    /// Say whether NEW can be rolled out over live orders of OLD, and why (exit code 1 if not).
    Diff {
        /// The definition running now.
        old: PathBuf,
        /// The definition to roll out.
        new: PathBuf,
    },
}

/// Diagram formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DrawFormat {
    /// Mermaid stateDiagram-v2.
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

/// `orderflow config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the effective settings (file + environment + flags) with secrets masked.
    Show,
    /// Validate the settings and the definition they point to, without connecting.
    Check,
}

/// `orderflow demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many orders to walk through their lifecycle.
    #[arg(long, default_value_t = 2)]
    pub orders: u32,
    /// How long to wait for all outcomes, in seconds.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
}
