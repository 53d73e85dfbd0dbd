//! Deciding an input in full: early requests wait with their order (parking), are released after
//! each accepted transition, expire at their deadline, and orders are forgotten after their
//! state's retention. Still pure: time is a parameter.
//!
//! Every input gets exactly one answer, sooner or later: a parked request is answered when it is
//! released or expires, and a redelivery of a parked request is answered then too, as a duplicate.

use super::decide::{Decider, Outcome, Rejection, StateChange};
use super::order::{
    OrderState, Origin, ParkedRequest, RecentRequest, RecordedOutcome, TransitionRequest,
};

/// The answer to one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The input answered.
    pub origin: Origin,
    /// Its request.
    pub request: TransitionRequest,
    /// The outcome.
    pub outcome: Outcome,
}

/// The result of deciding an input or of an expiry pass: answers (possibly none, possibly several)
/// and the order's next state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Answers to inputs, in the order they were decided.
    pub answers: Vec<Answer>,
    /// What happens to the stored state.
    pub change: StateChange,
}

fn as_duplicate(outcome: &Outcome) -> Outcome {
    let mut outcome = outcome.clone();
    match &mut outcome {
        Outcome::Accepted { duplicate, .. } | Outcome::Rejected { duplicate, .. } => {
            *duplicate = true
        }
    }
    outcome
}

/// Answers a parked entry: its own input, then each redelivery of it as a duplicate.
fn answer_parked(entry: &ParkedRequest, outcome: Outcome, answers: &mut Vec<Answer>) {
    for redelivery in &entry.redeliveries {
        answers.push(Answer {
            origin: *redelivery,
            request: entry.request.clone(),
            outcome: as_duplicate(&outcome),
        });
    }
    let own = Answer {
        origin: Origin {
            partition: entry.partition,
            offset: entry.offset,
        },
        request: entry.request.clone(),
        outcome,
    };
    let first_redelivery = answers.len() - entry.redeliveries.len();
    answers.insert(first_redelivery, own);
}

impl Decider {
    /// Decides one input: like [`Decider::decide`], but a request that is early (its transition may
    /// park and the order can still reach one of its source states) waits with the order, and an
    /// accepted transition releases the parked requests that now apply. Takes the request by value:
    /// it moves into the answer or the parked entry.
    pub fn decide_input(
        &self,
        current: Option<&OrderState>,
        request: TransitionRequest,
        origin: Origin,
        now_ms: i64,
    ) -> Step {
        if let Some(state) = current {
            if let Some(index) = state
                .parked
                .iter()
                .position(|p| p.request.request_id == request.request_id)
            {
                // A redelivery of a parked request: answered together with the original.
                let mut next = state.clone();
                next.parked[index].redeliveries.push(origin);
                return Step {
                    answers: Vec::new(),
                    change: StateChange::Put(next),
                };
            }
        }
        let decision = self.decide(current, &request, now_ms);
        if let (
            Some(state),
            Outcome::Rejected {
                reason: Rejection::InvalidTransition { transition },
                duplicate: false,
                ..
            },
        ) = (current, &decision.outcome)
        {
            let definition = self.definition();
            let parkable = definition.transition(*transition).park
                && self.parking().max_per_order > 0
                && definition.sources_ahead(*transition, state.state);
            if parkable {
                return self.park(state, request, origin, now_ms);
            }
        }
        let first_acceptance = decision.outcome.is_accepted() && !decision.outcome.is_duplicate();
        let mut answers = vec![Answer {
            origin,
            request,
            outcome: decision.outcome,
        }];
        let change = match decision.change {
            StateChange::Put(mut next) if first_acceptance && !next.parked.is_empty() => {
                self.release(&mut next, now_ms, &mut answers);
                StateChange::Put(next)
            }
            other => other,
        };
        Step { answers, change }
    }

