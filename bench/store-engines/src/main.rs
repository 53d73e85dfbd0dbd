//! One engine, one process, one workload: the order store's access pattern run against fjall,
//! LMDB (heed) or RocksDB, printed as one JSON line. `bench/store_engines.py` alternates the
//! engines and writes the table of docs/benchmarks.md.
//!
//! The workload is what orderflow's store does: per Kafka partition one keyspace (fjall
//! partition, LMDB database, RocksDB column family) holding `o` + order id → ~200-byte order,
//! `d` + deadline (big-endian ms) + order id → nothing, and `c` → the checkpoint offset. A
//! transaction's changes are one atomic write batch without fsync: each changed order, its old
//! deadline entry removed and its new one written, and the checkpoint of each partition touched.

use std::path::Path;
use std::time::{Duration, Instant};

const VALUE_BYTES: usize = 200;

/// What the store needs of an engine.
trait Engine {
    /// Writes one transaction's changes atomically.
    fn write(&mut self, batch: &[Change]);
    /// An order's value.
    fn get(&self, partition: usize, key: &[u8]) -> Option<Vec<u8>>;
    /// Deadline entries of `partition` below `until`, at most `limit`: how many.
    fn due(&self, partition: usize, until: u64, limit: usize) -> usize;
    /// Makes everything written durable (for measuring disk bytes).
    fn flush(&mut self);
}

/// One write of a batch.
enum Change {
    Put(usize, Vec<u8>, Vec<u8>),
    Delete(usize, Vec<u8>),
}

fn partition_name(p: usize) -> String {
    format!("p{p}")
}

mod fjall_engine {
    use super::*;
    use fjall::{Config, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};

    pub struct Fjall {
        keyspace: Keyspace,
        partitions: Vec<PartitionHandle>,
    }

    impl Fjall {
        pub fn open(dir: &Path, partitions: usize, cache_mb: u64) -> Fjall {
            let keyspace = Config::new(dir)
                .cache_size(cache_mb << 20)
                .max_write_buffer_size(cache_mb << 20)
                .open()
                .expect("open fjall");
            let partitions = (0..partitions)
                .map(|p| {
                    keyspace
                        .open_partition(&partition_name(p), PartitionCreateOptions::default())
                        .expect("open partition")
                })
                .collect();
            Fjall {
                keyspace,
                partitions,
            }
        }
    }

    impl Engine for Fjall {
        fn write(&mut self, batch: &[Change]) {
            let mut b = self.keyspace.batch();
            for change in batch {
                match change {
                    Change::Put(p, k, v) => b.insert(&self.partitions[*p], k, v),
                    Change::Delete(p, k) => b.remove(&self.partitions[*p], k),
                }
            }
            b.commit().expect("commit");
        }
        fn get(&self, partition: usize, key: &[u8]) -> Option<Vec<u8>> {
            self.partitions[partition]
                .get(key)
                .expect("get")
                .map(|v| v.to_vec())
        }
        fn due(&self, partition: usize, until: u64, limit: usize) -> usize {
            let mut end = vec![b'd'];
            end.extend_from_slice(&until.to_be_bytes());
            self.partitions[partition]
                .range(b"d".to_vec()..end)
                .take(limit)
                .count()
        }
        fn flush(&mut self) {
            self.keyspace.persist(PersistMode::SyncAll).expect("persist");
        }
    }
}

mod lmdb_engine {
    use super::*;
    use heed::types::Bytes;
    use heed::{Database, Env, EnvFlags, EnvOpenOptions};

    pub struct Lmdb {
        env: Env,
        dbs: Vec<Database<Bytes, Bytes>>,
    }

