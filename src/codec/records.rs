//! Encoders and decoders for each record type, field by field in schema order.

use std::collections::BTreeMap;
use std::io::Cursor;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use uuid::Uuid;

use super::binary::{AvroReader, AvroWriter};
use super::schemas::{registry, KnownSchema, RecordKind};
use super::{CodecError, SINGLE_OBJECT_MAGIC};
use crate::machine::{
    Definition, OrderState, Origin, ParkedRequest, RecentRequest, RecordedOutcome, RejectCode,
    TransitionRequest,
};

/// Where a request was read from; every outcome carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputPosition {
    /// The requests topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// The request's offset.
    pub offset: i64,
}

/// An accepted transition as written to the accepted-transitions topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedRecord {
    /// The request's id.
    pub request_id: Uuid,
    /// The order.
    pub order_id: String,
    /// The transition applied.
    pub transition: String,
    /// The state before; `None` when the order was created.
    pub from_state: Option<String>,
    /// The state after.
    pub to_state: String,
    /// The version after.
    pub version: u64,
    /// True when this repeats an earlier outcome for the same request id.
    pub duplicate: bool,
    /// When upstream made the request (ms).
    pub requested_at_ms: i64,
    /// When orderflow decided (ms).
    pub decided_at_ms: i64,
    /// The upstream service.
    pub source: String,
    /// The request's attributes.
    pub attributes: BTreeMap<String, String>,
    /// Where the request was read.
    pub input: InputPosition,
    /// Short hash of the deciding definition.
    pub definition_hash: String,
}

/// A rejected request as written to the rejections topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRecord {
    /// The request's id.
    pub request_id: Uuid,
    /// The order.
    pub order_id: String,
    /// The transition asked for.
    pub transition: String,
    /// Why it was rejected.
    pub reason: RejectCode,
    /// The reason in words.
    pub detail: String,
    /// For invalid transitions: the states it applies to.
    pub allowed_from: Vec<String>,
    /// The version the request expected, if any.
    pub expected_version: Option<u64>,
    /// The order's state then; `None` when it does not exist.
    pub current_state: Option<String>,
    /// The order's version then (0 when it does not exist).
    pub current_version: u64,
    /// True when this repeats an earlier outcome for the same request id.
    pub duplicate: bool,
    /// When upstream made the request (ms).
    pub requested_at_ms: i64,
    /// When orderflow decided (ms).
    pub decided_at_ms: i64,
    /// The upstream service.
    pub source: String,
    /// The request's attributes.
    pub attributes: BTreeMap<String, String>,
    /// Where the request was read.
    pub input: InputPosition,
    /// Short hash of the deciding definition.
    pub definition_hash: String,
}

const RECORDED_OUTCOMES: usize = 1 + RejectCode::ALL.len();

fn outcome_index(outcome: RecordedOutcome) -> i32 {
    match outcome {
        RecordedOutcome::Accepted => 0,
        RecordedOutcome::Rejected(code) => 1 + reject_index(code),
    }
}

fn reject_index(code: RejectCode) -> i32 {
    RejectCode::ALL.iter().position(|c| *c == code).unwrap_or(0) as i32
}

