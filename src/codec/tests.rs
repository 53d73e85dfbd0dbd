//! The codec against apache-avro (the reference), every shipped schema version, and bad bytes.

use std::collections::{BTreeMap, HashSet};
use std::io::Cursor;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use proptest::prelude::*;
use uuid::Uuid;

use super::schemas::{registry, KnownSchema, RecordKind, SHIPPED};
use super::*;
use crate::machine::{
    Definition, OrderState, ParkedRequest, RecentRequest, RecordedOutcome, RejectCode,
    TransitionRequest,
};

fn lifecycle() -> Definition {
    Definition::parse(
        include_str!("../../machines/order-lifecycle.toml"),
        "order-lifecycle.toml",
    )
    .unwrap()
}

fn sample_request() -> TransitionRequest {
    TransitionRequest {
        request_id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        order_id: "order-42".into(),
        transition: "ship".into(),
        expected_version: Some(2),
        requested_at_ms: 1_764_000_000_123,
        source: "warehouse".into(),
        attributes: BTreeMap::from([
            ("carrier".to_string(), "dhl".to_string()),
            ("dock".to_string(), "7".to_string()),
        ]),
    }
}

fn sample_state(d: &Definition) -> OrderState {
    let s = |n| d.state_id(n).unwrap();
    OrderState {
        state: s("Confirmed"),
        version: 2,
        created_at_ms: 1_764_000_000_000,
        updated_at_ms: 1_764_000_000_500,
        recent: vec![
            RecentRequest {
                request_id: Uuid::from_u128(1),
                outcome: RecordedOutcome::Accepted,
                from: s("Pending"),
                to: s("Pending"),
                version: 1,
            },
            RecentRequest {
                request_id: Uuid::from_u128(2),
                outcome: RecordedOutcome::Rejected(RejectCode::InvalidTransition),
                from: s("Pending"),
                to: s("Pending"),
                version: 1,
            },
        ],
        parked: vec![ParkedRequest {
            request: TransitionRequest {
                request_id: Uuid::from_u128(3),
                order_id: "order-42".into(),
                transition: "deliver".into(),
                expected_version: None,
                requested_at_ms: 1_764_000_000_400,
                source: "carrier".into(),
                attributes: BTreeMap::from([("scan".to_string(), "x1".to_string())]),
            },
            partition: 3,
            offset: 99,
            parked_at_ms: 1_764_000_000_450,
            deadline_ms: 1_764_000_600_450,
            redeliveries: vec![crate::machine::Origin {
                partition: 3,
                offset: 120,
            }],
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        }],
    }
}

fn sample_accepted() -> AcceptedRecord {
    AcceptedRecord {
        request_id: Uuid::from_u128(7),
        order_id: "order-42".into(),
        transition: "confirm".into(),
        from_state: Some("Pending".into()),
        to_state: "Confirmed".into(),
        version: 2,
        duplicate: false,
        requested_at_ms: 10,
        decided_at_ms: 20,
        source: "payments".into(),
        attributes: BTreeMap::from([("k".to_string(), "v".to_string())]),
        input: InputPosition {
            topic: "order-transition-requests".into(),
            partition: 5,
            offset: 123_456,
        },
        definition_hash: "0123456789abcdef".into(),
    }
}

fn sample_rejected() -> RejectedRecord {
    RejectedRecord {
        request_id: Uuid::from_u128(8),
        order_id: "order-42".into(),
        transition: "cancel".into(),
        reason: RejectCode::InvalidTransition,
        detail: "cancel applies from Pending, Confirmed; the order is Shipped".into(),
        allowed_from: vec!["Pending".into(), "Confirmed".into()],
        expected_version: None,
        current_state: Some("Shipped".into()),
        current_version: 3,
        duplicate: true,
        requested_at_ms: 30,
        decided_at_ms: 40,
        source: "support".into(),
        attributes: BTreeMap::new(),
        input: InputPosition {
            topic: "order-transition-requests".into(),
            partition: 0,
            offset: 0,
        },
        definition_hash: "0123456789abcdef".into(),
    }
}

