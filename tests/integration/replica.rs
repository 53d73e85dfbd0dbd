//! The read side: `orderflow serve` materializes the whole state topic and answers for any order,
//! stays up to date as processors commit, and reports how far behind it is.

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::crash::{binary_command, spawn_binary, RunningBinary};
use crate::support::{
    create_topics, free_port, http, outcomes_within, processor_settings, produce, request, unique,
};

/// GETs `path` until `done` accepts the answer or `timeout` passes; returns the last answer.
fn get_until(
    address: SocketAddr,
    path: &str,
    timeout: Duration,
    done: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = if std::net::TcpStream::connect(address).is_ok() {
            http(address, "GET", path, None)
        } else {
            (0, String::new())
        };
        if done(answer.0, &answer.1) || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How many state records the replica has applied (the count of its apply-delay histogram).
async fn applied_records(address: SocketAddr) -> f64 {
    let (status, metrics) =
        tokio::task::spawn_blocking(move || http(address, "GET", "/metrics", None))
            .await
            .unwrap();
    assert_eq!(status, 200);
    metrics
        .lines()
        .find(|l| l.starts_with("orderflow_replica_apply_delay_seconds_count"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_replica_answers_for_every_order_and_follows_new_commits() {
    let settings = processor_settings(3, &unique("replica"));
    create_topics(&settings).await;
    let mut processor = spawn_binary(&settings, None);

    // 30 orders over all three partitions: 10 shipped, 10 confirmed, 10 pending.
    let mut requests = Vec::new();
    for n in 0..30 {
        let order = format!("replica-order-{n}");
        requests.push(request(&order, "create"));
        if n < 20 {
            requests.push(request(&order, "confirm"));
        }
        if n < 10 {
            requests.push(request(&order, "ship"));
        }
    }
    produce(&settings, &requests).await;
    outcomes_within(&settings, requests.len(), Duration::from_secs(60)).await;

    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut replica = binary_command(&settings)
        .arg("serve")
        .env("ORDERFLOW_OPS__LISTEN", address.to_string())
        .env("ORDERFLOW_INSTANCE_ID", "replica-0")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let answers = tokio::task::spawn_blocking(move || {
        let ready = get_until(address, "/readyz", Duration::from_secs(60), |s, _| s == 200);
        assert_eq!(
            ready.0, 200,
            "the replica gets ready once it has read the state topic"
        );
        let (status, body) = http(address, "GET", "/states", None);
        assert_eq!(status, 200, "{body}");
        let counts: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(counts["orders"], 30, "{counts}");
        assert_eq!(counts["states"]["Shipped"], 10, "{counts}");
        assert_eq!(counts["states"]["Confirmed"], 10, "{counts}");
        assert_eq!(counts["states"]["Pending"], 10, "{counts}");
        assert_eq!(counts["partitions"], serde_json::json!([0, 1, 2]));
        // Any order, whichever partition it is on.
        for n in 0..30 {
            let (status, body) = http(address, "GET", &format!("/orders/replica-order-{n}"), None);
            assert_eq!(status, 200, "order {n}: {body}");
            let order: serde_json::Value = serde_json::from_str(&body).unwrap();
            let expected = if n < 10 {
                ("Shipped", 3)
            } else if n < 20 {
                ("Confirmed", 2)
            } else {
                ("Pending", 1)
            };
            assert_eq!(
                (
                    order["state"].as_str().unwrap(),
                    order["version"].as_u64().unwrap()
                ),
                expected,
                "order {n}"
            );
        }
        let (status, _) = http(address, "GET", "/orders/no-such-order", None);
        assert_eq!(status, 404);
        address
    })
    .await
    .unwrap();

    // A new commit reaches the replica without a restart, and its apply delay is observed.
    let applied_before = applied_records(answers).await;
    assert!(
        applied_before >= 30.0,
        "the records read at start were timed: {applied_before}"
    );
    produce(&settings, &[request("replica-order-25", "confirm")]).await;
    let followed = tokio::task::spawn_blocking(move || {
        get_until(
            answers,
            "/orders/replica-order-25",
            Duration::from_secs(30),
            |_, body| body.contains("\"Confirmed\""),
        )
    })
    .await
    .unwrap();
    assert!(followed.1.contains("\"version\":2"), "{}", followed.1);
    assert!(applied_records(answers).await > applied_before);

    let lag_reported = tokio::task::spawn_blocking(move || {
        get_until(answers, "/metrics", Duration::from_secs(10), |_, body| {
            body.contains("orderflow_replica_lag_records{partition=\"0\"} 0")
        })
    })
    .await
    .unwrap();
    assert!(
        lag_reported
            .1
            .contains("orderflow_replica_lag_records{partition=\"0\"} 0"),
        "caught-up partitions report zero lag"
    );
    stop(&mut replica);
    stop(&mut processor);
}

/// Starts `orderflow serve` for `settings` (its own local store under `settings.state.dir`) and
/// waits until it is ready; returns it and the records it applied getting there.
async fn ready_replica(
    settings: &orderflow::config::Settings,
    address: SocketAddr,
) -> (RunningBinary, f64) {
    // Killed when dropped, so that a failed assertion does not leave it running.
    let replica = RunningBinary(
        binary_command(settings)
            .arg("serve")
            .env("ORDERFLOW_OPS__LISTEN", address.to_string())
            .env("ORDERFLOW_INSTANCE_ID", "replica-0")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ready = tokio::task::spawn_blocking(move || {
        get_until(address, "/readyz", Duration::from_secs(60), |s, _| s == 200)
    })
    .await
    .unwrap();
    assert_eq!(ready.0, 200, "the replica gets ready");
    (replica, applied_records(address).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_replica_on_the_disk_backend_restarts_from_its_checkpoints() {
    let settings = processor_settings(3, &unique("replica-disk"));
    assert_eq!(
        settings.state.backend,
        orderflow::config::StateBackend::Disk
    );
    create_topics(&settings).await;
    let mut processor = spawn_binary(&settings, None);
    let creates: Vec<_> = (0..30)
        .map(|n| request(&format!("restart-order-{n}"), "create"))
        .collect();
    produce(&settings, &creates).await;
    outcomes_within(&settings, 30, Duration::from_secs(60)).await;

    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (mut replica, first_load) = ready_replica(&settings, address).await;
    assert_eq!(first_load, 30.0, "the first start reads every state record");
    crate::crash::sigterm(&replica);
    let _ = replica.0.wait();
    assert!(
        settings.state.dir.join("replica-replica-0").is_dir(),
        "the replica keeps its store in its own directory"
    );

    // Five more commits while the replica is down: a restart reads only those.
    let confirms: Vec<_> = (0..5)
        .map(|n| request(&format!("restart-order-{n}"), "confirm"))
        .collect();
    produce(&settings, &confirms).await;
    outcomes_within(&settings, 35, Duration::from_secs(60)).await;
    let (mut replica, second_load) = ready_replica(&settings, address).await;
    assert_eq!(
        second_load, 5.0,
        "a restart reads only the records after its checkpoints"
    );
    let answers = tokio::task::spawn_blocking(move || {
        let (status, body) = http(address, "GET", "/states", None);
        assert_eq!(status, 200, "{body}");
        let counts: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(counts["orders"], 30, "{counts}");
        assert_eq!(counts["states"]["Confirmed"], 5, "{counts}");
        assert_eq!(counts["states"]["Pending"], 25, "{counts}");
        // Orders read at the first start come from the store.
        let (status, body) = http(address, "GET", "/orders/restart-order-29", None);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"Pending\""), "{body}");
        let (status, body) = http(address, "GET", "/orders/restart-order-3", None);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"Confirmed\""), "{body}");
    });
    answers.await.unwrap();
    stop(&mut replica.0);
    stop(&mut processor.0);
}
