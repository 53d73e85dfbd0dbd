//! The records a decided batch produces: state records, accepted and rejected outcomes (with the
//! trace context carried over) and dead letters with their provenance (and trace context), as the wire contract
//! (docs/wire-format.md) says.

use crate::codec::headers::{dlq, TRACEPARENT};
use crate::codec::{
    encode_accepted_view, encode_rejected, AcceptedView, InputPosition, RejectedRecord,
};
use crate::config::TopicSettings;
use crate::kafka::OutgoingRecord;
use crate::machine::{Answer, Definition, Origin, Outcome, Rejection, StateId, TransitionRequest};
use crate::telemetry::context::TraceParent;

use super::decide::{BatchContext, InputRecord, Poison};

/// An order's state record (a tombstone when `value` is `None`), in the input's partition.
pub fn state_record(
    topics: &TopicSettings,
    partition: i32,
    order_id: &str,
    value: Option<Vec<u8>>,
) -> OutgoingRecord {
    OutgoingRecord {
        topic: topics.state.clone(),
        partition,
        key: Some(order_id.as_bytes().to_vec()),
        value,
        headers: Vec::new(),
    }
}

/// The accepted or rejected record for a decision (the answer's request moves into it).
pub fn outcome_record(
    definition: &Definition,
    topics: &TopicSettings,
    answer: Answer,
    now_ms: i64,
    trace: Option<(String, Vec<u8>)>,
) -> OutgoingRecord {
    let Answer {
        origin: Origin { partition, offset },
        request,
        outcome,
    } = answer;
    let name = |id| definition.state(id).name.clone();
    let mut value = Vec::with_capacity(256);
    let topic = match &outcome {
        Outcome::Accepted {
            from,
            to,
            version,
            duplicate,
            ..
        } => {
            // Borrowed, not copied: the hot path.
            let state_name = |id| definition.state(id).name.as_str();
            encode_accepted_view(
                &AcceptedView {
                    request_id: request.request_id,
                    order_id: &request.order_id,
                    transition: &request.transition,
                    from_state: from.map(state_name),
                    to_state: state_name(*to),
                    version: *version,
                    duplicate: *duplicate,
                    requested_at_ms: request.requested_at_ms,
                    decided_at_ms: now_ms,
                    source: &request.source,
                    attributes: &request.attributes,
                    input_topic: &topics.requests,
                    input_partition: partition,
                    input_offset: offset,
                    definition_hash: definition.short_hash(),
                },
                &mut value,
            );
            &topics.accepted
        }
        Outcome::Rejected {
            reason,
            state,
            version,
            duplicate,
        } => {
            let allowed_from = definition
                .transition_id(&request.transition)
                .filter(|_| reason.code() == crate::machine::RejectCode::InvalidTransition)
                .map(|t| definition.source_names(t))
                .unwrap_or_default();
            encode_rejected(
                &RejectedRecord {
                    request_id: request.request_id,
                    order_id: request.order_id.clone(),
                    transition: request.transition.clone(),
                    reason: reason.code(),
                    detail: rejection_detail(
                        definition, &request, reason, *state, *version, *duplicate,
                    ),
                    allowed_from,
                    expected_version: request.expected_version,
                    current_state: state.map(name),
                    current_version: *version,
                    duplicate: *duplicate,
                    requested_at_ms: request.requested_at_ms,
                    decided_at_ms: now_ms,
                    source: request.source.clone(),
                    attributes: request.attributes.clone(),
                    input: InputPosition {
                        topic: topics.requests.clone(),
                        partition,
                        offset,
                    },
                    definition_hash: definition.short_hash().to_string(),
                },
                &mut value,
            );
            &topics.rejected
        }
    };
    OutgoingRecord {
        topic: topic.clone(),
        partition,
        key: Some(request.order_id.into_bytes()),
        value: Some(value),
        headers: trace.into_iter().collect(),
    }
}