fn version_to_long(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

// ---- header ----------------------------------------------------------------------------------

fn write_header(kind: RecordKind, out: &mut Vec<u8>) {
    write_header_of(registry().current(kind), out);
}

fn write_header_of(schema: &KnownSchema, out: &mut Vec<u8>) {
    out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
    out.extend_from_slice(&schema.fingerprint.to_le_bytes());
}

/// A single-object value's writer fingerprint and its body.
fn split_header(value: &[u8]) -> Result<(u64, &[u8]), CodecError> {
    if value.len() < 10 {
        return Err(CodecError::TooShort { len: value.len() });
    }
    if value[..2] != SINGLE_OBJECT_MAGIC {
        return Err(CodecError::BadMagic {
            found: [value[0], value[1]],
        });
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&value[2..10]);
    Ok((u64::from_le_bytes(fp), &value[10..]))
}

/// The body of a value written with the current schema of `kind`, resolving older shipped versions.
/// Borrowed when the writer used the current schema (the fast path), owned after resolution.
fn body_of(kind: RecordKind, value: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, CodecError> {
    let (fingerprint, body) = split_header(value)?;
    let current = registry().current(kind);
    if fingerprint == current.fingerprint {
        return Ok(std::borrow::Cow::Borrowed(body));
    }
    let writer = registry()
        .by_fingerprint(fingerprint)
        .ok_or(CodecError::UnknownSchema { fingerprint })?;
    if writer.shipped.kind != kind {
        return Err(CodecError::WrongRecordType {
            expected: kind.name(),
            found: writer.shipped.kind.name(),
        });
    }
    let resolution = |message: String| CodecError::Resolution {
        kind: kind.name(),
        version: writer.shipped.version,
        message,
    };
    let mut cursor = Cursor::new(body);
    let value = GenericDatumReader::builder(&writer.schema)
        .reader_schema(&current.schema)
        .build()
        .map_err(|e| resolution(e.to_string()))?
        .read_value(&mut cursor)
        .map_err(|e| resolution(e.to_string()))?;
    if cursor.position() as usize != body.len() {
        return Err(CodecError::TrailingBytes {
            extra: body.len() - cursor.position() as usize,
        });
    }
    GenericDatumWriter::builder(&current.schema)
        .build()
        .and_then(|w| w.write_value_to_vec(value))
        .map(std::borrow::Cow::Owned)
        .map_err(|e| resolution(e.to_string()))
}

fn finish(reader: &AvroReader<'_>) -> Result<(), CodecError> {
    if reader.is_at_end() {
        Ok(())
    } else {
        Err(CodecError::TrailingBytes {
            extra: reader.remaining(),
        })
    }
}

fn read_uuid(r: &mut AvroReader<'_>, field: &'static str) -> Result<Uuid, CodecError> {
    r.fixed::<16>(field).map(Uuid::from_bytes)
}

fn read_version(r: &mut AvroReader<'_>, field: &'static str) -> Result<Option<u64>, CodecError> {
    match r.optional_long(field)? {
        None => Ok(None),
        Some(v) => u64::try_from(v).map(Some).map_err(|_| CodecError::Corrupt {
            field,
            problem: format!("negative version {v}"),
        }),
    }
}

fn read_string_map(
    r: &mut AvroReader<'_>,
    field: &'static str,
) -> Result<BTreeMap<String, String>, CodecError> {
    let mut map = BTreeMap::new();
    r.blocks(field, |r| {
        let k = r.string(field)?;
        let v = r.string(field)?;
        map.insert(k, v);
        Ok(())
    })?;
    Ok(map)
}

fn write_string_map(w: &mut AvroWriter<'_>, map: &BTreeMap<String, String>) {
    w.string_map(map.iter().map(|(k, v)| (k.as_str(), v.as_str())));
}

// ---- TransitionRequest -----------------------------------------------------------------------

/// Appends a request, single-object encoded with the current schema.
pub fn encode_request(request: &TransitionRequest, out: &mut Vec<u8>) {
    write_header(RecordKind::TransitionRequest, out);
    let mut w = AvroWriter::new(out);
    w.fixed(request.request_id.as_bytes());
    w.string(&request.order_id);
    w.string(&request.transition);
    w.optional_long(request.expected_version.map(version_to_long));
    w.long(request.requested_at_ms);
    w.string(&request.source);
    write_string_map(&mut w, &request.attributes);
}

/// Decodes a request and checks it against its record key (the order id).
pub fn decode_request(key: Option<&[u8]>, value: &[u8]) -> Result<TransitionRequest, CodecError> {
    let key = key.ok_or(CodecError::MissingKey)?;
    let key = std::str::from_utf8(key).map_err(|_| CodecError::KeyNotUtf8)?;
    let body = body_of(RecordKind::TransitionRequest, value)?;
    let mut r = AvroReader::new(&body);
    let request_id = read_uuid(&mut r, "request_id")?;
    // Equal to the key, already checked as UTF-8, the id needs no second check (the hot path).
    let order_id = match r.raw("order_id")? {
        id if id == key.as_bytes() => key.to_owned(),
        id => {
            let order_id = std::str::from_utf8(id)
                .map_err(|_| CodecError::InvalidUtf8 { field: "order_id" })?;
            return Err(CodecError::KeyMismatch {
                key: key.to_string(),
                order_id: order_id.to_string(),
            });
        }
    };
    let request = TransitionRequest {
        request_id,
        order_id,
        transition: r.string("transition")?,
        expected_version: read_version(&mut r, "expected_version")?,
        requested_at_ms: r.long("requested_at")?,
        source: r.string("source")?,
        attributes: read_string_map(&mut r, "attributes")?,
    };
    finish(&r)?;
    Ok(request)
}

// ---- OrderState ------------------------------------------------------------------------------

/// The `OrderState` version whose parked requests carry no trace context: what orderflow writes
/// while no parked request has one, so releases before v2 still read nearly every state record.
const ORDER_STATE_WITHOUT_TRACES: u32 = 1;

/// Appends an order's state, single-object encoded: with the current schema when a parked request
/// carries a trace context, else with v1 (the same record without that field).
pub fn encode_order_state(
    definition: &Definition,
    order_id: &str,
    state: &OrderState,
    out: &mut Vec<u8>,
) {
    let with_traces = state.parked.iter().any(|p| p.traceparent.is_some());
    if with_traces {
        write_header(RecordKind::OrderState, out);
    } else {
        write_header_of(order_state_without_traces(), out);
    }
    let name = |id| definition.state(id).name.as_str();
    let mut w = AvroWriter::new(out);
    w.string(order_id);
    w.string(name(state.state));
    w.long(version_to_long(state.version));
    w.long(state.created_at_ms);
    w.long(state.updated_at_ms);
    w.string(definition.short_hash());
    w.block_start(state.recent.len());
    for recent in &state.recent {
        w.fixed(recent.request_id.as_bytes());
        w.int(outcome_index(recent.outcome));
        w.string(name(recent.from));
        w.string(name(recent.to));
        w.long(version_to_long(recent.version));
    }
    w.block_end();
    w.block_start(state.parked.len());
    for parked in &state.parked {
        let request = &parked.request;
        w.fixed(request.request_id.as_bytes());
        w.string(&request.transition);
        w.optional_long(request.expected_version.map(version_to_long));
        w.long(request.requested_at_ms);
        w.string(&request.source);
        write_string_map(&mut w, &request.attributes);
        w.int(parked.partition);
        w.long(parked.offset);
        w.long(parked.parked_at_ms);
        w.long(parked.deadline_ms);
        w.block_start(parked.redeliveries.len());
        for origin in &parked.redeliveries {
            w.int(origin.partition);
            w.long(origin.offset);
        }
        w.block_end();
        if with_traces {
            w.optional_string(parked.traceparent.as_deref());
        }
    }
    w.block_end();
}

fn order_state_without_traces() -> &'static KnownSchema {
    registry()
        .version(RecordKind::OrderState, ORDER_STATE_WITHOUT_TRACES)
        .expect("order_state.v1.avsc is shipped")
}

/// Decodes an order's state record into the order id and its state under `definition`.
pub fn decode_order_state(
    definition: &Definition,
    value: &[u8],
) -> Result<(String, OrderState), CodecError> {
    // v1, which orderflow still writes, is read by hand like the current version.
    let (fingerprint, body) = split_header(value)?;
    let (body, with_traces) = if fingerprint == order_state_without_traces().fingerprint {
        (std::borrow::Cow::Borrowed(body), false)
    } else {
        (body_of(RecordKind::OrderState, value)?, true)
    };
    let mut r = AvroReader::new(&body);
    let state_id = |name: &[u8]| {
        definition
            .state_id_bytes(name)
            .ok_or_else(|| CodecError::UnknownState {
                name: String::from_utf8_lossy(name).into_owned(),
            })
    };
    let order_id = r.string("order_id")?;
    let state = state_id(r.raw("state")?)?;
    let version = r.unsigned("version")?;
    let created_at_ms = r.long("created_at")?;
    let updated_at_ms = r.long("updated_at")?;
    r.raw("definition_hash")?;
    let mut recent = Vec::with_capacity(crate::machine::DEFAULT_RECENT_WINDOW);
    r.blocks("recent_requests", |r| {
        let request_id = read_uuid(r, "recent_requests.request_id")?;
        let outcome = match r.enum_index("recent_requests.outcome", RECORDED_OUTCOMES)? {
            0 => RecordedOutcome::Accepted,
            i => RecordedOutcome::Rejected(RejectCode::ALL[i - 1]),
        };
        recent.push(RecentRequest {
            request_id,
            outcome,
            from: state_id(r.raw("recent_requests.from")?)?,
            to: state_id(r.raw("recent_requests.to")?)?,
            version: r.unsigned("recent_requests.version")?,
        });
        Ok(())
    })?;
    let mut parked = Vec::new();
    r.blocks("parked", |r| {
        let request = TransitionRequest {
            request_id: read_uuid(r, "parked.request_id")?,
            order_id: order_id.clone(),
            transition: r.string("parked.transition")?,
            expected_version: read_version(r, "parked.expected_version")?,
            requested_at_ms: r.long("parked.requested_at")?,
            source: r.string("parked.source")?,
            attributes: read_string_map(r, "parked.attributes")?,
        };
        parked.push(ParkedRequest {
            request,
            partition: r.int("parked.partition")?,
            offset: r.long("parked.offset")?,
            parked_at_ms: r.long("parked.parked_at")?,
            deadline_ms: r.long("parked.deadline")?,
            redeliveries: {
                let mut origins = Vec::new();
                r.blocks("parked.redeliveries", |r| {
                    origins.push(Origin {
                        partition: r.int("parked.redeliveries.partition")?,
                        offset: r.long("parked.redeliveries.offset")?,
                    });
                    Ok(())
                })?;
                origins
            },
            traceparent: if with_traces {
                r.optional_str("parked.traceparent")?.map(str::to_string)
            } else {
                None
            },
        });
        Ok(())
    })?;
    finish(&r)?;
    Ok((
        order_id,
        OrderState {
            state,
            version,
            created_at_ms,
            updated_at_ms,
            recent,
            parked,
        },
    ))
}

// ---- outcomes --------------------------------------------------------------------------------

fn write_input(w: &mut AvroWriter<'_>, input: &InputPosition) {
    w.string(&input.topic);
    w.int(input.partition);
    w.long(input.offset);
}

fn read_input(r: &mut AvroReader<'_>) -> Result<InputPosition, CodecError> {
    Ok(InputPosition {
        topic: r.string("input.topic")?,
        partition: r.int("input.partition")?,
        offset: r.long("input.offset")?,
    })
}

/// An accepted-transition record borrowed from the request and definition that made it, so the
/// processor encodes it without copying a field (the hot path: most outcomes are acceptances).
#[derive(Debug, Clone, Copy)]
pub struct AcceptedView<'a> {
    /// The request's id.
    pub request_id: Uuid,
    /// The order.
    pub order_id: &'a str,
    /// The transition applied.
    pub transition: &'a str,
    /// The state before; `None` when the order was created.
    pub from_state: Option<&'a str>,
    /// The state after.
    pub to_state: &'a str,
    /// The version after.
    pub version: u64,
    /// True when this repeats an earlier outcome for the same request id.
    pub duplicate: bool,
    /// When upstream made the request (ms).
    pub requested_at_ms: i64,
    /// When orderflow decided (ms).
    pub decided_at_ms: i64,
    /// The upstream service.
    pub source: &'a str,
    /// The request's attributes.
    pub attributes: &'a BTreeMap<String, String>,
    /// The requests topic it was read from.
    pub input_topic: &'a str,
    /// Its partition.
    pub input_partition: i32,
    /// Its offset.
    pub input_offset: i64,
    /// Short hash of the deciding definition.
    pub definition_hash: &'a str,
}

