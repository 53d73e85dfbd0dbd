//! Exactly once when an owner freezes between sending its offsets to a transaction and committing
//! it, past its session timeout but not past its transaction timeout: the transaction still
//! commits when the owner wakes, and the partition's new owner must decide after it, on state that
//! includes it.

use std::io::Read;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::{Duration, Instant};

use orderflow::machine::OrderState;
use orderflow::state::restore::{restore_partitions, RestoreEvent};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

use crate::crash::{
    assert_check_clean, binary_command, spawn_binary_with, three_steps_of_sixty_orders_produced,
    RunningBinary,
};
use crate::support::{create_topics, definition, outcomes_within, processor_settings, unique};

/// Whether the process is stopped (SIGSTOP), from the state in /proc/<pid>/stat.
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(')')?.1;
            after_name.split_whitespace().next().map(|s| s == "T")
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints")]
async fn an_owner_frozen_after_sending_its_offsets_commits_late_and_its_successor_decides_after_that_batch(
) {
    let backlog = three_steps_of_sixty_orders_produced("freeze").await;
    let settings = &backlog.settings;
    // Frozen for 10 s: past the 6 s session timeout, so its partitions move, and inside its 20 s
    // transaction timeout, so its open transaction commits when it wakes.
    let frozen = spawn_binary_with(
        settings,
        Some("freeze-after-offsets:2:10000"),
        &[("ORDERFLOW_PROCESSOR__TRANSACTION_TIMEOUT_MS", "20000")],
    );
    let started = Instant::now();
    while !stopped(frozen.id()) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the failpoint froze the first processor after its second batch's offsets"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut successor_settings = settings.clone();
    successor_settings.instance_id = format!("{}-successor", settings.instance_id);
    let log_path = std::env::temp_dir().join(format!("{}.log", successor_settings.instance_id));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = binary_command(&successor_settings);
    command
        .arg("run")
        .env("RUST_LOG", "warn,orderflow::state=info")
        .env_remove("ORDERFLOW_FAILPOINT")
        .stderr(Stdio::from(log));
    let successor = RunningBinary(command.spawn().unwrap());

    let outcomes =
        outcomes_within(settings, backlog.positions.len(), Duration::from_secs(120)).await;
    drop(successor);
    drop(frozen);
    let per_input = outcomes.per_input();
    for position in &backlog.positions {
        assert_eq!(
            per_input.get(position),
            Some(&1),
            "input {position:?} has exactly one committed outcome"
        );
    }
    assert!(
        outcomes.rejected.is_empty(),
        "{} rejected, the first: {:?}",
        outcomes.rejected.len(),
        outcomes.rejected.first()
    );
    for order in &backlog.orders {
        // In the log's order, as downstream readers replay it.
        let versions: Vec<u64> = outcomes
            .accepted
            .iter()
            .filter(|r| &r.order_id == order)
            .map(|r| r.version)
            .collect();
        assert_eq!(versions, vec![1, 2, 3], "order {order}");
    }
    assert_check_clean(settings, backlog.positions.len()).await;
    let mut successor_log = String::new();
    std::fs::File::open(&log_path)
        .unwrap()
        .read_to_string(&mut successor_log)
        .unwrap();
    assert!(
        successor_log.contains("restore waits"),
        "the successor restored while the frozen owner's transaction was open (else this test \
         did not reach the window it is about): {successor_log}"
    );
}

/// A transactional producer with its own id, transactions initialised.
fn transactional_producer(settings: &orderflow::config::Settings, id: &str) -> BaseProducer {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.bootstrap_servers)
        .set("transactional.id", id)
        .set("transaction.timeout.ms", "60000")
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer
}

/// Writes `order_id` (created, version 1) to `partition` of the state topic inside an open
/// transaction, and waits until the record is in the log.
fn open_transaction_writing(
    settings: &orderflow::config::Settings,
    producer: &BaseProducer,
    partition: i32,
    order_id: &str,
) {
    let definition = definition();
    let state = OrderState {
        state: definition.state_id("Pending").unwrap(),
        version: 1,
        created_at_ms: 1,
        updated_at_ms: 1,
        recent: Vec::new(),
        parked: Vec::new(),
    };
    let mut value = Vec::new();
    orderflow::codec::encode_order_state(&definition, order_id, &state, &mut value);
    producer.begin_transaction().unwrap();
    producer
        .send(
            BaseRecord::to(&settings.topics.state)
                .partition(partition)
                .key(order_id)
                .payload(&value),
        )
        .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_ends_only_when_the_transactions_open_at_assignment_have_committed_or_aborted() {
    let settings = processor_settings(2, &unique("open"));
    create_topics(&settings).await;
    let committing = transactional_producer(&settings, &unique("committing"));
    let aborting = transactional_producer(&settings, &unique("aborting"));
    open_transaction_writing(&settings, &committing, 0, "kept");
    open_transaction_writing(&settings, &aborting, 1, "dropped");

    let (events, restored) = channel();
    let restore = {
        let settings = settings.clone();
        std::thread::spawn(move || {
            restore_partitions(
                1,
                &settings,
                &definition(),
                &[0, 1],
                &events,
                &AtomicBool::new(false),
                None,
            )
        })
    };
    let next_restored = |timeout: Duration| match restored.recv_timeout(timeout) {
        Ok(RestoreEvent::Done(done)) => Ok(done),
        Ok(RestoreEvent::Failed(error)) => panic!("restore failed: {error}"),
        Err(e) => Err(e),
    };
    assert_eq!(
        next_restored(Duration::from_secs(3)).map(|d| d.partition),
        Err(RecvTimeoutError::Timeout),
        "no partition is restored while a transaction below its high watermark is open"
    );

    committing
        .commit_transaction(Duration::from_secs(30))
        .unwrap();
    let first = next_restored(Duration::from_secs(30)).expect("partition 0 restored");
    assert_eq!(first.partition, 0);
    assert_eq!(first.cache.get("kept").map(|s| s.version), Some(1));
    assert_eq!(
        next_restored(Duration::from_secs(2)).map(|d| d.partition),
        Err(RecvTimeoutError::Timeout),
        "partition 1 still waits for its transaction"
    );

    aborting.abort_transaction(Duration::from_secs(30)).unwrap();
    let second = next_restored(Duration::from_secs(30)).expect("partition 1 restored");
    assert_eq!(second.partition, 1);
    assert_eq!(second.cache.len(), 0, "the aborted record is not restored");
    restore.join().unwrap().unwrap();
}
