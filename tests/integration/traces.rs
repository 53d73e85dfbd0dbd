//! OpenTelemetry traces checked in a real Jaeger (v2: an OpenTelemetry Collector with the OTLP
//! receiver, in-memory storage and the query API), started by `deploy/local/jaeger.sh` from
//! `make test`: the `orderflow run` binary exports over OTLP/HTTP, the test reads the trace
//! back from Jaeger's query API (`/api/v3/traces/{id}`, OTLP JSON).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::crash::{sigterm, spawn_binary_with, RunningBinary};
use crate::support::{
    create_topics, http_with, outcomes_within, processor_settings, produce_raw_traced, request,
    unique,
};

/// The test Jaeger's OTLP/gRPC port (`ORDERFLOW_TEST_JAEGER_PORT`, else the one `make test`
/// uses); OTLP/HTTP listens on the next port, the query API on the one after.
fn jaeger_port() -> u16 {
    std::env::var("ORDERFLOW_TEST_JAEGER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(14317)
}

/// A GET to Jaeger's query API: (status, body).
fn query(path: &str) -> (u16, String) {
    let address = format!("127.0.0.1:{}", jaeger_port() + 2);
    http_with(address.as_str(), "GET", path, &[], None).unwrap_or_else(|e| {
        panic!("Jaeger's query API at {address} does not answer ({e}): start it with `deploy/local/jaeger.sh up` (JAEGER_PORT={}), as `make test` does", jaeger_port())
    })
}

/// Every span of a trace as Jaeger stored it (raw: no adjusting), or none when Jaeger has none.
fn trace_spans(trace_id: &str) -> Vec<Value> {
    let (status, body) = query(&format!("/api/v3/traces/{trace_id}?raw_traces=true"));
    if status == 404 {
        return Vec::new();
    }
    assert_eq!(status, 200, "{body}");
    let trace: Value = serde_json::from_str(&body).unwrap();
    let mut spans = Vec::new();
    for resource in trace["result"]["resourceSpans"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let mut span = span.clone();
                span["resource"] = resource["resource"].clone();
                spans.push(span);
            }
        }
    }
    spans
}