impl AcceptedRecord {
    /// The record as a borrowed view, for encoding.
    pub fn view(&self) -> AcceptedView<'_> {
        AcceptedView {
            request_id: self.request_id,
            order_id: &self.order_id,
            transition: &self.transition,
            from_state: self.from_state.as_deref(),
            to_state: &self.to_state,
            version: self.version,
            duplicate: self.duplicate,
            requested_at_ms: self.requested_at_ms,
            decided_at_ms: self.decided_at_ms,
            source: &self.source,
            attributes: &self.attributes,
            input_topic: &self.input.topic,
            input_partition: self.input.partition,
            input_offset: self.input.offset,
            definition_hash: &self.definition_hash,
        }
    }
}

/// Appends an accepted-transition record, single-object encoded.
pub fn encode_accepted(record: &AcceptedRecord, out: &mut Vec<u8>) {
    encode_accepted_view(&record.view(), out);
}

/// Appends an accepted-transition record from a borrowed view, single-object encoded.
pub fn encode_accepted_view(record: &AcceptedView<'_>, out: &mut Vec<u8>) {
    write_header(RecordKind::TransitionAccepted, out);
    let mut w = AvroWriter::new(out);
    w.fixed(record.request_id.as_bytes());
    w.string(record.order_id);
    w.string(record.transition);
    w.optional_string(record.from_state);
    w.string(record.to_state);
    w.long(version_to_long(record.version));
    w.boolean(record.duplicate);
    w.long(record.requested_at_ms);
    w.long(record.decided_at_ms);
    w.string(record.source);
    write_string_map(&mut w, record.attributes);
    w.string(record.input_topic);
    w.int(record.input_partition);
    w.long(record.input_offset);
    w.string(record.definition_hash);
}

