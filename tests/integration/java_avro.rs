//! Interoperability with Java's Avro (the reference implementation): single-object bytes written by
//! Java decode in orderflow, and orderflow's bytes decode in Java, for every record type.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use orderflow::codec::{
    decode_request, encode_accepted, encode_order_state, encode_rejected, encode_request,
    AcceptedRecord, InputPosition, RejectedRecord,
};
use orderflow::machine::{
    Definition, OrderState, ParkedRequest, RecentRequest, RecordedOutcome, RejectCode,
    TransitionRequest,
};
use serde_json::Value;
use uuid::Uuid;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn schema(file: &str) -> PathBuf {
    repo().join("schemas").join(file)
}

/// Runs the Java side; panics with its stderr if it fails.
fn java(args: &[&str]) -> String {
    let output = Command::new(repo().join("tests/java-avro/run.sh"))
        .args(args)
        .output()
        .expect("tests/java-avro/run.sh starts");
    assert!(
        output.status.success(),
        "java {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

fn java_reads(schema_file: &str, bytes: &[u8]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("value.bin");
    std::fs::write(&path, bytes).unwrap();
    let printed = java(&[
        "read",
        schema(schema_file).to_str().unwrap(),
        path.to_str().unwrap(),
    ]);
    serde_json::from_str(printed.trim()).unwrap_or_else(|e| panic!("{e}: {printed}"))
}

fn java_bytes_of(value: &Value) -> Vec<u8> {
    value
        .as_array()
        .expect("fixed as an array")
        .iter()
        .map(|b| b.as_i64().unwrap() as i8 as u8)
        .collect()
}

#[test]
fn requests_written_by_java_with_every_shipped_schema_version_decode_in_orderflow() {
    for (file, attributes) in [
        ("transition_request.v2.avsc", true),
        ("transition_request.v1.avsc", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("request.bin");
        java(&[
            "write-request",
            schema(file).to_str().unwrap(),
            path.to_str().unwrap(),
        ]);
        let bytes = std::fs::read(&path).unwrap();
        let request =
            decode_request(Some(b"order-java-1"), &bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        let id: Vec<u8> = (0..16).map(|i| 0xA0 + i).collect();
        assert_eq!(request.request_id.as_bytes().as_slice(), id.as_slice());
        assert_eq!(request.order_id, "order-java-1");
        assert_eq!(request.transition, "confirm");
        assert_eq!(request.expected_version, Some(1));
        assert_eq!(request.requested_at_ms, 1_764_000_000_999);
        assert_eq!(request.source, "payments-java");
        let expected: BTreeMap<String, String> = if attributes {
            BTreeMap::from([
                ("psp".to_string(), "adyen".to_string()),
                ("amount".to_string(), "42.00".to_string()),
            ])
        } else {
            BTreeMap::new()
        };
        assert_eq!(request.attributes, expected, "{file}");
    }
}

#[test]
fn records_written_by_orderflow_decode_in_java() {
    let request = TransitionRequest {
        request_id: Uuid::from_u128(0xfeed),
        order_id: "order-rust-1".into(),
        transition: "ship".into(),
        expected_version: None,
        requested_at_ms: 1_764_000_000_001,
        source: "warehouse".into(),
        attributes: BTreeMap::from([("dock".to_string(), "7".to_string())]),
    };
    let mut bytes = Vec::new();
    encode_request(&request, &mut bytes);
    let json = java_reads("transition_request.v2.avsc", &bytes);
    assert_eq!(json["order_id"], "order-rust-1");
    assert_eq!(json["expected_version"], Value::Null);
    assert_eq!(json["requested_at"], 1_764_000_000_001i64);
    assert_eq!(json["attributes"]["dock"], "7");
    assert_eq!(
        java_bytes_of(&json["request_id"]),
        Uuid::from_u128(0xfeed).as_bytes().to_vec()
    );

    let definition = Definition::parse(
        include_str!("../../machines/order-lifecycle.toml"),
        "order-lifecycle.toml",
    )
    .unwrap();
    let pending = definition.state_id("Pending").unwrap();
    let state = OrderState {
        state: definition.state_id("Shipped").unwrap(),
        version: 3,
        created_at_ms: 1,
        updated_at_ms: 2,
        recent: vec![RecentRequest {
            request_id: Uuid::from_u128(5),
            outcome: RecordedOutcome::Rejected(RejectCode::VersionConflict),
            from: pending,
            to: pending,
            version: 1,
        }],
        parked: vec![],
    };
    let mut bytes = Vec::new();
    encode_order_state(&definition, "order-rust-1", &state, &mut bytes);
    let json = java_reads("order_state.v1.avsc", &bytes);
    assert_eq!(json["state"], "Shipped");
    assert_eq!(json["version"], 3);
    assert_eq!(json["definition_hash"], definition.short_hash());
    assert_eq!(json["recent_requests"][0]["outcome"], "VERSION_CONFLICT");
    assert_eq!(json["parked"], Value::Array(vec![]));

    // A parked request with a trace context makes the record v2, which Java reads too.
    let mut parked = state.clone();
    parked.parked.push(ParkedRequest {
        request: TransitionRequest {
            request_id: Uuid::from_u128(9),
            order_id: "order-rust-1".into(),
            transition: "deliver".into(),
            expected_version: None,
            requested_at_ms: 3,
            source: "carrier".into(),
            attributes: BTreeMap::new(),
        },
        partition: 1,
        offset: 2,
        parked_at_ms: 4,
        deadline_ms: 5,
        redeliveries: vec![],
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    });
    let mut bytes = Vec::new();
    encode_order_state(&definition, "order-rust-1", &parked, &mut bytes);
    let json = java_reads("order_state.v2.avsc", &bytes);
    assert_eq!(
        json["parked"][0]["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(json["parked"][0]["transition"], "deliver");

    let input = InputPosition {
        topic: "order-transition-requests".into(),
        partition: 7,
        offset: 1234,
    };
    let accepted = AcceptedRecord {
        request_id: Uuid::from_u128(6),
        order_id: "order-rust-1".into(),
        transition: "create".into(),
        from_state: None,
        to_state: "Pending".into(),
        version: 1,
        duplicate: false,
        requested_at_ms: 10,
        decided_at_ms: 11,
        source: "checkout".into(),
        attributes: BTreeMap::new(),
        input: input.clone(),
        definition_hash: definition.short_hash().into(),
    };
    let mut bytes = Vec::new();
    encode_accepted(&accepted, &mut bytes);
    let json = java_reads("transition_accepted.v1.avsc", &bytes);
    assert_eq!(json["from_state"], Value::Null);
    assert_eq!(json["to_state"], "Pending");
    assert_eq!(json["input"]["partition"], 7);
    assert_eq!(json["input"]["offset"], 1234);

    let rejected = RejectedRecord {
        request_id: Uuid::from_u128(7),
        order_id: "order-rust-1".into(),
        transition: "cancel".into(),
        reason: RejectCode::InvalidTransition,
        detail: "cancel applies from Pending, Confirmed; the order is Shipped".into(),
        allowed_from: vec!["Pending".into(), "Confirmed".into()],
        expected_version: Some(3),
        current_state: Some("Shipped".into()),
        current_version: 3,
        duplicate: true,
        requested_at_ms: 12,
        decided_at_ms: 13,
        source: "support".into(),
        attributes: BTreeMap::new(),
        input,
        definition_hash: definition.short_hash().into(),
    };
    let mut bytes = Vec::new();
    encode_rejected(&rejected, &mut bytes);
    let json = java_reads("transition_rejected.v1.avsc", &bytes);
    assert_eq!(json["reason"], "INVALID_TRANSITION");
    assert_eq!(
        json["allowed_from"],
        serde_json::json!(["Pending", "Confirmed"])
    );
    assert_eq!(json["expected_version"], 3);
    assert_eq!(json["duplicate"], true);
}
