//! `orderflow check`: an exactly-once checker that knows only the topics (read with
//! read_committed), the definition and the request limits, never the processor's code path.
//!
//! It verifies that every decodable input has exactly one outcome; that every poison input is in
//! the dead-letter topic exactly once with its provenance, and nothing else is; that each order's
//! accepted transitions, in the order of the log downstream readers replay, form a legal path
//! through the definition with versions 1, 2, 3… without gaps; that every outcome flagged
//! duplicate repeats the first outcome of its request id; that no request id is decided afresh
//! while its order still remembers it; and that the compacted state equals the fold of the
//! accepted transitions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use rdkafka::Message;
use serde_json::{json, Value};

use crate::client::{scan_topic, DeadLetter, GatewayError};
use crate::codec::{
    decode_accepted, decode_order_state, decode_rejected, decode_request, AcceptedRecord,
    RejectedRecord,
};
use crate::config::Settings;
use crate::machine::{Definition, OrderState, RejectCode};

/// One record of the requests topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Option<Vec<u8>>,
}

/// Everything the checker reads.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// The requests topic's name (outcomes must point into it).
    pub requests_topic: String,
    /// Every input record.
    pub inputs: Vec<InputRecord>,
    /// Committed accepted outcomes.
    pub accepted: Vec<AcceptedRecord>,
    /// Committed rejections.
    pub rejected: Vec<RejectedRecord>,
    /// Committed dead letters.
    pub dead_letters: Vec<DeadLetter>,
    /// The latest state record per order (`None`: a tombstone, the order was forgotten).
    pub states: HashMap<String, Option<OrderState>>,
    /// Output records that could not be decoded.
    pub corrupt_outputs: u64,
}

/// The checker's findings; every count but the first four must be zero.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Input records read.
    pub inputs: u64,
    /// Of them, decodable requests.
    pub requests: u64,
    /// Of them, poison records.
    pub poison: u64,
    /// Orders with at least one accepted transition.
    pub orders: u64,
    /// Requests parked in their order's final state (answered later; not lost).
    pub parked: u64,
    /// Requests with no outcome.
    pub lost: u64,
    /// Requests with more than one outcome.
    pub duplicated: u64,
    /// Outcomes for no input record of the requests topic.
    pub orphan_outcomes: u64,
    /// Poison records not in the dead-letter topic.
    pub dead_letters_lost: u64,
    /// Poison records in it more than once.
    pub dead_letters_duplicated: u64,
    /// Dead letters for no poison record (or without provenance).
    pub dead_letters_unexpected: u64,
    /// Accepted transitions that the definition does not allow from the previous state.
    pub illegal: u64,
    /// Orders whose accepted versions are not 1, 2, 3… (gaps or repeats).
    pub version_gaps: u64,
    /// Orders whose final state record differs from the fold of their accepted transitions.
    pub state_mismatches: u64,
    /// Outcomes flagged duplicate that do not repeat the first outcome of their request id (or
    /// whose request id has no first outcome).
    pub duplicate_mismatches: u64,
    /// Request ids decided afresh (not flagged duplicate) at a second input while their order
    /// still remembered the first decision: applied twice.
    pub decided_twice: u64,
    /// Request ids decided afresh after `processor.recent_requests` later decisions of their
    /// order had pushed them out of its memory: reused by a client, reported apart, not an
    /// exactly-once failure.
    pub request_ids_reused: u64,
    /// Output records that could not be decoded.
    pub corrupt_outputs: u64,
    /// The first problems, in words.
    pub examples: Vec<String>,
}

