//! The processor against a real broker: every path of a request, dead letters, restore on takeover.

use std::time::Duration;

use orderflow::machine::RejectCode;

use crate::support::{
    create_topics, header, outcomes_within, processor_settings, produce, produce_raw, read_to_end,
    request, unique, RunningProcessor,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_accepted_rejected_or_repeated_and_each_outcome_names_its_input() {
    let settings = processor_settings(3, &unique("i"));
    create_topics(&settings).await;
    let processor = RunningProcessor::start(&settings);

    let a = unique("order");
    let create = request(&a, "create");
    let confirm = request(&a, "confirm");
    let mut stale = request(&a, "ship");
    stale.expected_version = Some(1);
    let mut ship = request(&a, "ship");
    ship.expected_version = Some(2);
    let requests = vec![
        create.clone(),
        request(&a, "return"), // invalid from Pending, and "return" does not park
        confirm.clone(),
        confirm.clone(), // redelivery: duplicate
        stale,           // version conflict
        ship,
        request(&a, "cancel"),             // invalid once shipped
        request(&a, "teleport"),           // unknown transition
        request(&unique("ghost"), "ship"), // unknown order
        create.clone(),                    // redelivered create: duplicate of the first
    ];
    let positions = produce(&settings, &requests).await;
    let outcomes = outcomes_within(&settings, 10, Duration::from_secs(60)).await;
    processor.stop();

    assert_eq!(outcomes.len(), 10, "{outcomes:?}");
    let per_input = outcomes.per_input();
    for position in &positions {
        assert_eq!(
            per_input.get(position),
            Some(&1),
            "exactly one outcome for input {position:?}"
        );
    }
    let fresh: Vec<_> = outcomes.accepted.iter().filter(|r| !r.duplicate).collect();
    let path: Vec<(&str, u64)> = fresh
        .iter()
        .map(|r| (r.to_state.as_str(), r.version))
        .collect();
    assert_eq!(path, vec![("Pending", 1), ("Confirmed", 2), ("Shipped", 3)]);
    let duplicates: Vec<_> = outcomes.accepted.iter().filter(|r| r.duplicate).collect();
    assert_eq!(duplicates.len(), 2);
    assert!(duplicates
        .iter()
        .any(|d| d.request_id == confirm.request_id && d.version == 2));
    assert!(duplicates
        .iter()
        .any(|d| d.request_id == create.request_id && d.version == 1));
    let mut reasons: Vec<RejectCode> = outcomes.rejected.iter().map(|r| r.reason).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            RejectCode::UnknownTransition,
            RejectCode::InvalidTransition,
            RejectCode::InvalidTransition,
            RejectCode::UnknownOrder,
            RejectCode::VersionConflict,
        ]
    );
    let cancel = outcomes
        .rejected
        .iter()
        .find(|r| r.transition == "cancel")
        .unwrap();
    assert_eq!(
        cancel.allowed_from,
        vec!["Pending".to_string(), "Confirmed".to_string()]
    );
    assert_eq!(cancel.current_state.as_deref(), Some("Shipped"));
    for outcome in &outcomes.accepted {
        assert_eq!(outcome.input.topic, settings.topics.requests);
        assert_eq!(
            outcome.definition_hash,
            crate::support::definition().short_hash()
        );
    }

    // The compacted state topic holds the order's latest state, in the input's partition.
    let state_records = read_to_end(&settings, &settings.topics.state, "read_committed");
    let latest = state_records
        .iter()
        .rfind(|m| rdkafka::message::Message::key(*m) == Some(a.as_bytes()))
        .expect("state record");
    let (_, state) = orderflow::codec::decode_order_state(
        &crate::support::definition(),
        crate::support::payload(latest),
    )
    .unwrap();
    assert_eq!(state.version, 3);
    assert_eq!(rdkafka::message::Message::partition(latest), positions[0].0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_dead_letter_topic_with_provenance_and_later_records_are_processed(
) {
    let mut settings = processor_settings(2, &unique("i"));
    settings.processor.max_attributes = 2;
    create_topics(&settings).await;
    let processor = RunningProcessor::start(&settings);

    let order = unique("order");
    let mut valid = Vec::new();
    orderflow::codec::encode_request(&request(&order, "create"), &mut valid);
    let mut crowded = request(&order, "confirm");
    for i in 0..5 {
        crowded.attributes.insert(format!("k{i}"), "v".into());
    }
    let mut crowded_bytes = Vec::new();
    orderflow::codec::encode_request(&crowded, &mut crowded_bytes);
    let mut after = Vec::new();
    orderflow::codec::encode_request(&request(&order, "confirm"), &mut after);
    let key = Some(order.clone().into_bytes());
    let records = vec![
        (key.clone(), b"{\"not\": \"avro\"}".to_vec()), // not Avro
        (key.clone(), valid[..valid.len() - 3].to_vec()), // truncated
        (None, valid.clone()),                          // no key
        (Some(b"someone-else".to_vec()), valid.clone()), // key mismatch
        (Some(vec![0xff, 0xfe, 0x00]), valid.clone()),  // key not UTF-8
        (key.clone(), valid.clone()),                   // fine: create
        (key.clone(), crowded_bytes),                   // too many attributes
        (key.clone(), after),                           // fine: confirm
    ];
    let positions = produce_raw(&settings, &records).await;
    let outcomes = outcomes_within(&settings, 8, Duration::from_secs(60)).await;
    processor.stop();

    assert_eq!(outcomes.dead_letters.len(), 6, "{:?}", outcomes.per_input());
    let kinds: Vec<String> = [0, 1, 2, 3, 4, 6]
        .into_iter()
        .map(|index| {
            let (p, o) = &positions[index];
            let dl = outcomes
                .dead_letters
                .iter()
                .find(|m| {
                    header(m, "orderflow.dlq.original.partition") == Some(p.to_string())
                        && header(m, "orderflow.dlq.original.offset") == Some(o.to_string())
                })
                .unwrap_or_else(|| panic!("dead letter for {p}/{o}"));
            assert_eq!(
                header(dl, "orderflow.dlq.original.topic").as_deref(),
                Some(settings.topics.requests.as_str())
            );
            assert_eq!(
                header(dl, "orderflow.dlq.consumer.group").as_deref(),
                Some(settings.kafka.group_id.as_str())
            );
            assert!(header(dl, "orderflow.dlq.original.timestamp").is_some());
            assert!(!header(dl, "orderflow.dlq.error.message")
                .unwrap_or_default()
                .is_empty());
            assert_eq!(
                rdkafka::message::Message::partition(dl),
                *p,
                "dead letters stay in the input's partition"
            );
            assert_eq!(
                rdkafka::message::Message::key(dl),
                records[index].0.as_deref(),
                "a dead letter keeps the input's key, and no key stays no key"
            );
            header(dl, "orderflow.dlq.error.kind").unwrap()
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            "not_avro",
            "truncated",
            "missing_key",
            "key_mismatch",
            "key_not_utf8",
            "oversized_attributes"
        ]
    );
    // The original bytes are kept.
    let first = outcomes
        .dead_letters
        .iter()
        .find(|m| header(m, "orderflow.dlq.error.kind").as_deref() == Some("not_avro"))
        .unwrap();
    assert_eq!(crate::support::payload(first), b"{\"not\": \"avro\"}");
    // Valid records around the poison ones were processed in order.
    let path: Vec<u64> = outcomes.accepted.iter().map(|r| r.version).collect();
    assert_eq!(path, vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_dead_letter_is_truncated_and_says_so() {
    let mut settings = processor_settings(1, &unique("i"));
    settings.processor.dead_letter_max_bytes = 4096;
    create_topics(&settings).await;
    let processor = RunningProcessor::start(&settings);
    let order = unique("order");
    let huge = vec![b'x'; 200_000];
    produce_raw(&settings, &[(Some(order.clone().into_bytes()), huge)]).await;
    let mut ok = Vec::new();
    orderflow::codec::encode_request(&request(&order, "create"), &mut ok);
    produce_raw(&settings, &[(Some(order.into_bytes()), ok)]).await;
    let outcomes = outcomes_within(&settings, 2, Duration::from_secs(60)).await;
    processor.stop();
    assert_eq!(outcomes.dead_letters.len(), 1);
    let dl = &outcomes.dead_letters[0];
    assert_eq!(
        header(dl, "orderflow.dlq.truncated.from.bytes").as_deref(),
        Some("200000")
    );
    assert!(crate::support::payload(dl).len() < 4096);
    assert_eq!(
        outcomes.accepted.len(),
        1,
        "the record after it is processed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_processor_takes_over_partitions_with_their_restored_state() {
    let settings = processor_settings(4, &unique("a"));
    create_topics(&settings).await;
    let first = RunningProcessor::start(&settings);
    let orders: Vec<String> = (0..40)
        .map(|i| format!("{}-{i}", unique("order")))
        .collect();
    let mut requests = Vec::new();
    for o in &orders {
        requests.push(request(o, "create"));
        requests.push(request(o, "confirm"));
    }
    produce(&settings, &requests).await;
    let settled = outcomes_within(&settings, 80, Duration::from_secs(60)).await;
    assert_eq!(settled.accepted.len(), 80);

    // A second instance joins the same group, then the first leaves: the second owns everything
    // and must have restored every order's state from the compacted topic.
    let mut second_settings = settings.clone();
    second_settings.instance_id = unique("b");
    let second = RunningProcessor::start(&second_settings);
    tokio::time::sleep(Duration::from_secs(3)).await;
    first.stop();

    let ships: Vec<_> = orders.iter().map(|o| request(o, "ship")).collect();
    produce(&settings, &ships).await;
    let outcomes = outcomes_within(&settings, 120, Duration::from_secs(90)).await;
    second.stop();
    let shipped: Vec<_> = outcomes
        .accepted
        .iter()
        .filter(|r| r.transition == "ship")
        .collect();
    assert_eq!(
        shipped.len(),
        40,
        "rejected: {:?}",
        outcomes
            .rejected
            .iter()
            .map(|r| (&r.order_id, r.reason))
            .collect::<Vec<_>>()
    );
    assert!(shipped
        .iter()
        .all(|r| r.version == 3 && r.from_state.as_deref() == Some("Confirmed")));
    assert_eq!(outcomes.len(), 120, "no input decided twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_is_processed_while_another_is_still_restoring_a_large_state() {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    let settings = processor_settings(2, &unique("i"));
    create_topics(&settings).await;

    // 300k orders of state in partition 0 of the state topic, none in partition 1.
    let definition = crate::support::definition();
    let producer: FutureProducer = orderflow::kafka::base_config(&settings.kafka, "preload")
        .unwrap()
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let state = orderflow::machine::OrderState {
        state: definition.state_id("Confirmed").unwrap(),
        version: 2,
        created_at_ms: 1,
        updated_at_ms: 2,
        recent: vec![],
        parked: vec![],
    };
    let mut futures = Vec::new();
    for n in 0..300_000 {
        let order = format!("preloaded-{n}");
        let mut value = Vec::new();
        orderflow::codec::encode_order_state(&definition, &order, &state, &mut value);
        futures.push(
            producer
                .send_result(
                    FutureRecord::to(&settings.topics.state)
                        .partition(0)
                        .key(&order)
                        .payload(&value),
                )
                .map_err(|(e, _)| e)
                .unwrap(),
        );
    }
    for f in futures {
        f.await.unwrap().unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let processor = RunningProcessor::start(&settings);
    let orders: Vec<_> = (0..12)
        .map(|n| request(&format!("{}-{n}", unique("o")), "create"))
        .collect();
    let positions = produce(&settings, &orders).await;
    assert!(positions.iter().any(|(p, _)| *p == 0) && positions.iter().any(|(p, _)| *p == 1));
    let outcomes = outcomes_within(&settings, 12, Duration::from_secs(120)).await;
    processor.stop();
    assert_eq!(outcomes.accepted.len(), 12);
    let decided = |partition: i32| -> Vec<i64> {
        outcomes
            .accepted
            .iter()
            .filter(|r| r.input.partition == partition)
            .map(|r| r.decided_at_ms)
            .collect()
    };
    let last_of_1 = decided(1).into_iter().max().unwrap();
    let first_of_0 = decided(0).into_iter().min().unwrap();
    assert!(
        last_of_1 < first_of_0,
        "partition 1 was decided ({last_of_1}) before partition 0 finished restoring ({first_of_0})"
    );
}