    impl Lmdb {
        pub fn open(dir: &Path, partitions: usize) -> Lmdb {
            // SAFETY: the directory is this process's alone, opened once.
            let env = unsafe {
                EnvOpenOptions::new()
                    .map_size(64 << 30)
                    .max_dbs(partitions as u32 + 1)
                    .flags(EnvFlags::NO_SYNC | EnvFlags::NO_META_SYNC)
                    .open(dir)
                    .expect("open lmdb")
            };
            let mut wtxn = env.write_txn().expect("txn");
            let dbs = (0..partitions)
                .map(|p| {
                    env.create_database(&mut wtxn, Some(&partition_name(p)))
                        .expect("db")
                })
                .collect();
            wtxn.commit().expect("commit");
            Lmdb { env, dbs }
        }
    }

    impl Engine for Lmdb {
        fn write(&mut self, batch: &[Change]) {
            let mut wtxn = self.env.write_txn().expect("txn");
            for change in batch {
                match change {
                    Change::Put(p, k, v) => self.dbs[*p].put(&mut wtxn, k, v).expect("put"),
                    Change::Delete(p, k) => {
                        self.dbs[*p].delete(&mut wtxn, k).expect("delete");
                    }
                }
            }
            wtxn.commit().expect("commit");
        }
        fn get(&self, partition: usize, key: &[u8]) -> Option<Vec<u8>> {
            let rtxn = self.env.read_txn().expect("txn");
            self.dbs[partition]
                .get(&rtxn, key)
                .expect("get")
                .map(<[u8]>::to_vec)
        }
        fn due(&self, partition: usize, until: u64, limit: usize) -> usize {
            let rtxn = self.env.read_txn().expect("txn");
            let mut end = vec![b'd'];
            end.extend_from_slice(&until.to_be_bytes());
            let start: &[u8] = b"d";
            self.dbs[partition]
                .range(
                    &rtxn,
                    &(
                        std::ops::Bound::Included(start),
                        std::ops::Bound::Excluded(end.as_slice()),
                    ),
                )
                .expect("range")
                .take(limit)
                .count()
        }
        fn flush(&mut self) {
            self.env.force_sync().expect("sync");
        }
    }
}

#[cfg(feature = "rocksdb")]
mod rocksdb_engine {
    use super::*;
    use rocksdb::{
        BlockBasedOptions, Cache, ColumnFamilyDescriptor, FlushOptions, Options, WriteBatch,
        WriteBufferManager, WriteOptions, DB,
    };

    pub struct Rocks {
        db: DB,
        names: Vec<String>,
        write_options: WriteOptions,
    }

    impl Rocks {
        pub fn open(dir: &Path, partitions: usize, cache_mb: usize) -> Rocks {
            // One block cache with a strict limit; memtables are charged to it.
            let cache = Cache::new_lru_cache(cache_mb << 20);
            let manager =
                WriteBufferManager::new_write_buffer_manager_with_cache(cache_mb << 20, true, cache.clone());
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            let mut cf = Options::default();
            cf.set_block_based_table_factory(&table);
            cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            // The WAL is off: the column families flush together, so a crash leaves a
            // consistent (older) store and the tail is replayed from Kafka.
            opts.set_atomic_flush(true);
            opts.set_write_buffer_manager(&manager);
            let names: Vec<String> = (0..partitions).map(partition_name).collect();
            let descriptors = names
                .iter()
                .map(|n| ColumnFamilyDescriptor::new(n, cf.clone()));
            let db = DB::open_cf_descriptors(&opts, dir, descriptors).expect("open rocksdb");
            let mut write_options = WriteOptions::default();
            write_options.disable_wal(true);
            Rocks {
                db,
                names,
                write_options,
            }
        }
    }

