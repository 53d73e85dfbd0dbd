//! One cached order packed into a single heap block: its id and its state as varints.
//!
//! A million cached orders held as [`OrderState`] values cost ~470 MB (a `String` key, two `Vec`s and
//! 8-byte fields each, plus allocator and hash-map overhead); packed, the same orders cost about a
//! quarter of that. Only the processor's own code writes these bytes, so reading them back cannot
//! meet foreign input: a failure to unpack is a bug, caught by the round-trip property tests.
//!
//! Layout: the order id (length-prefixed), then the state id, version, creation time and the
//! time since it as LEB128 varints (times zig-zag), then each remembered request (16-byte id, an
//! outcome byte, from, to, and its distance below the order's version), then any parked requests
//! (each ending with its trace context, if it has one).

use std::collections::BTreeMap;

use uuid::Uuid;

use super::block::CBlock;

use crate::machine::{
    OrderState, Origin, ParkedRequest, RecentRequest, RecordedOutcome, RejectCode, StateId,
    TransitionRequest,
};

/// An order id and its state in one allocation (see the module documentation for the layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedOrder(CBlock);

impl PackedOrder {
    /// Packs an order, using `scratch` as the staging buffer so the block is allocated at its size.
    pub fn pack(order_id: &str, state: &OrderState, scratch: &mut Vec<u8>) -> PackedOrder {
        scratch.clear();
        let w = scratch;
        put_bytes(w, order_id.as_bytes());
        put_u64(w, u64::from(state.state.0));
        put_u64(w, state.version);
        put_i64(w, state.created_at_ms);
        // Updated soon after created: the difference is a short varint where the time is not.
        put_i64(w, state.updated_at_ms.wrapping_sub(state.created_at_ms));
        put_u64(w, state.recent.len() as u64);
        for recent in &state.recent {
            w.extend_from_slice(recent.request_id.as_bytes());
            w.push(outcome_code(recent.outcome));
            put_u64(w, u64::from(recent.from.0));
            put_u64(w, u64::from(recent.to.0));
            // Usually the order's version or just below it: stored as the distance down from it.
            put_u64(w, state.version.wrapping_sub(recent.version));
        }
        put_u64(w, state.parked.len() as u64);
        for parked in &state.parked {
            write_parked(w, parked);
        }
        PackedOrder(CBlock::copy_of(w))
    }

    /// The order id's bytes.
    pub fn key_bytes(&self) -> &[u8] {
        Reader::new(&self.0).bytes()
    }

    /// The order id.
    pub fn order_id(&self) -> &str {
        std::str::from_utf8(self.key_bytes()).expect(PACKED_BY_PACK)
    }

    /// The order's state id without unpacking the rest.
    pub fn state_id(&self) -> StateId {
        let mut r = Reader::new(&self.0);
        r.bytes();
        StateId(r.u64() as u16)
    }

    /// The order's state.
    pub fn unpack(&self) -> OrderState {
        let mut r = Reader::new(&self.0);
        let order_id = std::str::from_utf8(r.bytes()).expect(PACKED_BY_PACK);
        let state = StateId(r.u64() as u16);
        let version = r.u64();
        let created_at_ms = r.i64();
        let updated_at_ms = created_at_ms.wrapping_add(r.i64());
        let recent_count = r.u64() as usize;
        let mut recent = Vec::with_capacity(recent_count);
        for _ in 0..recent_count {
            let request_id = Uuid::from_bytes(r.uuid());
            let outcome = match r.byte() {
                0 => RecordedOutcome::Accepted,
                i => RecordedOutcome::Rejected(RejectCode::ALL[usize::from(i) - 1]),
            };
            recent.push(RecentRequest {
                request_id,
                outcome,
                from: StateId(r.u64() as u16),
                to: StateId(r.u64() as u16),
                version: version.wrapping_sub(r.u64()),
            });
        }
        let parked_count = r.u64() as usize;
        let parked = (0..parked_count)
            .map(|_| read_parked(&mut r, order_id))
            .collect();
        OrderState {
            state,
            version,
            created_at_ms,
            updated_at_ms,
            recent,
            parked,
        }
    }

    /// Heap bytes this order's block holds (without the allocator's own overhead).
    pub fn heap_bytes(&self) -> usize {
        self.0.len()
    }
}

