//! `orderflow send`: one transition request, and with `--wait` its outcome.

use std::time::Duration;

use uuid::Uuid;

use crate::cli::SendArgs;
use crate::client::{Gateway, GatewayError, Outcome};
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::machine::TransitionRequest;

/// How `send --wait` ended, as its exit code tells scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResult {
    /// Sent without waiting, or accepted (exit 0).
    Accepted,
    /// Rejected (exit 3).
    Rejected,
    /// Dead-lettered (exit 4).
    DeadLetter,
    /// No outcome in time (exit 5).
    NoOutcome,
}

impl SendResult {
    /// The process exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            SendResult::Accepted => 0,
            SendResult::Rejected => 3,
            SendResult::DeadLetter => 4,
            SendResult::NoOutcome => 5,
        }
    }
}

/// The request `args` describe.
pub fn request_of(args: &SendArgs) -> TransitionRequest {
    TransitionRequest {
        request_id: args.request_id.unwrap_or_else(Uuid::new_v4),
        order_id: args.order.clone(),
        transition: args.transition.clone(),
        expected_version: args.expect_version,
        requested_at_ms: SystemClock.now_ms(),
        source: args.source.clone(),
        attributes: args.attributes.iter().cloned().collect(),
    }
}

/// What `send` did: the words, the JSON and how it ended.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// How it ended.
    pub result: SendResult,
    text: String,
    json: serde_json::Value,
}

impl super::Report for SendReport {
    fn describe(&self) -> String {
        self.text.clone()
    }

    fn to_json(&self) -> serde_json::Value {
        self.json.clone()
    }

    fn exit_code(&self) -> u8 {
        self.result.exit_code()
    }
}

/// Sends the request and, with `--wait`, waits for its outcome.
pub async fn run(settings: &Settings, args: &SendArgs) -> anyhow::Result<SendReport> {
    let settings = super::connected(settings).await?;
    let request = request_of(args);
    let gateway =
        tokio::task::spawn_blocking(move || Gateway::start(&settings, "orderflow-send")).await??;
    if !args.wait {
        let (partition, offset) = gateway.send(&request, &[]).await?;
        return Ok(SendReport {
            result: SendResult::Accepted,
            text: format!(
                "sent {} {} (request {}) to partition {partition} offset {offset}",
                request.order_id, request.transition, request.request_id
            ),
            json: serde_json::json!({
                "sent": true,
                "request_id": request.request_id.to_string(),
                "order_id": request.order_id,
                "partition": partition,
                "offset": offset,
            }),
        });
    }
    let timeout = Duration::from_secs(args.timeout_secs);
    match gateway.submit(&request, &[], timeout).await {
        Ok(outcome) => Ok(SendReport {
            result: match outcome {
                Outcome::Accepted(_) => SendResult::Accepted,
                Outcome::Rejected(_) => SendResult::Rejected,
                Outcome::DeadLetter(_) => SendResult::DeadLetter,
            },
            text: outcome.describe(),
            json: outcome.to_json(),
        }),
        Err(e @ GatewayError::Timeout { .. }) => Ok(SendReport {
            result: SendResult::NoOutcome,
            text: format!("orderflow send: {e}"),
            json: serde_json::json!({
                "outcome": null,
                "request_id": request.request_id.to_string(),
                "error": e.to_string(),
            }),
        }),
        Err(e) => Err(e.into()),
    }
}
