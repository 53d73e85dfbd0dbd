#!/usr/bin/env python3
"""One order's trace through checkout -> orderflow -> a downstream consumer, read back from Jaeger.

Stands in for the two services around orderflow: a "checkout" service whose span calls orderflow's
HTTP API with its W3C `traceparent`, and a "warehouse" consumer of the accepted-transitions topic
that continues the trace from the outcome record's `traceparent`. Their spans go to Jaeger over
OTLP/HTTP (JSON), as any OpenTelemetry SDK would send them; orderflow's own spans come from
orderflow. Then the script asks Jaeger's query API for the trace and prints it as a tree, and the
URL of the trace in Jaeger's UI.

Needs a broker, Jaeger (`deploy/local/jaeger.sh up`) and `orderflow run` with traces on, e.g.

    deploy/local/kafka.sh up && deploy/local/jaeger.sh up
    ORDERFLOW_TRACES__ENABLED=true OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 orderflow run &
    python3 deploy/local/trace_demo.py

Standard library only; the outcome record is read with Kafka's console consumer
(`deploy/local/kafka.sh tool console-consumer`), started before the request is sent.
"""

import argparse
import json
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def now_ns():
    return time.time_ns()


def http(method, url, body=None, headers=None, timeout=70):
    """(status, parsed JSON or text) of one HTTP call."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def attribute(key, value):
    kind = "intValue" if isinstance(value, int) else "stringValue"
    return {"key": key, "value": {kind: str(value) if kind == "intValue" else value}}


def export(otlp, service, spans):
    """Sends finished spans of one service to the OTLP/HTTP endpoint (JSON encoding)."""
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [attribute("service.name", service)]},
                "scopeSpans": [{"scope": {"name": "orderflow-trace-demo"}, "spans": spans}],
            }
        ]
    }
    status, answer = http("POST", f"{otlp}/v1/traces", body)
    if status != 200:
        sys.exit(f"trace_demo: the collector at {otlp} refused the {service} spans: {status} {answer}")


class OutcomeReader:
    """Kafka's console consumer on the accepted-transitions topic (read_committed), started before
    the request is sent so that the time a record arrives is the time a consumer would see it."""

    def __init__(self, args):
        command = [
            "bash", os.path.join(HERE, "kafka.sh"), "tool", "console-consumer",
            "--bootstrap-server", args.bootstrap, "--topic", args.accepted_topic,
            "--isolation-level", "read_committed",
            "--property", "print.key=true", "--property", "print.headers=true",
            "--property", "print.value=false", "--property", "key.separator=|",
            "--property", "headers.separator=,",
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put((now_ns(), line.rstrip("\n")))

    def traceparent_of(self, order_id, deadline_s=30):
        """(arrival time in ns, `traceparent` header) of the order's accepted outcome."""
        deadline = time.time() + deadline_s
        while time.time() < deadline:
            try:
                arrived, line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            headers, _, key = line.rpartition("|")
            if key != order_id:
                continue
            for header in headers.split(","):
                name, _, value = header.partition(":")
                if name == "traceparent":
                    return arrived, value
        sys.exit(f"trace_demo: no accepted outcome of {order_id} within {deadline_s} s")

    def close(self):
        self.process.terminate()


def trace_spans(query, trace_id):
    status, answer = http("GET", f"{query}/api/v3/traces/{trace_id}")
    if status != 200:
        return []
    spans = []
    for resource in answer.get("result", {}).get("resourceSpans", []):
        service = next(
            (a["value"]["stringValue"] for a in resource["resource"]["attributes"] if a["key"] == "service.name"),
            "?",
        )
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                span["service"] = service
                spans.append(span)
    return spans