impl Verdict {
    /// True when nothing was lost, duplicated, illegal or mismatched.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.orphan_outcomes == 0
            && self.dead_letters_lost == 0
            && self.dead_letters_duplicated == 0
            && self.dead_letters_unexpected == 0
            && self.illegal == 0
            && self.version_gaps == 0
            && self.state_mismatches == 0
            && self.duplicate_mismatches == 0
            && self.decided_twice == 0
            && self.corrupt_outputs == 0
    }

    fn problem(&mut self, text: String) {
        if self.examples.len() < 10 {
            self.examples.push(text);
        }
    }

    /// The verdict for people.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} inputs ({} requests, {} poison), {} orders, {} parked\n\
             lost {}, duplicated {}, orphan outcomes {}, dead letters lost {} / duplicated {} / unexpected {}, \
             illegal {}, version gaps {}, state mismatches {}, duplicate mismatches {}, decided twice {}, \
             corrupt outputs {}; request ids reused beyond the window {}: {}",
            self.inputs,
            self.requests,
            self.poison,
            self.orders,
            self.parked,
            self.lost,
            self.duplicated,
            self.orphan_outcomes,
            self.dead_letters_lost,
            self.dead_letters_duplicated,
            self.dead_letters_unexpected,
            self.illegal,
            self.version_gaps,
            self.state_mismatches,
            self.duplicate_mismatches,
            self.decided_twice,
            self.corrupt_outputs,
            self.request_ids_reused,
            if self.is_clean() { "EXACTLY ONCE" } else { "VIOLATED" }
        );
        for example in &self.examples {
            text += &format!("\n  {example}");
        }
        text
    }

    /// The verdict as JSON.
    pub fn to_json(&self) -> Value {
        json!(self)
    }
}

/// The request limits a poison decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most attributes per request.
    pub max_attributes: usize,
    /// Most bytes of attribute keys and values.
    pub max_attribute_bytes: usize,
    /// How many recent request ids an order remembers (`processor.recent_requests`).
    pub recent_requests: usize,
}

/// Whether an input is a request orderflow must decide (as opposed to a dead letter). Written
/// here from the wire format and the limits, not taken from the processor.
fn is_request(input: &InputRecord, limits: Limits) -> Option<uuid::Uuid> {
    let request = decode_request(input.key.as_deref(), input.value.as_deref()?).ok()?;
    let bytes: usize = request
        .attributes
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    (request.attributes.len() <= limits.max_attributes && bytes <= limits.max_attribute_bytes)
        .then_some(request.request_id)
}

