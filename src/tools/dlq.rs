//! `orderflow dlq list|replay`: dead letters with their provenance, and re-publishing chosen ones
//! to the requests topic once their producer (or the definition) is fixed.

use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::client::{scan_topic, DeadLetter, Outcome};
use crate::config::Settings;
use crate::kafka::request_producer_config;

/// Header on a re-published record: the dead letter it came from (`dlq:PARTITION:OFFSET`).
pub const REPLAYED_FROM: &str = "orderflow.replayed.from";

/// `orderflow dlq list|replay`, printing as it goes.
pub async fn run(
    settings: &Settings,
    action: &crate::cli::DlqAction,
) -> anyhow::Result<super::Streamed> {
    use crate::cli::DlqAction;
    let settings = super::connected(settings).await?;
    let partitions = settings.topics.partitions;
    match action {
        DlqAction::List { kind, json } => {
            list(&settings, partitions, kind.as_deref(), *json).await?
        }
        DlqAction::Replay {
            records,
            kind,
            dry_run,
        } => replay(&settings, partitions, records, kind.as_deref(), *dry_run).await?,
    }
    Ok(super::Streamed)
}

/// Every dead letter, in partition order, optionally of one kind.
pub async fn read_all(
    settings: &Settings,
    partitions: i32,
    kind: Option<&str>,
) -> anyhow::Result<Vec<DeadLetter>> {
    let (settings, kind) = (settings.clone(), kind.map(str::to_owned));
    tokio::task::spawn_blocking(move || {
        let mut letters = Vec::new();
        let all: Vec<i32> = (0..partitions).collect();
        scan_topic(
            &settings.kafka,
            "orderflow-dlq",
            &settings.topics.dead_letters,
            &all,
            Duration::from_secs(30),
            |message| {
                let letter = DeadLetter::from_message(message);
                if kind.as_ref().is_none_or(|k| *k == letter.error_kind) {
                    letters.push(letter);
                }
            },
        )?;
        letters.sort_by_key(|l| (l.partition, l.offset));
        Ok(letters)
    })
    .await?
}

/// Prints the dead letters.
pub async fn list(
    settings: &Settings,
    partitions: i32,
    kind: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let letters = read_all(settings, partitions, kind).await?;
    for letter in &letters {
        let position = format!("{}:{}", letter.partition, letter.offset);
        let outcome = Outcome::DeadLetter(letter.clone());
        if json {
            println!("{}", outcome.to_json());
        } else {
            println!("{position:<10} {}", outcome.describe());
        }
    }
    if !json {
        println!(
            "{} dead letter(s){}; replay chosen ones with `orderflow dlq replay --record PARTITION:OFFSET`",
            letters.len(),
            kind.map_or(String::new(), |k| format!(" of kind {k}"))
        );
    }
    Ok(())
}

/// Re-publishes the chosen dead letters' original key and value to the requests topic.
pub async fn replay(
    settings: &Settings,
    partitions: i32,
    records: &[(i32, i64)],
    kind: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<()> {
    if records.is_empty() && kind.is_none() {
        return Err(super::Usage(
            "name the dead letters to replay: --record PARTITION:OFFSET (repeatable) or --kind KIND"
                .into(),
        )
        .into());
    }
    let letters = read_all(settings, partitions, kind).await?;
    let chosen: Vec<&DeadLetter> = letters
        .iter()
        .filter(|l| records.is_empty() || records.contains(&(l.partition, l.offset)))
        .collect();
    for wanted in records {
        if !chosen.iter().any(|l| (l.partition, l.offset) == *wanted) {
            bail!(
                "no dead letter at {}:{}{} (see `orderflow dlq list`); nothing was replayed",
                wanted.0,
                wanted.1,
                kind.map_or(String::new(), |k| format!(" of kind {k}"))
            );
        }
    }
    if let Some(cut) = chosen.iter().find(|l| l.truncated_from_bytes.is_some()) {
        bail!(
            "dead letter {}:{} was truncated from {} bytes: its bytes are incomplete and cannot be replayed; nothing was replayed",
            cut.partition,
            cut.offset,
            cut.truncated_from_bytes.unwrap_or_default()
        );
    }
    let producer: FutureProducer =
        request_producer_config(&settings.kafka, "orderflow-dlq-replay")?
            .create()
            .context("creating the request producer")?;
    for letter in &chosen {
        let from = format!("dlq:{}:{}", letter.partition, letter.offset);
        if dry_run {
            println!(
                "would replay {from} ({}) to {}",
                letter.error_kind, settings.topics.requests
            );
            continue;
        }
        let headers = OwnedHeaders::new().insert(Header {
            key: REPLAYED_FROM,
            value: Some(&from),
        });
        let mut record = FutureRecord::to(&settings.topics.requests)
            .payload(&letter.value)
            .headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key);
        }
        let delivered = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("replaying {from}"))?;
        println!(
            "replayed {from} ({}) as {}:{}:{}",
            letter.error_kind, settings.topics.requests, delivered.partition, delivered.offset
        );
    }
    if !dry_run {
        println!(
            "{} record(s) replayed; still-broken ones come back to the dead-letter topic",
            chosen.len()
        );
    }
    Ok(())
}
