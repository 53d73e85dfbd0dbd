//! `orderflow capacity`: how many partitions, pods, brokers' bytes and memory a given order volume
//! needs, from the per-pod rate `make bench` measured and record sizes encoded by the real codec.
//! Pure arithmetic apart from reading `bench/last-run.json`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use uuid::Uuid;

use crate::codec::{
    encode_accepted, encode_order_state, encode_request, AcceptedRecord, InputPosition,
};
use crate::config::StateBackend;
use crate::machine::{Definition, OrderState, RecentRequest, RecordedOutcome, TransitionRequest};

/// A capacity plan with what it was computed from.
#[derive(Debug, Clone)]
pub struct CapacityReport {
    /// The demand.
    pub demand: Demand,
    /// Record sizes from the real codec.
    pub sizes: RecordSizes,
    /// The plan.
    pub plan: Plan,
    /// Where the per-pod rate came from.
    pub rate_source: String,
}

impl super::Report for CapacityReport {
    fn describe(&self) -> String {
        describe(&self.demand, self.sizes, &self.plan, &self.rate_source)
    }

    fn to_json(&self) -> Value {
        to_json(&self.demand, self.sizes, &self.plan)
    }
}

/// Where `capacity` looks for the last `make bench`'s measurements when not told: the current
/// directory's `bench/last-run.json`, then the one in the clone this binary was built from.
pub fn default_last_run_files() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("bench/last-run.json")];
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/last-run.json");
    if !files.contains(&built_from) {
        files.push(built_from);
    }
    files
}

/// The disk backend's median rate under realistic access: from `aged` in the last run's
/// record, or from `make bench-aged`'s own `last-aged.json` beside it.
fn aged_disk_rate(last_run: &Path, record: &Value) -> Option<f64> {
    record
        .pointer("/aged/passes/disk")
        .and_then(median_rate)
        .or_else(|| {
            let aged = std::fs::read_to_string(last_run.with_file_name("last-aged.json")).ok()?;
            median_rate(
                serde_json::from_str::<Value>(&aged)
                    .ok()?
                    .pointer("/passes/disk")?,
            )
        })
}

/// The median `rate` of a list of benchmark passes.
fn median_rate(passes: &Value) -> Option<f64> {
    let mut rates: Vec<f64> = passes
        .as_array()?
        .iter()
        .filter_map(|pass| pass.get("rate")?.as_f64())
        .collect();
    if rates.is_empty() {
        return None;
    }
    rates.sort_by(f64::total_cmp);
    Some(rates[rates.len() / 2])
}

/// Reads the first of `files` that exists; a file that exists but is not JSON is an error.
fn read_last_run(files: &[PathBuf]) -> anyhow::Result<Option<(PathBuf, Value)>> {
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let value = serde_json::from_str(&text).map_err(|e| {
            super::Usage(format!(
                "{} is not the JSON `make bench` writes ({e}): run `make bench` again or pass --per-pod-rate",
                file.display()
            ))
        })?;
        return Ok(Some((file.clone(), value)));
    }
    Ok(None)
}

