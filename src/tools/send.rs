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

/// Sends the request and prints what happened.
pub async fn run(settings: &Settings, args: &SendArgs) -> anyhow::Result<SendResult> {
    let request = request_of(args);
    let gateway = {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || Gateway::start(&settings, "orderflow-send")).await??
    };
    if !args.wait {
        let (partition, offset) = gateway.send(&request, &[]).await?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "sent": true,
                    "request_id": request.request_id.to_string(),
                    "order_id": request.order_id,
                    "partition": partition,
                    "offset": offset,
                })
            );
        } else {
            println!(
                "sent {} {} (request {}) to partition {partition} offset {offset}",
                request.order_id, request.transition, request.request_id
            );
        }
        return Ok(SendResult::Accepted);
    }
    let timeout = Duration::from_secs(args.timeout_secs);
    match gateway.submit(&request, &[], timeout).await {
        Ok(outcome) => {
            if args.json {
                println!("{}", outcome.to_json());
            } else {
                println!("{}", outcome.describe());
            }
            Ok(match outcome {
                Outcome::Accepted(_) => SendResult::Accepted,
                Outcome::Rejected(_) => SendResult::Rejected,
                Outcome::DeadLetter(_) => SendResult::DeadLetter,
            })
        }
        Err(e @ GatewayError::Timeout { .. }) => {
            eprintln!("orderflow send: {e}");
            Ok(SendResult::NoOutcome)
        }
        Err(e) => Err(e.into()),
    }
}
