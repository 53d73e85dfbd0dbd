use std::collections::BTreeMap;

use uuid::Uuid;

use super::*;
use crate::codec::{encode_request, InputPosition};
use crate::machine::{RejectCode, TransitionRequest};

const REQUESTS: &str = "requests";
const LIMITS: Limits = Limits {
    max_attributes: 4,
    max_attribute_bytes: 1000,
    recent_requests: 2,
};

fn definition() -> Definition {
    Definition::parse(
        include_str!("../../../machines/order-lifecycle.toml"),
        "order-lifecycle.toml",
    )
    .unwrap()
}

fn input(offset: i64, order: &str, transition: &str) -> (InputRecord, Uuid) {
    let id = Uuid::from_u64_pair(7, offset as u64);
    let request = TransitionRequest {
        request_id: id,
        order_id: order.into(),
        transition: transition.into(),
        expected_version: None,
        requested_at_ms: 1,
        source: "test".into(),
        attributes: BTreeMap::new(),
    };
    let mut value = Vec::new();
    encode_request(&request, &mut value);
    let record = InputRecord {
        partition: 0,
        offset,
        key: Some(order.as_bytes().to_vec()),
        value: Some(value),
    };
    (record, id)
}

fn position(offset: i64) -> InputPosition {
    InputPosition {
        topic: REQUESTS.into(),
        partition: 0,
        offset,
    }
}

fn accepted(
    offset: i64,
    id: Uuid,
    order: &str,
    transition: &str,
    from: Option<&str>,
    to: &str,
    version: u64,
) -> AcceptedRecord {
    AcceptedRecord {
        request_id: id,
        order_id: order.into(),
        transition: transition.into(),
        from_state: from.map(str::to_owned),
        to_state: to.into(),
        version,
        duplicate: false,
        requested_at_ms: 1,
        decided_at_ms: 2,
        source: "test".into(),
        attributes: BTreeMap::new(),
        input: position(offset),
        definition_hash: "h".into(),
    }
}

fn state(definition: &Definition, name: &str, version: u64) -> OrderState {
    OrderState {
        state: definition.state_id(name).unwrap(),
        version,
        created_at_ms: 1,
        updated_at_ms: 2,
        recent: Vec::new(),
        parked: Vec::new(),
    }
}

/// o1: create, confirm; o2: create then "teleport" (rejected); one poison record in the DLQ.
fn clean(definition: &Definition) -> History {
    let (i0, id0) = input(0, "o1", "create");
    let (i1, id1) = input(1, "o1", "confirm");
    let (i2, id2) = input(2, "o2", "create");
    let (i3, id3) = input(3, "o2", "teleport");
    let poison = InputRecord {
        partition: 0,
        offset: 4,
        key: Some(b"o3".to_vec()),
        value: Some(b"not avro".to_vec()),
    };
    let rejected = RejectedRecord {
        request_id: id3,
        order_id: "o2".into(),
        transition: "teleport".into(),
        reason: RejectCode::UnknownTransition,
        detail: "no such transition".into(),
        allowed_from: Vec::new(),
        expected_version: None,
        current_state: Some("Pending".into()),
        current_version: 1,
        duplicate: false,
        requested_at_ms: 1,
        decided_at_ms: 2,
        source: "test".into(),
        attributes: BTreeMap::new(),
        input: position(3),
        definition_hash: "h".into(),
    };
    let letter = DeadLetter {
        partition: 0,
        offset: 0,
        key: Some(b"o3".to_vec()),
        value: b"not avro".to_vec(),
        original_topic: Some(REQUESTS.into()),
        original_partition: Some(0),
        original_offset: Some(4),
        error_kind: "not_avro".into(),
        error_message: "…".into(),
        truncated_from_bytes: None,
    };
    History {
        requests_topic: REQUESTS.into(),
        inputs: vec![i0, i1, i2, i3, poison],
        accepted: vec![
            accepted(0, id0, "o1", "create", None, "Pending", 1),
            accepted(1, id1, "o1", "confirm", Some("Pending"), "Confirmed", 2),
            accepted(2, id2, "o2", "create", None, "Pending", 1),
        ],
        rejected: vec![rejected],
        dead_letters: vec![letter],
        states: [
            ("o1".to_string(), Some(state(definition, "Confirmed", 2))),
            ("o2".to_string(), Some(state(definition, "Pending", 1))),
        ]
        .into(),
        corrupt_outputs: 0,
    }
}

