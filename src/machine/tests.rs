//! Every rule and reason of `decide`, as sentences, and properties over random request sequences.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use uuid::Uuid;

use super::*;

const LIFECYCLE: &str = include_str!("../../machines/order-lifecycle.toml");

fn decider() -> Decider {
    let definition = Definition::parse(LIFECYCLE, "order-lifecycle.toml").expect("valid");
    Decider::new(Arc::new(definition), DEFAULT_RECENT_WINDOW)
}

fn request(transition: &str) -> TransitionRequest {
    TransitionRequest {
        request_id: Uuid::new_v4(),
        order_id: "order-42".into(),
        transition: transition.into(),
        expected_version: None,
        requested_at_ms: 1_700_000_000_000,
        source: "test".into(),
        attributes: BTreeMap::new(),
    }
}

fn state_of(_d: &Decider, decision: &Decision) -> OrderState {
    match &decision.change {
        StateChange::Put(s) => s.clone(),
        StateChange::Unchanged => panic!("expected a state change, got {:?}", decision.outcome),
    }
}

/// Applies transitions in order from nothing; panics if one is not accepted.
fn order_through(d: &Decider, transitions: &[&str]) -> OrderState {
    let mut state: Option<OrderState> = None;
    for (i, t) in transitions.iter().enumerate() {
        let decision = d.decide(state.as_ref(), &request(t), 1000 + i as i64);
        assert!(
            decision.outcome.is_accepted(),
            "{t}: {:?}",
            decision.outcome
        );
        state = Some(state_of(d, &decision));
    }
    state.expect("at least one transition")
}

