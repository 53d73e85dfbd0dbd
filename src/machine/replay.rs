//! Event sourcing: an order's state folded from its accepted transitions alone.
//!
//! `orderflow rebuild-state` feeds the accepted-transitions log through [`replay`] to rebuild the
//! compacted state topic. What the log does not hold cannot come back: rejected requests the order
//! remembered and requests parked with it. Everything else — state, version, timestamps, and the
//! last accepted request ids that catch redeliveries — is the same as the live state.

use uuid::Uuid;

use super::definition::Definition;
use super::order::{OrderState, RecentRequest, RecordedOutcome};

/// One accepted transition as the event log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptedStep<'a> {
    /// The request that caused it.
    pub request_id: Uuid,
    /// The transition's name.
    pub transition: &'a str,
    /// The state before (`None` for a creation).
    pub from_state: Option<&'a str>,
    /// The state after.
    pub to_state: &'a str,
    /// The order's version after it.
    pub version: u64,
    /// When it was decided (ms since the Unix epoch): the order's `updated_at`.
    pub decided_at_ms: i64,
}

/// Why a step cannot follow the order's replayed state: the log is not a history this definition
/// produced, so the rebuild stops instead of writing a state nobody decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The definition has no state of that name (the log was written under another definition).
    #[error("state {0:?} is not in the definition: rebuild with the definition the log was written under")]
    UnknownState(String),
    /// The step does not start where the order is.
    #[error("the step {transition} from {from:?} does not start at the order's state {at:?}")]
    WrongStart {
        /// The transition's name.
        transition: String,
        /// Where the step says it starts.
        from: Option<String>,
        /// Where the replayed order is.
        at: Option<String>,
    },
    /// The step's version is not the next one.
    #[error("the step {transition} has version {found}, expected {expected} (a gap or a repeat in the log)")]
    VersionGap {
        /// The transition's name.
        transition: String,
        /// The version the replayed order expects next.
        expected: u64,
        /// The version the step has.
        found: u64,
    },
}

/// Applies one accepted step to an order's replayed state (`None`: the order does not exist yet).
/// Remembers the request among the last `recent_window` accepted ones, as the processor would.
pub fn replay(
    definition: &Definition,
    recent_window: usize,
    order: Option<OrderState>,
    step: &AcceptedStep<'_>,
) -> Result<OrderState, ReplayError> {
    let state_id = |name: &str| {
        definition
            .state_id(name)
            .ok_or_else(|| ReplayError::UnknownState(name.to_string()))
    };
    let to = state_id(step.to_state)?;
    let at = order
        .as_ref()
        .map(|o| definition.state(o.state).name.as_str());
    if at != step.from_state {
        return Err(ReplayError::WrongStart {
            transition: step.transition.to_string(),
            from: step.from_state.map(str::to_string),
            at: at.map(str::to_string),
        });
    }
    let expected = order.as_ref().map_or(1, |o| o.version + 1);
    if step.version != expected {
        return Err(ReplayError::VersionGap {
            transition: step.transition.to_string(),
            expected,
            found: step.version,
        });
    }
    let mut next = order.unwrap_or_else(|| OrderState {
        state: to,
        version: 0,
        created_at_ms: step.decided_at_ms,
        updated_at_ms: step.decided_at_ms,
        recent: Vec::new(),
        parked: Vec::new(),
    });
    let from = next.state;
    next.state = to;
    next.version = step.version;
    next.updated_at_ms = step.decided_at_ms;
    next.remember(
        RecentRequest {
            request_id: step.request_id,
            outcome: RecordedOutcome::Accepted,
            from: if step.from_state.is_some() { from } else { to },
            to,
            version: step.version,
        },
        recent_window,
    );
    Ok(next)
}