/// `orderflow capacity`: the plan for `args`, with the rates and sizes the last `make bench`
/// measured (from `--last-run` or [`default_last_run_files`]) unless given.
pub async fn run(
    settings: &crate::config::Settings,
    args: &crate::cli::CapacityArgs,
) -> anyhow::Result<CapacityReport> {
    let definition = super::definition(settings)?;
    let files = match &args.last_run {
        Some(file) => vec![file.clone()],
        None => default_last_run_files(),
    };
    let last_run = read_last_run(&files)?;
    let measured = |key: &str| {
        last_run
            .as_ref()
            .and_then(|(_, r)| r.pointer(key)?.as_f64())
    };
    let backend = args.backend.unwrap_or(settings.state.backend);
    // The disk backend's rate under realistic access (orders aged over 35 days, most reads
    // missing memory), which `make bench` records beside its preloaded-input rate: the
    // preloaded input's orders are all new and hot, which flatters the disk backend.
    // `make bench-aged` alone writes it to bench/last-aged.json beside it.
    let realistic_rate = last_run
        .as_ref()
        .filter(|_| backend == StateBackend::Disk)
        .and_then(|(file, record)| aged_disk_rate(file, record))
        .map(|rate| {
            let source =
                "the disk backend under realistic access, measured by the last `make bench`";
            (rate, source.to_string())
        });
    let preloaded_rate = || {
        measured("/per_pod_rate").map(|rate| {
            let file = last_run
                .as_ref()
                .map_or(String::new(), |(f, _)| f.display().to_string());
            (rate, format!("measured by the last `make bench`, {file}"))
        })
    };
    let (per_pod_rate, rate_source) = match (
        args.per_pod_rate,
        realistic_rate.or_else(preloaded_rate),
    ) {
        (Some(rate), _) => (rate, "given".to_string()),
        (None, Some(measured)) => measured,
        (None, None) => {
            let looked: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            return Err(super::Usage(format!(
                "no per-pod rate: none of {} holds one; run `make bench` first (it writes bench/last-run.json), pass --last-run FILE, or pass --per-pod-rate",
                looked.join(", ")
            ))
            .into());
        }
    };
    let sizes = record_sizes(&definition)
        .ok_or_else(|| super::Usage("the definition has no transitions".into()))?;
    let demand = Demand {
        backend,
        memory_budget_bytes: args
            .memory_budget_mb
            .unwrap_or(settings.state.memory_budget_mb as f64)
            * MIB,
        pod_overhead_bytes: args.pod_overhead_mb * MIB,
        pod_disk_bytes: args.pod_disk_gb * 1e9,
        // The store keeps each order's state record under its id, compressed: the record's size
        // is an upper bound for a typical order.
        disk_bytes_per_order: args.disk_bytes_per_order.unwrap_or(sizes.state),
        space_amplification: args.space_amplification,
        max_full_restore_seconds: args.max_full_restore_minutes * 60.0,
        orders_per_day: args.orders_per_day,
        transitions_per_order: args.transitions_per_order,
        peak_factor: args.peak_factor,
        per_pod_rate,
        cached_days: args.cached_days,
        input_retention_days: args.input_retention_days,
        event_log_retention_days: args.event_log_retention_days,
        replication_factor: args.replication_factor,
        // Most cached orders are delivered orders waiting out their return window: their packed
        // size (five remembered requests) and a deadline entry each.
        bytes_per_cached_order: measured("/restore/delivered_packed_mb_per_million_orders")
            .or_else(|| measured("/restore/resident_mb_per_million_orders"))
            .map_or(400.0, |cache| {
                cache + measured("/restore/deadline_index_mb_per_million_orders").unwrap_or(0.0)
            }),
        pod_cache_bytes: args.pod_cache_gb * 1e9,
        partition_cache_bytes: args.partition_cache_gb * 1e9,
        restore_rate: measured("/restore/orders_per_second").unwrap_or(250_000.0),
    };
    let plan = plan(&demand, sizes);
    Ok(CapacityReport {
        demand,
        sizes,
        plan,
        rate_source,
    })
}

/// Parses `--backend`.
pub fn parse_backend(text: &str) -> Result<StateBackend, String> {
    match text {
        "disk" => Ok(StateBackend::Disk),
        "memory" => Ok(StateBackend::Memory),
        other => Err(format!("{other:?} is not a backend: disk or memory")),
    }
}

