//! `orderflow-bench`: the pieces `bench/run.py` times, one system after another on one broker.
//!
//! - `preload`: fresh topics under a prefix and N planned requests in them (no consumer running);
//! - `pipe`: the floor set by the broker: an exactly-once consume -> produce of two records per
//!   input (state + outcome, to the input's partition) with orderflow's batching and transactions,
//!   deciding nothing;
//! - `pipe-latency`: the pipe under a paced load (the load generator's producer settings and
//!   orderflow's default batching), timing each request from its `requested_at` to its copy
//!   visible to a read_committed reader: the latency floor orderflow's latency runs compare with;
//! - `await`: reads the outcome topics with read_committed until N records and prints the rate
//!   between the first and the last;
//! - `aged-state`, `aged-requests`: the realistic-access workload of bench/aged.rs (orders aged
//!   over 35 days; a pass of requests for one slot of them);
//! - `restore`: writes M order states to a state topic and restores all its partitions the way a
//!   processor does, printing orders/s and resident memory per million cached orders.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use orderflow::codec::encode_order_state;
use orderflow::config::Settings;
use orderflow::kafka::{
    committed_reader_config, partition_for, processor_consumer_config, request_producer_config,
    OutgoingRecord, Topics,
};
use orderflow::machine::{
    Definition, OrderState, RecentRequest, RecordedOutcome, TransitionRequest,
};
use orderflow::processor::poll::BatchWindow;
use orderflow::processor::transaction::{Attempt, TransactionRunner};
use orderflow::processor::Failpoints;
use orderflow::state::PartitionCache;
use orderflow::tools::loadgen::plan::{Plan, Planned, Shares};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

mod aged;

