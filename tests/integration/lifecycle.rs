//! Parking, expiry, retention and the one-definition-per-group rule, on a real broker.

use std::sync::Arc;
use std::time::Duration;

use orderflow::machine::{Definition, RejectCode};

use crate::crash::spawn_binary;
use crate::support::{
    create_topics, outcomes_within, processor_settings, produce, read_to_end, request, unique,
    RunningProcessor,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_request_waits_for_its_order_and_is_applied_when_it_can_be() {
    let settings = processor_settings(2, &unique("i"));
    create_topics(&settings).await;
    let processor = RunningProcessor::start(&settings);
    let order = unique("order");
    let deliver = request(&order, "deliver");
    let positions = produce(
        &settings,
        &[
            request(&order, "create"),
            deliver.clone(),
            request(&order, "confirm"),
            request(&order, "ship"),
        ],
    )
    .await;
    let outcomes = outcomes_within(&settings, 4, Duration::from_secs(60)).await;
    processor.stop();
    let path: Vec<(&str, u64)> = outcomes
        .accepted
        .iter()
        .map(|r| (r.transition.as_str(), r.version))
        .collect();
    assert_eq!(
        path,
        vec![("create", 1), ("confirm", 2), ("ship", 3), ("deliver", 4)]
    );
    let delivered = outcomes
        .accepted
        .iter()
        .find(|r| r.request_id == deliver.request_id)
        .unwrap();
    assert_eq!(
        (delivered.input.partition, delivered.input.offset),
        positions[1],
        "the outcome names the parked request's own input"
    );
    assert_eq!(delivered.from_state.as_deref(), Some("Shipped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_request_survives_a_sigkill_and_expires_with_no_further_traffic() {
    let mut settings = processor_settings(2, &unique("park"));
    settings.processor.parking_max_wait_ms = 4000;
    create_topics(&settings).await;
    let order = unique("order");
    let ship = request(&order, "ship");
    let positions = produce(&settings, &[request(&order, "create"), ship.clone()]).await;

    let mut first = spawn_binary(&settings, None);
    let created = outcomes_within(&settings, 1, Duration::from_secs(60)).await;
    assert_eq!(created.accepted.len(), 1);
    assert!(created.rejected.is_empty(), "ship is parked, not answered");
    // The parked request is in the committed state record, so a crash cannot lose it.
    first.kill().unwrap();
    first.wait().unwrap();

    let mut second = spawn_binary(&settings, None);
    let outcomes = outcomes_within(&settings, 2, Duration::from_secs(60)).await;
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(outcomes.rejected.len(), 1, "{:?}", outcomes.rejected);
    let expired = &outcomes.rejected[0];
    assert_eq!(expired.request_id, ship.request_id);
    assert_eq!(expired.reason, RejectCode::Expired);
    assert_eq!(
        (expired.input.partition, expired.input.offset),
        positions[1]
    );
    assert!(expired.decided_at_ms - ship.requested_at_ms >= 0);
    assert_eq!(outcomes.per_input().len(), 2, "one outcome per input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_forgotten_after_its_retention_and_a_late_request_finds_no_order() {
    let settings = processor_settings(1, &unique("i"));
    create_topics(&settings).await;
    let short = Definition::parse(
        &include_str!("../../machines/order-lifecycle.toml")
            .replace("expires_after = \"30d\"", "expires_after = \"2s\""),
        "short-retention.toml",
    )
    .unwrap();
    let processor = RunningProcessor::start_with(&settings, Arc::new(short));
    let order = unique("order");
    let lifecycle: Vec<_> = ["create", "confirm", "ship", "deliver"]
        .iter()
        .map(|t| request(&order, t))
        .collect();
    produce(&settings, &lifecycle).await;
    let delivered = outcomes_within(&settings, 4, Duration::from_secs(60)).await;
    assert_eq!(delivered.accepted.len(), 4);

    // No traffic: the expiry pass writes a tombstone on its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let tombstone = loop {
        let state = read_to_end(&settings, &settings.topics.state, "read_committed");
        if let Some(t) = state.iter().find(|m| {
            rdkafka::message::Message::key(*m) == Some(order.as_bytes())
                && rdkafka::message::Message::payload(*m).is_none()
        }) {
            break t.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no tombstone for {order}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(rdkafka::message::Message::partition(&tombstone), 0);

    produce(&settings, &[request(&order, "return")]).await;
    let outcomes = outcomes_within(&settings, 5, Duration::from_secs(60)).await;
    processor.stop();
    assert_eq!(outcomes.rejected.len(), 1);
    assert_eq!(outcomes.rejected[0].reason, RejectCode::UnknownOrder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_refuses_to_join_a_group_running_another_definition() {
    let settings = processor_settings(1, &unique("a"));
    create_topics(&settings).await;
    let first = RunningProcessor::start(&settings);
    produce(&settings, &[request(&unique("order"), "create")]).await;
    outcomes_within(&settings, 1, Duration::from_secs(60)).await;

    let changed = Definition::parse(
        &include_str!("../../machines/order-lifecycle.toml").replace("version = 1", "version = 2"),
        "v2.toml",
    )
    .unwrap();
    let mut other = settings.clone();
    other.instance_id = unique("b");
    let error = tokio::task::spawn_blocking(move || {
        let parts = orderflow::processor::Parts::new(&changed).unwrap();
        orderflow::processor::Processor::new(Arc::new(other), Arc::new(changed), parts).err()
    })
    .await
    .unwrap()
    .expect("the second processor is refused");
    first.stop();
    let text = error.to_string();
    assert!(
        matches!(
            error,
            orderflow::processor::ProcessorError::DefinitionMismatch { .. }
        ),
        "{text}"
    );
    assert!(
        text.contains(&settings.instance_id),
        "names the other member: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_follows_the_processors_clock_not_the_tests_patience() {
    let settings = processor_settings(1, &unique("i"));
    create_topics(&settings).await;
    let clock = Arc::new(crate::support::ManualClock::at(1_800_000_000_000));
    let processor = RunningProcessor::run(
        crate::support::service(&settings, crate::support::definition()).with_clock(clock.clone()),
    );
    let order = unique("order");
    produce(
        &settings,
        &[request(&order, "create"), request(&order, "ship")],
    )
    .await;
    let created = outcomes_within(&settings, 1, Duration::from_secs(60)).await;
    assert_eq!(created.accepted.len(), 1);
    assert_eq!(
        created.accepted[0].decided_at_ms, 1_800_000_000_000,
        "decisions use the processor's clock"
    );

    // Ten minutes (the default parking wait) pass in an instant.
    clock.advance(settings.processor.parking_max_wait_ms as i64);
    let outcomes = outcomes_within(&settings, 2, Duration::from_secs(30)).await;
    processor.stop();
    assert_eq!(outcomes.rejected.len(), 1);
    assert_eq!(outcomes.rejected[0].reason, RejectCode::Expired);
    assert_eq!(
        outcomes.rejected[0].decided_at_ms,
        1_800_000_000_000 + 600_000
    );
}