/// What the plan is for.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    /// Where the processors keep their orders.
    pub backend: StateBackend,
    /// Disk backend: the memory budget of a pod (hot orders, engine caches, write buffers).
    pub memory_budget_bytes: f64,
    /// Memory a pod uses outside its budget or its caches.
    pub pod_overhead_bytes: f64,
    /// Disk backend: the largest local volume of a pod.
    pub pod_disk_bytes: f64,
    /// Disk backend: bytes an order takes in the local store.
    pub disk_bytes_per_order: f64,
    /// Disk backend: disk used over the live data.
    pub space_amplification: f64,
    /// Disk backend: the longest full restore of one partition (after a lost volume).
    pub max_full_restore_seconds: f64,
    /// Orders created per day.
    pub orders_per_day: f64,
    /// Transition requests per order over its life.
    pub transitions_per_order: f64,
    /// Peak rate over the daily average.
    pub peak_factor: f64,
    /// Requests per second one pod decides (measured by `make bench`).
    pub per_pod_rate: f64,
    /// Days an order stays cached: in flight plus its final state's retention.
    pub cached_days: f64,
    /// Retention of the requests, rejections and dead-letter topics, in days.
    pub input_retention_days: f64,
    /// Retention of the accepted-transitions log (the event log), in days.
    pub event_log_retention_days: f64,
    /// Replicas per partition.
    pub replication_factor: f64,
    /// Resident bytes per cached order: a delivered order's packed block and its deadline entry
    /// (measured by `make bench`).
    pub bytes_per_cached_order: f64,
    /// Memory one pod may use for its caches (a pod's limit, less headroom).
    pub pod_cache_bytes: f64,
    /// Largest cache one partition may hold: it bounds a restore's time and a pod's smallest unit.
    pub partition_cache_bytes: f64,
    /// Orders per second one restore reads (measured by `make bench`).
    pub restore_rate: f64,
}

/// Encoded sizes of the records one request causes, from the real codec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordSizes {
    /// A transition request (value + key).
    pub request: f64,
    /// An order's state record (value + key), with a typical number of remembered requests.
    pub state: f64,
    /// An accepted-transition record (value + key).
    pub outcome: f64,
}

/// Encodes typical records of `definition` and measures them. Kafka's per-record overhead in a
/// batch (~20 bytes) is added to each. `None` for a definition without transitions.
pub fn record_sizes(definition: &Definition) -> Option<RecordSizes> {
    const OVERHEAD: f64 = 20.0;
    let order_id = "order-0123456789";
    let request = TransitionRequest {
        request_id: Uuid::from_u64_pair(1, 2),
        order_id: order_id.into(),
        transition: "ship".into(),
        expected_version: None,
        requested_at_ms: 1_764_000_000_000,
        source: "warehouse".into(),
        attributes: [("carrier".to_string(), "dhl".to_string())].into(),
    };
    let mut bytes = Vec::new();
    encode_request(&request, &mut bytes);
    let request_size = bytes.len() as f64;
    let state_id = definition.transitions().first()?.to;
    let recent = RecentRequest {
        request_id: request.request_id,
        outcome: RecordedOutcome::Accepted,
        from: state_id,
        to: state_id,
        version: 3,
    };
    let state = OrderState {
        state: state_id,
        version: 3,
        created_at_ms: 1_764_000_000_000,
        updated_at_ms: 1_764_000_000_000,
        recent: vec![recent; 3],
        parked: Vec::new(),
    };
    bytes.clear();
    encode_order_state(definition, order_id, &state, &mut bytes);
    let state_size = bytes.len() as f64;
    let accepted = AcceptedRecord {
        request_id: request.request_id,
        order_id: order_id.into(),
        transition: "ship".into(),
        from_state: Some("Confirmed".into()),
        to_state: "Shipped".into(),
        version: 3,
        duplicate: false,
        requested_at_ms: 1_764_000_000_000,
        decided_at_ms: 1_764_000_000_005,
        source: "warehouse".into(),
        attributes: request.attributes.clone(),
        input: InputPosition {
            topic: "order-transition-requests".into(),
            partition: 7,
            offset: 123_456_789,
        },
        definition_hash: definition.short_hash().to_string(),
    };
    bytes.clear();
    encode_accepted(&accepted, &mut bytes);
    let key = order_id.len() as f64;
    Some(RecordSizes {
        request: request_size + key + OVERHEAD,
        state: state_size + key + OVERHEAD,
        outcome: bytes.len() as f64 + key + OVERHEAD,
    })
}

