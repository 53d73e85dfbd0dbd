//! The commands people and scripts use, run as the real binary against a running processor:
//! send (with --wait), get, tail, dlq list|replay, and the HTTP transition API.

use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use orderflow::config::Settings;
use orderflow::ops::{Health, Metrics, OpsState};
use serde_json::Value;

use crate::crash::binary_command;
use crate::support::{
    create_topics, outcomes_within, processor_settings, produce_raw, unique, RunningProcessor,
};

/// Runs `orderflow ARGS` for `settings` to completion (blocking).
fn cli(settings: &Settings, args: &[&str]) -> Output {
    let mut command = binary_command(settings);
    command.args(args).stdout(Stdio::piped());
    command.output().expect("orderflow runs")
}

async fn cli_async(settings: &Settings, args: &[&str]) -> Output {
    let settings = settings.clone();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&settings, &args)
    })
    .await
    .unwrap()
}

fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_wait_returns_each_kind_of_outcome_with_its_exit_code_and_get_and_tail_see_them() {
    let mut settings = processor_settings(2, &unique("send"));
    settings.processor.max_attributes = 3;
    create_topics(&settings).await;
    let processor = RunningProcessor::start(&settings);
    let order = unique("order");

    let created = cli_async(
        &settings,
        &[
            "send",
            "--order",
            &order,
            "--transition",
            "create",
            "--attr",
            "channel=web",
            "--wait",
            "--json",
        ],
    )
    .await;
    assert_eq!(created.status.code(), Some(0), "{created:?}");
    let outcome = &json_lines(&created)[0];
    assert_eq!(outcome["outcome"], "accepted");
    assert_eq!(outcome["to_state"], "Pending");
    assert_eq!(outcome["attributes"]["channel"], "web");

    let rejected = cli_async(
        &settings,
        &[
            "send",
            "--order",
            &order,
            "--transition",
            "confirm",
            "--expect-version",
            "7",
            "--wait",
            "--json",
        ],
    )
    .await;
    assert_eq!(rejected.status.code(), Some(3), "{rejected:?}");
    assert_eq!(json_lines(&rejected)[0]["reason"], "VERSION_CONFLICT");

    let oversized = cli_async(
        &settings,
        &[
            "send",
            "--order",
            &order,
            "--transition",
            "confirm",
            "--attr",
            "a=1",
            "--attr",
            "b=2",
            "--attr",
            "c=3",
            "--attr",
            "d=4",
            "--wait",
            "--json",
        ],
    )
    .await;
    assert_eq!(oversized.status.code(), Some(4), "{oversized:?}");
    assert_eq!(
        json_lines(&oversized)[0]["error_kind"],
        "oversized_attributes"
    );

    // A request that parks (ship before confirm) has no outcome yet: exit 5 after the timeout.
    let parked = cli_async(
        &settings,
        &[
            "send",
            "--order",
            &order,
            "--transition",
            "ship",
            "--wait",
            "--timeout-secs",
            "3",
        ],
    )
    .await;
    assert_eq!(parked.status.code(), Some(5), "{parked:?}");

    let found = cli_async(&settings, &["get", &order, "--json"]).await;
    assert_eq!(found.status.code(), Some(0), "{found:?}");
    let state = &json_lines(&found)[0];
    assert_eq!(state["state"], "Pending");
    assert_eq!(state["version"], 1);
    assert_eq!(state["parked_requests"], 1);
    let unknown = cli_async(&settings, &["get", &unique("nobody")]).await;
    assert_eq!(unknown.status.code(), Some(3), "{unknown:?}");

    let tailed = cli_async(
        &settings,
        &[
            "tail",
            "--from-beginning",
            "--order",
            &order,
            "--max",
            "3",
            "--json",
        ],
    )
    .await;
    processor.stop();
    assert_eq!(tailed.status.code(), Some(0), "{tailed:?}");
    let mut kinds: Vec<String> = json_lines(&tailed)
        .iter()
        .map(|o| o["outcome"].as_str().unwrap().to_string())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["accepted", "dead_letter", "rejected"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replayed_after_the_fix_is_decided() {
    let mut settings = processor_settings(1, &unique("dlq"));
    settings.processor.max_attributes = 1;
    create_topics(&settings).await;
    let processor = RunningProcessor::start(&settings);
    let order = unique("order");
    let mut request = crate::support::request(&order, "create");
    request.attributes = [("a".into(), "1".into()), ("b".into(), "2".into())].into();
    let mut bytes = Vec::new();
    orderflow::codec::encode_request(&request, &mut bytes);
    produce_raw(&settings, &[(Some(order.clone().into_bytes()), bytes)]).await;
    outcomes_within(&settings, 1, Duration::from_secs(60)).await;
    processor.stop();

    let listed = cli_async(&settings, &["dlq", "list", "--json"]).await;
    assert_eq!(listed.status.code(), Some(0), "{listed:?}");
    let letters = json_lines(&listed);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["error_kind"], "oversized_attributes");
    assert_eq!(letters[0]["original"]["offset"], 0);
    assert_eq!(letters[0]["key"], order.as_str());

    // The fix: a higher limit. Then the replayed original bytes are decided normally.
    settings.processor.max_attributes = 64;
    let processor = RunningProcessor::start(&settings);
    let missing = cli_async(&settings, &["dlq", "replay", "--record", "0:5"]).await;
    assert_ne!(
        missing.status.code(),
        Some(0),
        "replaying a dead letter that does not exist"
    );
    let replayed = cli_async(&settings, &["dlq", "replay", "--record", "0:0"]).await;
    assert_eq!(replayed.status.code(), Some(0), "{replayed:?}");
    let outcomes = outcomes_within(&settings, 2, Duration::from_secs(60)).await;
    processor.stop();
    assert_eq!(outcomes.accepted.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes.accepted[0].order_id, order);
    assert_eq!(outcomes.accepted[0].attributes.len(), 2);
    assert_eq!(outcomes.accepted[0].input.offset, 1, "the replayed copy");
}

/// A plain HTTP/1.1 POST with a JSON body: (status, body).
fn post(address: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    crate::support::http(address, "POST", path, Some(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_transition_api_answers_each_outcome_with_its_status() {
    let settings = processor_settings(2, &unique("http"));
    create_topics(&settings).await;
    let processor = RunningProcessor::start(&settings);
    let gateway = {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || {
            orderflow::client::Gateway::start(&settings, "test-http")
        })
        .await
        .unwrap()
        .unwrap()
    };
    let definition = crate::support::definition();
    let address = crate::support::serve_ops(OpsState {
        gateway: Some(Arc::new(gateway)),
        ..OpsState::new(
            Metrics::new(&definition).unwrap(),
            Arc::new(Health::default()),
            orderflow::state::SharedCaches::default(),
            definition,
            2,
        )
    })
    .await;
    let order = unique("order");
    let path = format!("/orders/{order}/transitions");
    let (created, unknown, bad, again) = tokio::task::spawn_blocking(move || {
        let request_id = uuid::Uuid::new_v4();
        let create = format!(r#"{{"transition": "create", "request_id": "{request_id}"}}"#);
        let created = post(address, &path, &create);
        let unknown = post(address, &path, r#"{"transition": "teleport"}"#);
        let bad = post(address, &path, r#"{"transiton": "create"}"#);
        // The same request id again: answered with the first outcome, flagged duplicate.
        let again = post(address, &path, &create);
        (created, unknown, bad, again)
    })
    .await
    .unwrap();
    processor.stop();
    assert_eq!(created.0, 200, "{}", created.1);
    let accepted: Value = serde_json::from_str(&created.1).unwrap();
    assert_eq!(accepted["to_state"], "Pending");
    assert_eq!(unknown.0, 409, "{}", unknown.1);
    assert!(unknown.1.contains("UNKNOWN_TRANSITION"), "{}", unknown.1);
    assert_eq!(bad.0, 400, "{}", bad.1);
    assert!(
        bad.1.contains("transiton"),
        "names the bad field: {}",
        bad.1
    );
    assert_eq!(again.0, 200, "{}", again.1);
    let repeated: Value = serde_json::from_str(&again.1).unwrap();
    assert_eq!(repeated["duplicate"], true);
    assert_eq!(repeated["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reads_only_the_partitions_its_callers_wait_on() {
    let settings = processor_settings(4, &unique("follow"));
    create_topics(&settings).await;
    let processor = RunningProcessor::start(&settings);
    let gateway = {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || {
            orderflow::client::Gateway::start_lingering(
                &settings,
                "test-follow",
                Duration::from_secs(1),
            )
        })
        .await
        .unwrap()
        .unwrap()
    };
    let idle = gateway.followed_partitions().unwrap();
    assert!(
        idle.is_empty(),
        "nothing followed before a caller: {idle:?}"
    );

    let order = unique("order");
    let request = orderflow::machine::TransitionRequest {
        request_id: uuid::Uuid::new_v4(),
        order_id: order.clone(),
        transition: "create".into(),
        expected_version: None,
        requested_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
        source: "test".into(),
        attributes: Default::default(),
    };
    let outcome = gateway
        .submit(&request, &[], Duration::from_secs(60))
        .await
        .unwrap();
    let orderflow::client::Outcome::Accepted(accepted) = outcome else {
        panic!("create was not accepted: {outcome:?}");
    };
    let followed = gateway.followed_partitions().unwrap();
    let only_its_partition: std::collections::BTreeSet<i32> = [accepted.input.partition].into();
    for topic in [
        &settings.topics.accepted,
        &settings.topics.rejected,
        &settings.topics.dead_letters,
    ] {
        assert_eq!(
            followed.get(topic),
            Some(&only_its_partition),
            "{followed:?}"
        );
    }
    assert_eq!(followed.len(), 3, "{followed:?}");

    // A second of linger after the answer, then the partition is dropped.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let dropped = loop {
        let followed = gateway.followed_partitions().unwrap();
        if followed.is_empty() || std::time::Instant::now() > deadline {
            break followed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    processor.stop();
    assert!(dropped.is_empty(), "still followed: {dropped:?}");
}

/// Runs `orderflow loadgen` with `args` (and `--no-progress --json`) against a processor started
/// for it on fresh topics of `partitions` partitions; the report, once loadgen has exited 0.
async fn loadgen_report(partitions: i32, name: &str, args: &[&str]) -> Value {
    let settings = processor_settings(partitions, &unique(name));
    create_topics(&settings).await;
    let processor = RunningProcessor::start(&settings);
    let mut command = vec!["loadgen"];
    command.extend_from_slice(args);
    command.extend(["--no-progress", "--json"]);
    let output = cli_async(&settings, &command).await;
    processor.stop();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    json_lines(&output).remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_gets_every_planned_outcome_from_a_running_processor() {
    let report = &loadgen_report(
        3,
        "loadgen",
        &[
            "--orders",
            "300",
            "--seed",
            "11",
            "--invalid-share",
            "0.05",
            "--duplicate-share",
            "0.05",
            "--out-of-order-share",
            "0.1",
            "--poison-share",
            "0.02",
            "--wait-secs",
            "90",
        ],
    )
    .await;
    assert_eq!(report["missing"], 0, "{report}");
    assert_eq!(report["repeated"], 0, "{report}");
    assert_eq!(report["unexpected"], 0, "{report}");
    assert_eq!(report["expected"], report["outcomes"], "{report}");
    for kind in ["accepted", "rejected", "duplicate", "dead_letter"] {
        assert!(
            report["outcomes"][kind].as_u64().unwrap_or(0) > 0,
            "no {kind} outcome in {report}"
        );
    }
    assert!(report["latency_ms"]["p50"].as_i64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_leaves_the_warm_up_out_of_the_latency_percentiles() {
    let report = &loadgen_report(
        2,
        "warmup",
        &[
            "--orders",
            "100",
            "--rate",
            "200",
            "--warmup-secs",
            "1",
            "--poison-share",
            "0",
            "--seed",
            "3",
            "--wait-secs",
            "90",
        ],
    )
    .await;
    assert_eq!(report["missing"], 0, "{report}");
    let sent = report["sent"].as_u64().unwrap();
    let warmup = report["warmup_sent"].as_u64().unwrap();
    // Paced at 200/s, the first second holds at most 201 records (index 0 goes at once).
    assert!((1..=201).contains(&warmup), "{report}");
    assert!(warmup < sent, "{report}");
    // Without poison every record has a latency; the warm-up's are left out.
    assert_eq!(
        report["measured"].as_u64().unwrap(),
        sent - warmup,
        "{report}"
    );
}
