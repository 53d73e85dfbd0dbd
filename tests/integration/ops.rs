//! The ops endpoints of a running processor: metrics that count what happened, health, readiness.

use std::sync::Arc;
use std::time::Duration;

use orderflow::ops::{Health, Metrics, OpsState};

use crate::support::{
    create_topics, free_port, outcomes_within, processor_settings, produce, produce_raw, request,
    unique, RunningProcessor,
};

/// A plain HTTP/1.1 GET: (status, body).
fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    crate::support::http(address, "GET", path, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_processor_did_and_probes_report_ready() {
    let settings = processor_settings(2, &unique("i"));
    create_topics(&settings).await;
    let service = crate::support::service(&settings, crate::support::definition());
    let metrics = service.metrics().clone();
    let health = Arc::clone(service.health());
    let caches = service.caches().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(orderflow::ops::serve(
        listener,
        OpsState::new(
            metrics.clone(),
            Arc::clone(&health),
            caches.clone(),
            crate::support::definition(),
            settings.topics.partitions,
        ),
        async move {
            let _ = stopped.await;
        },
    ));
    let (status, _) = tokio::task::spawn_blocking(move || get(address, "/readyz"))
        .await
        .unwrap();
    assert_eq!(status, 503, "not ready before the processor joined");

    let processor = RunningProcessor::run(service);
    let order = unique("order");
    produce(
        &settings,
        &[
            request(&order, "create"),
            request(&order, "ship"),
            request(&order, "teleport"),
        ],
    )
    .await;
    produce_raw(
        &settings,
        &[(Some(order.clone().into_bytes()), b"junk".to_vec())],
    )
    .await;
    outcomes_within(&settings, 3, Duration::from_secs(60)).await;

    let known = format!("/orders/{order}");
    let (health_status, ready_status, body, found, missing) =
        tokio::task::spawn_blocking(move || {
            let health = get(address, "/healthz").0;
            let ready = get(address, "/readyz").0;
            let found = get(address, &known);
            let missing = get(address, "/orders/no-such-order");
            (health, ready, get(address, "/metrics").1, found, missing)
        })
        .await
        .unwrap();
    processor.stop();
    let _ = stop.send(());
    assert_eq!(health_status, 200);
    assert_eq!(found.0, 200, "{}", found.1);
    let state: serde_json::Value = serde_json::from_str(&found.1).unwrap();
    assert_eq!(state["state"], "Pending");
    assert_eq!(state["version"], 1);
    assert_eq!(state["parked_requests"], 1, "ship waits for confirm");
    assert!(missing.0 == 404 || missing.0 == 421, "{}", missing.1);
    assert_eq!(ready_status, 200);
    for line in [
        "orderflow_requests_consumed_total 4",
        "orderflow_accepted_total{transition=\"create\"} 1",
        "orderflow_accepted_total{transition=\"ship\"} 0",
        "orderflow_rejected_total{reason=\"unknown_transition\"} 1",
        "orderflow_dead_letters_total{kind=\"not_avro\"} 1",
        "orderflow_parked_total 1",
        "orderflow_owned_partitions 2",
        "orderflow_restoring_partitions 0",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing `{line}` in:\n{body}"
        );
    }
    let count_of = |prefix: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(prefix)?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no `{prefix}` in:\n{body}"))
    };
    let transactions = count_of("orderflow_transaction_duration_seconds_count");
    assert!(transactions > 0);
    for step in orderflow::ops::metrics::TRANSACTION_STEPS {
        assert_eq!(
            count_of(&format!(
                "orderflow_transaction_step_duration_seconds_count{{step=\"{step}\"}}"
            )),
            transactions,
            "every committed transaction times its {step} step"
        );
    }
    assert!(body.contains("orderflow_decision_latency_seconds_bucket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_of_a_partition_owned_elsewhere_is_not_a_404() {
    let caches = orderflow::state::SharedCaches::default();
    caches
        .write()
        .insert(0, orderflow::state::PartitionCache::new());
    let definition = crate::support::definition();
    let address = crate::support::serve_ops(OpsState::new(
        Metrics::new(&definition).unwrap(),
        Arc::new(Health::default()),
        caches,
        definition,
        12,
    ))
    .await;
    // One order id whose partition (of 12) is owned here (0), one whose partition is not.
    let partition = |o: &String| orderflow::kafka::partition_for(o.as_bytes(), 12);
    let ids = (0..).map(|n| format!("o-{n}"));
    let elsewhere = ids.clone().find(|o| partition(o) != 0).unwrap();
    let here = ids.clone().find(|o| partition(o) == 0).unwrap();
    let (not_owned, unknown) = tokio::task::spawn_blocking(move || {
        (
            get(address, &format!("/orders/{elsewhere}")),
            get(address, &format!("/orders/{here}")),
        )
    })
    .await
    .unwrap();
    assert_eq!(not_owned.0, 421, "{}", not_owned.1);
    assert!(not_owned.1.contains("not owned"));
    assert_eq!(unknown.0, 404, "{}", unknown.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_when_the_loop_stops_beating_or_failed() {
    let definition = crate::support::definition();
    let health = Arc::new(Health::default());
    let address = crate::support::serve_ops(OpsState::new(
        Metrics::new(&definition).unwrap(),
        Arc::clone(&health),
        orderflow::state::SharedCaches::default(),
        definition,
        1,
    ))
    .await;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let probe = move || get(address, "/healthz").0;
    // A beat 31 s ago: the loop is stuck.
    health.beat(now() - 31_000);
    assert_eq!(tokio::task::spawn_blocking(probe).await.unwrap(), 503);
    health.beat(now());
    assert_eq!(tokio::task::spawn_blocking(probe).await.unwrap(), 200);
    health.set_failed();
    assert_eq!(tokio::task::spawn_blocking(probe).await.unwrap(), 503);
}

/// Like [`get`], but `None` while nothing listens yet.
fn try_get(address: &str, path: &str) -> Option<(u16, String)> {
    let address: std::net::SocketAddr = address.parse().ok()?;
    std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()?;
    Some(get(address, path))
}

/// Polls `path` until its status is `status` (or panics after `timeout`).
async fn await_status(address: &str, path: &str, status: u16, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (a, p) = (address.to_string(), path.to_string());
        let seen = tokio::task::spawn_blocking(move || try_get(&a, &p))
            .await
            .unwrap();
        if seen.as_ref().map(|(s, _)| *s) == Some(status) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} never answered {status} within {timeout:?}; last: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints")]
async fn healthz_turns_503_when_a_failpoint_blocks_the_running_loop() {
    let settings = processor_settings(1, &unique("stall"));
    create_topics(&settings).await;
    let address = format!("127.0.0.1:{}", free_port());
    let mut child = crate::crash::spawn_binary_with(
        &settings,
        Some("stall-before-commit:1"),
        &[
            ("ORDERFLOW_OPS__LISTEN", &address),
            ("ORDERFLOW_OPS__LIVENESS_TIMEOUT_MS", "2000"),
        ],
    );
    await_status(&address, "/readyz", 200, Duration::from_secs(60)).await;
    await_status(&address, "/healthz", 200, Duration::from_secs(5)).await;
    // The first batch blocks the loop before its commit; liveness must notice within its timeout.
    produce(&settings, &[request(&unique("order"), "create")]).await;
    await_status(&address, "/healthz", 503, Duration::from_secs(30)).await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_owned_by_another_instance_names_that_instance_and_its_url() {
    let settings = processor_settings(2, &unique("owner"));
    create_topics(&settings).await;
    let owner = RunningProcessor::start(&settings);
    // Wait until the owner has its partitions: its outcome for a request proves it.
    produce(&settings, &[request(&unique("order"), "create")]).await;
    outcomes_within(&settings, 1, Duration::from_secs(60)).await;

    // A second pod that owns nothing yet asks the group who owns the order's partition.
    let mut other = settings.clone();
    other.instance_id = "other-pod".into();
    other.ops.peer_url_template = Some("http://{instance}.peers:9400".into());
    let owners = Arc::new(orderflow::ops::OwnerDirectory::new(&other).unwrap());
    let definition = crate::support::definition();
    let address = crate::support::serve_ops(OpsState {
        owners: Some(owners),
        ..OpsState::new(
            Metrics::new(&definition).unwrap(),
            Arc::new(Health::default()),
            orderflow::state::SharedCaches::default(),
            definition,
            2,
        )
    })
    .await;
    let (status, body) = tokio::task::spawn_blocking(move || get(address, "/orders/o-77"))
        .await
        .unwrap();
    owner.stop();
    assert_eq!(status, 421, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["owner_instance"], settings.instance_id.as_str());
    assert_eq!(
        answer["owner_url"],
        format!("http://{}.peers:9400/orders/o-77", settings.instance_id)
    );
}

/// Every `orderflow_*` name in a file (dashboard queries, alert rules and their annotations).
fn metric_names_in(path: &str) -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("orderflow_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The metric names on an ops server's `/metrics` page.
async fn exported_names(address: &str) -> std::collections::BTreeSet<String> {
    let a = address.to_string();
    let (_, body) = tokio::task::spawn_blocking(move || try_get(&a, "/metrics"))
        .await
        .unwrap()
        .unwrap_or_default();
    body.lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(typed) => typed.split_whitespace().next(),
            None if !l.starts_with('#') => l.split(['{', ' ']).next(),
            None => None,
        })
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_is_exported_by_a_running_orderflow() {
    let mut used = metric_names_in("deploy/grafana/orderflow.json");
    let dashboard_count = used.len();
    used.extend(metric_names_in("deploy/prometheus/alerts.yaml"));
    assert!(
        dashboard_count >= 15 && used.len() > dashboard_count,
        "too few names found: {used:?}"
    );

    let settings = processor_settings(2, &unique("exported"));
    create_topics(&settings).await;
    let address = format!("127.0.0.1:{}", free_port());
    let mut child =
        crate::crash::spawn_binary_with(&settings, None, &[("ORDERFLOW_OPS__LISTEN", &address)]);
    await_status(&address, "/readyz", 200, Duration::from_secs(60)).await;
    produce(&settings, &[request(&unique("order"), "create")]).await;
    outcomes_within(&settings, 1, Duration::from_secs(60)).await;
    // The read replica (`orderflow serve`) exports the orderflow_replica_* metrics.
    let replica_address = format!("127.0.0.1:{}", free_port());
    let mut replica = crate::crash::binary_command(&settings)
        .arg("serve")
        .env("ORDERFLOW_OPS__LISTEN", &replica_address)
        .env("ORDERFLOW_INSTANCE_ID", "replica-0")
        .spawn()
        .unwrap();
    await_status(&replica_address, "/readyz", 200, Duration::from_secs(60)).await;

    // Lag and round-trip times come with librdkafka's statistics (every 5 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let mut exported = exported_names(&address).await;
        exported.extend(exported_names(&replica_address).await);
        let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break missing.into_iter().cloned().collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for process in [&mut child, &mut replica] {
        process.kill().unwrap();
        process.wait().unwrap();
    }
    assert!(
        missing.is_empty(),
        "used by deploy/ but not exported: {missing:?}"
    );
}