    impl Engine for Rocks {
        fn write(&mut self, batch: &[Change]) {
            let mut b = WriteBatch::default();
            for change in batch {
                match change {
                    Change::Put(p, k, v) => {
                        b.put_cf(self.db.cf_handle(&self.names[*p]).expect("cf"), k, v)
                    }
                    Change::Delete(p, k) => {
                        b.delete_cf(self.db.cf_handle(&self.names[*p]).expect("cf"), k)
                    }
                }
            }
            self.db.write_opt(b, &self.write_options).expect("write");
        }
        fn get(&self, partition: usize, key: &[u8]) -> Option<Vec<u8>> {
            let cf = self.db.cf_handle(&self.names[partition]).expect("cf");
            self.db
                .get_pinned_cf(cf, key)
                .expect("get")
                .map(|v| v.to_vec())
        }
        fn due(&self, partition: usize, until: u64, limit: usize) -> usize {
            let cf = self.db.cf_handle(&self.names[partition]).expect("cf");
            let mut end = vec![b'd'];
            end.extend_from_slice(&until.to_be_bytes());
            self.db
                .iterator_cf(
                    cf,
                    rocksdb::IteratorMode::From(b"d", rocksdb::Direction::Forward),
                )
                .map(|r| r.expect("iter"))
                .take_while(|(k, _)| k.as_ref() < end.as_slice())
                .take(limit)
                .count()
        }
        fn flush(&mut self) {
            let cfs: Vec<_> = self
                .names
                .iter()
                .map(|n| self.db.cf_handle(n).expect("cf"))
                .collect();
            self.db
                .flush_cfs_opt(&cfs, &FlushOptions::default())
                .expect("flush");
        }
    }
}

