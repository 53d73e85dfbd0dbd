//! `decide`: the pure, total function from (current state, request) to outcome and next state.

use std::sync::Arc;

use super::definition::{Definition, StateId, TransitionId};
use super::order::{OrderState, RecentRequest, RecordedOutcome, RejectCode, TransitionRequest};

/// The default number of recent request ids remembered per order for duplicate detection.
pub const DEFAULT_RECENT_WINDOW: usize = 8;

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The transition was applied.
    Accepted {
        /// The transition applied.
        transition: TransitionId,
        /// The state before (`None` when the request created the order).
        from: Option<StateId>,
        /// The state after.
        to: StateId,
        /// The order's version after the transition.
        version: u64,
        /// True when this repeats the outcome of an earlier request with the same id.
        duplicate: bool,
    },
    /// Nothing was applied.
    Rejected {
        /// Why.
        reason: Rejection,
        /// The order's state when it was rejected (`None` if the order does not exist).
        state: Option<StateId>,
        /// The order's version then (0 if the order does not exist).
        version: u64,
        /// True when this repeats the outcome of an earlier request with the same id.
        duplicate: bool,
    },
}

impl Outcome {
    /// True for an accepted outcome.
    pub fn is_accepted(&self) -> bool {
        matches!(self, Outcome::Accepted { .. })
    }

    /// True when the outcome repeats an earlier one.
    pub fn is_duplicate(&self) -> bool {
        match self {
            Outcome::Accepted { duplicate, .. } | Outcome::Rejected { duplicate, .. } => *duplicate,
        }
    }
}

/// A rejection reason with the details that explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// See [`RejectCode::UnknownTransition`].
    UnknownTransition,
    /// See [`RejectCode::InvalidTransition`]; `allowed_from` lists the transition's source states.
    InvalidTransition {
        /// The transition asked for.
        transition: TransitionId,
    },
    /// See [`RejectCode::UnknownOrder`].
    UnknownOrder,
    /// See [`RejectCode::OrderAlreadyExists`].
    OrderAlreadyExists,
    /// See [`RejectCode::VersionConflict`].
    VersionConflict {
        /// The version the request expected.
        expected: u64,
    },
    /// See [`RejectCode::TerminalState`].
    TerminalState,
    /// See [`RejectCode::Expired`]: parked until its deadline without becoming applicable.
    Expired,
    /// See [`RejectCode::ParkingFull`]: it could have waited, but the order's parking slots are full.
    ParkingFull,
    /// A reason recorded earlier and repeated for a duplicate (details are not kept).
    Recorded(RejectCode),
}

impl Rejection {
    /// The machine-readable reason.
    pub fn code(&self) -> RejectCode {
        match self {
            Rejection::UnknownTransition => RejectCode::UnknownTransition,
            Rejection::InvalidTransition { .. } => RejectCode::InvalidTransition,
            Rejection::UnknownOrder => RejectCode::UnknownOrder,
            Rejection::OrderAlreadyExists => RejectCode::OrderAlreadyExists,
            Rejection::VersionConflict { .. } => RejectCode::VersionConflict,
            Rejection::TerminalState => RejectCode::TerminalState,
            Rejection::Expired => RejectCode::Expired,
            Rejection::ParkingFull => RejectCode::ParkingFull,
            Rejection::Recorded(code) => *code,
        }
    }
}

/// What happens to the order's stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    /// Nothing to write.
    Unchanged,
    /// Write this state (a new order, a transition, or a remembered rejection).
    Put(OrderState),
    /// Forget the order (its retention in its state ended): a tombstone.
    Delete,
}

/// The result of deciding one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The answer for downstream.
    pub outcome: Outcome,
    /// The order's next state.
    pub change: StateChange,
}

/// Decides requests against one definition; pure and cheap to clone.
#[derive(Debug, Clone)]
pub struct Decider {
    definition: Arc<Definition>,
    recent_window: usize,
    parking: ParkingPolicy,
}

/// How many early requests an order may hold, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkingPolicy {
    /// Parked requests per order; 0 turns parking off.
    pub max_per_order: usize,
    /// How long a request may stay parked before it is rejected as expired (ms).
    pub max_wait_ms: i64,
}

impl Default for ParkingPolicy {
    fn default() -> ParkingPolicy {
        ParkingPolicy {
            max_per_order: 4,
            max_wait_ms: 10 * 60 * 1000,
        }
    }
}

impl Decider {
    /// A decider remembering `recent_window` request ids per order for duplicate detection.
    pub fn new(definition: Arc<Definition>, recent_window: usize) -> Decider {
        Decider {
            definition,
            recent_window,
            parking: ParkingPolicy::default(),
        }
    }

    /// The same decider with another parking policy.
    pub fn with_parking(mut self, parking: ParkingPolicy) -> Decider {
        self.parking = parking;
        self
    }

    /// The parking policy.
    pub fn parking(&self) -> ParkingPolicy {
        self.parking
    }

    /// The definition decisions are made against.
    pub fn definition(&self) -> &Arc<Definition> {
        &self.definition
    }