def print_tree(spans, shown=("orderflow.order_id", "orderflow.transition", "orderflow.outcome",
                             "messaging.destination.name", "messaging.kafka.offset", "http.response.status_code")):
    by_parent = {}
    ids = {s["spanId"] for s in spans}
    for span in spans:
        parent = span.get("parentSpanId") or ""
        by_parent.setdefault(parent if parent in ids else "", []).append(span)

    def show(span, depth):
        ms = (int(span["endTimeUnixNano"]) - int(span["startTimeUnixNano"])) / 1e6
        attrs = {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}
        detail = ", ".join(f"{k}={attrs[k]}" for k in shown if k in attrs)
        links = "".join(f"\n{'  ' * (depth + 2)}linked: trace {l['traceId']} span {l['spanId']}" for l in span.get("links", []))
        print(f"{'  ' * depth}{span['service']}: {span['name']} ({ms:.1f} ms){' [' + detail + ']' if detail else ''}{links}")
        for child in sorted(by_parent.get(span["spanId"], []), key=lambda s: int(s["startTimeUnixNano"])):
            show(child, depth + 1)

    for root in sorted(by_parent.get("", []), key=lambda s: int(s["startTimeUnixNano"])):
        show(root, 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", default="http://127.0.0.1:9400", help="orderflow's ops port (HTTP API)")
    parser.add_argument("--otlp", default="http://127.0.0.1:4318", help="OTLP/HTTP endpoint")
    parser.add_argument("--query", default="http://127.0.0.1:4319", help="Jaeger's query API and UI")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--accepted-topic", default="order-transitions")
    parser.add_argument("--order", default=f"demo-{secrets.token_hex(4)}")
    parser.add_argument("--consumer-start-s", type=float, default=8.0,
                        help="how long the console consumer gets to join before the request is sent")
    args = parser.parse_args()

    reader = OutcomeReader(args)
    # The console consumer is a JVM that joins a group: give it time to be assigned its partitions
    # (it reads from the end, so an outcome written before that would be missed).
    time.sleep(args.consumer_start_s)
    trace_id, checkout_span = secrets.token_hex(16), secrets.token_hex(8)
    started = now_ns()
    status, answer = http(
        "POST",
        f"{args.api}/orders/{args.order}/transitions",
        {"transition": "create", "source": "checkout", "attributes": {"channel": "web"}},
        {"traceparent": f"00-{trace_id}-{checkout_span}-01"},
    )
    ended = now_ns()
    if status != 200:
        sys.exit(f"trace_demo: orderflow answered {status}: {answer}")
    export(args.otlp, "checkout", [{
        "traceId": trace_id, "spanId": checkout_span, "name": "POST /checkout", "kind": 2,
        "startTimeUnixNano": str(started), "endTimeUnixNano": str(ended),
        "attributes": [attribute("http.request.method", "POST"), attribute("http.route", "/checkout"),
                       attribute("http.response.status_code", 200), attribute("orderflow.order_id", args.order)],
    }])

    # The warehouse consumes the accepted transition and continues the trace from its header.
    picked, carried = reader.traceparent_of(args.order)
    reader.close()
    _, carried_trace, carried_span, _ = carried.split("-")
    if carried_trace != trace_id:
        sys.exit(f"trace_demo: the outcome carries another trace ({carried}); is orderflow running with traces on?")
    export(args.otlp, "warehouse", [{
        "traceId": trace_id, "spanId": secrets.token_hex(8), "parentSpanId": carried_span,
        "name": f"process {args.accepted_topic}", "kind": 5,
        "startTimeUnixNano": str(picked), "endTimeUnixNano": str(picked + 3_000_000),
        "attributes": [attribute("messaging.system", "kafka"), attribute("messaging.operation.type", "process"),
                       attribute("messaging.destination.name", args.accepted_topic),
                       attribute("orderflow.order_id", args.order)],
    }])

    deadline = time.time() + 30
    spans = []
    while time.time() < deadline:
        spans = trace_spans(args.query, trace_id)
        if len({s["service"] for s in spans}) >= 3 and len(spans) >= 4:
            break
        time.sleep(0.5)
    print(f"order {args.order}, trace {trace_id}:")
    print_tree(spans)
    print(f"\nJaeger UI: {args.query}/trace/{trace_id}")


if __name__ == "__main__":
    main()