/// Checks the single-object header, decodes the body with apache-avro (which must read all
/// of it) and returns its value and apache-avro's re-encoding, header included.
fn assert_canonical(kind: RecordKind, value: &[u8]) -> (Value, Vec<u8>) {
    assert_written_with(registry().current(kind), value)
}

/// Like [`assert_canonical`], for a value written with a given shipped schema.
fn assert_written_with(known: &KnownSchema, value: &[u8]) -> (Value, Vec<u8>) {
    let kind = known.shipped.file;
    let schema = &known.schema;
    let mut header = vec![0xC3, 0x01];
    header.extend_from_slice(&known.fingerprint.to_le_bytes());
    assert_eq!(&value[..10], header.as_slice(), "header of {kind:?}");
    let body = &value[10..];
    let mut cursor = Cursor::new(body);
    let decoded = GenericDatumReader::builder(schema)
        .build()
        .unwrap()
        .read_value(&mut cursor)
        .unwrap();
    assert_eq!(
        cursor.position() as usize,
        body.len(),
        "apache-avro read all of {kind:?}"
    );
    let again = GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value_to_vec(decoded.clone())
        .unwrap();
    // Map entries may come back in another order (apache-avro keeps maps in a HashMap), so callers
    // compare bytes only where maps have at most one entry, and otherwise decode these bytes again.
    let mut full = value[..10].to_vec();
    full.extend(again);
    (decoded, full)
}

#[test]
fn every_shipped_schema_parses_with_a_distinct_fingerprint() {
    let fingerprints: HashSet<u64> = registry().all().iter().map(|s| s.fingerprint).collect();
    assert_eq!(fingerprints.len(), SHIPPED.len());
    assert_eq!(
        registry()
            .current(RecordKind::TransitionRequest)
            .shipped
            .version,
        2
    );
}

/// Printed by Java's Avro 1.12 (`SchemaNormalization.toParsingForm` and `parsingFingerprint64`) for
/// schemas/transition_request.v2.avsc: the reference our fingerprints must equal.
const JAVA_REQUEST_V2_PCF: &str = r#"{"name":"orderflow.TransitionRequest","type":"record","fields":[{"name":"request_id","type":{"name":"orderflow.Uuid","type":"fixed","size":16}},{"name":"order_id","type":"string"},{"name":"transition","type":"string"},{"name":"expected_version","type":["null","long"]},{"name":"requested_at","type":"long"},{"name":"source","type":"string"},{"name":"attributes","type":{"type":"map","values":"string"}}]}"#;
const JAVA_REQUEST_V2_FINGERPRINT: u64 = 0xb265_5ec5_6975_30ff;

#[test]
fn canonical_forms_and_fingerprints_match_java_avro() {
    let current = registry().current(RecordKind::TransitionRequest);
    assert_eq!(current.canonical_form, JAVA_REQUEST_V2_PCF);
    assert_eq!(current.fingerprint, JAVA_REQUEST_V2_FINGERPRINT);
    // apache-avro 0.22 keeps `{"type":"long"}` for timestamp-millis; the specification does not.
    assert_ne!(current.schema.canonical_form(), JAVA_REQUEST_V2_PCF);
}