    /// How many recent request ids an order remembers.
    pub fn recent_window(&self) -> usize {
        self.recent_window
    }

    /// Decides `request` against the order's `current` state at decision time `now_ms`.
    ///
    /// Checks, in order: duplicate (repeat the recorded outcome), unknown transition, unknown order
    /// or create on an existing order, version conflict, terminal state, allowed source state.
    pub fn decide(
        &self,
        current: Option<&OrderState>,
        request: &TransitionRequest,
        now_ms: i64,
    ) -> Decision {
        let definition = &*self.definition;
        let transition = definition.transition_id(&request.transition);
        let Some(current) = current else {
            return self.decide_for_new_order(transition, request, now_ms);
        };

        if let Some(recent) = current.recent_request(&request.request_id) {
            return Decision {
                outcome: repeat(recent, transition),
                change: StateChange::Unchanged,
            };
        }

        let rejection = match transition {
            None => Some(Rejection::UnknownTransition),
            Some(t) if definition.transition(t).create => Some(Rejection::OrderAlreadyExists),
            Some(_) => match request.expected_version {
                Some(expected) if expected != current.version => {
                    Some(Rejection::VersionConflict { expected })
                }
                _ if definition.state(current.state).terminal => Some(Rejection::TerminalState),
                _ => None,
            },
        };
        let rejection = rejection.or_else(|| {
            transition
                .filter(|t| !definition.allows(*t, current.state))
                .map(|transition| Rejection::InvalidTransition { transition })
        });

        let mut next = current.clone();
        let outcome = match (rejection, transition) {
            (None, Some(t)) => {
                let to = definition.transition(t).to;
                next.state = to;
                next.version = current.version + 1;
                next.updated_at_ms = now_ms;
                next.remember(
                    RecentRequest {
                        request_id: request.request_id,
                        outcome: RecordedOutcome::Accepted,
                        from: current.state,
                        to,
                        version: next.version,
                    },
                    self.recent_window,
                );
                Outcome::Accepted {
                    transition: t,
                    from: Some(current.state),
                    to,
                    version: next.version,
                    duplicate: false,
                }
            }
            (rejection, _) => {
                let reason = rejection.unwrap_or(Rejection::UnknownTransition);
                next.remember(
                    RecentRequest {
                        request_id: request.request_id,
                        outcome: RecordedOutcome::Rejected(reason.code()),
                        from: current.state,
                        to: current.state,
                        version: current.version,
                    },
                    self.recent_window,
                );
                Outcome::Rejected {
                    reason,
                    state: Some(current.state),
                    version: current.version,
                    duplicate: false,
                }
            }
        };
        Decision {
            outcome,
            change: StateChange::Put(next),
        }
    }

    fn decide_for_new_order(
        &self,
        transition: Option<TransitionId>,
        request: &TransitionRequest,
        now_ms: i64,
    ) -> Decision {
        let reject = |reason| Decision {
            outcome: Outcome::Rejected {
                reason,
                state: None,
                version: 0,
                duplicate: false,
            },
            change: StateChange::Unchanged,
        };
        let Some(t) = transition else {
            return reject(Rejection::UnknownTransition);
        };
        let created = self.definition.transition(t);
        if !created.create {
            return reject(Rejection::UnknownOrder);
        }
        if let Some(expected) = request.expected_version.filter(|v| *v != 0) {
            return reject(Rejection::VersionConflict { expected });
        }
        let mut state = OrderState {
            state: created.to,
            version: 1,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            recent: Vec::new(),
            parked: Vec::new(),
        };
        state.remember(
            RecentRequest {
                request_id: request.request_id,
                outcome: RecordedOutcome::Accepted,
                from: created.to,
                to: created.to,
                version: 1,
            },
            self.recent_window,
        );
        Decision {
            outcome: Outcome::Accepted {
                transition: t,
                from: None,
                to: created.to,
                version: 1,
                duplicate: false,
            },
            change: StateChange::Put(state),
        }
    }
}

/// The outcome recorded for an earlier request with the same id, flagged as a duplicate.
fn repeat(recent: &RecentRequest, transition: Option<TransitionId>) -> Outcome {
    match (recent.outcome, transition) {
        (RecordedOutcome::Accepted, Some(transition)) => Outcome::Accepted {
            transition,
            // Version 1 is the creation: there was no state before it.
            from: (recent.version > 1).then_some(recent.from),
            to: recent.to,
            version: recent.version,
            duplicate: true,
        },
        // The redelivery names a transition the definition no longer has: still the same request.
        (RecordedOutcome::Accepted, None) => Outcome::Rejected {
            reason: Rejection::Recorded(RejectCode::UnknownTransition),
            state: Some(recent.to),
            version: recent.version,
            duplicate: true,
        },
        (RecordedOutcome::Rejected(code), _) => Outcome::Rejected {
            reason: Rejection::Recorded(code),
            state: Some(recent.from),
            version: recent.version,
            duplicate: true,
        },
    }
}