#[derive(Parser)]
struct Cli {
    /// Brokers.
    #[arg(long, default_value = "127.0.0.1:29092")]
    bootstrap: String,
    /// Topic name prefix of this run.
    #[arg(long)]
    prefix: String,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the topics and produce N planned requests.
    Preload {
        #[arg(long)]
        requests: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run the exactly-once pipe until it has passed `count` inputs.
    Pipe {
        #[arg(long)]
        count: u64,
    },
    /// Send planned requests at `rate` for `seconds` through the pipe; print latency as JSON.
    PipeLatency {
        #[arg(long)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Send this many seconds more first and leave them out of the percentiles.
        #[arg(long, default_value_t = 0)]
        warmup_secs: u64,
        /// Spread the copies over the output topics as orderflow's outcomes spread under
        /// loadgen's default shares: every 50th to the rejected topic, every 500th to the
        /// dead-letter topic, the rest to the accepted topic.
        #[arg(long)]
        spread: bool,
        /// No pipe and no transactions: time the requests themselves, from produce to visible to
        /// a read_committed reader of the requests topic (the physical floor of any pipeline).
        #[arg(long, conflicts_with = "spread")]
        floor: bool,
    },
    /// Wait for `count` records in the outcome topics; print timing as JSON.
    Await {
        #[arg(long)]
        count: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Write `orders` states, then time restores of all partitions: the memory backend's (from
    /// the topic's beginning) against the disk backend's from its checkpoint, alternated over
    /// `rounds`, with `tail` more state records written before each round; prints JSON.
    Restart {
        #[arg(long, default_value_t = 2_000_000)]
        orders: u64,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        #[arg(long, default_value_t = 10_000)]
        tail: u64,
        /// Where the disk backend's store goes.
        #[arg(long, default_value = "target/bench-restart-state")]
        dir: std::path::PathBuf,
    },
    /// Write the states of `orders` orders aged over 35 days as of `now_ms` (bench/aged.rs) to
    /// the prefix's state topic.
    AgedState {
        #[arg(long)]
        orders: u64,
        #[arg(long)]
        now_ms: i64,
    },
    /// Create the prefix's topics and produce pass `slot`'s requests over `orders` aged orders;
    /// prints how many.
    AgedRequests {
        #[arg(long)]
        orders: u64,
        #[arg(long)]
        now_ms: i64,
        #[arg(long)]
        slot: u64,
        #[arg(long, value_enum)]
        access: aged::Access,
        /// Only create the topics (the processor starts on them before the requests come).
        #[arg(long)]
        topics_only: bool,
        /// Only print how many requests the pass has (no broker needed).
        #[arg(long)]
        count_only: bool,
    },
    /// Write `orders` states and time restoring them.
    Restore {
        #[arg(long, default_value_t = 1_000_000)]
        orders: u64,
        /// Restore consumers side by side (0: the processor's default, `processor.restore_threads`).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
}

fn settings(cli: &Cli) -> Settings {
    let mut settings = Settings::default();
    settings.kafka.bootstrap_servers = cli.bootstrap.clone();
    settings.kafka.group_id = format!("{}group", cli.prefix);
    settings.instance_id = "bench".into();
    settings.topics = settings.topics.with_prefix(&cli.prefix);
    settings.topics.partitions = cli.partitions;
    // The throughput runs batch like Kafka Streams' commit.interval.ms=20 (bench/run.py).
    settings.processor.batch_max_wait_ms = 20;
    settings
}

fn definition() -> anyhow::Result<Definition> {
    Ok(Definition::load(std::path::Path::new(
        "machines/order-lifecycle.toml",
    ))?)
}

fn producer(
    settings: &Settings,
) -> anyhow::Result<ThreadedProducer<rdkafka::producer::DefaultProducerContext>> {
    Ok(request_producer_config(&settings.kafka, "orderflow-bench")?
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

fn send_all(
    producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    records: impl Iterator<Item = (Vec<u8>, Vec<u8>)>,
) -> anyhow::Result<u64> {
    let mut sent = 0;
    for (key, value) in records {
        loop {
            match producer.send(BaseRecord::to(topic).key(&key).payload(&value)) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => std::thread::sleep(Duration::from_millis(5)),
                Err((e, _)) => return Err(e.into()),
            }
        }
        sent += 1;
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(sent)
}

/// The plan's requests (the throughput and latency inputs plan no poison records).
fn planned_requests(plan: Plan) -> impl Iterator<Item = TransitionRequest> {
    plan.filter_map(|planned| match planned {
        Planned::Request { request, .. } => Some(request),
        Planned::Poison { .. } => None,
    })
}

/// Key and value of `request` as sent, stamped `requested_at_ms`.
fn encoded_request(mut request: TransitionRequest, requested_at_ms: i64) -> (Vec<u8>, Vec<u8>) {
    request.requested_at_ms = requested_at_ms;
    let mut value = Vec::with_capacity(96);
    orderflow::codec::encode_request(&request, &mut value);
    (request.order_id.into_bytes(), value)
}

/// Wall-clock milliseconds, as orderflow stamps and compares them.
fn now_ms() -> i64 {
    orderflow::clock::wall_clock_ms()
}

async fn preload(settings: &Settings, requests: u64, seed: u64) -> anyhow::Result<()> {
    Topics::connect(&settings.kafka)?
        .ensure(&settings.topics)
        .await?;
    let definition = definition()?;
    let shares = Shares::decided_on_arrival();
    let orders = requests / 4 + 1;
    let plan = Plan::new(&definition, seed, "bench", orders, 10_000, shares)
        .map_err(anyhow::Error::msg)?;
    let now = now_ms();
    let records = planned_requests(plan)
        .take(requests as usize)
        .map(|request| encoded_request(request, now));
    let started = Instant::now();
    let producer = producer(settings)?;
    let sent =
        tokio::task::block_in_place(|| send_all(&producer, &settings.topics.requests, records))?;
    if sent != requests {
        bail!("the plan ran out after {sent} of {requests} requests");
    }
    println!(
        "{}",
        json!({"requests": sent, "seconds": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

/// Where the pipe sends an input's second copy: the accepted topic, or with `spread` the topic
/// orderflow's outcome would go to in the same share (see `PipeLatency::spread`).
fn copy_topic(settings: &Settings, spread: bool, offset: i64) -> &str {
    match offset {
        o if spread && o % 500 == 3 => &settings.topics.dead_letters,
        o if spread && o % 50 == 7 => &settings.topics.rejected,
        _ => &settings.topics.accepted,
    }
}

/// The floor: orderflow's loop shape (batches of up to 2000 records or 20 ms, one transaction
/// each, offsets in the transaction) with the decision replaced by copying the input twice (to
/// the state topic and to [`copy_topic`]).
/// `assigned` turns true once the consumer group has given the pipe its partitions.
fn pipe(
    settings: &Settings,
    count: u64,
    assigned: &AtomicBool,
    spread: bool,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = processor_consumer_config(settings, "0000000000000000")?
        .set("statistics.interval.ms", "0")
        .create()?;
    consumer.subscribe(&[&settings.topics.requests])?;
    // orderflow's own transaction runner and batch window: the floor cannot drift from the
    // processor it is the floor of.
    let mut transactions = TransactionRunner::new(
        Arc::new(settings.clone()),
        None,
        Default::default(),
        Failpoints::default(),
    )?;
    let max_records = settings.processor.batch_max_records;
    let max_wait = Duration::from_millis(settings.processor.batch_max_wait_ms);
    let mut passed = 0u64;
    let mut number = 0u64;
    while passed < count {
        let mut batch = Vec::with_capacity(max_records);
        let mut window = BatchWindow::new(max_records, max_wait);
        loop {
            let polled = consumer.poll(window.poll_timeout());
            if !assigned.load(Ordering::Relaxed)
                && consumer.assignment().is_ok_and(|a| a.count() > 0)
            {
                assigned.store(true, Ordering::Relaxed);
            }
            match polled {
                Some(Ok(m)) => {
                    batch.push((
                        m.partition(),
                        m.offset(),
                        m.key().unwrap_or_default().to_vec(),
                        m.payload().unwrap_or_default().to_vec(),
                    ));
                    window.took();
                }
                Some(Err(e)) => tracing::warn!(error = %e, "pipe consumer"),
                None => {}
            }
            if window.done(batch.len(), passed >= count) {
                break;
            }
        }
        if batch.is_empty() {
            continue;
        }
        let mut records = Vec::with_capacity(batch.len() * 2);
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut first: BTreeMap<i32, i64> = BTreeMap::new();
        for (partition, offset, key, value) in &batch {
            for topic in [
                settings.topics.state.as_str(),
                copy_topic(settings, spread, *offset),
            ] {
                records.push(OutgoingRecord {
                    topic: topic.to_string(),
                    partition: *partition,
                    key: Some(key.clone()),
                    value: Some(value.clone()),
                    headers: Vec::new(),
                });
            }
            next.insert(*partition, offset + 1);
            first.entry(*partition).or_insert(*offset);
        }
        number += 1;
        let group = consumer.group_metadata();
        match transactions.run(number, &records, &next, group.as_ref())? {
            Attempt::Committed(_) => passed += batch.len() as u64,
            Attempt::Aborted { error, .. } => {
                // As orderflow does: read the batch again from its first offsets.
                tracing::warn!(%error, "pipe transaction aborted; redoing the batch");
                for (partition, offset) in first {
                    consumer.seek(
                        &settings.topics.requests,
                        partition,
                        Offset::Offset(offset),
                        Duration::from_secs(10),
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// The pipe at orderflow's default batching, fed at `rate` for `seconds` the way `orderflow
/// loadgen` feeds orderflow; prints the percentiles of request -> copy visible to a read_committed
/// reader, in the loadgen report's shape.
fn pipe_latency(
    mut settings: Settings,
    rate: u64,
    seconds: u64,
    warmup_secs: u64,
    spread: bool,
    floor: bool,
) -> anyhow::Result<()> {
    settings.processor.batch_max_wait_ms = Settings::default().processor.batch_max_wait_ms;
    let warmup = rate * warmup_secs;
    let count = (rate * seconds).max(1) + warmup;
    // Requests from this wall-clock time on are measured (set once sending starts).
    let measured_from_ms = std::sync::atomic::AtomicI64::new(i64::MAX);
    let reader: BaseConsumer = committed_reader_config(
        &settings.kafka,
        "orderflow-bench-pipe-latency",
        &format!(
            "{}latency-{}",
            settings.topics.requests,
            uuid::Uuid::new_v4().simple()
        ),
    )?
    .set("fetch.wait.max.ms", "10")
    .create()?;
    let copies_to: &[&str] = if floor {
        &[&settings.topics.requests]
    } else if spread {
        &[
            &settings.topics.accepted,
            &settings.topics.rejected,
            &settings.topics.dead_letters,
        ]
    } else {
        &[&settings.topics.accepted]
    };
    orderflow::client::assign_outputs(&reader, copies_to, settings.topics.partitions, true)?;
    // The floor has no pipe to wait for.
    let assigned = AtomicBool::new(floor);
    let definition = definition()?;
    // Every order starts with at least one request, so `count` orders never run dry before
    // `count` requests (the pipe waits for exactly that many); the plan is generated lazily.
    let plan = Plan::new(
        &definition,
        5,
        "pipe",
        count,
        10_000,
        Shares::decided_on_arrival(),
    )
    .map_err(anyhow::Error::msg)?;
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        request_producer_config(&settings.kafka, "orderflow-bench-pipe-latency")?
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "500000")
            .create()?;
    let settings = &settings;
    let (copies, latencies, sent_seconds) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let piping = scope.spawn(|| {
            if floor {
                Ok(())
            } else {
                pipe(settings, count, &assigned, spread)
            }
        });
        let reading = scope.spawn(|| {
            let mut latencies = Vec::with_capacity(count as usize);
            let mut copies = 0u64;
            let started = Instant::now();
            while copies < count
                && started.elapsed() < Duration::from_secs((seconds + warmup_secs) * 4 + 120)
            {
                let Some(Ok(message)) = reader.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let now = now_ms();
                if let Ok(request) = orderflow::codec::decode_request(
                    message.key(),
                    message.payload().unwrap_or_default(),
                ) {
                    copies += 1;
                    if request.requested_at_ms >= measured_from_ms.load(Ordering::Relaxed) {
                        latencies.push(now - request.requested_at_ms);
                    }
                }
            }
            (copies, latencies)
        });
        let ready_by = Instant::now() + Duration::from_secs(60);
        while !assigned.load(Ordering::Relaxed) {
            if Instant::now() > ready_by {
                bail!("the pipe had no partitions assigned within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let started = Instant::now();
        measured_from_ms.store(now_ms() + 1000 * warmup_secs as i64, Ordering::Relaxed);
        let records =
            planned_requests(plan)
                .take(count as usize)
                .enumerate()
                .map(|(index, request)| {
                    let due = started + Duration::from_secs_f64(index as f64 / rate as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    encoded_request(request, now_ms())
                });
        send_all(&producer, &settings.topics.requests, records)?;
        let sent_seconds = started.elapsed().as_secs_f64();
        let (copies, latencies) = reading
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        piping
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        Ok((copies, latencies, sent_seconds))
    })?;
    if copies < count {
        bail!("only {copies} of {count} copies became visible");
    }
    println!(
        "{}",
        json!({
            "sent": count,
            "warmup_sent": warmup,
            "send_rate": count as f64 / sent_seconds.max(1e-9),
            "latency_ms": orderflow::tools::loadgen::percentiles(latencies),
        })
    );
    Ok(())
}

fn await_outcomes(settings: &Settings, count: u64, timeout: Duration) -> anyhow::Result<()> {
    let reader: BaseConsumer = committed_reader_config(
        &settings.kafka,
        "orderflow-bench-await",
        &format!(
            "{}await-{}",
            settings.topics.requests,
            uuid::Uuid::new_v4().simple()
        ),
    )?
    .set("fetch.wait.max.ms", "10")
    .create()?;
    let mut tpl = TopicPartitionList::new();
    for topic in [&settings.topics.accepted, &settings.topics.rejected] {
        for p in 0..settings.topics.partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    reader.assign(&tpl)?;
    let started = Instant::now();
    let mut first: Option<Instant> = None;
    let (mut first_unix_ms, mut last_unix_ms) = (0i64, 0i64);
    let mut seen = 0u64;
    let mut by_topic: BTreeMap<String, u64> = BTreeMap::new();
    while seen < count {
        if started.elapsed() > timeout {
            bail!("only {seen} of {count} outcomes within {timeout:?}");
        }
        if let Some(Ok(message)) = reader.poll(Duration::from_millis(100)) {
            if first.is_none() {
                first = Some(Instant::now());
                first_unix_ms = now_ms();
            }
            last_unix_ms = now_ms();
            seen += 1;
            let role = if message.topic() == settings.topics.accepted {
                "accepted"
            } else {
                "rejected"
            };
            *by_topic.entry(role.to_string()).or_default() += 1;
        }
    }
    let span = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    println!(
        "{}",
        json!({
            "outcomes": seen,
            "by_topic": by_topic,
            "first_to_last_seconds": span,
            // Wall clock, so a driver can cut CPU samples to the same span.
            "first_unix_ms": first_unix_ms,
            "last_unix_ms": last_unix_ms,
            "rate": seen as f64 / span.max(1e-9),
            "wall_seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

/// Resident memory after handing freed heap back to the system (so it counts what is held).
fn resident_bytes() -> u64 {
    // SAFETY: malloc_trim only releases free heap memory; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Restores every partition as the processor does (its partitions split over its restore
/// consumers), with the local store `disk` or in memory; returns the seconds taken and each
/// partition's result.
fn restore_all(
    settings: &Settings,
    definition: &Arc<orderflow::machine::Definition>,
    disk: Option<&Arc<orderflow::state::store::DiskState>>,
) -> anyhow::Result<(f64, Vec<orderflow::state::restore::Restored>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let partitions: Vec<i32> = (0..settings.topics.partitions).collect();
    let groups = orderflow::state::restore::split_partitions(
        &partitions,
        orderflow::state::restore::restore_threads(settings),
    );
    let cancel = AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .iter()
            .map(|group| {
                let (tx, cancel) = (tx.clone(), &cancel);
                scope.spawn(move || {
                    orderflow::state::restore::restore_partitions(
                        1, settings, definition, group, &tx, cancel, disk,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut restored = Vec::new();
    while let Ok(orderflow::state::restore::RestoreEvent::Done(done)) = rx.try_recv() {
        restored.push(done);
    }
    Ok((elapsed, restored))
}

/// State records read by a restore's partitions.
fn records_read(restored: &[orderflow::state::restore::Restored]) -> u64 {
    restored.iter().map(|r| r.records).sum()
}

/// The restart benchmark (see [`Command::Restart`]).
async fn restart(
    settings: &Settings,
    orders: u64,
    rounds: u32,
    tail: u64,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    use orderflow::state::store::{DiskState, LocalStore, StoreIdentity, FORMAT_VERSION};
    let topics = Topics::connect(&settings.kafka)?;
    topics.ensure(&settings.topics).await?;
    let definition = Arc::new(definition()?);
    let producer = producer(settings)?;
    let written = tokio::task::block_in_place(|| {
        send_all(
            &producer,
            &settings.topics.state,
            state_records(&definition, 0..orders)?,
        )
    })?;
    let identity = StoreIdentity {
        format: FORMAT_VERSION,
        cluster_id: topics.cluster_id().unwrap_or_default(),
        state_topic: settings.topics.state.clone(),
        topic_id: None,
        definition_hash: definition.hash().to_string(),
    };
    let delete_retention_ms = topics.delete_retention_ms(&settings.topics.state).await?;
    let _ = std::fs::remove_dir_all(dir);
    let open = || -> anyhow::Result<Arc<DiskState>> {
        let opened = LocalStore::open(dir, "bench", &identity, settings.state.engine_bytes())?;
        Ok(Arc::new(DiskState {
            store: opened.store,
            delete_retention_ms,
            hot: orderflow::state::HotBudget::new(settings.state.hot_orders_bytes() as usize),
        }))
    };
    // The first start of the disk backend: a full restore that also fills the store.
    let (first_secs, first_records) = tokio::task::block_in_place(|| {
        let disk = open()?;
        let (secs, restored) = restore_all(settings, &definition, Some(&disk))?;
        disk.store.persist()?;
        Ok::<_, anyhow::Error>((secs, records_read(&restored)))
    })?;
    let mut runs = Vec::new();
    let mut next_order = orders;
    for round in 0..rounds {
        // Requests decided elsewhere while this pod was down: new state records after the checkpoint.
        tokio::task::block_in_place(|| {
            send_all(
                &producer,
                &settings.topics.state,
                state_records(&definition, next_order..next_order + tail)?,
            )
        })?;
        next_order += tail;
        let mut order = ["memory", "disk"];
        if round % 2 == 1 {
            order.reverse();
        }
        for backend in order {
            let (secs, records, open_secs) = tokio::task::block_in_place(|| {
                if backend == "memory" {
                    restore_all(settings, &definition, None)
                        .map(|(s, r)| (s, records_read(&r), 0.0))
                } else {
                    let opened = Instant::now();
                    let disk = open()?;
                    let open_secs = opened.elapsed().as_secs_f64();
                    let (s, r) = restore_all(settings, &definition, Some(&disk))?;
                    let r = records_read(&r);
                    disk.store.persist()?;
                    Ok::<_, anyhow::Error>((s, r, open_secs))
                }
            })?;
            runs.push(json!({"round": round, "backend": backend, "seconds": secs, "records": records, "open_seconds": open_secs}));
            eprintln!("restart round {round} {backend}: {secs:.3} s, {records} records read, store opened in {open_secs:.3} s");
        }
    }
    println!(
        "{}",
        json!({
            "orders": written,
            "tail": tail,
            "partitions": settings.topics.partitions,
            "first_disk_start_seconds": first_secs,
            "first_disk_start_records": first_records,
            "store_disk_bytes": dir_bytes(dir),
            "runs": runs,
        })
    );
    Ok(())
}

/// Bytes allocated under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => std::os::unix::fs::MetadataExt::blocks(&m) * 512,
            Err(_) => 0,
        })
        .sum()
}

/// State records of typical live orders `range` (confirmed, two requests remembered: create and
/// confirm).
fn state_records(
    definition: &orderflow::machine::Definition,
    range: std::ops::Range<u64>,
) -> anyhow::Result<impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_> {
    let confirmed = definition
        .state_id("Confirmed")
        .context("no Confirmed state")?;
    let pending = definition.state_id("Pending").context("no Pending state")?;
    Ok(range.map(move |n| {
        let order_id = format!("order-{n:010}");
        let recent = |k: u64, from, to, version| RecentRequest {
            request_id: uuid::Uuid::from_u64_pair(n, k),
            outcome: RecordedOutcome::Accepted,
            from,
            to,
            version,
        };
        let state = OrderState {
            state: confirmed,
            version: 2,
            created_at_ms: 1_764_000_000_000,
            updated_at_ms: 1_764_000_060_000,
            recent: vec![
                recent(1, pending, pending, 1),
                recent(2, pending, confirmed, 2),
            ],
            parked: Vec::new(),
        };
        let mut value = Vec::with_capacity(160);
        encode_order_state(definition, &order_id, &state, &mut value);
        (order_id.into_bytes(), value)
    }))
}

async fn restore(settings: &Settings, orders: u64) -> anyhow::Result<()> {
    Topics::connect(&settings.kafka)?
        .ensure(&settings.topics)
        .await?;
    let definition = Arc::new(definition()?);
    let records = state_records(&definition, 0..orders)?;
    let producer = producer(settings)?;
    let written =
        tokio::task::block_in_place(|| send_all(&producer, &settings.topics.state, records))?;
    drop(producer);

    let before = resident_bytes();
    // As the processor restores: its partitions split over `restore_threads` consumers.
    let (elapsed, restored_partitions) =
        tokio::task::block_in_place(|| restore_all(settings, &definition, None))?;
    let mut caches = Vec::new();
    let mut restored = 0;
    for done in restored_partitions {
        restored += done.cache.len() as u64;
        caches.push((done.partition, done.cache));
    }
    let after = resident_bytes();
    if restored != written {
        bail!("restored {restored} orders of {written}");
    }
    // The processor's deadline index over the same orders, as if each had one (a delivered order
    // in its return window), and the earlier index (ids as `String`s) as its baseline.
    let mut deadlines = orderflow::processor::deadlines::DeadlineIndex::new();
    for (partition, cache) in &caches {
        for (order_id, state) in cache.iter() {
            deadlines.update(
                *partition,
                order_id,
                None,
                Some(state.updated_at_ms + 30 * 86_400_000),
            );
        }
    }
    let with_index = resident_bytes();
    let mut string_index = (
        std::collections::BTreeSet::<(i64, i32, String)>::new(),
        HashMap::<(i32, String), i64, foldhash::fast::RandomState>::default(),
    );
    for (partition, cache) in &caches {
        for (order_id, state) in cache.iter() {
            let deadline = state.updated_at_ms + 30 * 86_400_000;
            string_index
                .0
                .insert((deadline, *partition, order_id.to_string()));
            string_index
                .1
                .insert((*partition, order_id.to_string()), deadline);
        }
    }
    let with_string_index = resident_bytes();
    let after_indexes = with_string_index;
    // The baseline, measured in the same process: the same orders held as unpacked `OrderState`
    // values under `String` keys (the cache's representation before orders were packed).
    let unpacked: Vec<HashMap<String, OrderState, foldhash::fast::RandomState>> = caches
        .iter()
        .map(|(_, cache)| {
            cache
                .iter()
                .map(|(order_id, state)| (order_id.to_string(), state))
                .collect()
        })
        .collect();
    let with_unpacked = resident_bytes();
    // The order most caches hold most of the time: delivered and waiting out its return window,
    // its whole life remembered (create, confirm, ship, out for delivery, deliver). Packed into
    // caches directly (no Kafka), so only the shape differs from the restored orders.
    let lifecycle: Vec<_> = [
        "Pending",
        "Confirmed",
        "Shipped",
        "OutForDelivery",
        "Delivered",
    ]
    .iter()
    .map(|name| {
        definition
            .state_id(name)
            .context("the bench definition lacks a state")
    })
    .collect::<anyhow::Result<_>>()?;
    let mut delivered_caches: Vec<PartitionCache> = (0..settings.topics.partitions)
        .map(|_| PartitionCache::new())
        .collect();
    for n in 0..orders {
        let order_id = format!("order-{n:010}");
        let recent = (0..lifecycle.len())
            .map(|k| RecentRequest {
                request_id: uuid::Uuid::from_u64_pair(n, k as u64),
                outcome: RecordedOutcome::Accepted,
                from: lifecycle[k.saturating_sub(1)],
                to: lifecycle[k],
                version: k as u64 + 1,
            })
            .collect();
        let state = OrderState {
            state: lifecycle[lifecycle.len() - 1],
            version: lifecycle.len() as u64,
            created_at_ms: 1_764_000_000_000,
            updated_at_ms: 1_764_200_000_000,
            recent,
            parked: Vec::new(),
        };
        let partition = partition_for(order_id.as_bytes(), settings.topics.partitions);
        delivered_caches[partition as usize].apply(&order_id, Some(&state));
    }
    let with_delivered = resident_bytes();
    let unpacked_orders: usize = unpacked.iter().map(HashMap::len).sum();
    // Bytes per order is megabytes per million orders.
    let packed_mb = after.saturating_sub(before) as f64 / restored as f64;
    let unpacked_mb =
        with_unpacked.saturating_sub(after_indexes) as f64 / unpacked_orders.max(1) as f64;
    let index_mb = with_index.saturating_sub(after) as f64 / deadlines.len().max(1) as f64;
    let string_index_mb =
        with_string_index.saturating_sub(with_index) as f64 / string_index.1.len().max(1) as f64;
    println!(
        "{}",
        json!({
            "orders": restored,
            "seconds": elapsed,
            "orders_per_second": restored as f64 / elapsed,
            "resident_mb_per_million_orders": packed_mb,
            "unpacked_mb_per_million_orders": unpacked_mb,
            "unpacked_over_packed": unpacked_mb / packed_mb.max(1e-9),
            "deadline_index_mb_per_million_orders": index_mb,
            "string_deadline_index_mb_per_million_orders": string_index_mb,
            "delivered_packed_mb_per_million_orders":
                with_delivered.saturating_sub(with_unpacked) as f64 / orders.max(1) as f64,
        })
    );
    drop(Arc::new((
        caches,
        unpacked,
        deadlines,
        string_index,
        delivered_caches,
    )));
    Ok(())
}

/// The same allocator as `orderflow`, so the pipe and the restore's memory figures compare like with like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = orderflow::telemetry::init(None);
    let settings = settings(&cli);
    match &cli.command {
        Command::Preload { requests, seed } => preload(&settings, *requests, *seed).await,
        Command::Pipe { count } => {
            tokio::task::block_in_place(|| pipe(&settings, *count, &AtomicBool::new(false), false))
        }
        Command::PipeLatency {
            rate,
            seconds,
            warmup_secs,
            spread,
            floor,
        } => {
            Topics::connect(&settings.kafka)?
                .ensure(&settings.topics)
                .await?;
            tokio::task::block_in_place(|| {
                pipe_latency(settings, *rate, *seconds, *warmup_secs, *spread, *floor)
            })
        }
        Command::Await {
            count,
            timeout_secs,
        } => tokio::task::block_in_place(|| {
            await_outcomes(&settings, *count, Duration::from_secs(*timeout_secs))
        }),
        Command::Restart {
            orders,
            rounds,
            tail,
            dir,
        } => restart(&settings, *orders, *rounds, *tail, dir).await,
        Command::AgedState { orders, now_ms } => {
            Topics::connect(&settings.kafka)?
                .ensure(&settings.topics)
                .await?;
            let definition = definition()?;
            let started = Instant::now();
            let producer = producer(&settings)?;
            let records = (0..*orders).map(|n| aged::state_record(&definition, n, *now_ms));
            let written = tokio::task::block_in_place(|| {
                send_all(&producer, &settings.topics.state, records)
            })?;
            println!(
                "{}",
                json!({"orders": written, "seconds": started.elapsed().as_secs_f64()})
            );
            Ok(())
        }
        Command::AgedRequests {
            orders,
            now_ms,
            slot,
            access,
            topics_only,
            count_only,
        } => {
            if *count_only {
                let count = aged::requests(*orders, *slot, *access, *now_ms).len();
                println!("{}", json!({"requests": count}));
                return Ok(());
            }
            Topics::connect(&settings.kafka)?
                .ensure(&settings.topics)
                .await?;
            if *topics_only {
                println!("{}", json!({"requests": 0}));
                return Ok(());
            }
            let sent_at = self::now_ms();
            let records = aged::requests(*orders, *slot, *access, *now_ms)
                .into_iter()
                .map(|request| encoded_request(request, sent_at));
            let producer = producer(&settings)?;
            let sent = tokio::task::block_in_place(|| {
                send_all(&producer, &settings.topics.requests, records)
            })?;
            println!("{}", json!({"requests": sent}));
            Ok(())
        }
        Command::Restore { orders, threads } => {
            let mut settings = settings;
            settings.processor.restore_threads = *threads;
            restore(&settings, *orders).await
        }
    }
}