/// The computed plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Average requests per second.
    pub average_rate: f64,
    /// Peak requests per second.
    pub peak_rate: f64,
    /// Pods needed at peak: at most 2/3 of the measured rate each, and room for the caches.
    pub pods_at_peak: u64,
    /// Pods the request rate alone needs at peak.
    pub pods_for_rate: u64,
    /// Pods the caches alone need (memory backend; 1 on the disk backend, whose memory is a
    /// budget).
    pub pods_for_memory: u64,
    /// Pods the local stores alone need (disk backend; 1 on the memory backend).
    pub pods_for_disk: u64,
    /// Memory one pod needs: its caches or its budget, and the overhead.
    pub memory_per_pod: f64,
    /// Disk backend: the local stores' bytes over all pods, with space amplification.
    pub disk_bytes: f64,
    /// Disk backend: one pod's volume at peak's pod count.
    pub disk_bytes_per_pod: f64,
    /// Pods needed at the average rate.
    pub pods_at_average: u64,
    /// Partitions: room for twice the peak's pods, a multiple of 12.
    pub partitions: u64,
    /// Bytes per second written by producers at peak (requests + state + outcomes).
    pub write_bytes_per_second_peak: f64,
    /// Bytes per second the brokers receive at peak including replication.
    pub broker_ingress_bytes_per_second_peak: f64,
    /// Bytes stored per day of retention, per topic (before replication).
    pub bytes_per_day: BTreeMap<&'static str, f64>,
    /// Bytes kept on the brokers, per topic, with retention and replication.
    pub stored_bytes: BTreeMap<&'static str, f64>,
    /// Orders held in the processors' caches.
    pub cached_orders: f64,
    /// Their resident memory across all pods.
    pub cache_bytes: f64,
    /// Per partition: cached orders (what one restore reads).
    pub orders_per_partition: f64,
    /// Seconds one partition's restore takes at the measured restore rate.
    pub restore_seconds_per_partition: f64,
}

fn ceil(x: f64) -> u64 {
    x.ceil().max(1.0) as u64
}

/// Computes the plan for `demand` with `sizes`.
pub fn plan(demand: &Demand, sizes: RecordSizes) -> Plan {
    let requests_per_day = demand.orders_per_day * demand.transitions_per_order;
    let average_rate = requests_per_day / 86_400.0;
    let peak_rate = average_rate * demand.peak_factor;
    let usable = demand.per_pod_rate * 2.0 / 3.0;
    let cached_orders = demand.orders_per_day * demand.cached_days;
    let cache_bytes = cached_orders * demand.bytes_per_cached_order;
    let pods_for_rate = ceil(peak_rate / usable);
    let (pods_for_memory, pods_for_disk, disk_bytes, for_partitions) = match demand.backend {
        StateBackend::Memory => (
            ceil(cache_bytes / demand.pod_cache_bytes),
            1,
            0.0,
            ceil(cache_bytes / demand.partition_cache_bytes),
        ),
        StateBackend::Disk => {
            let disk = cached_orders * demand.disk_bytes_per_order * demand.space_amplification;
            (
                1,
                ceil(disk / demand.pod_disk_bytes),
                disk,
                // Restarts read only the tail; a lost volume restores whole partitions.
                ceil(cached_orders / (demand.restore_rate * demand.max_full_restore_seconds)),
            )
        }
    };
    let pods_at_peak = pods_for_rate.max(pods_for_memory).max(pods_for_disk);
    let pods_at_average = ceil(average_rate / usable)
        .max(pods_for_memory)
        .max(pods_for_disk);
    let partitions = (pods_at_peak * 2).max(for_partitions).div_ceil(12) * 12;
    let memory_per_pod = demand.pod_overhead_bytes
        + match demand.backend {
            StateBackend::Memory => cache_bytes / pods_at_peak as f64,
            StateBackend::Disk => demand.memory_budget_bytes,
        };
    // Every request writes itself (upstream), one state record and one outcome.
    let per_request = sizes.request + sizes.state + sizes.outcome;
    let write_peak = peak_rate * per_request;
    let day = |size: f64| requests_per_day * size;
    let mut bytes_per_day = BTreeMap::new();
    bytes_per_day.insert("requests", day(sizes.request));
    bytes_per_day.insert("accepted (event log)", day(sizes.outcome));
    bytes_per_day.insert("state (before compaction)", day(sizes.state));
    let mut stored = BTreeMap::new();
    let rf = demand.replication_factor;
    stored.insert(
        "requests",
        day(sizes.request) * demand.input_retention_days * rf,
    );
    stored.insert(
        "accepted (event log)",
        day(sizes.outcome) * demand.event_log_retention_days * rf,
    );
    // Compacted: one record per live order (plus not yet compacted segments, ignored).
    stored.insert("state (compacted)", cached_orders * sizes.state * rf);
    Plan {
        average_rate,
        peak_rate,
        pods_at_peak,
        pods_for_rate,
        pods_for_memory,
        pods_for_disk,
        memory_per_pod,
        disk_bytes,
        disk_bytes_per_pod: disk_bytes / pods_at_peak as f64,
        pods_at_average,
        partitions,
        write_bytes_per_second_peak: write_peak,
        broker_ingress_bytes_per_second_peak: write_peak * rf,
        bytes_per_day,
        stored_bytes: stored,
        cached_orders,
        cache_bytes,
        orders_per_partition: cached_orders / partitions as f64,
        restore_seconds_per_partition: cached_orders / partitions as f64 / demand.restore_rate,
    }
}

