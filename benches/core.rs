//! Micro-benchmarks of the pure core and the codec: decide, and encode/decode per request and per
//! state record, with apache-avro's generic path measured in the same run as the baseline.
//! Run with `make bench-core`; results are recorded in docs/benchmarks.md.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::io::Cursor;
use std::sync::Arc;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use criterion::{criterion_group, criterion_main, Criterion};
use orderflow::codec::{
    decode_order_state, decode_request, encode_accepted, encode_accepted_view, encode_order_state,
    encode_request, registry, AcceptedRecord, AcceptedView, InputPosition, RecordKind,
};
use orderflow::machine::{
    Decider, Definition, OrderState, StateChange, TransitionRequest, DEFAULT_RECENT_WINDOW,
};
use orderflow::state::PartitionCache;
use uuid::Uuid;

/// The allocator the binaries use, so allocation-heavy paths cost what they cost in production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn request(transition: &str, n: u128) -> TransitionRequest {
    TransitionRequest {
        request_id: Uuid::from_u128(n),
        order_id: "order-0001234567".into(),
        transition: transition.into(),
        expected_version: None,
        requested_at_ms: 1_764_000_000_000,
        source: "warehouse".into(),
        attributes: BTreeMap::from([("carrier".to_string(), "dhl".to_string())]),
    }
}

/// A delivered order with a full window of remembered requests: the typical large state record.
fn delivered(decider: &Decider) -> OrderState {
    let mut state = None;
    let mut n = 0;
    for t in [
        "create",
        "confirm",
        "ship",
        "out_for_delivery",
        "deliver",
        "cancel",
        "ship",
        "confirm",
    ] {
        n += 1;
        let decision = decider.decide(state.as_ref(), &request(t, n), 1_764_000_000_000);
        if let StateChange::Put(next) = decision.change {
            state = Some(next);
        }
    }
    state.expect("created")
}

/// The shipped definition, its decider and the large delivered order.
fn fixtures() -> (Arc<Definition>, Decider, OrderState) {
    let definition = Arc::new(
        Definition::parse(
            include_str!("../machines/order-lifecycle.toml"),
            "order-lifecycle.toml",
        )
        .expect("valid"),
    );
    let decider = Decider::new(Arc::clone(&definition), DEFAULT_RECENT_WINDOW);
    let state = delivered(&decider);
    (definition, decider, state)
}

fn benches(c: &mut Criterion) {
    let (definition, decider, state) = fixtures();
    let confirmed = {
        let created = decider.decide(None, &request("create", 100), 0);
        let StateChange::Put(s) = created.change else {
            unreachable!()
        };
        let confirmed = decider.decide(Some(&s), &request("confirm", 101), 0);
        let StateChange::Put(s) = confirmed.change else {
            unreachable!()
        };
        s
    };
    let ship = request("ship", 1000);

    c.bench_function("decide/accept", |b| {
        b.iter(|| decider.decide(black_box(Some(&confirmed)), black_box(&ship), 1))
    });
    let early = request("deliver", 1001);
    c.bench_function("decide/reject_invalid", |b| {
        b.iter(|| decider.decide(black_box(Some(&confirmed)), black_box(&early), 1))
    });

    let mut request_bytes = Vec::new();
    encode_request(&ship, &mut request_bytes);
    c.bench_function("request/encode", |b| {
        let mut buf = Vec::with_capacity(256);
        b.iter(|| {
            buf.clear();
            encode_request(black_box(&ship), &mut buf);
            buf.len()
        })
    });
    c.bench_function("request/decode", |b| {
        b.iter(|| decode_request(Some(b"order-0001234567"), black_box(&request_bytes)))
    });

    let mut state_bytes = Vec::new();
    encode_order_state(&definition, "order-0001234567", &state, &mut state_bytes);
    c.bench_function("state/encode", |b| {
        let mut buf = Vec::with_capacity(1024);
        b.iter(|| {
            buf.clear();
            encode_order_state(&definition, "order-0001234567", black_box(&state), &mut buf);
            buf.len()
        })
    });
    c.bench_function("state/decode", |b| {
        b.iter(|| decode_order_state(&definition, black_box(&state_bytes)))
    });

    // An accepted outcome as the processor builds it from the request: by copying every field into
    // an owned record (the baseline, the processor's earlier path) or from a borrowed view.
    let topic = "order-transition-requests".to_string();
    let hash = definition.short_hash();
    c.bench_function("accepted/encode_owned_copy", |b| {
        let mut buf = Vec::with_capacity(256);
        b.iter(|| {
            buf.clear();
            let request = black_box(&ship);
            encode_accepted(
                &AcceptedRecord {
                    request_id: request.request_id,
                    order_id: request.order_id.clone(),
                    transition: request.transition.clone(),
                    from_state: Some("Confirmed".to_string()),
                    to_state: "Shipped".to_string(),
                    version: 3,
                    duplicate: false,
                    requested_at_ms: request.requested_at_ms,
                    decided_at_ms: 1,
                    source: request.source.clone(),
                    attributes: request.attributes.clone(),
                    input: InputPosition {
                        topic: topic.clone(),
                        partition: 3,
                        offset: 42,
                    },
                    definition_hash: hash.to_string(),
                },
                &mut buf,
            );
            buf.len()
        })
    });
    c.bench_function("accepted/encode_borrowed_view", |b| {
        let mut buf = Vec::with_capacity(256);
        b.iter(|| {
            buf.clear();
            let request = black_box(&ship);
            encode_accepted_view(
                &AcceptedView {
                    request_id: request.request_id,
                    order_id: &request.order_id,
                    transition: &request.transition,
                    from_state: Some("Confirmed"),
                    to_state: "Shipped",
                    version: 3,
                    duplicate: false,
                    requested_at_ms: request.requested_at_ms,
                    decided_at_ms: 1,
                    source: &request.source,
                    attributes: &request.attributes,
                    input_topic: &topic,
                    input_partition: 3,
                    input_offset: 42,
                    definition_hash: hash,
                },
                &mut buf,
            );
            buf.len()
        })
    });

    // Baseline: apache-avro's generic Value path for the same bytes.
    let schema = &registry().current(RecordKind::OrderState).schema;
    let reader = GenericDatumReader::builder(schema).build().expect("reader");
    let writer = GenericDatumWriter::builder(schema).build().expect("writer");
    let body = &state_bytes[10..];
    let value = reader.read_value(&mut Cursor::new(body)).expect("decodes");
    c.bench_function("state/decode_apache_avro_generic", |b| {
        b.iter(|| reader.read_value(&mut Cursor::new(black_box(body))))
    });
    c.bench_function("state/encode_apache_avro_generic", |b| {
        let mut buf = Vec::with_capacity(1024);
        b.iter(|| {
            buf.clear();
            writer.write_value_ref(&mut buf, black_box(&value))
        })
    });
}

