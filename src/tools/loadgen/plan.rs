//! What the load generator sends, decided up front and deterministically from a seed: realistic
//! order lifecycles interleaved across many orders, with chosen shares of invalid, duplicate,
//! out-of-order and poison requests, each with the outcome it must get. Pure: no I/O, no clock.

use std::collections::{HashMap, VecDeque};

use uuid::Uuid;

use crate::machine::{Definition, StateId, TransitionRequest};

/// The lifecycles orders follow (transition names of the default definition).
const HAPPY: &[&str] = &["create", "confirm", "ship", "out_for_delivery", "deliver"];
const LOCKER: &[&str] = &["create", "confirm", "ship", "deliver"];
const CANCEL_EARLY: &[&str] = &["create", "cancel"];
const CANCEL_LATE: &[&str] = &["create", "confirm", "cancel"];
const RETURNED: &[&str] = &[
    "create",
    "confirm",
    "ship",
    "out_for_delivery",
    "deliver",
    "return",
];
/// A transition no definition has: always rejected, whatever the order's state.
pub const UNKNOWN_TRANSITION: &str = "teleport";

/// Fractions of the traffic and of the orders.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shares {
    /// Requests that must be rejected (unknown transition or a wrong expected version).
    pub invalid: f64,
    /// Redeliveries of the order's previous request (same request id).
    pub duplicate: f64,
    /// Two consecutive steps of an order sent in swapped order (the early one parks).
    pub out_of_order: f64,
    /// Records that are not requests (dead letters).
    pub poison: f64,
    /// Orders cancelled before shipping.
    pub cancel: f64,
    /// Orders returned after delivery.
    pub returned: f64,
}

impl Default for Shares {
    fn default() -> Shares {
        Shares {
            invalid: 0.02,
            duplicate: 0.02,
            out_of_order: 0.02,
            poison: 0.002,
            cancel: 0.10,
            returned: 0.05,
        }
    }
}

impl Shares {
    /// The throughput benchmark's input: every request decided on arrival (nothing parked, no
    /// poison), so every system compared handles the same requests the same way.
    pub fn decided_on_arrival() -> Shares {
        Shares {
            out_of_order: 0.0,
            poison: 0.0,
            ..Shares::default()
        }
    }
}

/// The outcome a planned request must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Expect {
    /// Accepted (possibly after parking).
    Accepted,
    /// Rejected.
    Rejected,
    /// Answered again with the first outcome, flagged duplicate.
    Duplicate,
    /// Sent to the dead-letter topic.
    DeadLetter,
}

/// How a poison record is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoisonKind {
    /// Bytes without the Avro single-object marker.
    NotAvro,
    /// The marker with a schema fingerprint nobody registered.
    UnknownSchema,
    /// A valid request without a record key.
    MissingKey,
    /// A valid request with more attributes than `processor.max_attributes` allows by default.
    OversizedAttributes,
}

/// One record to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Planned {
    /// A transition request (keyed by its order id).
    Request {
        /// The request; `requested_at_ms` is set when it is sent.
        request: TransitionRequest,
        /// What it must get.
        expect: Expect,
        /// Its outcome waits for a later request by design: it parks until its predecessor
        /// arrives, or it repeats a request that is parked.
        waits: bool,
    },
    /// A record that is not a valid request.
    Poison {
        /// The order it pretends to be about.
        order_id: String,
        /// How it is broken.
        kind: PoisonKind,
    },
}

impl Planned {
    /// What it must get.
    pub fn expect(&self) -> Expect {
        match self {
            Planned::Request { expect, .. } => *expect,
            Planned::Poison { .. } => Expect::DeadLetter,
        }
    }

    /// Whether its outcome waits for a later request by design (see [`Planned::Request`]).
    pub fn waits(&self) -> bool {
        matches!(self, Planned::Request { waits: true, .. })
    }
}

/// SplitMix64: small, fast, and the same sequence on every platform and version.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