/// A human-readable number of bytes (decimal units).
pub fn bytes(n: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

/// The plan as text.
pub fn describe(demand: &Demand, sizes: RecordSizes, plan: &Plan, rate_source: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:.0} orders/day x {} requests/order: {:.0} requests/s on average, {:.0}/s at a {}x peak",
        demand.orders_per_day,
        demand.transitions_per_order,
        plan.average_rate,
        plan.peak_rate,
        demand.peak_factor
    );
    let _ = writeln!(
        t,
        "per-pod rate {:.0} requests/s ({rate_source}); pods run at most at 2/3 of it",
        demand.per_pod_rate
    );
    match demand.backend {
        StateBackend::Memory => {
            let _ = writeln!(
                t,
                "pods: {} at peak ({} for the rate, {} for the caches at {} each; state.backend = memory), {} at the average",
                plan.pods_at_peak,
                plan.pods_for_rate,
                plan.pods_for_memory,
                bytes(demand.pod_cache_bytes),
                plan.pods_at_average
            );
            let _ = writeln!(
                t,
                "partitions: {} (room to double the peak's pods; at most {} of cache each)",
                plan.partitions,
                bytes(demand.partition_cache_bytes)
            );
        }
        StateBackend::Disk => {
            let _ = writeln!(
                t,
                "pods: {} at peak ({} for the rate, {} for the local stores at most {} each; state.backend = disk), {} at the average",
                plan.pods_at_peak,
                plan.pods_for_rate,
                plan.pods_for_disk,
                bytes(demand.pod_disk_bytes),
                plan.pods_at_average
            );
            let _ = writeln!(
                t,
                "memory per pod: {} ({} budget + {} overhead), whatever the orders held",
                bytes(plan.memory_per_pod),
                bytes(demand.memory_budget_bytes),
                bytes(demand.pod_overhead_bytes)
            );
            let _ = writeln!(
                t,
                "local stores: {} over all pods ({:.0} B per order x {} space amplification), {} per pod's volume",
                bytes(plan.disk_bytes),
                demand.disk_bytes_per_order,
                demand.space_amplification,
                bytes(plan.disk_bytes_per_pod)
            );
            let _ = writeln!(
                t,
                "partitions: {} (room to double the peak's pods; a lost volume restores a partition in at most {:.0} min)",
                plan.partitions,
                demand.max_full_restore_seconds / 60.0
            );
        }
    }
    let _ = writeln!(
        t,
        "record sizes (real codec, with key and batch overhead): request {:.0} B, state {:.0} B, outcome {:.0} B",
        sizes.request, sizes.state, sizes.outcome
    );
    let _ = writeln!(
        t,
        "writes at peak: {}/s from clients, {}/s into the brokers with replication factor {} (network in)",
        bytes(plan.write_bytes_per_second_peak),
        bytes(plan.broker_ingress_bytes_per_second_peak),
        demand.replication_factor
    );
    for (topic, per_day) in &plan.bytes_per_day {
        let _ = writeln!(t, "  {topic}: {}/day", bytes(*per_day));
    }
    let _ = writeln!(t, "stored on the brokers (retention x replication):");
    for (topic, stored) in &plan.stored_bytes {
        let _ = writeln!(t, "  {topic}: {}", bytes(*stored));
    }
    match demand.backend {
        StateBackend::Memory => {
            let _ = write!(
                t,
                "processor caches: {:.0} live orders ({} days), {} resident across all pods; per partition {:.0} orders ({}), restored in {:.0} s at {:.0} orders/s",
                plan.cached_orders,
                demand.cached_days,
                bytes(plan.cache_bytes),
                plan.orders_per_partition,
                bytes(plan.orders_per_partition * demand.bytes_per_cached_order),
                plan.restore_seconds_per_partition,
                demand.restore_rate
            );
        }
        StateBackend::Disk => {
            let _ = write!(
                t,
                "live orders: {:.0} ({} days), all on the pods' local stores; per partition {:.0} orders: a restart reads only the tail after the checkpoint, a lost volume restores the partition in {:.0} s at {:.0} orders/s",
                plan.cached_orders,
                demand.cached_days,
                plan.orders_per_partition,
                plan.restore_seconds_per_partition,
                demand.restore_rate
            );
        }
    }
    t
}