/// A rejection explained for people.
fn rejection_detail(
    definition: &Definition,
    request: &TransitionRequest,
    reason: &Rejection,
    state: Option<StateId>,
    version: u64,
    duplicate: bool,
) -> String {
    let state_name = || state.map_or("missing".to_string(), |s| definition.state(s).name.clone());
    let text = match reason {
        Rejection::UnknownTransition => format!(
            "transition \"{}\" is not defined in {} v{}",
            request.transition,
            definition.name(),
            definition.version()
        ),
        Rejection::InvalidTransition { transition } => format!(
            "{} applies from {}; the order is {}",
            request.transition,
            definition.source_names(*transition).join(", "),
            state_name()
        ),
        Rejection::UnknownOrder => {
            format!("order {} does not exist: create it first", request.order_id)
        }
        Rejection::OrderAlreadyExists => format!(
            "order {} already exists (version {version})",
            request.order_id
        ),
        Rejection::VersionConflict { expected } => {
            format!("expected version {expected}, but the order is at version {version}")
        }
        Rejection::TerminalState => format!("the order is in terminal state {}", state_name()),
        Rejection::Expired => format!(
            "parked until its deadline, but the order stayed {}: {} never applied",
            state_name(),
            request.transition
        ),
        Rejection::ParkingFull => format!(
            "{} arrived early (the order is {}), but the order already holds the most parked requests",
            request.transition,
            state_name()
        ),
        Rejection::Recorded(code) => format!("rejected earlier as {}", code.as_str()),
    };
    if duplicate {
        format!("duplicate request {}: {text}", request.request_id)
    } else {
        text
    }
}

/// A dead letter: the original bytes with provenance and the error in headers, truncated to fit.
pub fn dead_letter(
    context: &BatchContext<'_>,
    input: &InputRecord,
    poison: &Poison,
) -> OutgoingRecord {
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        (
            dlq::TOPIC.into(),
            context.topics.requests.clone().into_bytes(),
        ),
        (
            dlq::PARTITION.into(),
            input.partition.to_string().into_bytes(),
        ),
        (dlq::OFFSET.into(), input.offset.to_string().into_bytes()),
        (dlq::GROUP.into(), context.group_id.as_bytes().to_vec()),
        (dlq::ERROR_KIND.into(), poison.kind().as_bytes().to_vec()),
    ];
    if let Some(ts) = input.timestamp_ms {
        headers.push((dlq::TIMESTAMP.into(), ts.to_string().into_bytes()));
    }
    // A valid trace context travels on, as onto an outcome: whoever handles the dead letter
    // continues the sender's trace.
    if let Some(context) = input.traceparent().and_then(|(_, v)| TraceParent::parse(v)) {
        headers.push((TRACEPARENT.into(), context.format().into_bytes()));
    }
    let mut message = poison.message(context.limits);
    message.truncate(floor_char_boundary(&message, 4096));
    headers.push((dlq::ERROR_MESSAGE.into(), message.into_bytes()));

    let limit = context.limits.dead_letter_max_bytes;
    // A keyless input stays keyless: a replay must not give it a key it never had.
    let mut key = input.key.clone();
    if let Some(key) = key.as_mut() {
        key.truncate(limit / 4);
    }
    let overhead: usize = key.as_ref().map_or(0, Vec::len)
        + headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum::<usize>()
        + 128;
    let mut value = input.value.clone();
    if let Some(v) = value.as_mut() {
        let room = limit.saturating_sub(overhead);
        if v.len() > room {
            headers.push((dlq::TRUNCATED_FROM.into(), v.len().to_string().into_bytes()));
            v.truncate(room);
        }
    }
    OutgoingRecord {
        topic: context.topics.dead_letters.clone(),
        partition: input.partition,
        key,
        value,
        headers,
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::CodecError;
    use crate::config::ProcessorSettings;
    use crate::machine::Decider;
    use crate::processor::decide::tests::{batch_context, input, lifecycle, request};
    use crate::telemetry::context::Sampling;

    #[test]
    fn a_dead_letter_keeps_the_input_key_as_it_came_and_none_stays_none() {
        let decider = Decider::new(lifecycle(), 8);
        let settings = (TopicSettings::default(), ProcessorSettings::default());
        let context = batch_context(&decider, &settings, Sampling::OFF);
        let mut keyless = input(7, &request("o-1", "create"));
        keyless.key = None;
        let letter = dead_letter(&context, &keyless, &Poison::Codec(CodecError::MissingKey));
        assert_eq!(letter.key, None);
        assert_eq!(letter.value, keyless.value, "the original bytes");

        let keyed = input(8, &request("o-2", "create"));
        let letter = dead_letter(&context, &keyed, &Poison::EmptyValue);
        assert_eq!(letter.key.as_deref(), Some(&b"o-2"[..]));
    }
}