/// xorshift64*: the same pseudo-random workload for every engine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn order_key(i: u64) -> Vec<u8> {
    // An order id as upstream sends them (`o-` + 16 hex digits), spread over the keyspace.
    let mut key = b"o".to_vec();
    key.extend_from_slice(format!("o-{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).as_bytes());
    key
}

fn deadline_key(deadline: u64, order: &[u8]) -> Vec<u8> {
    let mut key = vec![b'd'];
    key.extend_from_slice(&deadline.to_be_bytes());
    key.extend_from_slice(&order[1..]);
    key
}

fn value(rng: &mut Rng, version: u64) -> Vec<u8> {
    // Half noise (ids, timestamps, request ids), half repeated structure (state names, fields).
    let mut v = Vec::with_capacity(VALUE_BYTES);
    v.extend_from_slice(&version.to_le_bytes());
    while v.len() < VALUE_BYTES / 2 {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    while v.len() < VALUE_BYTES {
        v.extend_from_slice(b"confirmed|shipped|");
    }
    v.truncate(VALUE_BYTES);
    v
}

fn deadline_of(i: u64, version: u64) -> u64 {
    1_800_000_000_000 + (i * 7 + version * 86_400_000) % (35 * 86_400_000)
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            // Allocated blocks, not the apparent size (LMDB's file is sparse).
            std::os::unix::fs::MetadataExt::blocks(&meta) * 512
        };
    }
    total
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let engine_name = args.get(1).cloned().unwrap_or_else(|| {
        eprintln!("usage: store-engines fjall|lmdb|rocksdb [--orders N] [--partitions P] [--batch B] [--batches K] [--cache-mb M] [--dir D]");
        std::process::exit(2)
    });
    let orders = arg(&args, "--orders", 2_000_000);
    let partitions = arg(&args, "--partitions", 6) as usize;
    let batch = arg(&args, "--batch", 2000);
    let batches = arg(&args, "--batches", 500);
    let cache_mb = arg(&args, "--cache-mb", 64);
    let base = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(base).expect("temp dir");
    let dir = tmp.path();

    let mut engine: Box<dyn Engine> = match engine_name.as_str() {
        "fjall" => Box::new(fjall_engine::Fjall::open(dir, partitions, cache_mb)),
        "lmdb" => Box::new(lmdb_engine::Lmdb::open(dir, partitions)),
        #[cfg(feature = "rocksdb")]
        "rocksdb" => Box::new(rocksdb_engine::Rocks::open(
            dir,
            partitions,
            cache_mb as usize,
        )),
        other => {
            eprintln!("unknown engine {other} (rocksdb needs --features rocksdb)");
            std::process::exit(2)
        }
    };
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let mut versions = vec![1u64; orders as usize];
    let partition_of = |i: u64| (i % partitions as u64) as usize;

    // Preload: every order created, one transaction per `batch` orders.
    let started = Instant::now();
    let mut offset = 0u64;
    let mut i = 0u64;
    while i < orders {
        let mut changes = Vec::with_capacity(batch as usize * 2 + partitions);
        let end = (i + batch).min(orders);
        for n in i..end {
            let p = partition_of(n);
            let key = order_key(n);
            changes.push(Change::Put(p, deadline_key(deadline_of(n, 1), &key), Vec::new()));
            changes.push(Change::Put(p, key, value(&mut rng, 1)));
        }
        offset += end - i;
        for p in 0..partitions {
            changes.push(Change::Put(p, b"c".to_vec(), offset.to_le_bytes().to_vec()));
        }
        engine.write(&changes);
        i = end;
    }
    let preload_secs = started.elapsed().as_secs_f64();

    // Steady state: each request reads its order, the batch writes every change with the
    // deadline entries moved and the checkpoints, as one transaction does.
    let mut read_times = Vec::with_capacity((batches * batch) as usize);
    let mut write_times = Vec::with_capacity(batches as usize);
    let mut misses = 0u64;
    let started = Instant::now();
    for _ in 0..batches {
        let mut changes = Vec::with_capacity(batch as usize * 3 + partitions);
        for _ in 0..batch {
            let n = rng.next() % orders;
            let p = partition_of(n);
            let key = order_key(n);
            let t = Instant::now();
            let found = engine.get(p, &key);
            read_times.push(t.elapsed());
            if found.is_none() {
                misses += 1;
            }
            let old = versions[n as usize];
            let new = old + 1;
            versions[n as usize] = new;
            changes.push(Change::Delete(p, deadline_key(deadline_of(n, old), &key)));
            changes.push(Change::Put(p, deadline_key(deadline_of(n, new), &key), Vec::new()));
            changes.push(Change::Put(p, key, value(&mut rng, new)));
        }
        offset += batch;
        for p in 0..partitions {
            changes.push(Change::Put(p, b"c".to_vec(), offset.to_le_bytes().to_vec()));
        }
        let t = Instant::now();
        engine.write(&changes);
        write_times.push(t.elapsed());
    }
    let steady_secs = started.elapsed().as_secs_f64();
    read_times.sort();
    write_times.sort();

    let t = Instant::now();
    let mut due = 0;
    for p in 0..partitions {
        due += engine.due(p, deadline_of(0, 0) + 2 * 86_400_000, 10_000);
    }
    let scan_ms = t.elapsed().as_secs_f64() * 1e3;

    let rss_anon_kb = status_kb("RssAnon:");
    let rss_file_kb = status_kb("RssFile:");
    let hwm_kb = status_kb("VmHWM:");
    engine.flush();
    // Let background compaction settle, as a store would between restarts.
    std::thread::sleep(Duration::from_secs(2));
    let disk = dir_bytes(dir);
    println!(
        "{{\"engine\":\"{engine_name}\",\"orders\":{orders},\"partitions\":{partitions},\"batch\":{batch},\"batches\":{batches},\"cache_mb\":{cache_mb},\
\"preload_orders_per_s\":{:.0},\"steady_requests_per_s\":{:.0},\"read_p50_us\":{:.2},\"read_p99_us\":{:.2},\
\"batch_write_p50_us\":{:.0},\"batch_write_p99_us\":{:.0},\"batch_write_max_us\":{:.0},\"due_scan_ms\":{scan_ms:.2},\"due_found\":{due},\"misses\":{misses},\
\"disk_bytes_per_order\":{:.1},\"rss_anon_mb\":{:.1},\"rss_file_mb\":{:.1},\"vm_hwm_mb\":{:.1}}}",
        orders as f64 / preload_secs,
        (batches * batch) as f64 / steady_secs,
        percentile(&read_times, 0.5),
        percentile(&read_times, 0.99),
        percentile(&write_times, 0.5),
        percentile(&write_times, 0.99),
        percentile(&write_times, 1.0),
        disk as f64 / orders as f64,
        rss_anon_kb as f64 / 1024.0,
        rss_file_kb as f64 / 1024.0,
        hwm_kb as f64 / 1024.0,
    );
}