#[derive(Debug)]
struct Script {
    order_id: String,
    steps: VecDeque<TransitionRequest>,
    last_sent: Option<TransitionRequest>,
    /// The order's state once everything sent so far is applied (`None` before create).
    state: Option<StateId>,
    /// A step sent early, waiting (parked) for the step before it.
    parked: Option<String>,
}

/// An endless-until-done, deterministic sequence of records for `orders` orders.
#[derive(Debug)]
pub struct Plan {
    rng: Rng,
    shares: Shares,
    prefix: String,
    orders: u64,
    started: u64,
    concurrency: usize,
    active: Vec<Script>,
    /// Per transition name: (source states, target state, may park).
    transitions: HashMap<String, (Vec<StateId>, StateId, bool)>,
}

impl Plan {
    /// A plan for `orders` orders with ids `<prefix>-<n>`, at most `concurrency` in flight at once.
    /// Fails when `definition` lacks a transition the lifecycles use.
    pub fn new(
        definition: &Definition,
        seed: u64,
        prefix: &str,
        orders: u64,
        concurrency: usize,
        shares: Shares,
    ) -> Result<Plan, String> {
        for name in HAPPY.iter().chain(CANCEL_LATE).chain(RETURNED) {
            if definition.transition_id(name).is_none() {
                return Err(format!(
                    "the load generator's lifecycles use transition {name:?}, which definition {} lacks: run it with machines/order-lifecycle.toml",
                    definition.name()
                ));
            }
        }
        let transitions = definition
            .transitions()
            .iter()
            .map(|t| (t.name.clone(), (t.from.clone(), t.to, t.park)))
            .collect();
        Ok(Plan {
            rng: Rng::new(seed),
            shares,
            prefix: prefix.to_string(),
            orders,
            started: 0,
            concurrency: concurrency.max(1),
            active: Vec::new(),
            transitions,
        })
    }

    fn request(&mut self, order_id: &str, transition: &str) -> TransitionRequest {
        TransitionRequest {
            request_id: Uuid::from_u64_pair(self.rng.next_u64(), self.rng.next_u64()),
            order_id: order_id.to_string(),
            transition: transition.to_string(),
            expected_version: None,
            requested_at_ms: 0,
            source: "loadgen".into(),
            attributes: Default::default(),
        }
    }

    fn start_order(&mut self) {
        let order_id = format!("{}-{}", self.prefix, self.started);
        self.started += 1;
        let roll = self.rng.unit();
        let path = if roll < self.shares.cancel / 2.0 {
            CANCEL_EARLY
        } else if roll < self.shares.cancel {
            CANCEL_LATE
        } else if roll < self.shares.cancel + self.shares.returned {
            RETURNED
        } else if self.rng.unit() < 0.1 {
            LOCKER
        } else {
            HAPPY
        };
        let steps = path.iter().map(|t| self.request(&order_id, t)).collect();
        self.active.push(Script {
            order_id,
            steps,
            last_sent: None,
            state: None,
            parked: None,
        });
    }

    /// Whether `transition` applies in `state` (a create applies to no order).
    fn applies(&self, transition: &str, state: Option<StateId>) -> bool {
        match (self.transitions.get(transition), state) {
            (Some((from, _, _)), Some(state)) => from.contains(&state),
            (Some((from, _, _)), None) => from.is_empty(),
            (None, _) => false,
        }
    }

    /// Sending `transition` now parks it: it may park and does not apply yet.
    fn parks(&self, transition: &str, state: Option<StateId>) -> bool {
        state.is_some()
            && self.transitions.get(transition).is_some_and(|t| t.2)
            && !self.applies(transition, state)
    }

    /// The state after applying `transition` (and then a parked step that now applies).
    fn advance(&self, script: &mut Script, transition: &str) {
        if let Some((_, to, _)) = self.transitions.get(transition) {
            script.state = Some(*to);
        }
        if let Some(parked) = script.parked.take() {
            if self.applies(&parked, script.state) {
                self.advance(script, &parked);
            } else {
                script.parked = Some(parked);
            }
        }
    }
}

