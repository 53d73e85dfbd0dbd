//! The pure core: a state machine defined as data and the decision it makes for each request.
//!
//! Nothing here does I/O, blocks or allocates beyond the records it returns, so every rule is
//! unit- and property-tested without Kafka.

pub(crate) mod decide;
pub(crate) mod definition;
pub(crate) mod diagram;
pub(crate) mod diff;
pub(crate) mod order;
pub(crate) mod parking;
pub(crate) mod replay;

pub use decide::{
    Decider, Decision, Outcome, ParkingPolicy, Rejection, StateChange, DEFAULT_RECENT_WINDOW,
};
pub use definition::{
    Definition, DefinitionError, Problem, State, StateId, Transition, TransitionId,
};
pub use order::{
    OrderState, Origin, ParkedRequest, RecentRequest, RecordedOutcome, RejectCode,
    TransitionRequest,
};
pub use parking::{Answer, Step};

#[cfg(test)]
mod tests;

/// The default order lifecycle (`machines/order-lifecycle.toml`), for tests.
#[cfg(test)]
pub(crate) fn lifecycle_for_tests() -> std::sync::Arc<Definition> {
    let text = include_str!("../../machines/order-lifecycle.toml");
    std::sync::Arc::new(
        Definition::parse(text, "order-lifecycle.toml").expect("the default lifecycle parses"),
    )
}