    fn park(
        &self,
        state: &OrderState,
        request: TransitionRequest,
        origin: Origin,
        now_ms: i64,
    ) -> Step {
        let mut next = state.clone();
        if state.parked.len() >= self.parking().max_per_order {
            next.remember(
                RecentRequest {
                    request_id: request.request_id,
                    outcome: RecordedOutcome::Rejected(Rejection::ParkingFull.code()),
                    from: state.state,
                    to: state.state,
                    version: state.version,
                },
                self.recent_window(),
            );
            return Step {
                answers: vec![Answer {
                    origin,
                    request,
                    outcome: Outcome::Rejected {
                        reason: Rejection::ParkingFull,
                        state: Some(state.state),
                        version: state.version,
                        duplicate: false,
                    },
                }],
                change: StateChange::Put(next),
            };
        }
        next.parked.push(ParkedRequest {
            request,
            partition: origin.partition,
            offset: origin.offset,
            parked_at_ms: now_ms,
            deadline_ms: now_ms.saturating_add(self.parking().max_wait_ms),
            redeliveries: Vec::new(),
            traceparent: None,
        });
        Step {
            answers: Vec::new(),
            change: StateChange::Put(next),
        }
    }

    /// Re-decides parked requests, oldest first, until none applies any more.
    fn release(&self, state: &mut OrderState, now_ms: i64, answers: &mut Vec<Answer>) {
        let mut index = 0;
        while index < state.parked.len() {
            let entry = state.parked.remove(index);
            let decision = self.decide(Some(state), &entry.request, now_ms);
            let still_early = matches!(
                &decision.outcome,
                Outcome::Rejected { reason: Rejection::InvalidTransition { transition }, .. }
                    if self.definition().sources_ahead(*transition, state.state)
            );
            if still_early {
                state.parked.insert(index, entry);
                index += 1;
                continue;
            }
            let accepted = decision.outcome.is_accepted();
            if let StateChange::Put(next) = decision.change {
                *state = next;
            }
            answer_parked(&entry, decision.outcome, answers);
            // An accepted transition may make earlier parked requests applicable: start over.
            index = if accepted { 0 } else { index };
        }
    }

    /// Expires parked requests whose deadline passed and forgets the order if its state's
    /// retention ended (and nothing is parked).
    pub fn expire(&self, current: &OrderState, now_ms: i64) -> Step {
        let mut next = current.clone();
        let mut answers = Vec::new();
        let (due, waiting): (Vec<ParkedRequest>, Vec<ParkedRequest>) =
            std::mem::take(&mut next.parked)
                .into_iter()
                .partition(|p| p.deadline_ms <= now_ms);
        next.parked = waiting;
        for entry in &due {
            next.remember(
                RecentRequest {
                    request_id: entry.request.request_id,
                    outcome: RecordedOutcome::Rejected(Rejection::Expired.code()),
                    from: next.state,
                    to: next.state,
                    version: next.version,
                },
                self.recent_window(),
            );
            let outcome = Outcome::Rejected {
                reason: Rejection::Expired,
                state: Some(next.state),
                version: next.version,
                duplicate: false,
            };
            answer_parked(entry, outcome, &mut answers);
        }
        let retired = next.parked.is_empty()
            && self
                .retention_deadline(&next)
                .is_some_and(|deadline| deadline <= now_ms);
        let change = if retired {
            StateChange::Delete
        } else if due.is_empty() {
            StateChange::Unchanged
        } else {
            StateChange::Put(next)
        };
        Step { answers, change }
    }

    /// When the order is forgotten if nothing happens to it, per its state's `expires_after`.
    pub fn retention_deadline(&self, state: &OrderState) -> Option<i64> {
        self.definition()
            .state(state.state)
            .expires_after
            .map(|d| state.updated_at_ms.saturating_add(d.as_millis() as i64))
    }

    /// The earliest time [`Decider::expire`] has something to do for this order: the first parked
    /// deadline while requests are parked (retention waits for them), else the end of retention.
    pub fn next_deadline(&self, state: &OrderState) -> Option<i64> {
        match state.parked.iter().map(|p| p.deadline_ms).min() {
            Some(parked) => Some(parked),
            None => self.retention_deadline(state),
        }
    }
}