impl Iterator for Plan {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        while self.active.len() < self.concurrency && self.started < self.orders {
            self.start_order();
        }
        if self.active.is_empty() {
            return None;
        }
        let index = self.rng.below(self.active.len());
        let roll = self.rng.unit();
        let s = self.shares;
        let script = &self.active[index];
        let order_id = script.order_id.clone();
        if roll < s.poison {
            let kind = match self.rng.below(4) {
                0 => PoisonKind::NotAvro,
                1 => PoisonKind::UnknownSchema,
                2 => PoisonKind::MissingKey,
                _ => PoisonKind::OversizedAttributes,
            };
            return Some(Planned::Poison { order_id, kind });
        }
        if roll < s.poison + s.invalid && script.state.is_some() {
            let mut request = if self.rng.below(2) == 0 {
                self.request(&order_id, UNKNOWN_TRANSITION)
            } else {
                // Far beyond any version the order can reach: a conflict whatever was applied.
                let next = self.active[index]
                    .steps
                    .front()
                    .map_or("confirm".to_string(), |r| r.transition.clone());
                let mut r = self.request(&order_id, &next);
                r.expected_version = Some(1_000);
                r
            };
            request.source = "loadgen-invalid".into();
            return Some(Planned::Request {
                request,
                expect: Expect::Rejected,
                waits: false,
            });
        }
        if roll < s.poison + s.invalid + s.duplicate {
            if let Some(previous) = self.active[index].last_sent.clone() {
                // An order holds a parked request only while it is the last one sent.
                let waits = self.active[index].parked.is_some();
                return Some(Planned::Request {
                    request: previous,
                    expect: Expect::Duplicate,
                    waits,
                });
            }
        }
        let swap = roll < s.poison + s.invalid + s.duplicate + s.out_of_order;
        let script = &self.active[index];
        // Only a swap whose early step parks and whose other step then releases it: a step that
        // would apply at once (deliver straight from Shipped) would change the lifecycle instead.
        if swap
            && script.parked.is_none()
            && script.steps.len() >= 2
            && self.parks(&script.steps[1].transition, script.state)
            && self.applies(&script.steps[0].transition, script.state)
        {
            self.active[index].steps.swap(0, 1);
        }
        let mut script = self.active.swap_remove(index);
        let request = script.steps.pop_front()?;
        let waits = !self.applies(&request.transition, script.state);
        if waits {
            script.parked = Some(request.transition.clone());
        } else {
            self.advance(&mut script, &request.transition);
        }
        script.last_sent = Some(request.clone());
        if !script.steps.is_empty() {
            self.active.push(script);
            let last = self.active.len() - 1;
            self.active.swap(index.min(last), last);
        }
        Some(Planned::Request {
            request,
            expect: Expect::Accepted,
            waits,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::machine::{Decider, OrderState, Origin, ParkingPolicy, StateChange};

    fn definition() -> Arc<Definition> {
        crate::machine::lifecycle_for_tests()
    }

    fn plan(seed: u64, orders: u64, shares: Shares) -> Vec<Planned> {
        Plan::new(&definition(), seed, "o", orders, 50, shares)
            .unwrap()
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_records_and_another_seed_others() {
        assert_eq!(
            plan(7, 300, Shares::default()),
            plan(7, 300, Shares::default())
        );
        assert_ne!(
            plan(7, 300, Shares::default()),
            plan(8, 300, Shares::default())
        );
    }

    #[test]
    fn the_throughput_input_decides_every_request_on_arrival_and_holds_rejections() {
        let records = plan(42, 5_000, Shares::decided_on_arrival());
        assert!(
            records
                .iter()
                .all(|r| matches!(r, Planned::Request { waits: false, .. })),
            "nothing parks and nothing is poison"
        );
        assert!(
            records.iter().any(|r| r.expect() == Expect::Rejected),
            "invalid requests are still part of it"
        );
    }

    #[test]
    fn every_order_is_started_and_the_shares_are_roughly_kept() {
        let shares = Shares {
            invalid: 0.05,
            duplicate: 0.05,
            out_of_order: 0.05,
            poison: 0.01,
            cancel: 0.1,
            returned: 0.05,
        };
        let records = plan(1, 5_000, shares);
        let orders: std::collections::HashSet<String> = records
            .iter()
            .filter_map(|r| match r {
                Planned::Request { request, .. } => Some(request.order_id.clone()),
                Planned::Poison { .. } => None,
            })
            .collect();
        assert_eq!(orders.len(), 5_000);
        let n = records.len() as f64;
        let share = |e: Expect| records.iter().filter(|r| r.expect() == e).count() as f64 / n;
        assert!(
            (0.035..0.065).contains(&share(Expect::Rejected)),
            "{}",
            share(Expect::Rejected)
        );
        assert!(
            (0.035..0.065).contains(&share(Expect::Duplicate)),
            "{}",
            share(Expect::Duplicate)
        );
        assert!((0.005..0.015).contains(&share(Expect::DeadLetter)));
    }

    /// The plan's expectations hold when its requests are decided in order by the real core
    /// (as one partition would see them): the plan is a correct oracle for the load test.
    #[test]
    fn the_core_gives_every_planned_request_its_expected_outcome() {
        let definition = definition();
        let decider = Decider::new(Arc::clone(&definition), 8).with_parking(ParkingPolicy {
            max_per_order: 4,
            max_wait_ms: 600_000,
        });
        let shares = Shares {
            invalid: 0.1,
            duplicate: 0.1,
            out_of_order: 0.2,
            poison: 0.0,
            cancel: 0.1,
            returned: 0.05,
        };
        let planned: Vec<Planned> = plan(3, 2_000, shares);
        let mut states: HashMap<String, OrderState> = HashMap::new();
        let mut answers: HashMap<i64, Vec<(bool, bool)>> = HashMap::new();
        let mut waited = 0;
        for (offset, record) in planned.iter().enumerate() {
            let Planned::Request { request, .. } = record else {
                continue;
            };
            let origin = Origin {
                partition: 0,
                offset: offset as i64,
            };
            let step = decider.decide_input(
                states.get(&request.order_id),
                request.clone(),
                origin,
                1_000,
            );
            match step.change {
                StateChange::Put(state) => {
                    states.insert(request.order_id.clone(), state);
                }
                StateChange::Delete => {
                    states.remove(&request.order_id);
                }
                StateChange::Unchanged => {}
            }
            // Marked as waiting exactly when its answer is not given by its own arrival.
            let answered_now = step.answers.iter().any(|a| a.origin == origin);
            assert_eq!(record.waits(), !answered_now, "record {offset}: {record:?}");
            waited += usize::from(record.waits());
            for answer in step.answers {
                answers
                    .entry(answer.origin.offset)
                    .or_default()
                    .push((answer.outcome.is_accepted(), answer.outcome.is_duplicate()));
            }
        }
        let mut duplicates_seen = 0;
        for (offset, record) in planned.iter().enumerate() {
            let wanted = match record.expect() {
                Expect::Accepted => (true, false),
                Expect::Rejected => (false, false),
                Expect::Duplicate => {
                    duplicates_seen += 1;
                    (true, true)
                }
                Expect::DeadLetter => continue,
            };
            let got = answers.get(&(offset as i64)).cloned().unwrap_or_default();
            assert_eq!(got, vec![wanted], "record {offset}: {record:?}");
        }
        assert!(duplicates_seen > 100);
        assert!(waited > 50, "only {waited} requests waited");
        assert!(
            states.values().all(|s| s.parked.is_empty()),
            "every swapped step was released"
        );
    }
}
