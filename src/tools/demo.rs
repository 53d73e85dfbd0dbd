//! `orderflow demo`: send a small, telling set of requests to a running processor and show what
//! happened to each: accepted, rejected (and why), duplicates, and poison records in the DLQ.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use crate::client::{assign_outputs, decode_outcome, Outcome};
use crate::clock::{Clock, SystemClock};
use crate::codec::encode_request;
use crate::config::Settings;
use crate::kafka::{committed_reader_config, request_producer_config};
use crate::machine::TransitionRequest;

/// One demo step: what is sent and what a reader should expect.
struct Step {
    label: String,
    key: Option<String>,
    value: Vec<u8>,
}

fn request_step(
    label: &str,
    order_id: &str,
    transition: &str,
    expected_version: Option<u64>,
) -> (Step, TransitionRequest) {
    let request = TransitionRequest {
        request_id: Uuid::new_v4(),
        order_id: order_id.into(),
        transition: transition.into(),
        expected_version,
        requested_at_ms: SystemClock.now_ms(),
        source: "demo".into(),
        attributes: BTreeMap::new(),
    };
    (step_of(label, &request), request)
}

fn step_of(label: &str, request: &TransitionRequest) -> Step {
    let mut value = Vec::with_capacity(128);
    encode_request(request, &mut value);
    Step {
        label: label.into(),
        key: Some(request.order_id.clone()),
        value,
    }
}

/// The demo's requests, in sending order.
fn steps(run: &str, orders: u32) -> Vec<Step> {
    let mut steps = Vec::new();
    for n in 0..orders {
        let order = format!("demo-{run}-{n}");
        for t in ["create", "confirm", "ship", "out_for_delivery", "deliver"] {
            steps.push(request_step(&format!("{order}: {t}"), &order, t, None).0);
        }
    }
    let x = format!("demo-{run}-x");
    let (create, create_request) = request_step(&format!("{x}: create"), &x, "create", None);
    steps.push(create);
    steps.push(step_of(
        &format!("{x}: create again (same request id: a redelivery)"),
        &create_request,
    ));
    let mut add = |label: &str, order: &str, transition: &str, expected: Option<u64>| {
        steps.push(request_step(&format!("{order}: {label}"), order, transition, expected).0);
    };
    add(
        "ship before confirm (waits until confirmed)",
        &x,
        "ship",
        None,
    );
    add("confirm expecting version 7", &x, "confirm", Some(7));
    add("confirm expecting version 1", &x, "confirm", Some(1));
    add("teleport", &x, "teleport", None);
    add("cancel after shipping", &x, "cancel", None);
    let c = format!("demo-{run}-c");
    add("create", &c, "create", None);
    add("cancel", &c, "cancel", None);
    add("ship a cancelled order", &c, "ship", None);
    let nobody = format!("demo-{run}-nobody");
    add(
        "confirm an order that does not exist",
        &nobody,
        "confirm",
        None,
    );
    steps.push(Step {
        label: format!("demo-{run}-poison: JSON instead of Avro (poison)"),
        key: Some(format!("demo-{run}-poison")),
        value: br#"{"order": 42, "transition": "ship"}"#.to_vec(),
    });
    let (mut wrong_key, _) = request_step(
        &format!("demo-{run}-y: key differs from order id (poison)"),
        &format!("demo-{run}-y"),
        "create",
        None,
    );
    wrong_key.key = Some(format!("demo-{run}-z"));
    steps.push(wrong_key);
    steps
}

/// `orderflow demo`: provisions the topics if needed, then sends the demo requests and prints
/// each one's outcome as it comes.
pub async fn run(
    settings: &Settings,
    args: &crate::cli::DemoArgs,
) -> anyhow::Result<super::Streamed> {
    crate::kafka::Topics::connect(&settings.kafka)?
        .ensure(&settings.topics)
        .await
        .context("provisioning topics for the demo")?;
    demo(settings, args.orders, Duration::from_secs(args.wait_secs)).await?;
    Ok(super::Streamed)
}

/// Sends the demo requests and prints each one's outcome, read back with read_committed.
pub async fn demo(settings: &Settings, orders: u32, wait: Duration) -> anyhow::Result<()> {
    let producer: FutureProducer = request_producer_config(&settings.kafka, "orderflow-demo")?
        .create()
        .context("creating the request producer")?;
    let run = Uuid::new_v4().simple().to_string()[..8].to_string();
    let topics = &settings.topics;
    let reader: BaseConsumer = committed_reader_config(
        &settings.kafka,
        "orderflow-demo-reader",
        &format!("orderflow-demo-{run}"),
    )?
    .create()
    .context("creating the outcome reader")?;
    // Read outcomes from the current end of each output topic: only this run's.
    tokio::task::block_in_place(|| {
        assign_outputs(
            &reader,
            &[&topics.accepted, &topics.rejected, &topics.dead_letters],
            topics.partitions,
            false,
        )
    })?;

    let steps = steps(&run, orders);
    let mut by_position: HashMap<(i32, i64), usize> = HashMap::new();
    println!("sending {} requests to {}", steps.len(), topics.requests);
    for (i, step) in steps.iter().enumerate() {
        let mut record = FutureRecord::to(&topics.requests).payload(&step.value);
        if let Some(key) = &step.key {
            record = record.key(key);
        }
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("sending \"{}\"", step.label))?;
        by_position.insert((delivery.partition, delivery.offset), i);
    }

    let mut outcomes: Vec<Option<String>> = vec![None; steps.len()];
    let deadline = Instant::now() + wait;
    while outcomes.iter().any(Option::is_none) && Instant::now() < deadline {
        let Some(message) = tokio::task::block_in_place(|| reader.poll(Duration::from_millis(200)))
        else {
            continue;
        };
        let message = message.context("reading outcomes")?;
        let Some(outcome) = decode_outcome(topics, &message) else {
            continue;
        };
        let outcome = outcome?;
        let Some(&index) = outcome
            .input_position()
            .and_then(|position| by_position.get(&position))
        else {
            continue;
        };
        // The demo's own wording, shorter than `Outcome::describe` (the label names the order).
        let text = match outcome {
            Outcome::Accepted(r) => format!(
                "accepted {} -> {} v{}{}",
                r.from_state.unwrap_or_else(|| "(new)".into()),
                r.to_state,
                r.version,
                if r.duplicate {
                    " (duplicate: repeated, nothing applied)"
                } else {
                    ""
                }
            ),
            Outcome::Rejected(r) => format!(
                "rejected {}: {}{}",
                r.reason.as_str(),
                r.detail,
                if r.duplicate { " (duplicate)" } else { "" }
            ),
            Outcome::DeadLetter(d) => format!("DEAD LETTER {}: {}", d.error_kind, d.error_message),
        };
        outcomes[index] = Some(text);
    }
    for (step, outcome) in steps.iter().zip(&outcomes) {
        println!(
            "  {:<62} {}",
            step.label,
            outcome.as_deref().unwrap_or("NO OUTCOME YET")
        );
    }
    let missing = outcomes.iter().filter(|o| o.is_none()).count();
    if missing > 0 {
        bail!("{missing} of {} requests got no outcome within {wait:?}: is `orderflow run` running against {}?", steps.len(), settings.kafka.bootstrap_servers);
    }
    println!("every request got exactly the outcome shown, read back with read_committed");
    Ok(())
}