const PACKED_BY_PACK: &str = "cache entries are written only by PackedOrder::pack";

fn outcome_code(outcome: RecordedOutcome) -> u8 {
    match outcome {
        RecordedOutcome::Accepted => 0,
        RecordedOutcome::Rejected(code) => {
            1 + RejectCode::ALL.iter().position(|c| *c == code).unwrap_or(0) as u8
        }
    }
}

fn put_u64(w: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        w.push((n as u8) | 0x80);
        n >>= 7;
    }
    w.push(n as u8);
}

fn put_i64(w: &mut Vec<u8>, n: i64) {
    put_u64(w, ((n << 1) ^ (n >> 63)) as u64);
}

fn put_bytes(w: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(w, bytes.len() as u64);
    w.extend_from_slice(bytes);
}

fn write_parked(w: &mut Vec<u8>, parked: &ParkedRequest) {
    let request = &parked.request;
    w.extend_from_slice(request.request_id.as_bytes());
    put_bytes(w, request.transition.as_bytes());
    match request.expected_version {
        None => w.push(0),
        Some(v) => {
            w.push(1);
            put_u64(w, v);
        }
    }
    put_i64(w, request.requested_at_ms);
    put_bytes(w, request.source.as_bytes());
    put_u64(w, request.attributes.len() as u64);
    for (k, v) in &request.attributes {
        put_bytes(w, k.as_bytes());
        put_bytes(w, v.as_bytes());
    }
    put_i64(w, i64::from(parked.partition));
    put_i64(w, parked.offset);
    put_i64(w, parked.parked_at_ms);
    put_i64(w, parked.deadline_ms);
    put_u64(w, parked.redeliveries.len() as u64);
    for origin in &parked.redeliveries {
        put_i64(w, i64::from(origin.partition));
        put_i64(w, origin.offset);
    }
    match &parked.traceparent {
        None => w.push(0),
        Some(traceparent) => {
            w.push(1);
            put_bytes(w, traceparent.as_bytes());
        }
    }
}

/// Reads what `pack` wrote. The bytes are the processor's own, so running past their end is a
/// bug in `pack`, and panics like any out-of-bounds index.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    #[inline]
    fn byte(&mut self) -> u8 {
        let b = self.bytes[self.pos];
        self.pos += 1;
        b
    }

    #[inline]
    fn u64(&mut self) -> u64 {
        let first = self.byte();
        if first < 0x80 {
            return u64::from(first);
        }
        let mut n = u64::from(first & 0x7f);
        let mut shift = 7;
        loop {
            let b = self.byte();
            n |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return n;
            }
            shift += 7;
        }
    }

    #[inline]
    fn i64(&mut self) -> i64 {
        let n = self.u64();
        ((n >> 1) as i64) ^ -((n & 1) as i64)
    }

    fn take(&mut self, len: usize) -> &'a [u8] {
        let slice = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        slice
    }

    fn bytes(&mut self) -> &'a [u8] {
        let len = self.u64() as usize;
        self.take(len)
    }

    fn string(&mut self) -> String {
        String::from_utf8(self.bytes().to_vec()).expect(PACKED_BY_PACK)
    }

    fn uuid(&mut self) -> [u8; 16] {
        let mut id = [0; 16];
        id.copy_from_slice(self.take(16));
        id
    }
}