/// Decodes an accepted-transition record.
pub fn decode_accepted(value: &[u8]) -> Result<AcceptedRecord, CodecError> {
    let body = body_of(RecordKind::TransitionAccepted, value)?;
    let mut r = AvroReader::new(&body);
    let record = AcceptedRecord {
        request_id: read_uuid(&mut r, "request_id")?,
        order_id: r.string("order_id")?,
        transition: r.string("transition")?,
        from_state: r.optional_str("from_state")?.map(str::to_owned),
        to_state: r.string("to_state")?,
        version: r.unsigned("version")?,
        duplicate: r.boolean("duplicate")?,
        requested_at_ms: r.long("requested_at")?,
        decided_at_ms: r.long("decided_at")?,
        source: r.string("source")?,
        attributes: read_string_map(&mut r, "attributes")?,
        input: read_input(&mut r)?,
        definition_hash: r.string("definition_hash")?,
    };
    finish(&r)?;
    Ok(record)
}

/// Appends a rejection record, single-object encoded.
pub fn encode_rejected(record: &RejectedRecord, out: &mut Vec<u8>) {
    write_header(RecordKind::TransitionRejected, out);
    let mut w = AvroWriter::new(out);
    w.fixed(record.request_id.as_bytes());
    w.string(&record.order_id);
    w.string(&record.transition);
    w.int(reject_index(record.reason));
    w.string(&record.detail);
    w.block_start(record.allowed_from.len());
    for state in &record.allowed_from {
        w.string(state);
    }
    w.block_end();
    w.optional_long(record.expected_version.map(version_to_long));
    w.optional_string(record.current_state.as_deref());
    w.long(version_to_long(record.current_version));
    w.boolean(record.duplicate);
    w.long(record.requested_at_ms);
    w.long(record.decided_at_ms);
    w.string(&record.source);
    write_string_map(&mut w, &record.attributes);
    write_input(&mut w, &record.input);
    w.string(&record.definition_hash);
}

