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

criterion_group!(core, benches, cache_benches);
criterion_main!(core);