/// True when the order's state has a retention that ended by `now_ms`: the live processor forgets
/// such an order (a tombstone), so a rebuild does not bring it back.
pub fn retention_ended(definition: &Definition, order: &OrderState, now_ms: i64) -> bool {
    definition
        .state(order.state)
        .expires_after
        .is_some_and(|d| order.updated_at_ms.saturating_add(d.as_millis() as i64) <= now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Decider, StateChange, TransitionRequest};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn definition() -> Arc<Definition> {
        crate::machine::lifecycle_for_tests()
    }

    fn request(n: u128, transition: &str) -> TransitionRequest {
        TransitionRequest {
            request_id: Uuid::from_u128(n),
            order_id: "o-1".into(),
            transition: transition.into(),
            expected_version: None,
            requested_at_ms: 1_000,
            source: "test".into(),
            attributes: BTreeMap::new(),
        }
    }

    /// Decides `transitions` with the live decider and replays what it accepted: the two states
    /// must be equal whenever nothing was rejected.
    fn live_and_replayed(transitions: &[&str]) -> (Option<OrderState>, Option<OrderState>) {
        let definition = definition();
        let decider = Decider::new(Arc::clone(&definition), 8);
        let mut live: Option<OrderState> = None;
        let mut replayed: Option<OrderState> = None;
        for (i, transition) in transitions.iter().enumerate() {
            let now = 10_000 + i as i64 * 1_000;
            let before = live.clone();
            let decision = decider.decide(live.as_ref(), &request(i as u128, transition), now);
            if let StateChange::Put(next) = decision.change {
                if before.as_ref().map(|o| o.version) != Some(next.version) {
                    let from_name = before
                        .as_ref()
                        .map(|o| definition.state(o.state).name.clone());
                    let step = AcceptedStep {
                        request_id: Uuid::from_u128(i as u128),
                        transition,
                        from_state: from_name.as_deref(),
                        to_state: &definition.state(next.state).name,
                        version: next.version,
                        decided_at_ms: now,
                    };
                    replayed = Some(replay(&definition, 8, replayed, &step).unwrap());
                }
                live = Some(next);
            }
        }
        (live, replayed)
    }

    #[test]
    fn replaying_the_accepted_steps_of_a_lifecycle_gives_the_live_state() {
        let (live, replayed) =
            live_and_replayed(&["create", "confirm", "ship", "out_for_delivery", "deliver"]);
        assert!(live.is_some());
        assert_eq!(live, replayed);
    }

    #[test]
    fn a_step_that_does_not_start_at_the_order_state_is_refused() {
        let definition = definition();
        let created = replay(
            &definition,
            8,
            None,
            &AcceptedStep {
                request_id: Uuid::from_u128(1),
                transition: "create",
                from_state: None,
                to_state: "Pending",
                version: 1,
                decided_at_ms: 5,
            },
        )
        .unwrap();
        let wrong = AcceptedStep {
            request_id: Uuid::from_u128(2),
            transition: "ship",
            from_state: Some("Confirmed"),
            to_state: "Shipped",
            version: 2,
            decided_at_ms: 6,
        };
        assert!(matches!(
            replay(&definition, 8, Some(created.clone()), &wrong),
            Err(ReplayError::WrongStart { .. })
        ));
        let gap = AcceptedStep {
            from_state: Some("Pending"),
            to_state: "Confirmed",
            transition: "confirm",
            version: 3,
            ..wrong
        };
        assert_eq!(
            replay(&definition, 8, Some(created.clone()), &gap),
            Err(ReplayError::VersionGap {
                transition: "confirm".into(),
                expected: 2,
                found: 3
            })
        );
        let unknown = AcceptedStep {
            to_state: "Teleported",
            version: 2,
            ..gap
        };
        assert_eq!(
            replay(&definition, 8, Some(created), &unknown),
            Err(ReplayError::UnknownState("Teleported".into()))
        );
    }

    #[test]
    fn only_the_last_window_of_accepted_requests_is_remembered() {
        let definition = definition();
        let mut order = None;
        let steps = [
            ("create", None, "Pending"),
            ("confirm", Some("Pending"), "Confirmed"),
            ("ship", Some("Confirmed"), "Shipped"),
        ];
        for (i, (transition, from, to)) in steps.iter().enumerate() {
            let step = AcceptedStep {
                request_id: Uuid::from_u128(i as u128),
                transition,
                from_state: *from,
                to_state: to,
                version: i as u64 + 1,
                decided_at_ms: i as i64,
            };
            order = Some(replay(&definition, 2, order, &step).unwrap());
        }
        let order = order.unwrap();
        let ids: Vec<u128> = order
            .recent
            .iter()
            .map(|r| r.request_id.as_u128())
            .collect();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!((order.created_at_ms, order.updated_at_ms), (0, 2));
    }

    #[test]
    fn retention_ends_only_for_states_that_have_one() {
        let definition = definition();
        let with_retention = definition
            .states()
            .iter()
            .position(|s| s.expires_after.is_some())
            .unwrap();
        let without = definition
            .states()
            .iter()
            .position(|s| s.expires_after.is_none())
            .unwrap();
        let days = definition.states()[with_retention]
            .expires_after
            .unwrap()
            .as_millis() as i64;
        let order = |state: usize| OrderState {
            state: crate::machine::StateId(state as u16),
            version: 3,
            created_at_ms: 0,
            updated_at_ms: 1_000,
            recent: Vec::new(),
            parked: Vec::new(),
        };
        assert!(!retention_ended(
            &definition,
            &order(with_retention),
            1_000 + days - 1
        ));
        assert!(retention_ended(
            &definition,
            &order(with_retention),
            1_000 + days
        ));
        assert!(!retention_ended(&definition, &order(without), i64::MAX));
    }
}