/// The plan as JSON.
pub fn to_json(demand: &Demand, sizes: RecordSizes, plan: &Plan) -> Value {
    json!({
        "demand": {
            "orders_per_day": demand.orders_per_day,
            "transitions_per_order": demand.transitions_per_order,
            "peak_factor": demand.peak_factor,
            "per_pod_rate": demand.per_pod_rate,
            "cached_days": demand.cached_days,
            "replication_factor": demand.replication_factor,
        },
        "record_bytes": {"request": sizes.request, "state": sizes.state, "outcome": sizes.outcome},
        "average_rate": plan.average_rate,
        "peak_rate": plan.peak_rate,
        "pods_at_peak": plan.pods_at_peak,
        "pods_for_rate": plan.pods_for_rate,
        "pods_for_memory": plan.pods_for_memory,
        "pods_for_disk": plan.pods_for_disk,
        "backend": match demand.backend {
            StateBackend::Memory => "memory",
            StateBackend::Disk => "disk",
        },
        "memory_per_pod_bytes": plan.memory_per_pod,
        "disk_bytes": plan.disk_bytes,
        "disk_bytes_per_pod": plan.disk_bytes_per_pod,
        "restore_seconds_per_partition": plan.restore_seconds_per_partition,
        "pods_at_average": plan.pods_at_average,
        "partitions": plan.partitions,
        "write_bytes_per_second_peak": plan.write_bytes_per_second_peak,
        "broker_ingress_bytes_per_second_peak": plan.broker_ingress_bytes_per_second_peak,
        "bytes_per_day": plan.bytes_per_day,
        "stored_bytes": plan.stored_bytes,
        "cached_orders": plan.cached_orders,
        "cache_bytes": plan.cache_bytes,
        "orders_per_partition": plan.orders_per_partition,
    })
}

/// A mebibyte: `state.memory_budget_mb` is enforced in these (`<< 20`), and the overhead beside
/// it is measured in them.
const MIB: f64 = 1_048_576.0;