/// Checks `history` against `definition`.
pub fn check(definition: &Definition, limits: Limits, history: &History) -> Verdict {
    let mut v = Verdict {
        inputs: history.inputs.len() as u64,
        corrupt_outputs: history.corrupt_outputs,
        ..Verdict::default()
    };
    // Outcomes per input position.
    let mut outcomes: HashMap<(i32, i64), u64> = HashMap::new();
    for position in history
        .accepted
        .iter()
        .map(|a| (&a.input.topic, a.input.partition, a.input.offset))
        .chain(
            history
                .rejected
                .iter()
                .map(|r| (&r.input.topic, r.input.partition, r.input.offset)),
        )
    {
        if *position.0 == history.requests_topic {
            *outcomes.entry((position.1, position.2)).or_default() += 1;
        } else {
            v.orphan_outcomes += 1;
            v.problem(format!("an outcome points into topic {}", position.0));
        }
    }
    let mut dead: HashMap<(i32, i64), u64> = HashMap::new();
    for letter in &history.dead_letters {
        match (letter.original_topic.as_deref(), letter.original_position()) {
            (Some(topic), Some(position)) if topic == history.requests_topic => {
                *dead.entry(position).or_default() += 1;
            }
            _ => {
                v.dead_letters_unexpected += 1;
                v.problem(format!(
                    "dead letter {}:{} has no provenance into {}",
                    letter.partition, letter.offset, history.requests_topic
                ));
            }
        }
    }
    let parked: HashSet<(i32, i64)> = history
        .states
        .values()
        .flatten()
        .flat_map(|s| s.parked.iter())
        .flat_map(|p| {
            std::iter::once((p.partition, p.offset))
                .chain(p.redeliveries.iter().map(|r| (r.partition, r.offset)))
        })
        .collect();
    let mut inputs_seen: HashSet<(i32, i64)> = HashSet::new();
    for input in &history.inputs {
        let position = (input.partition, input.offset);
        inputs_seen.insert(position);
        if is_request(input, limits).is_some() {
            v.requests += 1;
            match outcomes.get(&position).copied().unwrap_or(0) {
                0 if parked.contains(&position) => v.parked += 1,
                0 => {
                    v.lost += 1;
                    v.problem(format!(
                        "request {}:{} has no outcome",
                        position.0, position.1
                    ));
                }
                1 => {}
                n => {
                    v.duplicated += 1;
                    v.problem(format!(
                        "request {}:{} has {n} outcomes",
                        position.0, position.1
                    ));
                }
            }
            if dead.contains_key(&position) {
                v.dead_letters_unexpected += 1;
                v.problem(format!(
                    "request {}:{} is also a dead letter",
                    position.0, position.1
                ));
            }
        } else {
            v.poison += 1;
            match dead.get(&position).copied().unwrap_or(0) {
                0 => {
                    v.dead_letters_lost += 1;
                    v.problem(format!(
                        "poison {}:{} is not in the dead-letter topic",
                        position.0, position.1
                    ));
                }
                1 => {}
                n => {
                    v.dead_letters_duplicated += 1;
                    v.problem(format!(
                        "poison {}:{} is {n} times in the dead-letter topic",
                        position.0, position.1
                    ));
                }
            }
        }
    }
    for position in outcomes.keys().filter(|p| !inputs_seen.contains(p)) {
        v.orphan_outcomes += 1;
        v.problem(format!(
            "an outcome names input {}:{}, which does not exist",
            position.0, position.1
        ));
    }
    for position in dead.keys().filter(|p| !inputs_seen.contains(p)) {
        v.dead_letters_unexpected += 1;
        v.problem(format!(
            "a dead letter names input {}:{}, which does not exist",
            position.0, position.1
        ));
    }

    check_request_ids(history, limits, &mut v);

    // Each order's accepted path, in the order of the log (one order lives in one partition, and
    // downstream readers replay it in this order): versions are not sorted before judging them.
    let mut paths: BTreeMap<&str, Vec<&AcceptedRecord>> = BTreeMap::new();
    for accepted in history.accepted.iter().filter(|a| !a.duplicate) {
        paths
            .entry(accepted.order_id.as_str())
            .or_default()
            .push(accepted);
    }
    v.orders = paths.len() as u64;
    for (order_id, path) in paths {
        let versions_ok = path
            .iter()
            .enumerate()
            .all(|(i, a)| a.version == i as u64 + 1);
        if !versions_ok {
            v.version_gaps += 1;
            let versions: Vec<u64> = path.iter().map(|a| a.version).collect();
            v.problem(format!("order {order_id} has versions {versions:?}"));
        }
        let mut at: Option<&str> = None;
        for step in &path {
            let legal = definition
                .transition_id(&step.transition)
                .map(|id| definition.transition(id))
                .is_some_and(|t| {
                    let to_ok = definition.state(t.to).name == step.to_state;
                    let from_ok = match (at, step.from_state.as_deref()) {
                        (None, None) => t.create,
                        (Some(previous), Some(from)) if previous == from => definition
                            .state_id(from)
                            .is_some_and(|f| t.from.contains(&f)),
                        _ => false,
                    };
                    to_ok && from_ok
                });
            if !legal {
                v.illegal += 1;
                v.problem(format!(
                    "order {order_id}: {} from {:?} to {} (v{}) does not follow {:?}",
                    step.transition, step.from_state, step.to_state, step.version, at
                ));
            }
            at = Some(step.to_state.as_str());
        }
        let last = path.last().map(|a| (a.to_state.as_str(), a.version));
        match history.states.get(order_id) {
            // Forgotten after its retention: nothing left to compare.
            Some(None) => {}
            Some(Some(state)) => {
                let stored = (definition.state(state.state).name.as_str(), state.version);
                if Some(stored) != last {
                    v.state_mismatches += 1;
                    v.problem(format!(
                        "order {order_id}: state record {stored:?}, transitions end at {last:?}"
                    ));
                }
            }
            None => {
                v.state_mismatches += 1;
                v.problem(format!(
                    "order {order_id} has accepted transitions but no state record"
                ));
            }
        }
    }
    v
}

