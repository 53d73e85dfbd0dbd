//! Event sourcing for real: `orderflow rebuild-state` rebuilds the compacted state topic from the
//! accepted-transitions log alone, the rebuilt topic equals the live one, and processors switched
//! to it carry on where the live state left off.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use orderflow::codec::decode_order_state;
use orderflow::config::Settings;

use crate::crash::{binary_command, sigterm, spawn_binary};
use crate::support::{
    create_topics, definition, outcomes_within, processor_settings, produce, read_to_end, request,
    unique,
};

/// Stops a processor the way Kubernetes does (SIGTERM), so it leaves its group.
fn stop_gracefully(mut processor: crate::crash::RunningBinary) {
    sigterm(&processor);
    let exit = processor.wait().unwrap();
    assert!(
        exit.success(),
        "the processor stops cleanly on SIGTERM: {exit:?}"
    );
}

/// The latest (state name, version, created, updated) per order of a state topic, decoded by the test.
fn states_of(settings: &Settings, topic: &str) -> HashMap<String, (String, u64, i64, i64)> {
    let definition = definition();
    let mut states = HashMap::new();
    for message in read_to_end(settings, topic, "read_committed") {
        use rdkafka::Message;
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        match message.payload() {
            None => {
                states.remove(&key);
            }
            Some(value) => {
                let (order_id, state) = decode_order_state(&definition, value).unwrap();
                assert_eq!(order_id, key, "a state record is keyed by its order id");
                let name = definition.state(state.state).name.clone();
                states.insert(
                    order_id,
                    (
                        name,
                        state.version,
                        state.created_at_ms,
                        state.updated_at_ms,
                    ),
                );
            }
        }
    }
    states
}

fn rebuild(settings: &Settings, into: &str) -> std::process::Output {
    binary_command(settings)
        .args(["rebuild-state", "--into", into, "--compare", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_rebuilt_from_the_event_log_equals_the_live_state_and_processors_can_switch_to_it(
) {
    let mut settings = processor_settings(3, &unique("rebuild"));
    settings.processor.batch_max_records = 200;
    create_topics(&settings).await;
    let processor = spawn_binary(&settings, None);

    // An order the test follows through the switch, then a load with rejections, duplicates and
    // requests that arrive before their order is ready.
    produce(
        &settings,
        &[request("probe-1", "create"), request("probe-1", "confirm")],
    )
    .await;
    let load = binary_command(&settings)
        .args([
            "loadgen",
            "--orders",
            "800",
            "--rate",
            "2000",
            "--seed",
            "11",
            "--concurrency",
            "200",
            "--out-of-order-share",
            "0.05",
            "--wait-secs",
            "120",
            "--no-progress",
            "--json",
        ])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        load.status.success(),
        "loadgen: {}",
        String::from_utf8_lossy(&load.stdout)
    );

    // While a processor runs, the log may still grow: the rebuild refuses, writing nothing.
    let refused = rebuild(
        &settings,
        &format!("{}-rebuilt-early", settings.topics.state),
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("active member"),
        "names the reason: {stderr}"
    );

    stop_gracefully(processor);
    let into = format!("{}-rebuilt", settings.topics.state);
    let rebuilt = rebuild(&settings, &into);
    let stdout = String::from_utf8_lossy(&rebuilt.stdout);
    assert!(
        rebuilt.status.success(),
        "rebuild: {stdout}\n{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let comparison = &report["comparison"];
    assert_eq!(comparison["different"], 0, "{report}");
    assert_eq!(comparison["only_live"], 0, "{report}");
    assert_eq!(comparison["only_rebuilt"], 0, "{report}");

    // The test's own comparison, not the tool's: every live order, same state, version and times.
    let live = states_of(&settings, &settings.topics.state);
    let again = states_of(&settings, &into);
    assert!(live.len() > 800, "the load made its orders: {}", live.len());
    assert_eq!(report["orders_written"], live.len() as u64);
    assert_eq!(live, again);

    // A second rebuild into the same topic is refused: it is not new.
    let twice = rebuild(&settings, &into);
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("exists already"));

    // Switch: a processor on the rebuilt topic continues the probe order at its version.
    let mut switched = settings.clone();
    switched.topics.state = into;
    let processor = spawn_binary(&switched, None);
    // Every kind counts: the wait below compares with all outcomes, rejections included.
    let before = outcomes_within(&switched, 0, Duration::from_secs(1))
        .await
        .len();
    produce(&switched, &[request("probe-1", "ship")]).await;
    let outcomes = outcomes_within(&switched, before + 1, Duration::from_secs(60)).await;
    let shipped = outcomes
        .accepted
        .iter()
        .find(|a| a.order_id == "probe-1" && a.transition == "ship")
        .unwrap_or_else(|| {
            let rejected: Vec<_> = outcomes
                .rejected
                .iter()
                .filter(|r| r.order_id == "probe-1")
                .collect();
            panic!("the probe order ships after the switch; its rejections: {rejected:?}")
        });
    assert_eq!(shipped.version, 3, "the rebuilt state carried the version");
    assert_eq!(shipped.from_state.as_deref(), Some("Confirmed"));
    stop_gracefully(processor);
}