#[test]
fn canonical_forms_refer_to_named_types_defined_earlier_by_full_name() {
    let state = registry().current(RecordKind::OrderState);
    // Uuid is defined inside RecentRequest and referred to by name inside ParkedRequest.
    assert!(
        state
            .canonical_form
            .contains(r#"{"name":"request_id","type":"orderflow.Uuid"}"#),
        "{}",
        state.canonical_form
    );
    assert!(state.canonical_form.contains(r#""symbols":["ACCEPTED","#));
    assert!(!state.canonical_form.contains("doc"));
    assert!(!state.canonical_form.contains("default"));
}

#[test]
fn every_newer_shipped_version_reads_every_older_one() {
    let all = registry().all();
    let mut pairs = 0;
    for old in all {
        for new in all {
            if old.shipped.kind == new.shipped.kind && old.shipped.version < new.shipped.version {
                SchemaCompatibility::can_read(&old.schema, &new.schema).unwrap_or_else(|e| {
                    panic!("{} cannot read {}: {e}", new.shipped.file, old.shipped.file)
                });
                pairs += 1;
            }
        }
    }
    assert!(pairs >= 1, "at least one older version is shipped");
}

#[test]
fn a_request_round_trips_and_matches_apache_avro_bytes() {
    let request = sample_request();
    let mut bytes = Vec::new();
    encode_request(&request, &mut bytes);
    let (_, theirs) = assert_canonical(RecordKind::TransitionRequest, &bytes);
    assert_eq!(decode_request(Some(b"order-42"), &bytes).unwrap(), request);
    assert_eq!(decode_request(Some(b"order-42"), &theirs).unwrap(), request);
}

#[test]
fn an_order_state_round_trips_and_matches_apache_avro_bytes() {
    let d = lifecycle();
    let state = sample_state(&d);
    let mut bytes = Vec::new();
    encode_order_state(&d, "order-42", &state, &mut bytes);
    let (value, theirs) = assert_canonical(RecordKind::OrderState, &bytes);
    // Every map here has at most one entry, so apache-avro's bytes must equal ours exactly.
    assert_eq!(theirs, bytes);
    let Value::Record(fields) = value else {
        panic!()
    };
    assert_eq!(
        fields[1],
        ("state".to_string(), Value::String("Confirmed".into()))
    );
    assert_eq!(
        decode_order_state(&d, &bytes).unwrap(),
        ("order-42".to_string(), state)
    );
}

#[test]
fn outcome_records_round_trip_and_match_apache_avro_bytes() {
    let mut bytes = Vec::new();
    encode_accepted(&sample_accepted(), &mut bytes);
    let (_, theirs) = assert_canonical(RecordKind::TransitionAccepted, &bytes);
    assert_eq!(theirs, bytes, "one-entry maps: identical bytes");
    assert_eq!(decode_accepted(&bytes).unwrap(), sample_accepted());

    let mut created = sample_accepted();
    created.from_state = None;
    let mut bytes = Vec::new();
    encode_accepted(&created, &mut bytes);
    assert_eq!(decode_accepted(&bytes).unwrap(), created);

    let mut bytes = Vec::new();
    encode_rejected(&sample_rejected(), &mut bytes);
    let (_, theirs) = assert_canonical(RecordKind::TransitionRejected, &bytes);
    assert_eq!(theirs, bytes, "empty maps: identical bytes");
    assert_eq!(decode_rejected(&bytes).unwrap(), sample_rejected());
}

#[test]
fn every_reject_reason_survives_the_wire() {
    for reason in RejectCode::ALL {
        let mut record = sample_rejected();
        record.reason = reason;
        let mut bytes = Vec::new();
        encode_rejected(&record, &mut bytes);
        assert_eq!(decode_rejected(&bytes).unwrap().reason, reason);
    }
}

fn v1_request_bytes() -> Vec<u8> {
    let v1 = registry()
        .all()
        .iter()
        .find(|s| s.shipped.kind == RecordKind::TransitionRequest && s.shipped.version == 1)
        .unwrap();
    let value = Value::Record(vec![
        ("request_id".into(), Value::Fixed(16, vec![9; 16])),
        ("order_id".into(), Value::String("order-7".into())),
        ("transition".into(), Value::String("create".into())),
        (
            "expected_version".into(),
            Value::Union(0, Box::new(Value::Null)),
        ),
        ("requested_at".into(), Value::TimestampMillis(1234)),
        ("source".into(), Value::String("checkout".into())),
    ]);
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&v1.fingerprint.to_le_bytes());
    bytes.extend(
        GenericDatumWriter::builder(&v1.schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap(),
    );
    bytes
}

#[test]
fn a_request_written_with_schema_v1_is_read_with_empty_attributes() {
    let request = decode_request(Some(b"order-7"), &v1_request_bytes()).unwrap();
    assert_eq!(request.request_id, Uuid::from_bytes([9; 16]));
    assert_eq!(request.transition, "create");
    assert_eq!(request.requested_at_ms, 1234);
    assert!(request.attributes.is_empty());
}

#[test]
fn a_key_that_does_not_match_the_order_id_is_an_error() {
    let mut bytes = Vec::new();
    encode_request(&sample_request(), &mut bytes);
    let err = decode_request(Some(b"order-43"), &bytes).unwrap_err();
    assert_eq!(err.kind(), "key_mismatch");
    assert!(err.to_string().contains("order-43") && err.to_string().contains("order-42"));
    assert_eq!(
        decode_request(None, &bytes).unwrap_err(),
        CodecError::MissingKey
    );
    assert_eq!(
        decode_request(Some(&[0xff, 0xfe]), &bytes).unwrap_err(),
        CodecError::KeyNotUtf8
    );
}

#[test]
fn bytes_that_are_not_single_object_avro_are_named_as_such() {
    assert_eq!(
        decode_request(Some(b"k"), b"{}").unwrap_err(),
        CodecError::TooShort { len: 2 }
    );
    let err = decode_request(Some(b"k"), b"{\"order\": 42, \"x\": 1}").unwrap_err();
    assert!(matches!(err, CodecError::BadMagic { .. }), "{err}");
}

#[test]
fn an_unknown_fingerprint_is_an_unknown_schema() {
    let mut bytes = vec![0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8];
    bytes.extend_from_slice(&[0; 20]);
    let err = decode_request(Some(b"k"), &bytes).unwrap_err();
    assert_eq!(
        err,
        CodecError::UnknownSchema {
            fingerprint: 0x0807_0605_0403_0201
        }
    );
}

#[test]
fn a_state_is_written_as_v1_until_a_parked_request_carries_a_trace_context() {
    let d = lifecycle();
    let traced = sample_state(&d);
    let mut untraced = traced.clone();
    untraced.parked[0].traceparent = None;
    let v1 = registry().version(RecordKind::OrderState, 1).unwrap();
    let mut bytes = Vec::new();
    encode_order_state(&d, "order-42", &untraced, &mut bytes);
    // What a release that knows only v1 reads: apache-avro with v1 alone consumes every byte.
    let (_, theirs) = assert_written_with(v1, &bytes);
    assert_eq!(theirs, bytes);
    assert_eq!(
        decode_order_state(&d, &bytes).unwrap(),
        ("order-42".to_string(), untraced)
    );
    let mut bytes = Vec::new();
    encode_order_state(&d, "order-42", &traced, &mut bytes);
    let (_, theirs) = assert_canonical(RecordKind::OrderState, &bytes);
    assert_eq!(theirs, bytes);
    assert_ne!(
        registry().current(RecordKind::OrderState).fingerprint,
        v1.fingerprint
    );
    assert_eq!(
        decode_order_state(&d, &bytes).unwrap().1.parked[0].traceparent,
        traced.parked[0].traceparent
    );
}

#[test]
fn a_state_record_on_the_requests_topic_is_the_wrong_record_type() {
    let d = lifecycle();
    let mut bytes = Vec::new();
    encode_order_state(&d, "order-42", &sample_state(&d), &mut bytes);
    let err = decode_request(Some(b"order-42"), &bytes).unwrap_err();
    assert_eq!(
        err,
        CodecError::WrongRecordType {
            expected: "TransitionRequest",
            found: "OrderState"
        }
    );
}

#[test]
fn every_truncation_of_a_valid_value_is_an_error_not_a_panic() {
    let d = lifecycle();
    let mut values = Vec::new();
    let mut b = Vec::new();
    encode_request(&sample_request(), &mut b);
    values.push(b);
    let mut b = Vec::new();
    encode_order_state(&d, "order-42", &sample_state(&d), &mut b);
    values.push(b);
    for value in values {
        for len in 0..value.len() {
            let prefix = &value[..len];
            assert!(decode_request(Some(b"order-42"), prefix).is_err());
            assert!(decode_order_state(&d, prefix).is_err());
        }
    }
}

#[test]
fn trailing_bytes_after_a_record_are_corrupt() {
    let mut bytes = Vec::new();
    encode_request(&sample_request(), &mut bytes);
    bytes.push(0);
    assert_eq!(
        decode_request(Some(b"order-42"), &bytes).unwrap_err(),
        CodecError::TrailingBytes { extra: 1 }
    );
}

#[test]
fn a_state_the_definition_lacks_is_named() {
    let d = lifecycle();
    let mut bytes = Vec::new();
    encode_order_state(&d, "order-42", &sample_state(&d), &mut bytes);
    let renamed = Definition::parse(
        &include_str!("../../machines/order-lifecycle.toml")
            .replace("\"Confirmed\"", "\"Approved\""),
        "renamed.toml",
    )
    .unwrap();
    let err = decode_order_state(&renamed, &bytes).unwrap_err();
    assert_eq!(
        err,
        CodecError::UnknownState {
            name: "Confirmed".into()
        }
    );
}

#[test]
fn the_current_schemas_equal_the_files_in_schemas_dir() {
    // The compiled-in copy and the repository's files are the same bytes (the contract is the files).
    for shipped in SHIPPED {
        let path = format!("{}/schemas/{}", env!("CARGO_MANIFEST_DIR"), shipped.file);
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert_eq!(on_disk, shipped.json, "{path}");
        Schema::parse_str(&on_disk).unwrap();
    }
}

fn arb_request() -> impl Strategy<Value = TransitionRequest> {
    (
        any::<u128>(),
        "[a-z0-9-]{1,24}",
        "[a-z_]{1,16}",
        proptest::option::of(0u64..1_000_000),
        any::<i64>(),
        ".{0,12}",
        proptest::collection::btree_map(".{0,8}", ".{0,8}", 0..4),
    )
        .prop_map(
            |(id, order_id, transition, expected_version, at, source, attributes)| {
                TransitionRequest {
                    request_id: Uuid::from_u128(id),
                    order_id,
                    transition,
                    expected_version,
                    requested_at_ms: at,
                    source,
                    attributes,
                }
            },
        )
}

proptest! {
    #[test]
    fn random_requests_round_trip(request in arb_request()) {
        let mut bytes = Vec::new();
        encode_request(&request, &mut bytes);
        let decoded = decode_request(Some(request.order_id.as_bytes()), &bytes).unwrap();
        prop_assert_eq!(decoded, request);
    }

    #[test]
    fn random_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let d = lifecycle();
        let _ = decode_request(Some(b"k"), &bytes);
        let _ = decode_order_state(&d, &bytes);
        let _ = decode_accepted(&bytes);
        let _ = decode_rejected(&bytes);
    }

    #[test]
    fn random_bodies_behind_a_valid_header_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let d = lifecycle();
        for kind in [RecordKind::TransitionRequest, RecordKind::OrderState, RecordKind::TransitionAccepted, RecordKind::TransitionRejected] {
            let mut bytes = vec![0xC3, 0x01];
            bytes.extend_from_slice(&registry().current(kind).fingerprint.to_le_bytes());
            bytes.extend_from_slice(&body);
            let _ = decode_request(Some(b"k"), &bytes);
            let _ = decode_order_state(&d, &bytes);
            let _ = decode_accepted(&bytes);
            let _ = decode_rejected(&bytes);
        }
        // The old-version path goes through apache-avro: it must not panic either.
        let mut v1 = v1_request_bytes();
        v1.truncate(10);
        v1.extend_from_slice(&body);
        let _ = decode_request(Some(b"k"), &v1);
    }

    #[test]
    fn mutated_valid_requests_never_panic(flip in 0usize..200, byte in any::<u8>()) {
        let mut bytes = Vec::new();
        encode_request(&sample_request(), &mut bytes);
        let i = flip % bytes.len();
        bytes[i] = byte;
        let _ = decode_request(Some(b"order-42"), &bytes);
    }
}