/// The cache's read (before a decision) and write (after a commit) for the large delivered order,
/// against the same order held unpacked under a `String` key (the earlier representation).
fn cache_benches(c: &mut Criterion) {
    let (_, _, state) = fixtures();
    let ids: Vec<String> = (0..100_000).map(|n| format!("order-{n:010}")).collect();
    let mut packed = PartitionCache::new();
    let mut unpacked: HashMap<String, OrderState, foldhash::fast::RandomState> = HashMap::default();
    for id in &ids {
        packed.apply(id, Some(&state));
        unpacked.insert(id.clone(), state.clone());
    }
    let mut n = 0usize;
    let mut next_id = || {
        n = (n + 7919) % ids.len();
        &ids[n]
    };
    c.bench_function("cache/get_packed", |b| {
        b.iter(|| packed.get(black_box(next_id())))
    });
    c.bench_function("cache/get_unpacked_borrow", |b| {
        b.iter(|| unpacked.get(black_box(next_id())).map(|s| s.version))
    });
    c.bench_function("cache/apply_packed", |b| {
        b.iter(|| packed.apply(black_box(next_id()), Some(black_box(&state))))
    });
    c.bench_function("cache/insert_unpacked", |b| {
        b.iter(|| unpacked.insert(black_box(next_id()).clone(), black_box(&state).clone()))
    });
}

/// One batch of 2,000 requests as the throughput benchmark preloads them (the same plan and shares),
/// decided against the caches holding the states the plan's earlier requests left; the baseline is
/// the bare pipe's work on the same records (copy key and value into two outgoing records each).
fn batch_benches(c: &mut Criterion) {
    use orderflow::config::Settings;
    use orderflow::kafka::OutgoingRecord;
    use orderflow::processor::decide::{decide_batch, BatchContext, InputRecord};
    use orderflow::tools::loadgen::plan::{Plan, Planned, Shares};

    let (definition, decider, _) = fixtures();
    let settings = Settings::default();
    let context = BatchContext {
        decider: &decider,
        topics: &settings.topics,
        limits: &settings.processor,
        group_id: "bench",
        sampling: orderflow::telemetry::context::Sampling::OFF,
    };
    let shares = Shares::decided_on_arrival();
    const BATCH: usize = 2_000;
    let now = 1_764_000_000_000;
    let inputs: Vec<InputRecord> = Plan::new(&definition, 42, "bench", 10_000, 10_000, shares)
        .expect("plan")
        .filter_map(|planned| match planned {
            Planned::Request { mut request, .. } => {
                request.requested_at_ms = now;
                Some(request)
            }
            Planned::Poison { .. } => None,
        })
        .take(20 * BATCH)
        .enumerate()
        .map(|(n, request)| {
            let mut value = Vec::with_capacity(96);
            orderflow::codec::encode_request(&request, &mut value);
            InputRecord {
                partition: orderflow::kafka::partitioner::partition_for(
                    request.order_id.as_bytes(),
                    12,
                ),
                offset: n as i64,
                timestamp_ms: Some(now),
                key: Some(request.order_id.into_bytes()),
                value: Some(value),
                headers: Vec::new(),
            }
        })
        .collect();
    // The caches after all but the last batch, applied batch by batch as the processor does.
    let mut caches: HashMap<i32, PartitionCache> =
        (0..12).map(|p| (p, PartitionCache::new())).collect();
    let (earlier, batch) = inputs.split_at(inputs.len() - BATCH);
    for chunk in earlier.chunks(BATCH) {
        for change in decide_batch(&context, &caches, chunk, now).changes {
            if let Some(cache) = caches.get_mut(&change.partition) {
                cache.apply(&change.order_id, change.state.as_ref());
            }
        }
    }
    let topics = &settings.topics;
    c.bench_function("batch/pipe_copy_2000", |b| {
        b.iter(|| {
            let mut records = Vec::with_capacity(2 * BATCH);
            for input in black_box(batch) {
                for topic in [&topics.state, &topics.accepted] {
                    records.push(OutgoingRecord {
                        topic: topic.clone(),
                        partition: input.partition,
                        key: input.key.clone(),
                        value: input.value.clone(),
                        headers: Vec::new(),
                    });
                }
            }
            records
        })
    });
    c.bench_function("batch/decide_2000", |b| {
        b.iter(|| decide_batch(&context, &caches, black_box(batch), now))
    });
}

criterion_group!(core, benches, cache_benches, batch_benches);
criterion_main!(core);
