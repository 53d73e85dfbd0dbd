//! Bytes ⇄ domain records: Avro single-object encoding with the schemas shipped in `schemas/`.
//!
//! # Wire format
//! Every value is `C3 01` + the writer schema's 8-byte CRC-64-AVRO fingerprint (little endian) + the
//! Avro binary body (the Avro specification's "single object encoding"), so a reader knows the
//! writer's schema without a registry. Keys are the order id as UTF-8.
//!
//! The current version of each schema is encoded and decoded by hand-written code (see
//! `binary`); data written with an older shipped version is resolved to the current one through
//! apache-avro. Anything else is a typed [`CodecError`] that the processor turns into a dead letter.

pub(crate) mod binary;
pub(crate) mod headers;
pub(crate) mod records;
pub(crate) mod schemas;

pub use records::{
    decode_accepted, decode_order_state, decode_rejected, decode_request, encode_accepted,
    encode_accepted_view, encode_order_state, encode_rejected, encode_request, AcceptedRecord,
    AcceptedView, InputPosition, RejectedRecord,
};
pub use schemas::{registry, RecordKind};

/// The two bytes that open every single-object encoded value.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];

/// Why bytes could not be decoded; each variant names what to look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Shorter than the 10-byte single-object header.
    #[error("value of {len} bytes is too short for an Avro single-object header (10 bytes): the producer did not use orderflow's wire format")]
    TooShort {
        /// The value's length.
        len: usize,
    },
    /// Does not start with `C3 01`.
    #[error("value starts with {found:02x?}, not the Avro single-object marker c3 01: the producer did not use orderflow's wire format")]
    BadMagic {
        /// The first two bytes.
        found: [u8; 2],
    },
    /// The fingerprint is not one of the shipped schemas.
    #[error("unknown writer schema fingerprint {fingerprint:016x}: the producer used a schema not shipped in schemas/ (upgrade orderflow or fix the producer)")]
    UnknownSchema {
        /// The fingerprint found.
        fingerprint: u64,
    },
    /// A known schema, but of another record type.
    #[error("expected a {expected} record but the value was written with the {found} schema (wrong topic?)")]
    WrongRecordType {
        /// The record name expected here.
        expected: &'static str,
        /// The record name of the writer schema.
        found: &'static str,
    },
    /// The body ends inside a field.
    #[error("truncated value: it ends inside field `{field}`")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// The body has impossible content.
    #[error("corrupt value in field `{field}`: {problem}")]
    Corrupt {
        /// The field being read.
        field: &'static str,
        /// What is impossible about it.
        problem: String,
    },
    /// A string field is not UTF-8.
    #[error("field `{field}` is not valid UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        field: &'static str,
    },
    /// Bytes are left after the record.
    #[error("{extra} unexpected bytes after the record")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// Resolving an older schema version failed.
    #[error("cannot read {kind} data written with schema version {version}: {message}")]
    Resolution {
        /// The record name.
        kind: &'static str,
        /// The writer's schema version.
        version: u32,
        /// apache-avro's explanation.
        message: String,
    },
    /// The record has no key.
    #[error("the record has no key: requests must be keyed by their order id")]
    MissingKey,
    /// The key is not UTF-8.
    #[error("the record key is not valid UTF-8: requests must be keyed by their order id")]
    KeyNotUtf8,
    /// The key and the payload disagree about the order.
    #[error("record key {key:?} does not match the payload's order_id {order_id:?}: the record may be in the wrong partition")]
    KeyMismatch {
        /// The key.
        key: String,
        /// The payload's order id.
        order_id: String,
    },
    /// A state record names a state the definition does not have.
    #[error("state record names state {name:?}, which the definition does not have: roll back to a definition that has it (see `orderflow machine diff`)")]
    UnknownState {
        /// The state name.
        name: String,
    },
}

impl CodecError {
    /// Every value [`CodecError::kind`] returns (metrics start each at 0).
    pub const KINDS: [&'static str; 11] = [
        "not_avro",
        "unknown_schema",
        "wrong_record_type",
        "truncated",
        "corrupt",
        "invalid_utf8",
        "schema_resolution",
        "missing_key",
        "key_not_utf8",
        "key_mismatch",
        "unknown_state",
    ];

    /// A short, stable name for metrics and dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            CodecError::TooShort { .. } | CodecError::BadMagic { .. } => "not_avro",
            CodecError::UnknownSchema { .. } => "unknown_schema",
            CodecError::WrongRecordType { .. } => "wrong_record_type",
            CodecError::Truncated { .. } => "truncated",
            CodecError::Corrupt { .. } | CodecError::TrailingBytes { .. } => "corrupt",
            CodecError::InvalidUtf8 { .. } => "invalid_utf8",
            CodecError::Resolution { .. } => "schema_resolution",
            CodecError::MissingKey => "missing_key",
            CodecError::KeyNotUtf8 => "key_not_utf8",
            CodecError::KeyMismatch { .. } => "key_mismatch",
            CodecError::UnknownState { .. } => "unknown_state",
        }
    }
}

#[cfg(test)]
mod tests;
