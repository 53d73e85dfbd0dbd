//! The domain records the core decides on: a transition request and an order's state.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::definition::StateId;

/// A request to move one order along one named transition, as upstream services send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRequest {
    /// Unique per request; a redelivered request carries the same id (idempotency key).
    pub request_id: Uuid,
    /// The order this request is about; also the Kafka record key.
    pub order_id: String,
    /// The name of the transition asked for.
    pub transition: String,
    /// Optimistic concurrency: apply only if the order is at exactly this version.
    pub expected_version: Option<u64>,
    /// When the upstream service made the request (ms since the Unix epoch).
    pub requested_at_ms: i64,
    /// The upstream service that sent it (checkout, payments, warehouse, carrier...).
    pub source: String,
    /// Free string attributes, carried through to the outcome.
    pub attributes: BTreeMap<String, String>,
}

/// How a remembered request ended, so a redelivery can repeat the same answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordedOutcome {
    /// It was accepted and produced `version`.
    Accepted,
    /// It was rejected for this reason.
    Rejected(RejectCode),
}

/// A request the order remembers (the last K per order), with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecentRequest {
    /// The request's id.
    pub request_id: Uuid,
    /// Accepted or the rejection reason.
    pub outcome: RecordedOutcome,
    /// The order's state before the request.
    pub from: StateId,
    /// The order's state after it (equal to `from` for rejections).
    pub to: StateId,
    /// The order's version after it.
    pub version: u64,
}

/// Where a request was read from: its input record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
}

/// A request that arrived before its order reached a source state and waits with the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedRequest {
    /// The request as it arrived.
    pub request: TransitionRequest,
    /// Input partition of the request, so its eventual outcome names its origin.
    pub partition: i32,
    /// Input offset of the request.
    pub offset: i64,
    /// When it was parked (ms since the Unix epoch).
    pub parked_at_ms: i64,
    /// When it expires unless it applied before (ms since the Unix epoch).
    pub deadline_ms: i64,
    /// Later input records carrying the same request, answered as duplicates with it.
    pub redeliveries: Vec<Origin>,
    /// The W3C `traceparent` the request arrived with, carried (not read) so that its later
    /// outcome continues its trace.
    pub traceparent: Option<String>,
}

/// The current state of one order: everything a decision about it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderState {
    /// The order's current state.
    pub state: StateId,
    /// 1 after creation, +1 per accepted transition.
    pub version: u64,
    /// When the order was created (decision clock, ms since the Unix epoch).
    pub created_at_ms: i64,
    /// When its state last changed (decision clock, ms since the Unix epoch).
    pub updated_at_ms: i64,
    /// The last K requests applied to or rejected for this order, oldest first.
    pub recent: Vec<RecentRequest>,
    /// Requests waiting for this order to reach one of their source states, oldest first.
    pub parked: Vec<ParkedRequest>,
}

impl OrderState {
    /// The remembered request with this id, if it is among the last K.
    pub fn recent_request(&self, request_id: &Uuid) -> Option<&RecentRequest> {
        self.recent.iter().find(|r| &r.request_id == request_id)
    }

    /// Remembers a request, forgetting the oldest beyond `window`.
    pub fn remember(&mut self, entry: RecentRequest, window: usize) {
        if window == 0 {
            return;
        }
        if self.recent.len() >= window {
            let excess = self.recent.len() + 1 - window;
            self.recent.drain(..excess);
        }
        self.recent.push(entry);
    }
}

/// Why a request was rejected: a closed set downstream code can switch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectCode {
    /// The definition has no transition of that name.
    UnknownTransition,
    /// The transition does not apply to the order's current state.
    InvalidTransition,
    /// A non-create transition for an order that does not exist.
    UnknownOrder,
    /// A create transition for an order that exists.
    OrderAlreadyExists,
    /// The request's expected version is not the order's version.
    VersionConflict,
    /// The order is in a terminal state and accepts nothing.
    TerminalState,
    /// A parked request did not become applicable before its deadline.
    Expired,
    /// The request could have been parked but the order's parking slots are full.
    ParkingFull,
}

impl RejectCode {
    /// Every reason, in wire order.
    pub const ALL: [RejectCode; 8] = [
        RejectCode::UnknownTransition,
        RejectCode::InvalidTransition,
        RejectCode::UnknownOrder,
        RejectCode::OrderAlreadyExists,
        RejectCode::VersionConflict,
        RejectCode::TerminalState,
        RejectCode::Expired,
        RejectCode::ParkingFull,
    ];

    /// The reason's wire and metric name.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::UnknownTransition => "UNKNOWN_TRANSITION",
            RejectCode::InvalidTransition => "INVALID_TRANSITION",
            RejectCode::UnknownOrder => "UNKNOWN_ORDER",
            RejectCode::OrderAlreadyExists => "ORDER_ALREADY_EXISTS",
            RejectCode::VersionConflict => "VERSION_CONFLICT",
            RejectCode::TerminalState => "TERMINAL_STATE",
            RejectCode::Expired => "EXPIRED",
            RejectCode::ParkingFull => "PARKING_FULL",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<RejectCode> {
        RejectCode::ALL.into_iter().find(|c| c.as_str() == name)
    }
}