/// What an outcome says, for comparing a duplicate's answer with the first one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Said<'a> {
    Accepted {
        order_id: &'a str,
        to_state: &'a str,
        version: u64,
    },
    Rejected {
        order_id: &'a str,
        reason: RejectCode,
        state: Option<&'a str>,
        version: u64,
    },
}

impl<'a> Said<'a> {
    fn order_id(&self) -> &'a str {
        match self {
            Said::Accepted { order_id, .. } | Said::Rejected { order_id, .. } => order_id,
        }
    }

    /// Whether `self`, flagged duplicate, repeats `first`. A duplicate of an accepted request
    /// whose transition the definition no longer has comes back as a recorded
    /// `unknown_transition` rejection at the accepted state and version.
    fn repeats(&self, first: &Said<'_>) -> bool {
        match (self, first) {
            (
                Said::Rejected {
                    order_id,
                    reason: RejectCode::UnknownTransition,
                    state: Some(state),
                    version,
                },
                Said::Accepted {
                    order_id: first_order,
                    to_state,
                    version: first_version,
                },
            ) => order_id == first_order && state == to_state && version == first_version,
            _ => self == first,
        }
    }
}

/// One outcome as the request-id rules see it.
struct Answer<'a> {
    input: (i32, i64),
    duplicate: bool,
    said: Said<'a>,
    /// Whether the order remembers this decision (it existed, or this decision created it).
    remembered: bool,
}

/// The request-id rules: every outcome flagged duplicate repeats the first outcome of its request
/// id, and a request id is decided afresh only once its order has forgotten it.
fn check_request_ids(history: &History, limits: Limits, v: &mut Verdict) {
    let mut answers: HashMap<uuid::Uuid, Vec<Answer<'_>>> = HashMap::new();
    for a in &history.accepted {
        answers.entry(a.request_id).or_default().push(Answer {
            input: (a.input.partition, a.input.offset),
            duplicate: a.duplicate,
            said: Said::Accepted {
                order_id: &a.order_id,
                to_state: &a.to_state,
                version: a.version,
            },
            remembered: true,
        });
    }
    for r in &history.rejected {
        answers.entry(r.request_id).or_default().push(Answer {
            input: (r.input.partition, r.input.offset),
            duplicate: r.duplicate,
            said: Said::Rejected {
                order_id: &r.order_id,
                reason: r.reason,
                state: r.current_state.as_deref(),
                version: r.current_version,
            },
            // A rejection for an order that does not exist leaves nothing to remember it in.
            remembered: r.current_state.is_some(),
        });
    }
    // The decisions each order remembers, by input position (a duplicate is not remembered again).
    let mut remembered: HashMap<&str, Vec<(i32, i64)>> = HashMap::new();
    for answer in answers.values().flatten() {
        if answer.remembered && !answer.duplicate {
            remembered
                .entry(answer.said.order_id())
                .or_default()
                .push(answer.input);
        }
    }
    for (request_id, mut list) in answers {
        list.sort_by_key(|a| a.input);
        let mut first: Option<&Answer<'_>> = None;
        for answer in &list {
            if answer.duplicate {
                if !first.is_some_and(|f| answer.said.repeats(&f.said)) {
                    v.duplicate_mismatches += 1;
                    v.problem(format!(
                        "request {request_id} at {}:{} is answered as a duplicate with {:?}, but its first outcome was {:?}",
                        answer.input.0,
                        answer.input.1,
                        answer.said,
                        first.map(|f| &f.said)
                    ));
                }
                continue;
            }
            if let Some(earlier) = first.filter(|f| f.remembered) {
                // Each decision of the order between the two pushed an older request id out of
                // the order's memory.
                let between = remembered.get(earlier.said.order_id()).map_or(0, |inputs| {
                    inputs
                        .iter()
                        .filter(|p| **p > earlier.input && **p < answer.input)
                        .count()
                });
                if between >= limits.recent_requests {
                    v.request_ids_reused += 1;
                } else {
                    v.decided_twice += 1;
                    v.problem(format!(
                        "request {request_id} was decided at {}:{} and again at {}:{} while its order still remembered it ({between} decisions between, window {})",
                        earlier.input.0, earlier.input.1, answer.input.0, answer.input.1, limits.recent_requests
                    ));
                }
            }
            first = Some(answer);
        }
    }
}

