//! The disk backend (`state.backend = "disk"`) against the real broker: committed changes reach
//! the local store with a checkpoint, a restart restores from that checkpoint and reads only the
//! state topic's tail, and a store that cannot be trusted is discarded and rebuilt from the topic.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use orderflow::config::{Settings, StateBackend};
use orderflow::kafka::partitioner::partition_for;
use orderflow::machine::RejectCode;
use orderflow::state::store::{LocalStore, StoreChange, StoreIdentity, FORMAT_VERSION};

use crate::support::*;

fn disk_settings(name: &str, dir: &Path) -> Settings {
    let mut settings = processor_settings(3, &unique(name));
    settings.state.backend = StateBackend::Disk;
    settings.state.dir = dir.to_path_buf();
    settings.state.memory_budget_mb = 16;
    settings
}

/// Opens the stopped service's store as the service does (same identity), for inspection.
fn open_store(settings: &Settings) -> LocalStore {
    let cluster_id = orderflow::kafka::Topics::connect(&settings.kafka)
        .unwrap()
        .cluster_id()
        .unwrap_or_default();
    let identity = StoreIdentity {
        format: FORMAT_VERSION,
        cluster_id,
        state_topic: settings.topics.state.clone(),
        topic_id: None,
        definition_hash: definition().hash().to_string(),
    };
    let opened = LocalStore::open(
        &settings.state.dir,
        &settings.instance_id,
        &identity,
        8 << 20,
    )
    .expect("the stopped service's store opens");
    assert_eq!(
        opened.discarded, None,
        "the test opens it as the service wrote it"
    );
    opened.store
}

/// The store of a cleanly stopped instance holds exactly the orders a restore from the state
/// topic alone finds, each in the same state: the differential check of the disk backend.
fn assert_store_equals_topic(settings: &Settings) {
    use orderflow::machine::OrderState;
    use orderflow::state::restore::{restore_partitions, RestoreEvent};
    let store = open_store(settings);
    let definition = definition();
    let (tx, rx) = std::sync::mpsc::channel();
    let partitions: Vec<i32> = (0..settings.topics.partitions).collect();
    let no_cancel = std::sync::atomic::AtomicBool::new(false);
    restore_partitions(1, settings, &definition, &partitions, &tx, &no_cancel, None)
        .expect("a restore from the topic alone");
    let mut compared = 0;
    while let Ok(RestoreEvent::Done(done)) = rx.try_recv() {
        let from_topic: BTreeMap<String, OrderState> = done
            .cache
            .iter()
            .map(|(id, state)| (id.to_string(), state))
            .collect();
        let from_store: BTreeMap<String, OrderState> = store
            .orders(done.partition)
            .unwrap()
            .map(|item| {
                let (id, bytes) = item.unwrap();
                let (_, state) = orderflow::codec::decode_order_state(&definition, &bytes).unwrap();
                (id, state)
            })
            .collect();
        let differing: Vec<&String> = from_topic
            .keys()
            .chain(from_store.keys())
            .filter(|id| from_store.get(*id) != from_topic.get(*id))
            .collect();
        assert!(
            differing.is_empty(),
            "partition {}: {} of {} orders differ between the store and the topic, e.g. {:?}: \
             store {:?}, topic {:?}",
            done.partition,
            differing.len(),
            from_topic.len(),
            differing.first(),
            differing.first().and_then(|id| from_store.get(*id)),
            differing.first().and_then(|id| from_topic.get(*id)),
        );
        compared += 1;
    }
    assert_eq!(compared, partitions.len(), "every partition compared");
}

/// A store write that forgets `order_id` (of a three-partition topic set), as a tombstone would.
fn forgotten_in_store(order_id: &str) -> StoreChange<'_> {
    StoreChange {
        partition: partition_for(order_id.as_bytes(), 3),
        order_id,
        value: None,
        deadline_before: None,
        deadline_after: None,
    }
}