/// Waits until Jaeger holds at least `count` spans named `name` in the trace.
fn wait_for_spans(trace_id: &str, name: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = trace_spans(trace_id);
        let named = spans.iter().filter(|s| s["name"] == name).count();
        if named >= count || Instant::now() > deadline {
            return spans;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A string, int or bool attribute of an OTLP JSON span (ints come as strings).
fn attribute(span: &Value, key: &str) -> Option<String> {
    let value = span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?["value"]
        .clone();
    ["stringValue", "intValue", "boolValue"]
        .iter()
        .find_map(|kind| match &value[kind] {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
}

fn random_hex(bytes: usize) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..2 * bytes].to_string()
}

/// Produces requests with the given `traceparent` headers (none for `None`).
async fn produce_with_traceparents(
    settings: &orderflow::config::Settings,
    requests: &[(orderflow::machine::TransitionRequest, Option<String>)],
) -> Vec<(i32, i64)> {
    let records: Vec<_> = requests
        .iter()
        .map(|(request, traceparent)| {
            let mut bytes = Vec::new();
            orderflow::codec::encode_request(request, &mut bytes);
            (
                Some(request.order_id.clone().into_bytes()),
                bytes,
                traceparent.clone(),
            )
        })
        .collect();
    produce_raw_traced(settings, &records).await
}

/// `orderflow run` exporting to the test Jaeger; `root_ratio` for requests without a context.
fn spawn_traced(
    settings: &orderflow::config::Settings,
    service: &str,
    root_ratio: &str,
) -> RunningBinary {
    let endpoint = format!("http://127.0.0.1:{}", jaeger_port() + 1);
    spawn_binary_with(
        settings,
        None,
        &[
            ("ORDERFLOW_TRACES__ENABLED", "true"),
            ("ORDERFLOW_TRACES__ROOT_SAMPLE_RATIO", root_ratio),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", service),
        ],
    )
}

/// SIGTERM, as Kubernetes stops a pod: the binary sends its last spans before it exits.
async fn stop(mut binary: RunningBinary) {
    sigterm(&binary);
    let status = tokio::task::spawn_blocking(move || binary.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "orderflow stopped cleanly: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_request_gets_a_process_span_under_its_sender_linked_to_its_transaction() {
    let settings = processor_settings(2, "traces-sampled");
    create_topics(&settings).await;
    let order = unique("o");
    let trace_id = random_hex(16);
    let (create_parent, again_parent, ship_parent) = (random_hex(8), random_hex(8), random_hex(8));
    // The order exists already: rejected, with a reason for the span to name.
    let again = request(&order, "create");
    // Not yet allowed (the order is not confirmed): parked, answered later.
    let ship = request(&order, "ship");
    let positions = produce_with_traceparents(
        &settings,
        &[
            (
                request(&order, "create"),
                Some(format!("00-{trace_id}-{create_parent}-01")),
            ),
            (again, Some(format!("00-{trace_id}-{again_parent}-01"))),
            (ship, Some(format!("00-{trace_id}-{ship_parent}-01"))),
        ],
    )
    .await;
    // Not a request at all: a dead letter, with a span saying why.
    let poison_parent = random_hex(8);
    produce_raw_traced(
        &settings,
        &[(
            Some(order.clone().into_bytes()),
            b"not avro".to_vec(),
            Some(format!("00-{trace_id}-{poison_parent}-01")),
        )],
    )
    .await;
    let service = unique("orderflow-test");
    let binary = spawn_traced(&settings, &service, "0");
    let outcomes = outcomes_within(&settings, 2, Duration::from_secs(60)).await;
    assert_eq!((outcomes.accepted.len(), outcomes.rejected.len()), (1, 1));
    // Confirmed in a later transaction (without a trace context): the parked ship, committed
    // with its context in the order's state, is released and answered now.
    produce_with_traceparents(&settings, &[(request(&order, "confirm"), None)]).await;
    let outcomes = outcomes_within(&settings, 4, Duration::from_secs(60)).await;
    stop(binary).await;
    assert_eq!((outcomes.accepted.len(), outcomes.rejected.len()), (3, 1));

    let name = format!("process {}", settings.topics.requests);
    let spans = wait_for_spans(&trace_id, &name, 5);
    let process: Vec<&Value> = spans.iter().filter(|s| s["name"] == name).collect();
    assert_eq!(
        process.len(),
        5,
        "one process span per traced request, and one more when the parked one is answered: {spans:#?}"
    );
    let child_of = |parent: &str, outcome: &str| -> &Value {
        process
            .iter()
            .find(|s| {
                s["parentSpanId"] == parent
                    && attribute(s, "orderflow.outcome").as_deref() == Some(outcome)
            })
            .unwrap_or_else(|| {
                panic!("no {outcome} process span is a child of the sender {parent}: {spans:#?}")
            })
    };
    for (span, (partition, offset), outcome) in [
        (&create_parent, positions[0], "accepted"),
        (&again_parent, positions[1], "rejected"),
        (&ship_parent, positions[2], "parked"),
        (&ship_parent, positions[2], "accepted"),
    ]
    .map(|(parent, position, outcome)| (child_of(parent, outcome), position, outcome))
    {
        assert_eq!(span["kind"], 5, "kind consumer: {span:#}");
        assert_eq!(span["traceId"], trace_id.as_str());
        assert_eq!(
            attribute(span, "messaging.system").as_deref(),
            Some("kafka")
        );
        assert_eq!(
            attribute(span, "messaging.operation.type").as_deref(),
            Some("process")
        );
        assert_eq!(
            attribute(span, "messaging.destination.name").as_deref(),
            Some(settings.topics.requests.as_str())
        );
        assert_eq!(
            attribute(span, "messaging.destination.partition.id"),
            Some(partition.to_string())
        );
        assert_eq!(
            attribute(span, "messaging.kafka.offset"),
            Some(offset.to_string())
        );
        assert_eq!(
            attribute(span, "orderflow.order_id").as_deref(),
            Some(order.as_str())
        );
        let number = span["attributes"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|a| a["key"] == "orderflow.transaction.number")
            })
            .map(|a| a["value"].clone());
        assert!(
            number.is_some_and(|n| n["intValue"].is_string()),
            "numbers are exported as ints: {span:#}"
        );
        assert!(
            attribute(span, "target").is_none(),
            "no tracing-only attributes: {span:#}"
        );
        assert_eq!(
            attribute(span, "orderflow.outcome").as_deref(),
            Some(outcome),
            "{span:#}"
        );
        let service_name = span["resource"]["attributes"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["key"] == "service.name"))
            .map(|a| a["value"]["stringValue"].clone());
        assert_eq!(service_name, Some(Value::String(service.clone())));
    }
    assert_eq!(
        attribute(
            child_of(&again_parent, "rejected"),
            "orderflow.reject_reason"
        )
        .as_deref(),
        Some("order_already_exists")
    );
    let dead_letter = child_of(&poison_parent, "dead_letter");
    assert_eq!(
        attribute(dead_letter, "error.type").as_deref(),
        Some("not_avro"),
        "{dead_letter:#}"
    );
    assert_eq!(
        dead_letter["status"]["code"], 2,
        "status error: {dead_letter:#}"
    );
    let dead_letters =
        crate::support::read_to_end(&settings, &settings.topics.dead_letters, "read_committed");
    assert_eq!(
        dead_letters
            .iter()
            .map(|m| crate::support::header(m, "traceparent"))
            .collect::<Vec<_>>(),
        vec![Some(format!(
            "00-{trace_id}-{}-01",
            dead_letter["spanId"].as_str().unwrap()
        ))],
        "the dead letter carries its span's context"
    );
    // The ship's answer says it was parked, and for how long.
    assert!(attribute(
        child_of(&ship_parent, "parked"),
        "orderflow.parked.waited_ms"
    )
    .is_none());
    let waited: i64 = attribute(
        child_of(&ship_parent, "accepted"),
        "orderflow.parked.waited_ms",
    )
    .and_then(|ms| ms.parse().ok())
    .expect("the released request's span says how long it waited");
    assert!(waited >= 0);

    // Each outcome carries its process span's context onward, the released ship's too.
    for ((partition, offset), parent) in [
        (positions[0], &create_parent),
        (positions[1], &again_parent),
        (positions[2], &ship_parent),
    ] {
        let outcome = if parent == &again_parent {
            "rejected"
        } else {
            "accepted"
        };
        let span = child_of(parent, outcome);
        let expected = format!("00-{trace_id}-{}-01", span["spanId"].as_str().unwrap());
        let carried = crate::support::outcome_traceparent(&settings, partition, offset);
        assert_eq!(carried.as_deref(), Some(expected.as_str()), "{outcome}");
    }

    // Both link to the transaction that decided them, a span of its own trace.
    let links: Vec<(String, String)> = process
        .iter()
        .map(|s| {
            let links = s["links"].as_array().cloned().unwrap_or_default();
            assert_eq!(links.len(), 1, "one link, to the transaction: {s:#}");
            (
                links[0]["traceId"].as_str().unwrap().to_string(),
                links[0]["spanId"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let (transaction_trace, transaction_span) = &links[0];
    assert_ne!(transaction_trace, &trace_id);
    let transaction = wait_for_spans(transaction_trace, "orderflow transaction", 1);
    let transaction = transaction
        .iter()
        .find(|s| s["spanId"] == transaction_span.as_str())
        .unwrap_or_else(|| panic!("the linked transaction span is in Jaeger: {transaction:#?}"));
    assert_eq!(
        attribute(transaction, "orderflow.transaction.outcome").as_deref(),
        Some("commit")
    );
    let in_it: i64 = attribute(transaction, "messaging.batch.message_count")
        .and_then(|n| n.parse().ok())
        .unwrap();
    let linked_back = transaction["links"].as_array().map_or(0, Vec::len);
    let same_transaction = links.iter().filter(|l| l == &&links[0]).count();
    assert!(in_it >= same_transaction as i64, "{transaction:#}");
    assert_eq!(
        linked_back, same_transaction,
        "the transaction links back to its traced requests: {transaction:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_context_makes_no_span_and_travels_on_unchanged() {
    let settings = processor_settings(1, "traces-unsampled");
    create_topics(&settings).await;
    let (unsampled_trace, sampled_trace) = (random_hex(16), random_hex(16));
    let unsampled = format!("00-{unsampled_trace}-{}-00", random_hex(8));
    let first = unique("o");
    let second = unique("o");
    // Roots would all be sampled: only the unsampled flag keeps the first request out.
    let positions = produce_with_traceparents(
        &settings,
        &[
            (request(&first, "create"), Some(unsampled.clone())),
            (
                request(&second, "create"),
                Some(format!("00-{sampled_trace}-{}-01", random_hex(8))),
            ),
        ],
    )
    .await;
    let binary = spawn_traced(&settings, &unique("orderflow-test"), "1");
    let outcomes = outcomes_within(&settings, 2, Duration::from_secs(60)).await;
    stop(binary).await;
    assert_eq!(outcomes.accepted.len(), 2);

    let name = format!("process {}", settings.topics.requests);
    assert_eq!(
        wait_for_spans(&sampled_trace, &name, 1)
            .iter()
            .filter(|s| s["name"] == name)
            .count(),
        1,
        "the sampled request of the same run was exported"
    );
    assert_eq!(
        trace_spans(&unsampled_trace),
        Vec::<Value>::new(),
        "no span for the unsampled context"
    );
    let (partition, offset) = positions[0];
    assert_eq!(
        crate::support::outcome_traceparent(&settings, partition, offset),
        Some(unsampled),
        "the outcome carries the sender's context as it came"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_the_http_api_is_traced_from_the_caller_through_its_decision() {
    let mut settings = processor_settings(2, "traces-http");
    create_topics(&settings).await;
    let port = crate::support::free_port();
    settings.ops.listen = format!("127.0.0.1:{port}");
    let endpoint = format!("http://127.0.0.1:{}", jaeger_port() + 1);
    let listen = settings.ops.listen.clone();
    let binary = spawn_binary_with(
        &settings,
        None,
        &[
            ("ORDERFLOW_TRACES__ENABLED", "true"),
            ("ORDERFLOW_TRACES__ROOT_SAMPLE_RATIO", "0"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", &unique("orderflow-test")),
            ("ORDERFLOW_OPS__LISTEN", &listen),
        ],
    );
    let (trace_id, checkout_span) = (random_hex(16), random_hex(8));
    let order = unique("o");
    let path = format!("/orders/{order}/transitions");
    let body = r#"{"transition": "create", "source": "checkout", "timeout_ms": 30000}"#;
    let traceparent = format!("00-{trace_id}-{checkout_span}-01");
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = tokio::task::spawn_blocking(move || loop {
        let headers = [("traceparent", traceparent.as_str())];
        match http_with(("127.0.0.1", port), "POST", &path, &headers, Some(body)) {
            Ok(answer) if answer.0 != 503 => return answer,
            _ if Instant::now() > deadline => panic!("the HTTP API did not answer in 60 s"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    })
    .await
    .unwrap();
    stop(binary).await;
    assert_eq!(answer.0, 200, "accepted: {}", answer.1);

    let process_name = format!("process {}", settings.topics.requests);
    let spans = wait_for_spans(&trace_id, &process_name, 1);
    let send_name = format!("send {}", settings.topics.requests);
    let send = spans
        .iter()
        .find(|s| s["name"] == send_name)
        .unwrap_or_else(|| panic!("a send span in the caller's trace: {spans:#?}"));
    assert_eq!(send["kind"], 4, "kind producer: {send:#}");
    assert_eq!(
        send["parentSpanId"],
        checkout_span.as_str(),
        "a child of the caller's span"
    );
    assert_eq!(
        attribute(send, "orderflow.outcome").as_deref(),
        Some("accepted")
    );
    let process = spans.iter().find(|s| s["name"] == process_name).unwrap();
    assert_eq!(
        process["parentSpanId"], send["spanId"],
        "the decision is a child of the send: {spans:#?}"
    );
}
