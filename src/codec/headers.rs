//! Record headers that are part of the wire contract (docs/wire-format.md): the trace context
//! carried from a request onto its outcome, and the provenance and error of a dead letter.

/// The W3C trace context header, carried from a request onto its outcome.
pub const TRACEPARENT: &str = "traceparent";

/// Makes `value` the record's one `traceparent` header (a span's context replaces the sender's).
pub fn set_traceparent(headers: &mut Vec<(String, Vec<u8>)>, value: Vec<u8>) {
    headers.retain(|(key, _)| key != TRACEPARENT);
    headers.push((TRACEPARENT.to_string(), value));
}

/// Dead-letter header names: where the record came from and why it is here.
pub mod dlq {
    /// The original topic.
    pub const TOPIC: &str = "orderflow.dlq.original.topic";
    /// The original partition.
    pub const PARTITION: &str = "orderflow.dlq.original.partition";
    /// The original offset.
    pub const OFFSET: &str = "orderflow.dlq.original.offset";
    /// The original record timestamp (ms), if it had one.
    pub const TIMESTAMP: &str = "orderflow.dlq.original.timestamp";
    /// The consumer group that rejected it.
    pub const GROUP: &str = "orderflow.dlq.consumer.group";
    /// A stable error kind: one of [`CodecError::KINDS`](crate::codec::CodecError::KINDS) or
    /// [`POLICY_KINDS`].
    pub const ERROR_KIND: &str = "orderflow.dlq.error.kind";
    /// The error in words.
    pub const ERROR_MESSAGE: &str = "orderflow.dlq.error.message";
    /// Present when the value was truncated: the original value's length in bytes.
    pub const TRUNCATED_FROM: &str = "orderflow.dlq.truncated.from.bytes";

    /// Error kinds of records that decode but break a limit or carry no value.
    pub const POLICY_KINDS: [&str; 2] = ["empty_value", "oversized_attributes"];

    /// Every error kind a dead letter can carry.
    pub fn kinds() -> impl Iterator<Item = &'static str> {
        crate::codec::CodecError::KINDS
            .iter()
            .chain(POLICY_KINDS.iter())
            .copied()
    }
}