/// Forgets `order_id` in the store only, its partition's checkpoint unchanged: a run that trusts
/// the store does not know the order; one that replays the topic does.
fn forget_at_its_checkpoint(store: &LocalStore, order_id: &str) {
    let partition = partition_for(order_id.as_bytes(), 3);
    let checkpoint = store.checkpoint(partition).unwrap().unwrap();
    store
        .write(
            &[forgotten_in_store(order_id)],
            &BTreeMap::from([(partition, checkpoint.next_offset)]),
            checkpoint.written_at_ms,
        )
        .unwrap();
}

/// Runs the service until `expected` outcomes are in, then stops it.
async fn run_until(settings: &Settings, expected: usize) -> Outcomes {
    let processor = RunningProcessor::start(settings);
    let outcomes = outcomes_within(settings, expected, Duration::from_secs(90)).await;
    processor.stop();
    outcomes
}

/// Sixty orders created by a first run, stopped cleanly.
async fn sixty_orders_created(settings: &Settings) -> Vec<String> {
    create_topics(settings).await;
    let orders: Vec<String> = (0..60).map(|i| format!("{}-{i}", unique("o"))).collect();
    let creates: Vec<_> = orders.iter().map(|o| request(o, "create")).collect();
    produce(settings, &creates).await;
    let outcomes = run_until(settings, orders.len()).await;
    assert_eq!(
        outcomes.accepted.len(),
        orders.len(),
        "{:?}",
        outcomes.rejected
    );
    orders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_orders_reach_the_local_store_with_a_checkpoint_at_the_state_topics_end() {
    let dir = tempfile::tempdir().unwrap();
    let settings = disk_settings("store-write", dir.path());
    let orders = sixty_orders_created(&settings).await;

    // The store records what it was written for, the state topic's id included.
    let topics = orderflow::kafka::Topics::connect(&settings.kafka).unwrap();
    let recorded = {
        let keyspace =
            fjall::Config::new(settings.state.dir.join(&settings.instance_id).join("fjall"))
                .open()
                .unwrap();
        let meta = keyspace
            .open_partition("meta", fjall::PartitionCreateOptions::default())
            .unwrap();
        let bytes = meta.get("identity").unwrap().expect("an identity record");
        serde_json::from_slice::<StoreIdentity>(&bytes).unwrap()
    };
    assert_eq!(
        recorded.topic_id,
        Some(topics.topic_id(&settings.topics.state).await.unwrap())
    );
    assert_eq!(recorded.cluster_id, topics.cluster_id().unwrap());

    let store = open_store(&settings);
    for order in &orders {
        let partition = partition_for(order.as_bytes(), 3);
        assert!(
            store.get(partition, order).unwrap().is_some(),
            "order {order} is in partition {partition}'s store"
        );
    }
    for partition in 0..3 {
        let end = read_to_end_of_partition(&settings, partition);
        let checkpoint = store.checkpoint(partition).unwrap().expect("a checkpoint");
        // The last state record is at end − 2 (the commit marker follows it).
        assert_eq!(
            checkpoint.next_offset,
            end - 1,
            "partition {partition}: one above the last state record"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_takes_its_orders_from_the_local_store_and_only_the_tail_from_the_topic() {
    let dir = tempfile::tempdir().unwrap();
    let settings = disk_settings("store-restart", dir.path());
    let orders = sixty_orders_created(&settings).await;

    // Forget one order in the store only, checkpoint unchanged: a restart that restores from the
    // checkpoint does not know it; one that replayed the topic would.
    let forgotten = &orders[0];
    forget_at_its_checkpoint(&open_store(&settings), forgotten);
    let confirms: Vec<_> = orders.iter().map(|o| request(o, "confirm")).collect();
    produce(&settings, &confirms).await;
    let outcomes = run_until(&settings, 2 * orders.len()).await;

    let confirmed: Vec<&str> = outcomes
        .accepted
        .iter()
        .filter(|a| a.version == 2)
        .map(|a| a.order_id.as_str())
        .collect();
    assert_eq!(confirmed.len(), orders.len() - 1, "{:?}", outcomes.rejected);
    assert_eq!(outcomes.rejected.len(), 1);
    assert_eq!(&outcomes.rejected[0].order_id, forgotten);
    assert_eq!(outcomes.rejected[0].reason, RejectCode::UnknownOrder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_of_partitions_gone_longer_than_delete_retention_are_removed_and_recent_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let settings = disk_settings("store-gone", dir.path());
    sixty_orders_created(&settings).await;
    // Stores of partitions 7 and 8 (the topic has 3), as partitions that moved away leave them:
    // 7's checkpoint is two days old (the topic's delete.retention.ms is one day), 8's is fresh.
    {
        let store = open_store(&settings);
        let now = orderflow::clock::wall_clock_ms();
        for (partition, written_at) in [(7, now - 2 * 86_400_000), (8, now)] {
            let order = StoreChange {
                partition,
                order_id: "moved-away",
                value: Some(b"x"),
                deadline_before: None,
                deadline_after: None,
            };
            store
                .write(&[order], &BTreeMap::from([(partition, 1)]), written_at)
                .unwrap();
        }
    }
    let processor = RunningProcessor::start(&settings);
    // The sweep runs with the progress report, every 10 s, once nothing restores.
    tokio::time::sleep(Duration::from_secs(13)).await;
    processor.stop();
    assert_eq!(
        open_store(&settings).stored_partitions(),
        vec![0, 1, 2, 8],
        "7 removed; the owned partitions and the recent 8 kept"
    );
}

/// Sixty orders created by a first run; `damage` is done to the stopped store's engine directory
/// (after one order was forgotten in it, so that a store trusted against the rules shows in the
/// decisions); a second run confirms every order. Every confirm must be accepted, as by a
/// processor restored from the topic alone, and the store afterwards must equal the topic.
async fn sixty_confirms_decided_as_from_the_topic_after(name: &str, damage: impl FnOnce(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let settings = disk_settings(name, dir.path());
    let orders = sixty_orders_created(&settings).await;
    {
        let store = open_store(&settings);
        forget_at_its_checkpoint(&store, &orders[0]);
        store.persist().unwrap();
    }
    damage(&settings.state.dir.join(&settings.instance_id).join("fjall"));

    let confirms: Vec<_> = orders.iter().map(|o| request(o, "confirm")).collect();
    produce(&settings, &confirms).await;
    let outcomes = run_until(&settings, 2 * orders.len()).await;
    let confirmed = outcomes.accepted.iter().filter(|a| a.version == 2).count();
    assert_eq!(confirmed, orders.len(), "rejected: {:?}", outcomes.rejected);
    assert_store_equals_topic(&settings);
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Flushes the stopped store's partitions from its journal into segment files (on disk, as a
/// store holding more orders than its write buffer has them), returning those files.
fn flush_into_segments(dir: &Path) -> Vec<std::path::PathBuf> {
    {
        let keyspace = fjall::Config::new(dir).open().unwrap();
        for name in keyspace.list_partitions() {
            let partition = keyspace
                .open_partition(&name, fjall::PartitionCreateOptions::default())
                .unwrap();
            partition.rotate_memtable_and_wait().unwrap();
        }
        keyspace.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let segments: Vec<_> = files_under(&dir.join("partitions"))
        .into_iter()
        .filter(|f| f.parent().is_some_and(|p| p.ends_with("segments")))
        .collect();
    assert!(!segments.is_empty(), "the store has segment files");
    segments
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_segments_were_garbled_while_stopped_decides_as_a_restore_from_the_topic() {
    sixty_confirms_decided_as_from_the_topic_after("store-garbled", |dir| {
        for path in flush_into_segments(dir) {
            let mut bytes = std::fs::read(&path).unwrap();
            let half = bytes.len() / 2;
            for b in bytes.iter_mut().take(half).skip(16) {
                *b ^= 0x5a;
            }
            std::fs::write(&path, bytes).unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_files_were_truncated_while_stopped_decides_as_a_restore_from_the_topic() {
    sixty_confirms_decided_as_from_the_topic_after("store-truncated", |dir| {
        for path in flush_into_segments(dir)
            .into_iter()
            .chain(files_under(&dir.join("journals")))
        {
            let len = std::fs::metadata(&path).unwrap().len();
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(len / 2).unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_an_older_format_is_discarded_and_decisions_equal_a_restore_from_the_topic() {
    sixty_confirms_decided_as_from_the_topic_after("store-old-format", |dir| {
        // What an older build left: the same store, its identity naming the format before this one.
        let keyspace = fjall::Config::new(dir).open().unwrap();
        let meta = keyspace
            .open_partition("meta", fjall::PartitionCreateOptions::default())
            .unwrap();
        let bytes = meta.get("identity").unwrap().expect("an identity record");
        let mut identity: StoreIdentity = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(identity.format, FORMAT_VERSION);
        identity.format = FORMAT_VERSION - 1;
        meta.insert("identity", serde_json::to_vec(&identity).unwrap())
            .unwrap();
        keyspace.persist(fjall::PersistMode::SyncAll).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_checkpoint_is_beyond_the_topic_is_discarded_and_rebuilt_from_the_topic() {
    let dir = tempfile::tempdir().unwrap();
    let settings = disk_settings("store-distrust", dir.path());
    let orders = sixty_orders_created(&settings).await;

    // Every partition's store forgets its orders and claims a checkpoint far above the end (as
    // after the topic was recreated): it must not be trusted.
    {
        let store = open_store(&settings);
        let changes: Vec<StoreChange<'_>> = orders.iter().map(|o| forgotten_in_store(o)).collect();
        let far = (0..3).map(|p| (p, 1_000_000)).collect();
        store.write(&changes, &far, 0).unwrap();
    }
    let confirms: Vec<_> = orders.iter().map(|o| request(o, "confirm")).collect();
    produce(&settings, &confirms).await;
    let outcomes = run_until(&settings, 2 * orders.len()).await;

    assert!(outcomes.rejected.is_empty(), "{:?}", outcomes.rejected);
    let confirmed = outcomes.accepted.iter().filter(|a| a.version == 2).count();
    assert_eq!(confirmed, orders.len(), "every order known again");
    let store = open_store(&settings);
    for partition in 0..3 {
        let checkpoint = store.checkpoint(partition).unwrap().unwrap();
        assert!(
            checkpoint.next_offset < 1_000_000,
            "partition {partition} rebuilt with a real checkpoint"
        );
    }
}

/// The state partition's end offset (high watermark).
fn read_to_end_of_partition(settings: &Settings, partition: i32) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.bootstrap_servers)
        .create()
        .unwrap();
    consumer
        .fetch_watermarks(&settings.topics.state, partition, Duration::from_secs(10))
        .unwrap()
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_request_of_an_order_only_on_disk_expires_at_its_deadline_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let settings = disk_settings("store-expiry", dir.path());
    create_topics(&settings).await;
    let start = 1_800_000_000_000;
    let order = unique("order");
    // "ship" before "confirm" is parked until confirmed or expired.
    produce(
        &settings,
        &[request(&order, "create"), request(&order, "ship")],
    )
    .await;
    let clock = std::sync::Arc::new(ManualClock::at(start));
    let first = RunningProcessor::run(service(&settings, definition()).with_clock(clock.clone()));
    let created = outcomes_within(&settings, 1, Duration::from_secs(60)).await;
    assert_eq!(created.accepted.len(), 1);
    // Let the parking commit before stopping.
    std::thread::sleep(Duration::from_secs(1));
    first.stop();

    // After the restart the order is on disk only; its deadline entry is there too.
    let clock = std::sync::Arc::new(ManualClock::at(start));
    let second = RunningProcessor::run(service(&settings, definition()).with_clock(clock.clone()));
    std::thread::sleep(Duration::from_secs(3));
    clock.advance(settings.processor.parking_max_wait_ms as i64);
    let outcomes = outcomes_within(&settings, 2, Duration::from_secs(30)).await;
    second.stop();
    assert_eq!(outcomes.rejected.len(), 1, "{:?}", outcomes.accepted);
    assert_eq!(outcomes.rejected[0].reason, RejectCode::Expired);
    assert_eq!(outcomes.rejected[0].decided_at_ms, start + 600_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_the_kafka_commit_and_the_store_write_is_caught_up_from_the_checkpoint() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    // One partition: every batch touches it, so its checkpoint is behind by exactly the batch
    // the process died after.
    let mut backlog = crate::crash::three_steps_of_sixty_orders_produced_on("store-kill", 1).await;
    backlog.settings.state.backend = StateBackend::Disk;
    backlog.settings.state.dir = dir.path().to_path_buf();
    let settings = &backlog.settings;

    // Batch 3 commits in Kafka, then the process dies before the store hears of it.
    let mut first = crate::crash::spawn_binary(settings, Some("kill-before-store:3"));
    let status = first.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "killed by its failpoint: {status:?}"
    );
    let mut second = crate::crash::spawn_binary(settings, None);
    let outcomes =
        outcomes_within(settings, backlog.positions.len(), Duration::from_secs(90)).await;
    let _ = second.kill();
    let _ = second.wait();

    let per_input = outcomes.per_input();
    for position in &backlog.positions {
        assert_eq!(per_input.get(position), Some(&1), "input {position:?}");
    }
    assert!(outcomes.rejected.is_empty(), "{:?}", outcomes.rejected);
    for order in &backlog.orders {
        let mut versions: Vec<u64> = outcomes
            .accepted
            .iter()
            .filter(|a| &a.order_id == order)
            .map(|a| a.version)
            .collect();
        versions.sort();
        assert_eq!(versions, vec![1, 2, 3], "order {order}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_write_that_fails_after_the_commit_pauses_the_partition_and_catches_it_up() {
    let dir = tempfile::tempdir().unwrap();
    // One partition, batches of 40: 60 creates then confirms of the first 20 orders. Orders
    // 40..60 change last in batch 2, whose store write fails: nothing later covers for it.
    let mut settings = disk_settings("store-full", dir.path());
    settings.topics.partitions = 1;
    settings.processor.batch_max_records = 40;
    let settings = &settings;
    create_topics(settings).await;
    let orders: Vec<String> = (0..60).map(|i| format!("{}-{i}", unique("o"))).collect();
    let mut requests: Vec<_> = orders.iter().map(|o| request(o, "create")).collect();
    requests.extend(orders[..20].iter().map(|o| request(o, "confirm")));
    let positions = produce(settings, &requests).await;

    // Batch 2 commits in Kafka, then its store write fails as on a full disk: the partition
    // catches up from its checkpoint and goes on, in the same process.
    let mut running = crate::crash::spawn_binary(settings, Some("fail-store-write:2"));
    let outcomes = outcomes_within(settings, positions.len(), Duration::from_secs(90)).await;
    assert_eq!(
        running.try_wait().unwrap(),
        None,
        "the process goes on after a failed store write"
    );
    crate::crash::sigterm(&running);
    let status = running.wait().unwrap();
    assert!(status.success(), "a clean stop: {status:?}");

    let per_input = outcomes.per_input();
    for position in &positions {
        assert_eq!(per_input.get(position), Some(&1), "input {position:?}");
    }
    assert!(outcomes.rejected.is_empty(), "{:?}", outcomes.rejected);
    // The catch-up wrote what the failed write missed.
    assert_store_equals_topic(settings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_evicted_from_memory_under_the_budget_are_read_back_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = disk_settings("store-evict", dir.path());
    // 512 kB for the hot orders of three partitions: a few thousand orders each fill it twice.
    settings.state.memory_budget_mb = 1;
    create_topics(&settings).await;
    let orders: Vec<String> = (0..9_000).map(|i| format!("{}-{i}", unique("o"))).collect();
    let creates: Vec<_> = orders.iter().map(|o| request(o, "create")).collect();
    produce(&settings, &creates).await;
    let service = service(&settings, definition());
    let metrics = service.metrics().clone();
    let processor = RunningProcessor::run(service);
    outcomes_within(&settings, orders.len(), Duration::from_secs(120)).await;
    let evicted = metrics.evicted_orders.get();
    assert!(evicted >= 1_000, "{evicted} orders left memory");
    let hot_bytes = metrics.cached_order_bytes.get();
    eprintln!(
        "DIAG cached_orders={} evicted={} hot_bytes={}",
        metrics.cached_orders.get(),
        evicted,
        hot_bytes
    );
    assert!(
        (0..=512 << 10).contains(&hot_bytes),
        "the hot orders take {hot_bytes} bytes, over the 512 kB budget"
    );

    // The first orders written are the first evicted: confirming them reads them from the store.
    let confirms: Vec<_> = orders[..300]
        .iter()
        .map(|o| request(o, "confirm"))
        .collect();
    produce(&settings, &confirms).await;
    let outcomes = outcomes_within(&settings, orders.len() + 300, Duration::from_secs(60)).await;
    processor.stop();
    let confirmed = outcomes.accepted.iter().filter(|a| a.version == 2).count();
    assert_eq!(
        confirmed,
        300,
        "rejected: {:?}",
        &outcomes.rejected[..outcomes.rejected.len().min(3)]
    );
}

/// Waits until `done` holds, checking every 100 ms, for at most `limit`.
fn wait_until(limit: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_moves_away_and_back_catches_up_with_the_other_owners_changes() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let settings_a = disk_settings("store-move", dir_a.path());
    let mut settings_b = settings_a.clone();
    settings_b.instance_id = format!("{}-b", settings_a.instance_id);
    settings_b.state.dir = dir_b.path().to_path_buf();
    create_topics(&settings_a).await;
    let orders: Vec<String> = (0..60).map(|i| format!("{}-{i}", unique("o"))).collect();
    let step =
        |transition: &str| -> Vec<_> { orders.iter().map(|o| request(o, transition)).collect() };

    // A alone creates every order.
    let service_a = service(&settings_a, definition());
    let metrics_a = service_a.metrics().clone();
    let health_a = std::sync::Arc::clone(service_a.health());
    let a = RunningProcessor::run(service_a);
    produce(&settings_a, &step("create")).await;
    outcomes_within(&settings_a, 60, Duration::from_secs(60)).await;

    // B joins and takes some partitions (restoring them from the topic: its store is empty);
    // the confirms of those partitions are decided by B.
    let service_b = service(&settings_b, definition());
    let metrics_b = service_b.metrics().clone();
    let health_b = std::sync::Arc::clone(service_b.health());
    let b = RunningProcessor::run(service_b);
    wait_until(Duration::from_secs(60), "B owns partitions", || {
        health_b.is_ready() && metrics_b.restored_records.get() > 0
    });
    wait_until(Duration::from_secs(60), "A settled", || health_a.is_ready());
    produce(&settings_a, &step("confirm")).await;
    outcomes_within(&settings_a, 120, Duration::from_secs(60)).await;
    let moved_orders = metrics_b.restored_records.get();
    let restored_by_a_before = metrics_a.restored_records.get();

    // B leaves: its partitions come back to A, whose stores of them stopped at the creates.
    b.stop();
    wait_until(
        Duration::from_secs(60),
        "A restored the partitions back",
        || metrics_a.restored_records.get() > restored_by_a_before && health_a.is_ready(),
    );
    produce(&settings_a, &step("ship")).await;
    let outcomes = outcomes_within(&settings_a, 180, Duration::from_secs(60)).await;
    a.stop();

    assert!(outcomes.rejected.is_empty(), "{:?}", outcomes.rejected);
    for order in &orders {
        let mut versions: Vec<u64> = outcomes
            .accepted
            .iter()
            .filter(|x| &x.order_id == order)
            .map(|x| x.version)
            .collect();
        versions.sort();
        assert_eq!(versions, vec![1, 2, 3], "order {order}");
    }
    // A read only B's confirms of the moved partitions (one state record per moved order), not
    // their creates again: it caught up from its checkpoint.
    assert_eq!(
        metrics_a.restored_records.get() - restored_by_a_before,
        moved_orders,
        "A's catch-up read only the tail"
    );
    let settings_a = settings_a.clone();
    tokio::task::spawn_blocking(move || assert_store_equals_topic(&settings_a))
        .await
        .unwrap();
}

/// Makes the state topic's cleaner remove tombstones within seconds.
async fn compact_eagerly(settings: &Settings) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.bootstrap_servers)
        .create()
        .unwrap();
    // AlterConfigs replaces the topic's whole configuration: the policy is named again.
    let config = AlterConfig::new(ResourceSpecifier::Topic(&settings.topics.state))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "100")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("min.compaction.lag.ms", "0")
        .set("delete.retention.ms", "100");
    for result in admin
        .alter_configs(&[config], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
}

/// Every key left in a state partition (read_uncommitted, from the beginning).
fn keys_in_state_partition(settings: &Settings, partition: i32) -> Vec<Vec<u8>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.bootstrap_servers)
        .set("group.id", unique("keys"))
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(
        &settings.topics.state,
        partition,
        rdkafka::Offset::Beginning,
    )
    .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut keys = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => keys.push(m.key().unwrap_or_default().to_vec()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            _ => {}
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_older_than_delete_retention_is_not_trusted_after_a_tombstone_was_compacted_away(
) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let dir = tempfile::tempdir().unwrap();
    let settings = disk_settings("store-compacted", dir.path());
    create_topics(&settings).await;
    compact_eagerly(&settings).await;
    let gone = unique("gone");
    let kept = unique("kept");
    produce(
        &settings,
        &[request(&gone, "create"), request(&kept, "create")],
    )
    .await;
    run_until(&settings, 2).await;

    // While the instance is down, the order is forgotten (as another owner's retention would)
    // and the cleaner removes its tombstone: a catch-up from the old checkpoint cannot see it.
    let partition = partition_for(gone.as_bytes(), 3);
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.bootstrap_servers)
        .create()
        .unwrap();
    let send = |key: String| {
        let producer = producer.clone();
        let topic = settings.topics.state.clone();
        async move {
            producer
                .send(
                    FutureRecord::<String, [u8]>::to(&topic)
                        .partition(partition)
                        .key(&key),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
    };
    send(gone.clone()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        // Fresh records roll segments, so the ones holding the order become cleanable.
        send(unique("filler")).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let settings = settings.clone();
        let keys =
            tokio::task::spawn_blocking(move || keys_in_state_partition(&settings, partition))
                .await
                .unwrap();
        if !keys.iter().any(|k| k == gone.as_bytes()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cleaner did not remove the order's records in time"
        );
    }

    produce(
        &settings,
        &[request(&gone, "confirm"), request(&kept, "confirm")],
    )
    .await;
    let outcomes = run_until(&settings, 4).await;
    let rejected: Vec<_> = outcomes
        .rejected
        .iter()
        .map(|r| (r.order_id.as_str(), r.reason))
        .collect();
    assert_eq!(rejected, vec![(gone.as_str(), RejectCode::UnknownOrder)]);
    assert!(outcomes
        .accepted
        .iter()
        .any(|a| a.order_id == kept && a.version == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_from_the_checkpoint_applies_a_tombstone_written_after_it() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let dir = tempfile::tempdir().unwrap();
    let settings = disk_settings("store-tombstone", dir.path());
    let orders = sixty_orders_created(&settings).await;

    // While the instance is down, another owner forgets one order: a tombstone after the
    // checkpoint, which the catch-up must apply to the store.
    let forgotten = &orders[0];
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.bootstrap_servers)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::<String, [u8]>::to(&settings.topics.state)
                .partition(partition_for(forgotten.as_bytes(), 3))
                .key(forgotten),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let confirms: Vec<_> = orders.iter().map(|o| request(o, "confirm")).collect();
    produce(&settings, &confirms).await;
    let outcomes = run_until(&settings, 2 * orders.len()).await;

    let rejected: Vec<_> = outcomes
        .rejected
        .iter()
        .map(|r| (r.order_id.as_str(), r.reason))
        .collect();
    assert_eq!(
        rejected,
        vec![(forgotten.as_str(), RejectCode::UnknownOrder)]
    );
    let store = open_store(&settings);
    assert_eq!(
        store
            .get(partition_for(forgotten.as_bytes(), 3), forgotten)
            .unwrap(),
        None,
        "gone from the store too"
    );
    drop(store);
    tokio::task::spawn_blocking(move || assert_store_equals_topic(&settings))
        .await
        .unwrap();
}