#[test]
fn a_clean_history_is_exactly_once() {
    let d = definition();
    let verdict = check(&d, LIMITS, &clean(&d));
    assert!(verdict.is_clean(), "{}", verdict.describe());
    assert_eq!(
        (
            verdict.inputs,
            verdict.requests,
            verdict.poison,
            verdict.orders
        ),
        (5, 4, 1, 2)
    );
}

#[test]
fn an_injected_duplicate_outcome_is_flagged() {
    let d = definition();
    let mut h = clean(&d);
    h.rejected.push(h.rejected[0].clone());
    let verdict = check(&d, LIMITS, &h);
    assert_eq!(verdict.duplicated, 1, "{}", verdict.describe());
    assert!(!verdict.is_clean());
}

#[test]
fn a_lost_outcome_is_flagged_but_a_parked_request_is_not() {
    let d = definition();
    let mut h = clean(&d);
    h.rejected.clear();
    let verdict = check(&d, LIMITS, &h);
    assert_eq!(verdict.lost, 1, "{}", verdict.describe());

    // The same input waiting in its order's state record is pending, not lost.
    let (request, _) = input(3, "o2", "teleport");
    let parked = crate::machine::ParkedRequest {
        request: crate::codec::decode_request(
            request.key.as_deref(),
            request.value.as_deref().unwrap(),
        )
        .unwrap(),
        partition: 0,
        offset: 3,
        parked_at_ms: 2,
        deadline_ms: 3,
        redeliveries: Vec::new(),
        traceparent: None,
    };
    if let Some(Some(o2)) = h.states.get_mut("o2") {
        o2.parked.push(parked);
    }
    let verdict = check(&d, LIMITS, &h);
    assert_eq!(
        (verdict.lost, verdict.parked),
        (0, 1),
        "{}",
        verdict.describe()
    );
    assert!(verdict.is_clean());
}

#[test]
fn a_version_gap_is_flagged() {
    let d = definition();
    let mut h = clean(&d);
    h.accepted[1].version = 3;
    h.states
        .insert("o1".into(), Some(state(&d, "Confirmed", 3)));
    let verdict = check(&d, LIMITS, &h);
    assert_eq!(verdict.version_gaps, 1, "{}", verdict.describe());
    assert_eq!(verdict.illegal, 0);
    assert_eq!(verdict.state_mismatches, 0);
}

#[test]
fn an_illegal_step_is_flagged() {
    let d = definition();
    let mut h = clean(&d);
    // ship straight from Pending: not a source state of ship.
    h.accepted[1].transition = "ship".into();
    h.accepted[1].to_state = "Shipped".into();
    h.states.insert("o1".into(), Some(state(&d, "Shipped", 2)));
    let verdict = check(&d, LIMITS, &h);
    assert_eq!(verdict.illegal, 1, "{}", verdict.describe());
    // A step that does not start where the previous one ended is illegal too.
    let mut h = clean(&d);
    h.accepted[1].from_state = Some("Confirmed".into());
    assert_eq!(check(&d, LIMITS, &h).illegal, 1);
}

#[test]
fn a_state_that_is_not_the_fold_of_the_transitions_is_flagged() {
    let d = definition();
    let mut h = clean(&d);
    h.states.insert("o1".into(), Some(state(&d, "Pending", 1)));
    assert_eq!(check(&d, LIMITS, &h).state_mismatches, 1);
    h.states.remove("o1");
    assert_eq!(check(&d, LIMITS, &h).state_mismatches, 1);
    // A forgotten order (tombstone) has nothing to compare.
    h.states.insert("o1".into(), None);
    assert!(check(&d, LIMITS, &h).is_clean());
}