impl super::Report for Verdict {
    fn describe(&self) -> String {
        Verdict::describe(self)
    }

    fn to_json(&self) -> Value {
        Verdict::to_json(self)
    }

    fn exit_code(&self) -> u8 {
        if self.is_clean() {
            0
        } else {
            1
        }
    }
}

/// Reads the topics' whole history (they must be quiet) and judges it.
pub async fn run(settings: &Settings, _args: &crate::cli::CheckArgs) -> anyhow::Result<Verdict> {
    let settings = super::connected(settings).await?;
    let definition = super::definition(&settings)?;
    let limits = Limits {
        max_attributes: settings.processor.max_attributes,
        max_attribute_bytes: settings.processor.max_attribute_bytes,
        recent_requests: settings.processor.recent_requests,
    };
    let verdict = tokio::task::spawn_blocking(move || {
        let partitions = settings.topics.partitions;
        read_history(&settings, &definition, partitions)
            .map(|history| check(&definition, limits, &history))
    })
    .await??;
    Ok(verdict)
}

/// Reads the whole history of the five topics of `settings` (the topics must be quiet: nothing
/// being produced while it reads).
pub fn read_history(
    settings: &Settings,
    definition: &Definition,
    partitions: i32,
) -> Result<History, GatewayError> {
    let all: Vec<i32> = (0..partitions).collect();
    let t = &settings.topics;
    let timeout = Duration::from_secs(60);
    let mut history = History {
        requests_topic: t.requests.clone(),
        ..History::default()
    };
    scan_topic(
        &settings.kafka,
        "orderflow-check",
        &t.requests,
        &all,
        timeout,
        |m| {
            history.inputs.push(InputRecord {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
            });
        },
    )?;
    let mut corrupt = 0;
    scan_topic(
        &settings.kafka,
        "orderflow-check",
        &t.accepted,
        &all,
        timeout,
        |m| match decode_accepted(m.payload().unwrap_or_default()) {
            Ok(a) => history.accepted.push(a),
            Err(_) => corrupt += 1,
        },
    )?;
    scan_topic(
        &settings.kafka,
        "orderflow-check",
        &t.rejected,
        &all,
        timeout,
        |m| match decode_rejected(m.payload().unwrap_or_default()) {
            Ok(r) => history.rejected.push(r),
            Err(_) => corrupt += 1,
        },
    )?;
    scan_topic(
        &settings.kafka,
        "orderflow-check",
        &t.dead_letters,
        &all,
        timeout,
        |m| {
            history.dead_letters.push(DeadLetter::from_message(m));
        },
    )?;
    scan_topic(
        &settings.kafka,
        "orderflow-check",
        &t.state,
        &all,
        timeout,
        |m| {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            match m.payload() {
                None => {
                    history.states.insert(key, None);
                }
                Some(value) => match decode_order_state(definition, value) {
                    Ok((_, state)) => {
                        history.states.insert(key, Some(state));
                    }
                    Err(_) => corrupt += 1,
                },
            }
        },
    )?;
    history.corrupt_outputs = corrupt;
    Ok(history)
}

#[cfg(test)]
mod tests;