/// Parses `100M`, `2.5k`, `1e6`, `300000`.
pub fn parse_count(text: &str) -> Result<f64, String> {
    let text = text.trim().replace('_', "");
    let (number, factor) = match text.chars().last() {
        Some('k' | 'K') => (&text[..text.len() - 1], 1e3),
        Some('M') => (&text[..text.len() - 1], 1e6),
        Some('G' | 'B') => (&text[..text.len() - 1], 1e9),
        _ => (text.as_str(), 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .map(|n| n * factor)
        .ok_or_else(|| format!("{text:?} is not a positive count (e.g. 100M, 2.5k, 300000)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand() -> Demand {
        Demand {
            backend: StateBackend::Memory,
            memory_budget_bytes: 512e6,
            pod_overhead_bytes: 300e6,
            pod_disk_bytes: 500e9,
            disk_bytes_per_order: 200.0,
            space_amplification: 2.0,
            max_full_restore_seconds: 600.0,
            orders_per_day: 100e6,
            transitions_per_order: 5.0,
            peak_factor: 10.0,
            per_pod_rate: 60_000.0,
            cached_days: 35.0,
            input_retention_days: 7.0,
            event_log_retention_days: 30.0,
            replication_factor: 3.0,
            bytes_per_cached_order: 400.0,
            pod_cache_bytes: 1e15,
            partition_cache_bytes: 1e15,
            restore_rate: 250_000.0,
        }
    }

    const SIZES: RecordSizes = RecordSizes {
        request: 100.0,
        state: 200.0,
        outcome: 250.0,
    };

    #[test]
    fn the_disk_rate_under_realistic_access_is_the_median_of_its_passes() {
        let passes = serde_json::json!([{"rate": 30.0}, {"rate": 10.0}, {"rate": 20.0}]);
        assert_eq!(median_rate(&passes), Some(20.0));
        assert_eq!(median_rate(&serde_json::json!([])), None);
        assert_eq!(median_rate(&serde_json::json!({"rate": 1.0})), None);
    }

    #[test]
    fn the_seeds_top_tier_gives_the_back_of_envelope_numbers() {
        let p = plan(&demand(), SIZES);
        // 100M x 5 / 86400 = 5787/s; x10 = 57870/s.
        assert!((p.average_rate - 5787.04).abs() < 0.01);
        assert!((p.peak_rate - 57870.37).abs() < 0.01);
        // 57870 / (60000 x 2/3) = 1.45 -> 2 pods; average 0.14 -> 1.
        assert_eq!(p.pods_at_peak, 2);
        assert_eq!(p.pods_at_average, 1);
        assert_eq!(p.partitions, 12);
        assert!((p.write_bytes_per_second_peak - 57870.37 * 550.0).abs() < 1.0);
        assert!((p.broker_ingress_bytes_per_second_peak - 3.0 * 57870.37 * 550.0).abs() < 3.0);
        // 500M requests/day x 100 B = 50 GB/day of requests, kept 7 days x 3 replicas.
        assert!((p.bytes_per_day["requests"] - 50e9).abs() < 1.0);
        assert!((p.stored_bytes["requests"] - 50e9 * 7.0 * 3.0).abs() < 1.0);
        assert!((p.cached_orders - 3.5e9).abs() < 1.0);
        assert!((p.cache_bytes - 1.4e12).abs() < 1.0);
    }

    #[test]
    fn more_load_needs_more_pods_and_partitions_in_steps_of_twelve() {
        let mut d = demand();
        d.per_pod_rate = 5_000.0;
        let p = plan(&d, SIZES);
        // 57870 / 3333 = 17.4 -> 18 pods; x2 = 36 partitions.
        assert_eq!(p.pods_at_peak, 18);
        assert_eq!(p.partitions, 36);
        d.orders_per_day = 100.0;
        let small = plan(&d, SIZES);
        assert_eq!(small.pods_at_peak, 1);
        assert_eq!(small.partitions, 12);
    }

    #[test]
    fn caches_that_do_not_fit_add_pods_and_partitions() {
        let mut d = demand();
        d.pod_cache_bytes = 16e9;
        d.partition_cache_bytes = 2e9;
        let p = plan(&d, SIZES);
        // 3.5e9 orders x 400 B = 1.4 TB: 88 pods of 16 GB, 700 partitions of 2 GB -> 708.
        assert_eq!(p.pods_for_rate, 2);
        assert_eq!(p.pods_for_memory, 88);
        assert_eq!(p.pods_at_peak, 88);
        assert_eq!(p.pods_at_average, 88);
        assert_eq!(p.partitions, 708);
        assert!((p.orders_per_partition - 3.5e9 / 708.0).abs() < 1.0);
        assert!((p.restore_seconds_per_partition - 3.5e9 / 708.0 / 250_000.0).abs() < 1e-6);
    }

    #[test]
    fn on_the_disk_backend_memory_is_the_budget_and_disk_or_rate_sizes_the_fleet() {
        let mut d = demand();
        d.backend = StateBackend::Disk;
        d.pod_cache_bytes = 16e9;
        d.partition_cache_bytes = 2e9;
        let p = plan(&d, SIZES);
        // Caches of 1.4 TB no longer count: 3.5e9 orders x 200 B x 2 = 1.4 TB of disk, 3 volumes
        // of 500 GB; the rate needs 2.
        assert_eq!(p.pods_for_memory, 1);
        assert!((p.disk_bytes - 1.4e12).abs() < 1.0);
        assert_eq!(p.pods_for_disk, 3);
        assert_eq!(p.pods_at_peak, 3);
        assert!((p.memory_per_pod - 812e6).abs() < 1.0);
        assert!((p.disk_bytes_per_pod - 1.4e12 / 3.0).abs() < 1.0);
        // A lost volume: 3.5e9 / (250k/s x 600 s) = 23.3 -> 24 partitions.
        assert_eq!(p.partitions, 24);
        // Smaller volumes: more pods.
        d.pod_disk_bytes = 100e9;
        assert_eq!(plan(&d, SIZES).pods_at_peak, 14);
        // The memory backend with the same demand: memory sizes it.
        d.backend = StateBackend::Memory;
        assert_eq!(plan(&d, SIZES).pods_at_peak, 88);
    }

    #[test]
    fn backends_parse_by_name() {
        assert_eq!(parse_backend("disk"), Ok(StateBackend::Disk));
        assert_eq!(parse_backend("memory"), Ok(StateBackend::Memory));
        assert!(parse_backend("rocksdb").is_err());
    }

    #[test]
    fn counts_take_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_count("100M"), Ok(100e6));
        assert_eq!(parse_count("2.5k"), Ok(2500.0));
        assert_eq!(parse_count("1_000"), Ok(1000.0));
        assert_eq!(parse_count("1B"), Ok(1e9));
        assert!(parse_count("-3").is_err());
        assert!(parse_count("lots").is_err());
        assert!(parse_count("").is_err());
    }

    #[test]
    fn record_sizes_come_from_the_codec() {
        let text = include_str!("../../machines/order-lifecycle.toml");
        let definition = Definition::parse(text, "order-lifecycle.toml").unwrap();
        let sizes = record_sizes(&definition).unwrap();
        // Single-object header (10) + 16-byte id + strings: well above 50, well below 500.
        for size in [sizes.request, sizes.state, sizes.outcome] {
            assert!((50.0..500.0).contains(&size), "{sizes:?}");
        }
        assert!(sizes.state > sizes.request, "{sizes:?}");
    }

    #[test]
    fn bytes_are_shown_in_decimal_units() {
        assert_eq!(bytes(999.0), "999.0 B");
        assert_eq!(bytes(1.4e12), "1.4 TB");
        assert_eq!(bytes(31_830_000.0), "31.8 MB");
    }
}