#[test]
fn dead_letters_must_be_there_once_with_provenance_and_only_for_poison() {
    let d = definition();
    let mut h = clean(&d);
    h.dead_letters.clear();
    assert_eq!(check(&d, LIMITS, &h).dead_letters_lost, 1);
    let mut h = clean(&d);
    h.dead_letters.push(h.dead_letters[0].clone());
    assert_eq!(check(&d, LIMITS, &h).dead_letters_duplicated, 1);
    let mut h = clean(&d);
    h.dead_letters[0].original_offset = Some(0);
    let verdict = check(&d, LIMITS, &h);
    assert_eq!(verdict.dead_letters_lost, 1, "{}", verdict.describe());
    assert_eq!(verdict.dead_letters_unexpected, 1);
    let mut h = clean(&d);
    h.dead_letters[0].original_topic = None;
    assert_eq!(check(&d, LIMITS, &h).dead_letters_unexpected, 1);
}

#[test]
fn a_request_over_the_attribute_limits_is_poison() {
    let d = definition();
    let mut h = clean(&d);
    let (mut big, _) = input(5, "o9", "create");
    let mut request =
        crate::codec::decode_request(big.key.as_deref(), big.value.as_deref().unwrap()).unwrap();
    for i in 0..5 {
        request.attributes.insert(format!("k{i}"), "v".into());
    }
    let mut value = Vec::new();
    encode_request(&request, &mut value);
    big.value = Some(value);
    h.inputs.push(big);
    let verdict = check(&d, LIMITS, &h);
    assert_eq!(
        (verdict.poison, verdict.dead_letters_lost),
        (2, 1),
        "{}",
        verdict.describe()
    );
}

#[test]
fn accepted_versions_out_of_log_order_are_flagged_though_their_set_is_complete() {
    let d = definition();
    let mut h = clean(&d);
    // o1's confirm (v2) before its create (v1) in the log downstream readers replay.
    h.accepted.swap(0, 1);
    let verdict = check(&d, LIMITS, &h);
    assert_eq!(verdict.version_gaps, 1, "{}", verdict.describe());
    assert!(!verdict.is_clean());
}

/// `h` with a redelivery of o1's confirm (same request id) at offset 5 and its answer.
fn with_redelivered_confirm(h: &mut History, answer: AcceptedRecord) {
    let (mut again, _) = input(5, "o1", "confirm");
    let first = h.accepted[1].clone();
    let mut request =
        crate::codec::decode_request(again.key.as_deref(), again.value.as_deref().unwrap())
            .unwrap();
    request.request_id = first.request_id;
    let mut value = Vec::new();
    encode_request(&request, &mut value);
    again.value = Some(value);
    h.inputs.push(again);
    h.accepted.push(answer);
}

#[test]
fn a_duplicate_answer_must_repeat_the_first_outcome_of_its_request_id() {
    let d = definition();
    let mut h = clean(&d);
    let first = h.accepted[1].clone();
    let repeat = AcceptedRecord {
        duplicate: true,
        input: position(5),
        ..first.clone()
    };
    with_redelivered_confirm(&mut h, repeat.clone());
    let verdict = check(&d, LIMITS, &h);
    assert!(verdict.is_clean(), "{}", verdict.describe());

    // The same duplicate answer with another version (or states) than the first outcome.
    let mut h = clean(&d);
    with_redelivered_confirm(
        &mut h,
        AcceptedRecord {
            version: 3,
            ..repeat.clone()
        },
    );
    let verdict = check(&d, LIMITS, &h);
    assert_eq!(verdict.duplicate_mismatches, 1, "{}", verdict.describe());
    assert!(!verdict.is_clean());
    let mut h = clean(&d);
    with_redelivered_confirm(
        &mut h,
        AcceptedRecord {
            to_state: "Shipped".into(),
            ..repeat.clone()
        },
    );
    assert_eq!(check(&d, LIMITS, &h).duplicate_mismatches, 1);

    // A duplicate answer whose request id was never answered before.
    let mut h = clean(&d);
    let orphan = AcceptedRecord {
        request_id: Uuid::from_u64_pair(9, 9),
        ..repeat
    };
    with_redelivered_confirm(&mut h, orphan);
    let verdict = check(&d, LIMITS, &h);
    assert_eq!(verdict.duplicate_mismatches, 1, "{}", verdict.describe());
}