fn reason(decision: &Decision) -> RejectCode {
    match &decision.outcome {
        Outcome::Rejected { reason, .. } => reason.code(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn id(d: &Decider, state: &str) -> StateId {
    d.definition().state_id(state).expect("known state")
}

#[test]
fn create_makes_a_pending_order_at_version_one() {
    let d = decider();
    let decision = d.decide(None, &request("create"), 5);
    match decision.outcome {
        Outcome::Accepted {
            from,
            to,
            version,
            duplicate,
            ..
        } => {
            assert_eq!(from, None);
            assert_eq!(to, id(&d, "Pending"));
            assert_eq!(version, 1);
            assert!(!duplicate);
        }
        other => panic!("{other:?}"),
    }
    let state = state_of(&d, &decision);
    assert_eq!(
        (state.version, state.created_at_ms, state.updated_at_ms),
        (1, 5, 5)
    );
}

#[test]
fn the_happy_path_reaches_delivered_at_version_five() {
    let d = decider();
    let state = order_through(
        &d,
        &["create", "confirm", "ship", "out_for_delivery", "deliver"],
    );
    assert_eq!(state.state, id(&d, "Delivered"));
    assert_eq!(state.version, 5);
    assert_eq!(state.updated_at_ms, 1004);
    assert_eq!(state.created_at_ms, 1000);
}

#[test]
fn an_accepted_transition_reports_from_and_to() {
    let d = decider();
    let pending = order_through(&d, &["create"]);
    let decision = d.decide(Some(&pending), &request("confirm"), 9);
    assert_eq!(
        decision.outcome,
        Outcome::Accepted {
            transition: d.definition().transition_id("confirm").unwrap(),
            from: Some(id(&d, "Pending")),
            to: id(&d, "Confirmed"),
            version: 2,
            duplicate: false,
        }
    );
}

#[test]
fn delivery_may_skip_out_for_delivery() {
    let d = decider();
    let state = order_through(&d, &["create", "confirm", "ship", "deliver"]);
    assert_eq!(state.state, id(&d, "Delivered"));
}

#[test]
fn a_cancelled_order_is_terminal() {
    let d = decider();
    let cancelled = order_through(&d, &["create", "cancel"]);
    let decision = d.decide(Some(&cancelled), &request("confirm"), 9);
    assert_eq!(reason(&decision), RejectCode::TerminalState);
}

#[test]
fn a_returned_order_is_terminal() {
    let d = decider();
    let returned = order_through(&d, &["create", "confirm", "ship", "deliver", "return"]);
    assert_eq!(
        reason(&d.decide(Some(&returned), &request("return"), 9)),
        RejectCode::TerminalState
    );
}

#[test]
fn a_shipped_order_cannot_be_cancelled_and_the_allowed_sources_are_named() {
    let d = decider();
    let shipped = order_through(&d, &["create", "confirm", "ship"]);
    let decision = d.decide(Some(&shipped), &request("cancel"), 9);
    match &decision.outcome {
        Outcome::Rejected {
            reason: Rejection::InvalidTransition { transition },
            state,
            version,
            duplicate,
        } => {
            assert_eq!(
                d.definition().source_names(*transition),
                vec!["Pending".to_string(), "Confirmed".to_string()]
            );
            assert_eq!(*state, Some(id(&d, "Shipped")));
            assert_eq!(*version, 3);
            assert!(!duplicate);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn ship_before_confirm_is_an_invalid_transition() {
    let d = decider();
    let pending = order_through(&d, &["create"]);
    assert_eq!(
        reason(&d.decide(Some(&pending), &request("ship"), 9)),
        RejectCode::InvalidTransition
    );
}

#[test]
fn an_unknown_transition_is_rejected_for_existing_and_missing_orders() {
    let d = decider();
    let pending = order_through(&d, &["create"]);
    assert_eq!(
        reason(&d.decide(Some(&pending), &request("teleport"), 9)),
        RejectCode::UnknownTransition
    );
    assert_eq!(
        reason(&d.decide(None, &request("teleport"), 9)),
        RejectCode::UnknownTransition
    );
}

#[test]
fn a_non_create_transition_on_a_missing_order_is_unknown_order() {
    let d = decider();
    let decision = d.decide(None, &request("ship"), 9);
    assert_eq!(reason(&decision), RejectCode::UnknownOrder);
    assert_eq!(decision.change, StateChange::Unchanged);
}

#[test]
fn creating_an_existing_order_is_rejected() {
    let d = decider();
    let pending = order_through(&d, &["create"]);
    assert_eq!(
        reason(&d.decide(Some(&pending), &request("create"), 9)),
        RejectCode::OrderAlreadyExists
    );
}

#[test]
fn a_stale_expected_version_is_a_version_conflict() {
    let d = decider();
    let confirmed = order_through(&d, &["create", "confirm"]);
    let mut ship = request("ship");
    ship.expected_version = Some(1);
    let decision = d.decide(Some(&confirmed), &ship, 9);
    assert_eq!(reason(&decision), RejectCode::VersionConflict);
    match decision.outcome {
        Outcome::Rejected {
            reason: Rejection::VersionConflict { expected },
            version,
            ..
        } => assert_eq!((expected, version), (1, 2)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_matching_expected_version_is_accepted() {
    let d = decider();
    let confirmed = order_through(&d, &["create", "confirm"]);
    let mut ship = request("ship");
    ship.expected_version = Some(2);
    assert!(d.decide(Some(&confirmed), &ship, 9).outcome.is_accepted());
}

#[test]
fn a_create_expecting_a_version_other_than_zero_conflicts() {
    let d = decider();
    let mut create = request("create");
    create.expected_version = Some(3);
    assert_eq!(
        reason(&d.decide(None, &create, 9)),
        RejectCode::VersionConflict
    );
    create.expected_version = Some(0);
    assert!(d.decide(None, &create, 9).outcome.is_accepted());
}

#[test]
fn a_version_conflict_wins_over_a_terminal_state() {
    let d = decider();
    let cancelled = order_through(&d, &["create", "cancel"]);
    let mut confirm = request("confirm");
    confirm.expected_version = Some(1);
    assert_eq!(
        reason(&d.decide(Some(&cancelled), &confirm, 9)),
        RejectCode::VersionConflict
    );
}

#[test]
fn a_redelivered_accepted_request_repeats_its_outcome_flagged_duplicate_and_changes_nothing() {
    let d = decider();
    let pending = order_through(&d, &["create"]);
    let confirm = request("confirm");
    let first = d.decide(Some(&pending), &confirm, 9);
    let confirmed = state_of(&d, &first);
    let again = d.decide(Some(&confirmed), &confirm, 10);
    assert_eq!(again.change, StateChange::Unchanged);
    match (first.outcome, again.outcome) {
        (
            Outcome::Accepted {
                from: f1,
                to: t1,
                version: v1,
                duplicate: false,
                ..
            },
            Outcome::Accepted {
                from: f2,
                to: t2,
                version: v2,
                duplicate: true,
                ..
            },
        ) => assert_eq!((f1, t1, v1), (f2, t2, v2)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_redelivered_create_repeats_creation_without_a_from_state() {
    let d = decider();
    let create = request("create");
    let created = state_of(&d, &d.decide(None, &create, 1));
    let again = d.decide(Some(&created), &create, 2);
    assert!(matches!(
        again.outcome,
        Outcome::Accepted {
            from: None,
            version: 1,
            duplicate: true,
            ..
        }
    ));
}

#[test]
fn a_redelivered_rejected_request_repeats_its_reason_even_after_the_order_moved_on() {
    let d = decider();
    let pending = order_through(&d, &["create"]);
    let early_ship = request("ship");
    let rejected = d.decide(Some(&pending), &early_ship, 9);
    assert_eq!(reason(&rejected), RejectCode::InvalidTransition);
    let remembered = state_of(&d, &rejected);
    assert_eq!(
        remembered.version, 1,
        "a rejection does not bump the version"
    );
    let confirmed = state_of(&d, &d.decide(Some(&remembered), &request("confirm"), 10));
    // Now "ship" would be valid, but the same request id must get the same answer.
    let again = d.decide(Some(&confirmed), &early_ship, 11);
    assert_eq!(reason(&again), RejectCode::InvalidTransition);
    assert!(again.outcome.is_duplicate());
    assert_eq!(again.change, StateChange::Unchanged);
}

#[test]
fn only_the_last_k_request_ids_are_remembered() {
    let definition = Definition::parse(LIFECYCLE, "t").unwrap();
    let d = Decider::new(Arc::new(definition), 2);
    let create = request("create");
    let s1 = state_of(&d, &d.decide(None, &create, 1));
    let s2 = state_of(&d, &d.decide(Some(&s1), &request("confirm"), 2));
    let s3 = state_of(&d, &d.decide(Some(&s2), &request("ship"), 3));
    assert_eq!(s3.recent.len(), 2);
    // The create fell out of the window: it is now an ordinary (rejected) create.
    let again = d.decide(Some(&s3), &create, 4);
    assert_eq!(reason(&again), RejectCode::OrderAlreadyExists);
    assert!(!again.outcome.is_duplicate());
}

#[test]
fn a_window_of_zero_remembers_nothing() {
    let definition = Definition::parse(LIFECYCLE, "t").unwrap();
    let d = Decider::new(Arc::new(definition), 0);
    let create = request("create");
    let s1 = state_of(&d, &d.decide(None, &create, 1));
    assert!(s1.recent.is_empty());
}

#[test]
fn reject_codes_round_trip_through_their_names() {
    for code in RejectCode::ALL {
        assert_eq!(RejectCode::parse(code.as_str()), Some(code));
    }
    assert_eq!(RejectCode::parse("NOPE"), None);
}

// ---- properties ----------------------------------------------------------------------------

const TRANSITIONS: [&str; 8] = [
    "create",
    "confirm",
    "ship",
    "out_for_delivery",
    "deliver",
    "cancel",
    "return",
    "teleport",
];

#[derive(Debug, Clone)]
enum Step {
    /// A new request for this transition, maybe with an expected version.
    Fresh(usize, Option<u64>),
    /// A redelivery of the n-th earlier request (modulo how many there were).
    Redeliver(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..TRANSITIONS.len(), proptest::option::weighted(0.2, 0u64..8)).prop_map(|(t, v)| Step::Fresh(t, v)),
        1 => any::<usize>().prop_map(Step::Redeliver),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_sequences_only_take_allowed_transitions_and_versions_grow_by_one(
        steps in proptest::collection::vec(step(), 1..40),
        window in 0usize..6,
    ) {
        let definition = Definition::parse(LIFECYCLE, "t").unwrap();
        let d = Decider::new(Arc::new(definition), window);
        let def = d.definition().clone();
        let mut state: Option<OrderState> = None;
        let mut sent: Vec<TransitionRequest> = Vec::new();
        for (i, step) in steps.into_iter().enumerate() {
            let req = match step {
                Step::Fresh(t, v) => {
                    let mut r = request(TRANSITIONS[t]);
                    r.expected_version = v;
                    sent.push(r.clone());
                    r
                }
                Step::Redeliver(n) if !sent.is_empty() => sent[n % sent.len()].clone(),
                Step::Redeliver(_) => continue,
            };
            let decision = d.decide(state.as_ref(), &req, i as i64);
            let before = state.clone();
            if decision.outcome.is_duplicate() {
                prop_assert_eq!(&decision.change, &StateChange::Unchanged, "duplicates never change state");
            }
            match (&decision.outcome, &decision.change) {
                (Outcome::Accepted { duplicate: false, transition, from, to, version }, StateChange::Put(next)) => {
                    let t = def.transition(*transition);
                    prop_assert_eq!(&t.name, &req.transition);
                    match &before {
                        None => {
                            prop_assert!(t.create, "only a create transition makes an order");
                            prop_assert_eq!(*version, 1);
                        }
                        Some(b) => {
                            prop_assert!(def.allows(*transition, b.state), "{} from {} is not allowed", t.name, def.state(b.state).name);
                            prop_assert!(!def.state(b.state).terminal);
                            prop_assert_eq!(*from, Some(b.state));
                            prop_assert_eq!(*version, b.version + 1, "versions grow by exactly one");
                        }
                    }
                    prop_assert_eq!(next.state, *to);
                    prop_assert_eq!(next.version, *version);
                    prop_assert_eq!(next.state, t.to);
                }
                (Outcome::Accepted { duplicate: false, .. }, StateChange::Unchanged) => {
                    prop_assert!(false, "an accepted request must change state");
                }
                (Outcome::Rejected { duplicate: false, .. }, StateChange::Put(next)) => {
                    let b = before.as_ref().expect("rejections of missing orders write nothing");
                    prop_assert_eq!(next.state, b.state, "a rejection keeps the state");
                    prop_assert_eq!(next.version, b.version, "a rejection keeps the version");
                }
                _ => {}
            }
            prop_assert!(state.as_ref().map_or(0, |s| s.recent.len()) <= window);
            if let StateChange::Put(next) = decision.change {
                state = Some(next);
            }
        }
    }

    #[test]
    fn decide_is_deterministic(steps in proptest::collection::vec(0..TRANSITIONS.len(), 1..20)) {
        let d = decider();
        let reqs: Vec<_> = steps.iter().map(|t| request(TRANSITIONS[*t])).collect();
        let run = || {
            let mut state: Option<OrderState> = None;
            let mut outcomes = Vec::new();
            for (i, r) in reqs.iter().enumerate() {
                let decision = d.decide(state.as_ref(), r, i as i64);
                outcomes.push(decision.outcome.clone());
                if let StateChange::Put(next) = decision.change {
                    state = Some(next);
                }
            }
            (outcomes, state)
        };
        prop_assert_eq!(run(), run());
    }
}