fn read_parked(r: &mut Reader<'_>, order_id: &str) -> ParkedRequest {
    let request_id = Uuid::from_bytes(r.uuid());
    let transition = r.string();
    let expected_version = match r.byte() {
        0 => None,
        _ => Some(r.u64()),
    };
    let requested_at_ms = r.i64();
    let source = r.string();
    let mut attributes = BTreeMap::new();
    for _ in 0..r.u64() {
        let k = r.string();
        attributes.insert(k, r.string());
    }
    let request = TransitionRequest {
        request_id,
        order_id: order_id.to_string(),
        transition,
        expected_version,
        requested_at_ms,
        source,
        attributes,
    };
    let partition = r.i64() as i32;
    let offset = r.i64();
    let parked_at_ms = r.i64();
    let deadline_ms = r.i64();
    let redeliveries = (0..r.u64())
        .map(|_| Origin {
            partition: r.i64() as i32,
            offset: r.i64(),
        })
        .collect();
    let traceparent = match r.byte() {
        0 => None,
        _ => Some(r.string()),
    };
    ParkedRequest {
        request,
        partition,
        offset,
        parked_at_ms,
        deadline_ms,
        redeliveries,
        traceparent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_recent() -> impl Strategy<Value = RecentRequest> {
        (
            any::<u128>(),
            0usize..=RejectCode::ALL.len(),
            any::<u16>(),
            any::<u16>(),
            any::<u64>(),
        )
            .prop_map(|(id, outcome, from, to, version)| RecentRequest {
                request_id: Uuid::from_u128(id),
                outcome: match outcome {
                    0 => RecordedOutcome::Accepted,
                    i => RecordedOutcome::Rejected(RejectCode::ALL[i - 1]),
                },
                from: StateId(from),
                to: StateId(to),
                version,
            })
    }

    fn arb_parked(order_id: String) -> impl Strategy<Value = ParkedRequest> {
        (
            any::<u128>(),
            ".{0,12}",
            proptest::option::of(any::<u64>()),
            any::<i64>(),
            ".{0,12}",
            proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..4),
            (any::<i32>(), any::<i64>(), any::<i64>(), any::<i64>()),
            proptest::collection::vec((any::<i32>(), any::<i64>()), 0..3),
            proptest::option::of(".{0,60}"),
        )
            .prop_map(
                move |(
                    id,
                    transition,
                    expected_version,
                    requested_at_ms,
                    source,
                    attributes,
                    p,
                    r,
                    traceparent,
                )| {
                    ParkedRequest {
                        request: TransitionRequest {
                            request_id: Uuid::from_u128(id),
                            order_id: order_id.clone(),
                            transition,
                            expected_version,
                            requested_at_ms,
                            source,
                            attributes,
                        },
                        partition: p.0,
                        offset: p.1,
                        parked_at_ms: p.2,
                        deadline_ms: p.3,
                        redeliveries: r
                            .into_iter()
                            .map(|(partition, offset)| Origin { partition, offset })
                            .collect(),
                        traceparent,
                    }
                },
            )
    }

    fn arb_order() -> impl Strategy<Value = (String, OrderState)> {
        ".{0,40}".prop_flat_map(|order_id| {
            (
                Just(order_id.clone()),
                (any::<u16>(), any::<u64>(), any::<i64>(), any::<i64>()),
                proptest::collection::vec(arb_recent(), 0..10),
                proptest::collection::vec(arb_parked(order_id), 0..3),
            )
                .prop_map(
                    |(order_id, (state, version, created, updated), recent, parked)| {
                        (
                            order_id,
                            OrderState {
                                state: StateId(state),
                                version,
                                created_at_ms: created,
                                updated_at_ms: updated,
                                recent,
                                parked,
                            },
                        )
                    },
                )
        })
    }

    proptest! {
        #[test]
        fn every_order_unpacks_to_what_was_packed((order_id, state) in arb_order()) {
            let packed = PackedOrder::pack(&order_id, &state, &mut Vec::new());
            prop_assert_eq!(packed.order_id(), order_id.as_str());
            prop_assert_eq!(packed.key_bytes(), order_id.as_bytes());
            prop_assert_eq!(packed.state_id(), state.state);
            prop_assert_eq!(packed.unpack(), state);
        }
    }

    #[test]
    fn a_typical_order_packs_into_a_small_block() {
        // Confirmed, created and confirmed a minute apart, both requests remembered.
        let recent = |k: u64, version| RecentRequest {
            request_id: Uuid::from_u64_pair(7, k),
            outcome: RecordedOutcome::Accepted,
            from: StateId(0),
            to: StateId(1),
            version,
        };
        let state = OrderState {
            state: StateId(1),
            version: 2,
            created_at_ms: 1_764_000_000_000,
            updated_at_ms: 1_764_000_060_000,
            recent: vec![recent(1, 1), recent(2, 2)],
            parked: Vec::new(),
        };
        let packed = PackedOrder::pack("order-0000000007", &state, &mut Vec::new());
        // 17 (id) + 1 + 1 + 6 (created) + 3 (delta) + 1 + 2 × 20 + 1: 70 bytes against ~300 unpacked.
        assert_eq!(packed.heap_bytes(), 70);
        assert_eq!(packed.unpack(), state);
    }
}
