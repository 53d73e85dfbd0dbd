//! What happened to a request, as a reader of orderflow's output topics sees it: an accepted
//! transition, a rejection, or a dead letter; decoded from a record and shown for people or scripts.

use rdkafka::message::{Headers, Message};
use serde_json::{json, Value};

use crate::codec::headers::dlq as dlq_headers;
use crate::codec::{decode_accepted, decode_rejected, AcceptedRecord, CodecError, RejectedRecord};
use crate::config::TopicSettings;

/// A dead-letter record with its provenance headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its partition in the dead-letter topic.
    pub partition: i32,
    /// Its offset in the dead-letter topic.
    pub offset: i64,
    /// The original record's key.
    pub key: Option<Vec<u8>>,
    /// The original record's value (possibly truncated; see `truncated_from_bytes`).
    pub value: Vec<u8>,
    /// The topic the original record was read from.
    pub original_topic: Option<String>,
    /// The original partition.
    pub original_partition: Option<i32>,
    /// The original offset.
    pub original_offset: Option<i64>,
    /// The stable error kind (e.g. `not_avro`).
    pub error_kind: String,
    /// The error in words, with what to do.
    pub error_message: String,
    /// Set when the value was cut: the original length in bytes.
    pub truncated_from_bytes: Option<usize>,
}

impl DeadLetter {
    /// Reads a dead letter and its `orderflow.dlq.*` headers.
    pub fn from_message<M: Message>(message: &M) -> DeadLetter {
        let header = |name: &str| -> Option<String> {
            message.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == name)
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        DeadLetter {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().unwrap_or_default().to_vec(),
            original_topic: header(dlq_headers::TOPIC),
            original_partition: header(dlq_headers::PARTITION).and_then(|p| p.parse().ok()),
            original_offset: header(dlq_headers::OFFSET).and_then(|o| o.parse().ok()),
            error_kind: header(dlq_headers::ERROR_KIND).unwrap_or_default(),
            error_message: header(dlq_headers::ERROR_MESSAGE).unwrap_or_default(),
            truncated_from_bytes: header(dlq_headers::TRUNCATED_FROM).and_then(|n| n.parse().ok()),
        }
    }

    /// The original record's position, when the headers name it.
    pub fn original_position(&self) -> Option<(i32, i64)> {
        Some((self.original_partition?, self.original_offset?))
    }
}

/// One record of an output topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The transition was applied (or, with `duplicate`, had been applied before).
    Accepted(AcceptedRecord),
    /// The request was refused, with a reason.
    Rejected(RejectedRecord),
    /// The record could not be decided at all.
    DeadLetter(DeadLetter),
}

/// Decodes a record of one of the three output topics; `None` for a record of another topic.
pub fn decode_outcome<M: Message>(
    topics: &TopicSettings,
    message: &M,
) -> Option<Result<Outcome, CodecError>> {
    let payload = message.payload().unwrap_or_default();
    let topic = message.topic();
    if topic == topics.accepted {
        Some(decode_accepted(payload).map(Outcome::Accepted))
    } else if topic == topics.rejected {
        Some(decode_rejected(payload).map(Outcome::Rejected))
    } else if topic == topics.dead_letters {
        Some(Ok(Outcome::DeadLetter(DeadLetter::from_message(message))))
    } else {
        None
    }
}

impl Outcome {
    /// The order it is about (for a dead letter: its key, if it is text).
    pub fn order_id(&self) -> Option<String> {
        match self {
            Outcome::Accepted(a) => Some(a.order_id.clone()),
            Outcome::Rejected(r) => Some(r.order_id.clone()),
            Outcome::DeadLetter(d) => d
                .key
                .as_ref()
                .and_then(|k| String::from_utf8(k.clone()).ok()),
        }
    }

    /// The input record's (partition, offset) in the requests topic.
    pub fn input_position(&self) -> Option<(i32, i64)> {
        match self {
            Outcome::Accepted(a) => Some((a.input.partition, a.input.offset)),
            Outcome::Rejected(r) => Some((r.input.partition, r.input.offset)),
            Outcome::DeadLetter(d) => d.original_position(),
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Accepted(a) => format!(
                "accepted  {} {}: {} -> {} v{}{}",
                a.order_id,
                a.transition,
                a.from_state.as_deref().unwrap_or("(new)"),
                a.to_state,
                a.version,
                if a.duplicate {
                    " (duplicate: answered again, nothing applied)"
                } else {
                    ""
                }
            ),
            Outcome::Rejected(r) => format!(
                "rejected  {} {}: {} - {}{}",
                r.order_id,
                r.transition,
                r.reason.as_str(),
                r.detail,
                if r.duplicate { " (duplicate)" } else { "" }
            ),
            Outcome::DeadLetter(d) => format!(
                "dead letter  key {} from {}:{}: {} - {}",
                match d.key.as_deref() {
                    None | Some([]) => "(none)".into(),
                    Some(k) => String::from_utf8_lossy(k).into_owned(),
                },
                d.original_partition.map_or("?".into(), |p| p.to_string()),
                d.original_offset.map_or("?".into(), |o| o.to_string()),
                d.error_kind,
                d.error_message
            ),
        }
    }

    /// A JSON object for scripts (`--json`, the HTTP API).
    pub fn to_json(&self) -> Value {
        match self {
            Outcome::Accepted(a) => json!({
                "outcome": "accepted",
                "request_id": a.request_id.to_string(),
                "order_id": a.order_id,
                "transition": a.transition,
                "from_state": a.from_state,
                "to_state": a.to_state,
                "version": a.version,
                "duplicate": a.duplicate,
                "requested_at_ms": a.requested_at_ms,
                "decided_at_ms": a.decided_at_ms,
                "source": a.source,
                "attributes": a.attributes,
                "input": {"partition": a.input.partition, "offset": a.input.offset},
                "definition_hash": a.definition_hash,
            }),
            Outcome::Rejected(r) => json!({
                "outcome": "rejected",
                "request_id": r.request_id.to_string(),
                "order_id": r.order_id,
                "transition": r.transition,
                "reason": r.reason.as_str(),
                "detail": r.detail,
                "allowed_from": r.allowed_from,
                "expected_version": r.expected_version,
                "current_state": r.current_state,
                "current_version": r.current_version,
                "duplicate": r.duplicate,
                "requested_at_ms": r.requested_at_ms,
                "decided_at_ms": r.decided_at_ms,
                "source": r.source,
                "input": {"partition": r.input.partition, "offset": r.input.offset},
                "definition_hash": r.definition_hash,
            }),
            Outcome::DeadLetter(d) => json!({
                "outcome": "dead_letter",
                "dlq": {"partition": d.partition, "offset": d.offset},
                "key": d.key.as_deref().filter(|k| !k.is_empty()).map(String::from_utf8_lossy),
                "value_bytes": d.value.len(),
                "original": {
                    "topic": d.original_topic,
                    "partition": d.original_partition,
                    "offset": d.original_offset,
                },
                "error_kind": d.error_kind,
                "error_message": d.error_message,
                "truncated_from_bytes": d.truncated_from_bytes,
            }),
        }
    }
}
