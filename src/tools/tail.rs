//! `orderflow tail`: follow committed outcomes as they arrive.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::BaseConsumer;
use uuid::Uuid;

use crate::cli::{OutputKind, TailArgs};
use crate::client::{assign_outputs, decode_outcome};
use crate::config::Settings;
use crate::kafka::committed_reader_config;

/// Follows the chosen output topics until `--max` outcomes were printed (or forever).
pub async fn run(settings: &Settings, args: &TailArgs) -> anyhow::Result<super::Streamed> {
    let settings = super::connected(settings).await?;
    let only = if args.only.is_empty() {
        vec![OutputKind::Accepted, OutputKind::Rejected, OutputKind::Dlq]
    } else {
        args.only.clone()
    };
    let (from_beginning, order, max, json) =
        (args.from_beginning, args.order.clone(), args.max, args.json);
    tokio::task::spawn_blocking(move || {
        let topics = &settings.topics;
        let reader: BaseConsumer = committed_reader_config(
            &settings.kafka,
            "orderflow-tail",
            &format!("orderflow-tail-{}", Uuid::new_v4().simple()),
        )?
        .create()
        .context("creating the outcome reader")?;
        let followed: Vec<&str> = only
            .iter()
            .map(|kind| match kind {
                OutputKind::Accepted => topics.accepted.as_str(),
                OutputKind::Rejected => topics.rejected.as_str(),
                OutputKind::Dlq => topics.dead_letters.as_str(),
            })
            .collect();
        assign_outputs(&reader, &followed, topics.partitions, from_beginning)?;
        let mut printed = 0u64;
        let stdout = std::io::stdout();
        while max.is_none_or(|m| printed < m) {
            let Some(message) = reader.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    // A broker restarting or a leader moving: librdkafka reconnects; keep following.
                    tracing::warn!(error = %e, "reading outcomes; retrying");
                    continue;
                }
            };
            let outcome = match decode_outcome(topics, &message) {
                Some(Ok(outcome)) => outcome,
                Some(Err(e)) => {
                    eprintln!(
                        "orderflow tail: undecodable record at {}:{}: {e}",
                        rdkafka::Message::partition(&message),
                        rdkafka::Message::offset(&message)
                    );
                    continue;
                }
                None => continue,
            };
            if order
                .as_ref()
                .is_some_and(|o| outcome.order_id().as_ref() != Some(o))
            {
                continue;
            }
            let line = if json {
                outcome.to_json().to_string()
            } else {
                outcome.describe()
            };
            let mut out = stdout.lock();
            writeln!(out, "{line}")?;
            out.flush()?;
            printed += 1;
        }
        Ok(super::Streamed)
    })
    .await?
}