/// Decodes a rejection record.
pub fn decode_rejected(value: &[u8]) -> Result<RejectedRecord, CodecError> {
    let body = body_of(RecordKind::TransitionRejected, value)?;
    let mut r = AvroReader::new(&body);
    let request_id = read_uuid(&mut r, "request_id")?;
    let order_id = r.string("order_id")?;
    let transition = r.string("transition")?;
    let reason = RejectCode::ALL[r.enum_index("reason", RejectCode::ALL.len())?];
    let detail = r.string("detail")?;
    let mut allowed_from = Vec::new();
    r.blocks("allowed_from", |r| {
        allowed_from.push(r.string("allowed_from")?);
        Ok(())
    })?;
    let record = RejectedRecord {
        request_id,
        order_id,
        transition,
        reason,
        detail,
        allowed_from,
        expected_version: read_version(&mut r, "expected_version")?,
        current_state: r.optional_str("current_state")?.map(str::to_owned),
        current_version: r.unsigned("current_version")?,
        duplicate: r.boolean("duplicate")?,
        requested_at_ms: r.long("requested_at")?,
        decided_at_ms: r.long("decided_at")?,
        source: r.string("source")?,
        attributes: read_string_map(&mut r, "attributes")?,
        input: read_input(&mut r)?,
        definition_hash: r.string("definition_hash")?,
    };
    finish(&r)?;
    Ok(record)
}
