//! Talking to orderflow the way upstream services and people do: through Kafka. Requests go to the
//! requests topic; outcomes are read back from the output topics with read_committed.

pub mod gateway;
pub mod outcome;
pub mod scan;

pub use gateway::{Gateway, GatewayError};
pub use outcome::{decode_outcome, DeadLetter, Outcome};
pub use scan::scan_topic;