#[test]
fn a_duplicate_of_an_accepted_request_whose_transition_is_gone_may_come_back_as_a_recorded_rejection(
) {
    let d = definition();
    let mut h = clean(&d);
    let first = h.accepted[1].clone();
    let (again, _) = input(5, "o1", "confirm");
    h.inputs.push(again);
    let mut rejection = h.rejected[0].clone();
    rejection.request_id = first.request_id;
    rejection.order_id = "o1".into();
    rejection.reason = RejectCode::UnknownTransition;
    rejection.current_state = Some("Confirmed".into());
    rejection.current_version = 2;
    rejection.duplicate = true;
    rejection.input = position(5);
    h.rejected.push(rejection.clone());
    let verdict = check(&d, LIMITS, &h);
    assert_eq!(verdict.duplicate_mismatches, 0, "{}", verdict.describe());
    // At another version it does not repeat the first outcome.
    h.rejected.last_mut().unwrap().current_version = 1;
    assert_eq!(check(&d, LIMITS, &h).duplicate_mismatches, 1);
}

/// o1 created, then rejected `extra` times (each remembered), then its create request id decided
/// afresh at the end.
fn create_decided_again_after(extra: usize) -> History {
    let d = definition();
    let mut h = clean(&d);
    h.rejected.clear();
    h.inputs.truncate(2);
    h.accepted.truncate(2);
    h.dead_letters.clear();
    h.states.remove("o2");
    let create_id = h.accepted[0].request_id;
    let template = clean(&d).rejected[0].clone();
    for i in 0..extra {
        let offset = 2 + i as i64;
        let (record, id) = input(offset, "o1", "teleport");
        h.inputs.push(record);
        h.rejected.push(RejectedRecord {
            request_id: id,
            order_id: "o1".into(),
            current_state: Some("Confirmed".into()),
            current_version: 2,
            input: position(offset),
            ..template.clone()
        });
    }
    let offset = 2 + extra as i64;
    let (mut again, _) = input(offset, "o1", "create");
    let mut request =
        crate::codec::decode_request(again.key.as_deref(), again.value.as_deref().unwrap())
            .unwrap();
    request.request_id = create_id;
    let mut value = Vec::new();
    encode_request(&request, &mut value);
    again.value = Some(value);
    h.inputs.push(again);
    h.rejected.push(RejectedRecord {
        request_id: create_id,
        order_id: "o1".into(),
        transition: "create".into(),
        reason: RejectCode::OrderAlreadyExists,
        current_state: Some("Confirmed".into()),
        current_version: 2,
        input: position(offset),
        ..template
    });
    h
}

#[test]
fn a_request_id_decided_afresh_while_remembered_is_applied_twice_but_beyond_the_window_it_is_reuse()
{
    let d = definition();
    // The window holds 2 decisions: after create and confirm the create is still remembered;
    // one more decision pushes it out.
    let verdict = check(&d, LIMITS, &create_decided_again_after(0));
    assert_eq!(
        (verdict.decided_twice, verdict.request_ids_reused),
        (1, 0),
        "{}",
        verdict.describe()
    );
    assert!(!verdict.is_clean());

    let verdict = check(&d, LIMITS, &create_decided_again_after(1));
    assert_eq!(
        (verdict.decided_twice, verdict.request_ids_reused),
        (0, 1),
        "{}",
        verdict.describe()
    );
    assert!(verdict.is_clean(), "{}", verdict.describe());
}
