#!/usr/bin/env python3
"""`make bench` (and `make bench-quick`): orderflow against its floors and its incumbent on one local
broker, measured so that the comparison cannot flatter orderflow.

- Throughput, preloaded input: orderflow, the exactly-once pipe built on orderflow's own batch
  window and transaction runner (`orderflow-bench pipe`, librdkafka), the same pipe written with
  the Java 4.4 clients (bench/kafka-streams/EosPipe.java), Kafka Streams 4.4 at its exactly-once
  default (commit.interval.ms=100) and at its best measured setting, with RocksDB and with an
  in-memory store, and optionally orderflow built from another commit (--baseline REV). Every
  system gets an untimed warm-up pass first (the JVMs too); then rounds in which every system runs
  once, in ABBA order (each round reverses the previous one's order), so a broker that warms up or
  a machine phase tilts no system. Each ratio is the median of its per-round ratios, with range;
  beside every rate, the CPU-seconds per request of the system's process and of the broker, cut to
  the span from the first to the last outcome.
- Live load: a ladder of paced rates; at each, p50/p99/p99.9 from the request's produce timestamp
  to the outcome visible to a read_committed reader, for orderflow (fed by `orderflow loadgen`),
  the pipe (`orderflow-bench pipe-latency --spread`) and the no-transaction floor (the requests
  themselves, produced and read back read_committed: `pipe-latency --floor`); the highest rate
  each holds (every outcome, at least 95% of the rate, p99 at most 1 s) and the load generator's CPU.
- Restore of a million orders; a restart holding 10 M orders, memory vs disk backend.
- Realistic access (bench/aged_access.py): the disk backend's 256 MB budget against the memory
  backend on 10 M orders aged over 35 days, skewed and uniform access.

Results go to docs/benchmarks.md (between the system-bench markers) and to bench/last-run.json
(every figure, named; `orderflow capacity` reads its per-pod rate).
"""
import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "deploy" / "local"))
import driver  # noqa: E402
import aged_access  # noqa: E402

root = driver.ROOT
os.chdir(root)
PORT = int(os.environ.get("ORDERFLOW_BENCH_KAFKA_PORT", "29092"))
KAFKA = driver.Kafka(PORT, 1, name="bench")
BOOTSTRAP = KAFKA.bootstrap
BENCH = driver.BENCH
ORDERFLOW = driver.ORDERFLOW
PARTITIONS = 12
KAFKA_VERSION = "4.4.0"
LADDER = [5800, 8700, 11600, 14500, 17400, 23000]
log = driver.logger("bench")
# The orderflow binary of each orderflow-like system (the baseline is added by --baseline).
BINARIES = {"orderflow": ORDERFLOW, "orderflow-memory": ORDERFLOW,
            "orderflow-traces-1pct": ORDERFLOW, "orderflow-traces-all": ORDERFLOW}
# orderflow with traces on: the share of requests (none carries a trace context) that start one.
TRACED = {"orderflow-traces-1pct": "0.01", "orderflow-traces-all": "1"}
TRACE_SYSTEMS = ["orderflow", "orderflow-traces-1pct", "orderflow-traces-all"]
# The Jaeger the traced passes export to (deploy/local/jaeger.sh; OTLP/HTTP on the port after).
JAEGER_PORT = int(os.environ.get("ORDERFLOW_BENCH_JAEGER_PORT", "24317"))
JAEGER_ENV = dict(os.environ, JAEGER_PORT=str(JAEGER_PORT), JAEGER_DATA_DIR=str(driver.ROOT / ".jaeger" / f"bench-{JAEGER_PORT}"))
# The state backend of each orderflow system (the baseline's binary may predate the setting).
BACKENDS = {"orderflow": "disk", "orderflow-memory": "memory", "orderflow-traces-1pct": "disk", "orderflow-traces-all": "disk"}


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def bench_json(prefix, *args, timeout=900):
    out = run([BENCH, "--bootstrap", BOOTSTRAP, "--prefix", prefix, "--partitions", str(PARTITIONS), *args], timeout=timeout,
              env=dict(os.environ, RUST_LOG="warn"))
    return json.loads(out.strip().splitlines()[-1])


def topic_env(prefix, binary=ORDERFLOW):
    """orderflow's environment for the topic set `prefix`. A binary from another commit may predate
    topics.prefix: it gets the five names spelled out."""
    env = driver.orderflow_env(BOOTSTRAP, prefix, PARTITIONS, instance="bench", RUST_LOG="warn")
    if binary != ORDERFLOW:
        del env["ORDERFLOW_TOPICS__PREFIX"]
        for key, name in {"REQUESTS": "order-transition-requests", "STATE": "order-state", "ACCEPTED": "order-transitions",
                          "REJECTED": "order-transition-rejections", "DEAD_LETTERS": "order-transition-requests-dlq"}.items():
            env[f"ORDERFLOW_TOPICS__{key}"] = prefix + name
    return env


def delete_topics(prefix):
    """Deletes a pass's topics: a broker holding every earlier pass's logs slows down run after run."""
    KAFKA.script("tool", "topics", "--bootstrap-server", BOOTSTRAP, "--delete", "--topic", f"{prefix}.*", check=False)


def children_cpu_seconds():
    """CPU time of the children this process has waited for (a run's delta is what it spent)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def streams_command(prefix, commit_ms, store):
    return ["bash", "bench/kafka-streams/run.sh", "--bootstrap", BOOTSTRAP, "--prefix", prefix, "--commit-ms", str(commit_ms),
            "--threads", "1", "--store", store, "--state-dir", f"/tmp/orderflow-streams-{prefix}"]


def start(system, prefix, count, config):
    """Starts `system` on the preloaded topic set `prefix`."""
    if system == "pipe":
        cmd = [BENCH, "--bootstrap", BOOTSTRAP, "--prefix", prefix, "--partitions", str(PARTITIONS), "pipe", "--count", str(count)]
        env = dict(os.environ, RUST_LOG="warn")
    elif system == "java-pipe":
        cmd, env = ["bash", "bench/kafka-streams/run.sh", "--pipe", "--bootstrap", BOOTSTRAP, "--prefix", prefix], dict(os.environ)
    elif system in BINARIES:
        binary = BINARIES[system]
        cmd, env = [binary, "run"], dict(topic_env(prefix, binary), ORDERFLOW_PROCESSOR__BATCH_MAX_WAIT_MS="20")
        if system in BACKENDS:
            env["ORDERFLOW_STATE__BACKEND"] = BACKENDS[system]
            env["ORDERFLOW_STATE__DIR"] = str(root / "target" / "bench-state" / prefix.rstrip("-."))
        if system in TRACED:
            env.update(ORDERFLOW_TRACES__ENABLED="true", ORDERFLOW_TRACES__ROOT_SAMPLE_RATIO=TRACED[system],
                       OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{JAEGER_PORT + 1}", OTEL_SERVICE_NAME="orderflow-bench")
        env["ORDERFLOW_OPS__LISTEN"] = f"127.0.0.1:{driver.free_port()}"
    elif system == "streams-default":
        cmd, env = streams_command(prefix, 100, "rocksdb"), dict(os.environ)
    elif system == "streams-best":
        cmd, env = streams_command(prefix, config["streams_best_ms"], "rocksdb"), dict(os.environ)
    elif system == "streams-memory":
        cmd, env = streams_command(prefix, config["streams_best_ms"], "memory"), dict(os.environ)
    elif system.startswith("streams-"):
        cmd, env = streams_command(prefix, int(system.split("-")[1]), "rocksdb"), dict(os.environ)
    else:
        raise ValueError(system)
    process = driver.start(cmd, env)
    process.ops_listen = env.get("ORDERFLOW_OPS__LISTEN")
    return process


class CpuSampler:
    """Samples the CPU time of some processes every 100 ms, to cut it to a span afterwards."""

    def __init__(self, pids):
        self.pids = pids
        self.samples = []  # (unix ms, [cpu seconds per pid])
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop_flag.is_set():
            self.samples.append((time.time() * 1000, [driver.cpu_seconds(p) for p in self.pids]))
            time.sleep(0.1)

    def stop(self):
        self.stop_flag.set()
        self.thread.join()

    def between(self, first_ms, last_ms):
        """CPU seconds each process used from `first_ms` to `last_ms` (interpolated between samples)."""
        def at(t, i):
            points = [(ms, cpu[i]) for ms, cpu in self.samples if cpu[i] is not None]
            if not points:
                return None
            before = [p for p in points if p[0] <= t]
            after = [p for p in points if p[0] >= t]
            if not before:
                return after[0][1]
            if not after:
                return before[-1][1]
            (t0, c0), (t1, c1) = before[-1], after[0]
            return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)
        used = []
        for i in range(len(self.pids)):
            a, b = at(first_ms, i), at(last_ms, i)
            used.append(None if a is None or b is None else max(b - a, 0.0))
        return used


def one_pass(system, requests, config):
    """Preloads `requests` into a fresh topic set and times `system` through them: the await
    result, with the CPU-seconds per request of the system and of the broker over the span from
    the first to the last outcome."""
    prefix = f"t{uuid.uuid4().hex[:6]}-"
    bench_json(prefix, "preload", "--requests", str(requests))
    waiter = subprocess.Popen([BENCH, "--bootstrap", BOOTSTRAP, "--prefix", prefix, "--partitions", str(PARTITIONS), "await",
                               "--count", str(requests)], stdout=subprocess.PIPE, text=True, env=dict(os.environ, RUST_LOG="warn"))
    process = start(system, prefix, requests, config)
    jaeger = [jaeger_pid()] if system in TRACED else []
    sampler = CpuSampler([process.pid] + KAFKA.pids() + jaeger)
    spans = None
    try:
        out, _ = waiter.communicate(timeout=900)
        if system in TRACED:
            spans = span_counts(process)
    finally:
        sampler.stop()
        driver.stop(process)
        if system.startswith("streams-"):
            subprocess.run(["rm", "-rf", f"/tmp/orderflow-streams-{prefix}"])
        delete_topics(prefix)
    result = json.loads(out.strip().splitlines()[-1])
    used = sampler.between(result["first_unix_ms"], result["last_unix_ms"])
    outcomes = max(result["outcomes"], 1)
    result["cpu_per_request_us"] = None if used[0] is None else used[0] / outcomes * 1e6
    broker = [u for u in used[1:len(used) - len(jaeger)] if u is not None]
    result["broker_cpu_per_request_us"] = sum(broker) / outcomes * 1e6 if broker else None
    if jaeger:
        result["jaeger_cpu_per_request_us"] = None if used[-1] is None else used[-1] / outcomes * 1e6
        result["spans"] = spans
    return result


def jaeger_pid():
    """The bench Jaeger's pid (its CPU is the trace backend's cost)."""
    return int((pathlib.Path(JAEGER_ENV["JAEGER_DATA_DIR"]) / "jaeger.pid").read_text().strip())


def span_counts(process):
    """Spans the traced orderflow exported and dropped, from its /metrics, once every outcome is
    visible (the spans of its last transactions may still be queued: they count once exported)."""
    time.sleep(0.5)
    counts = {}
    try:
        with urllib.request.urlopen(f"http://{process.ops_listen}/metrics", timeout=10) as answer:
            for line in answer.read().decode().splitlines():
                for key in ("exported", "dropped"):
                    if line.startswith(f"orderflow_trace_spans_{key}_total "):
                        counts[key] = int(float(line.split()[1]))
    except OSError as e:
        log(f"cannot read the traced pass's span counts: {e}")
    return counts


def trace_markdown(context, passes):
    """The tracing-cost section: orderflow with traces off, on for 1% and for every request."""
    lines = [f"Run {context['date']}, `{context['command']}`, {context['machine']}: {context['requests']:,} preloaded "
             f"requests (no trace context: `traces.root_sample_ratio` picks the share that starts a trace), "
             f"{len(passes['orderflow'])} ABBA rounds after a warm-up pass each, disk backend, spans exported over OTLP/HTTP "
             f"to a local Jaeger v2 (in-memory storage) on the same two cores.", "",
             "| orderflow | outcomes/s (median) | range | CPU µs/request | broker CPU µs/request | Jaeger CPU µs/request | spans exported / dropped (last pass) |",
             "|---|---|---|---|---|---|---|"]
    for system in TRACE_SYSTEMS:
        rs = passes[system]
        median = lambda key: (summary([r.get(key) for r in rs]) or {}).get("median")  # noqa: E731
        rate = summary([r["rate"] for r in rs])
        spans = rs[-1].get("spans") or {}
        label = {"orderflow": "traces off", "orderflow-traces-1pct": "traces on, 1% sampled",
                 "orderflow-traces-all": "traces on, every request sampled"}[system]
        jaeger = median("jaeger_cpu_per_request_us")
        lines.append(f"| {label} | {rate['median']:,.0f} | {rate['min']:,.0f}–{rate['max']:,.0f} | "
                     f"{fmt_us(median('cpu_per_request_us'))} | {fmt_us(median('broker_cpu_per_request_us'))} | "
                     f"{'—' if jaeger is None else fmt_us(jaeger)} | {spans.get('exported', '—')} / {spans.get('dropped', '—')} |")
    lines.append("")
    for system, what in (("orderflow-traces-1pct", "1% sampled / off (goal ≥ 0.95)"), ("orderflow-traces-all", "every request sampled / off")):
        r = ratios(passes, system, "orderflow")
        if r:
            lines.append(f"- throughput, {what}: **{r['median']:.2f}** ({r['min']:.2f}–{r['max']:.2f}, {r['n']} rounds)")
    return "\n".join(lines)


def calibrate_streams(requests, config, candidates):
    """Kafka Streams' best commit interval on this broker: one warm pass at each candidate."""
    rates = {}
    for ms in candidates:
        rates[ms] = one_pass(f"streams-{ms}", requests, config)["rate"]
        log(f"Kafka Streams at commit.interval.ms={ms}: {rates[ms]:,.0f} outcomes/s")
    best = max(rates, key=rates.get)
    log(f"Kafka Streams' best measured commit interval: {best} ms")
    return best, rates


def throughput(systems, requests, rounds, config):
    """Untimed warm-up passes, then `rounds` rounds of every system once, in ABBA order."""
    for system in systems:
        log(f"warm-up {system}: {one_pass(system, requests, config)['rate']:,.0f} outcomes/s (not counted)")
    passes = {s: [] for s in systems}
    for n in range(rounds):
        order = systems if n % 2 == 0 else list(reversed(systems))
        for system in order:
            result = one_pass(system, requests, config)
            passes[system].append(result)
            log(f"round {n + 1}/{rounds} {system}: {result['rate']:,.0f} outcomes/s, "
                f"{fmt_us(result['cpu_per_request_us'])} µs CPU/request (broker {fmt_us(result['broker_cpu_per_request_us'])}) "
                f"{result['by_topic']}")
    return passes


def fmt_us(value):
    return "?" if value is None else f"{value:.1f}"


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def ratios(passes, numerator, denominator, key="rate"):
    """Per-round ratios numerator/denominator of `key`, summarised."""
    pairs = zip(passes[numerator], passes[denominator])
    return summary([a[key] / b[key] for a, b in pairs if a.get(key) and b.get(key)])


def orderflow_latency(rate, seconds, warmup, binary=ORDERFLOW, backend="disk"):
    """Loadgen at `rate` against a fresh orderflow (state.backend `backend`) on fresh topics:
    loadgen's report, with loadgen's own CPU-seconds per request."""
    prefix = f"l{uuid.uuid4().hex[:6]}-"
    env = topic_env(prefix, binary)
    run([binary, "topics", "create"], env=env)
    port = driver.free_port()
    run_env = dict(env, ORDERFLOW_OPS__LISTEN=f"127.0.0.1:{port}")
    if binary == ORDERFLOW:
        run_env["ORDERFLOW_STATE__DIR"] = str(root / "target" / "bench-state" / prefix.rstrip("-."))
        run_env["ORDERFLOW_STATE__BACKEND"] = backend
    process = driver.start([binary, "run"], run_env)
    try:
        driver.wait_ready(port)
        orders = max(1000, int(rate * (seconds + warmup) / 4.85))
        before = children_cpu_seconds()
        try:
            out = run([ORDERFLOW, "loadgen", "--orders", str(orders), "--rate", str(rate), "--seed", "5", "--no-progress",
                       "--json", "--warmup-secs", str(warmup), "--wait-secs", "120"], env=env,
                      timeout=(seconds + warmup) * 4 + 180)
            report = json.loads(out.strip().splitlines()[-1])
        except subprocess.CalledProcessError as e:
            report = json.loads(e.stdout.strip().splitlines()[-1]) if e.stdout.strip() else {"error": e.stderr[-500:]}
        cpu = children_cpu_seconds() - before
        report["loadgen_cpu_per_request_us"] = cpu / max(report.get("sent", 0), 1) * 1e6
        return report
    finally:
        driver.stop(process)
        delete_topics(prefix)


def bench_latency(rate, seconds, warmup, mode):
    """The pipe (`--spread`, its copies spread over the topics orderflow's outcomes use) or the
    no-transaction floor (`--floor`) fed the same paced load; the process CPU (producer, pipe and
    reader together) per request."""
    prefix = f"p{uuid.uuid4().hex[:6]}-"
    before = children_cpu_seconds()
    try:
        report = bench_json(prefix, "pipe-latency", "--rate", str(rate), "--seconds", str(seconds),
                            "--warmup-secs", str(warmup), mode, timeout=(seconds + warmup) * 4 + 180)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
        report = {"error": str(e)[-300:]}
    finally:
        delete_topics(prefix)
    cpu = children_cpu_seconds() - before
    report["process_cpu_per_request_us"] = cpu / max(report.get("sent", 0), 1) * 1e6
    return report


def held(report, rate):
    """Every outcome, at least 95% of the rate, p99 at most 1 s."""
    if "error" in report:
        return False
    missing = report.get("missing", 0)
    achieved = report.get("outcome_rate", report.get("send_rate", 0))
    return bool(missing == 0 and achieved >= 0.95 * rate and report.get("latency_ms", {}).get("p99", 10**9) <= 1000)


def ladder(rates, seconds, warmup, repeats_first):
    """At each rate, orderflow, the pipe and the floor in ABBA order (the first rate repeated)."""
    systems = ["orderflow", "pipe", "floor"]
    results = []
    for index, rate in enumerate(rates):
        runs = {s: [] for s in systems}
        for n in range(repeats_first if index == 0 else 1):
            for system in (systems if n % 2 == 0 else list(reversed(systems))):
                if system == "orderflow":
                    report = orderflow_latency(rate, seconds, warmup)
                else:
                    report = bench_latency(rate, seconds, warmup, "--spread" if system == "pipe" else "--floor")
                report["held"] = held(report, rate)
                runs[system].append(report)
                log(f"latency at {rate:,}/s {system}: {report.get('latency_ms', report.get('error'))} held={report['held']}")
        row = {"rate": rate, "runs": runs}
        for system in systems:
            reports = [r for r in runs[system] if r.get("latency_ms")]
            row[system] = {
                "latency_ms": {p: statistics.median(r["latency_ms"][p] for r in reports) for p in ("p50", "p99", "p99.9", "max")}
                if reports else None,
                "held": all(r["held"] for r in runs[system]),
                "runs": len(runs[system]),
            }
        orderflow_runs = [r for r in runs["orderflow"] if r.get("latency_ms")]
        row["orderflow"]["outcome_rate"] = statistics.median(r.get("outcome_rate", 0) for r in orderflow_runs) if orderflow_runs else None
        row["orderflow"]["loadgen_cpu_per_request_us"] = statistics.median(
            r["loadgen_cpu_per_request_us"] for r in runs["orderflow"]) if runs["orderflow"] else None
        for system in ("pipe", "floor"):
            row[system]["process_cpu_per_request_us"] = statistics.median(
                r["process_cpu_per_request_us"] for r in runs[system]) if runs[system] else None
        results.append(row)
    return results


def restore_medians(orders, runs):
    """Restore `orders` orders `runs` times (fresh topics each time); the median of each figure,
    with every run's figures kept beside it."""
    results = [bench_json(f"r{uuid.uuid4().hex[:6]}-", "restore", "--orders", str(orders)) for _ in range(runs)]
    for r in results:
        log(f"restore run: {r}")
    keys = [k for k, v in results[0].items() if isinstance(v, (int, float))]
    medians = {k: statistics.median(r[k] for r in results) for k in keys}
    medians["runs"] = results
    return medians


def restart_bench(orders, rounds):
    """A restart of a pod holding `orders` orders, memory backend against disk backend, alternating:
    assignment → every partition resumed (`orderflow-bench restart`: the processor's restore code
    in-process, a tail of state records written before each round) and process start → /readyz
    (bench/restart_readyz.py: a fresh `orderflow run` per start, as a pod restart is)."""
    prefix = f"rs{uuid.uuid4().hex[:6]}-"
    state_dir = "target/bench-restart-state"
    in_process = bench_json(prefix, "restart", "--orders", str(orders), "--rounds", str(rounds), "--dir", state_dir,
                            timeout=3600)
    log(f"restart, in-process: {in_process}")
    out = subprocess.run([sys.executable, "bench/restart_readyz.py", "--bootstrap", BOOTSTRAP, "--prefix", prefix,
                          "--partitions", str(PARTITIONS), "--dir", state_dir, "--rounds", str(rounds)],
                         check=True, text=True, stdout=subprocess.PIPE, timeout=3600).stdout
    readyz = json.loads(out.strip().splitlines()[-1])
    log(f"restart, process start → /readyz: {readyz}")
    delete_topics(prefix)
    subprocess.run(["rm", "-rf", str(root / state_dir)], check=False)
    return {"orders": orders, "rounds": rounds, "in_process": in_process, "readyz": readyz}


def restart_markdown(context, restart):
    runs = restart["in_process"]["runs"]
    by_backend = {b: [r["seconds"] for r in runs if r["backend"] == b] for b in ("memory", "disk")}
    opens = [r["open_seconds"] for r in runs if r["backend"] == "disk"]
    readyz = restart["readyz"]

    def cells(values):
        return " / ".join(f"{v:.2f}" for v in values) + f" s (median {statistics.median(values):.2f})"

    def ratio(memory, disk):
        return f"{statistics.median(memory) / statistics.median(disk):.1f}×"

    p = restart["in_process"]
    disk_bytes = p["store_disk_bytes"]
    return "\n".join([
        f"Measured {context['date']} with `{context['command']}` on {context['machine']}: {p['orders']:,} orders held "
        f"(typical live orders, confirmed, two requests remembered), {p['partitions']} partitions, "
        f"{restart['rounds']} rounds alternating memory and disk backend (each round reverses the last), "
        f"a tail of {p['tail']:,} state records written before each in-process round.",
        "",
        "| restart | memory backend: restore from the topic | disk backend: restore from the checkpoint | memory ÷ disk |",
        "|---|---|---|---|",
        f"| assignment → every partition resumed (`orderflow-bench restart`, in-process) | {cells(by_backend['memory'])} | "
        f"{cells(by_backend['disk'])} | {ratio(by_backend['memory'], by_backend['disk'])} |",
        f"| process start → `/readyz` (`bench/restart_readyz.py`, a fresh process per start) | {cells(readyz['memory'])} | "
        f"{cells(readyz['disk'])} | {ratio(readyz['memory'], readyz['disk'])} |",
        "",
        f"First start of the disk backend (a full restore that builds the store): {p['first_disk_start_seconds']:.1f} s. "
        f"Store reopened (every partition) in {min(opens):.2f}–{max(opens):.2f} s. Store on disk: "
        f"{disk_bytes / 1e6:.0f} MB, {disk_bytes / p['orders']:.0f} B per order.",
    ])


def build_baseline(rev):
    """orderflow built from commit `rev` in a worktree of its own (its own target directory, kept
    under ~/.cache/orderflow so a second run reuses it): the path of its binary."""
    sha = run(["git", "rev-parse", "--short", rev]).strip()
    cache = pathlib.Path(os.environ.get("ORDERFLOW_CACHE", pathlib.Path.home() / ".cache" / "orderflow"))
    tree = cache / f"baseline-{sha}"
    if not tree.exists():
        run(["git", "worktree", "add", "--detach", str(tree), sha])
    log(f"building the baseline orderflow at {sha} in {tree}")
    subprocess.run(["cargo", "build", "--release", "--bin", "orderflow"], cwd=tree, check=True,
                   env=dict(os.environ, CARGO_TARGET_DIR=str(cache / "baseline-target")))
    return str(cache / "baseline-target" / "release" / "orderflow"), sha


def markdown(context, passes, config, latencies, restore):
    lines = [f"Measured {context['date']} with `{context['command']}` on {context['machine']}: one Kafka {KAFKA_VERSION} broker "
             f"(KRaft, single node, loopback), every system on the same 2 cores, one at a time. {context['requests']:,} preloaded "
             f"requests per pass, {PARTITIONS} partitions; an untimed warm-up pass of every system (the JVMs too), then "
             f"{context['rounds']} rounds of every system once in ABBA order (each round reverses the last). Rates are outcomes/s "
             "from the first to the last outcome; CPU is the system's process and the broker's, cut to the same span, per request. "
             f"The broker's transaction.version is {context.get('transaction_version')}. "
             "orderflow and both pipes batch ≤ 2000 records / 20 ms; the Java pipe polls ≤ 2000 records; Kafka Streams runs "
             "exactly_once_v2, one stream thread, max.poll.records=2000, at commit.interval.ms=100 (its EOS default) and at "
             f"{config['streams_best_ms']} ms (its best of {config.get('streams_calibration') or 'the last calibration'}), "
             "with RocksDB and with an in-memory store.", "",
             "### Throughput (exactly once, preloaded input)", "",
             "| system | median outcomes/s (range) | CPU µs/request: process | broker | outcome counts |", "|---|---|---|---|---|"]
    for system, results in passes.items():
        rate = summary([r["rate"] for r in results])
        cpu = summary([r["cpu_per_request_us"] for r in results])
        broker = summary([r["broker_cpu_per_request_us"] for r in results])
        lines.append(f"| {LABELS.get(system, system)} | {rate['median']:,.0f} ({rate['min']:,.0f}–{rate['max']:,.0f}) | "
                     f"{cpu['median']:.1f} | {broker['median']:.1f} | {results[-1]['by_topic']} |" if rate and cpu and broker
                     else f"| {system} | no result | | | |")
    lines += ["", "Ratios, median of the per-round ratios (range, rounds):", ""]
    for (a, b, key, what, goal) in RATIO_LINES:
        if a in passes and b in passes:
            r = ratios(passes, a, b, key)
            if r:
                lines.append(f"- {what}: **{r['median']:.2f}** ({r['min']:.2f}–{r['max']:.2f}, {r['n']} rounds){goal}")
    lines += ["", "### Live load: paced rates (request's produce timestamp → outcome visible to a read_committed reader)", "",
              f"Each run {context['latency_seconds']} s after a {context['latency_warmup']} s warm-up on fresh topics; orderflow "
              "is fed by `orderflow loadgen` (its defaults: ≤ 2000 records / 5 ms), the pipe by `orderflow-bench pipe-latency "
              "--spread` (copies spread over the topics orderflow's outcomes use), the floor is the requests themselves produced "
              "and read back read_committed, no transactions. At the first rate the three alternate "
              f"{context['latency_repeats']} times (medians). CPU: loadgen's own, per request sent; the pipe's and the floor's "
              "single process (producer, pipe and reader together).", "",
              "| rate/s | orderflow p50 / p99 / p99.9 ms | held | pipe p50 / p99 / p99.9 | held | floor p50 / p99 / p99.9 | held | "
              "orderflow outcome rate | loadgen CPU µs/req |", "|---|---|---|---|---|---|---|---|---|"]

    def pct(entry):
        l = (entry or {}).get("latency_ms") or {}
        return f"{l.get('p50', '?'):.0f} / {l.get('p99', '?'):.0f} / {l.get('p99.9', '?'):.0f}" if l else "—"
    for row in latencies:
        o = row["orderflow"]
        lines.append(f"| {row['rate']:,} | {pct(o)} | {'yes' if o['held'] else 'no'} | {pct(row['pipe'])} | "
                     f"{'yes' if row['pipe']['held'] else 'no'} | {pct(row['floor'])} | {'yes' if row['floor']['held'] else 'no'} | "
                     f"{(o.get('outcome_rate') or 0):,.0f} | {fmt_us(o.get('loadgen_cpu_per_request_us'))} |")
    lines.append("")
    for system in ("orderflow", "pipe", "floor"):
        held_rates = [row["rate"] for row in latencies if row[system]["held"]]
        lines.append(f"- highest rate held by {system}: **{max(held_rates):,}/s**" if held_rates
                     else f"- highest rate held by {system}: none of the ladder")
    if restore:
        lines += ["", "### Restore", "",
                  f"- {restore['orders']:,.0f} orders restored from the state topic in {restore['seconds']:.2f} s: "
                  f"**{restore['orders_per_second']:,.0f} orders/s**",
                  f"- resident memory: **{restore['resident_mb_per_million_orders']:.0f} MB per million cached orders**; "
                  f"delivered orders with their whole life remembered: {restore['delivered_packed_mb_per_million_orders']:.0f} MB "
                  f"per million; deadline index {restore['deadline_index_mb_per_million_orders']:.0f} MB per million",
                  f"- medians of {len(restore['runs'])} restores"]
    return "\n".join(lines)


LABELS = {
    "orderflow": "orderflow (state.backend = disk, the default)",
    "orderflow-memory": "orderflow, state.backend = memory",
    "pipe": "pipe (orderflow's batch window and transaction runner, librdkafka)",
    "java-pipe": "Java pipe (Kafka 4.4 clients)",
    "streams-default": "Kafka Streams, commit.interval.ms=100, RocksDB",
    "streams-best": "Kafka Streams, best commit interval, RocksDB",
    "streams-memory": "Kafka Streams, best commit interval, in-memory store (like for like with orderflow's caches)",
    "baseline": "orderflow at the baseline commit",
}
RATIO_LINES = [
    ("orderflow", "orderflow-memory", "rate", "orderflow disk backend / memory backend, throughput", " (goal ≥ 0.9)"),
    ("orderflow", "orderflow-memory", "cpu_per_request_us", "orderflow disk backend / memory backend, CPU per request", ""),
    ("orderflow", "pipe", "rate", "orderflow / pipe, throughput", ""),
    ("orderflow", "pipe", "cpu_per_request_us", "orderflow / pipe, CPU per request", " (goal ≤ 1.25)"),
    ("pipe", "java-pipe", "rate", "pipe (librdkafka) / Java pipe, throughput", ""),
    ("orderflow", "streams-default", "rate", "orderflow / Kafka Streams at its EOS default", ""),
    ("orderflow", "streams-best", "rate", "orderflow / Kafka Streams at its best setting, RocksDB", " (goal ≥ 2)"),
    ("orderflow", "streams-memory", "rate", "orderflow / Kafka Streams at its best setting, in-memory store", " (goal ≥ 2: like for like today)"),
    ("orderflow", "baseline", "rate", "orderflow / orderflow at the baseline commit, throughput", ""),
    ("orderflow", "baseline", "cpu_per_request_us", "orderflow / baseline, CPU per request", ""),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="headline ratios only (orderflow, pipe, Kafka Streams at its "
                        "best setting; 5 rounds; the first ladder rate once): under 10 minutes")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--baseline", help="also run orderflow built from this commit, alternating with the current build")
    parser.add_argument("--streams-commit-candidates", default="100,500,1000,2000")
    parser.add_argument("--latency-rates", default=None)
    parser.add_argument("--latency-seconds", type=int, default=20)
    parser.add_argument("--latency-warmup-seconds", type=int, default=5)
    parser.add_argument("--latency-repeats", type=int, default=None, help="ABBA repeats at the first rate")
    parser.add_argument("--restore-orders", type=int, default=None)
    parser.add_argument("--restart-orders", type=int, default=None,
                        help="orders held by the restarted pod (default 10,000,000; 0 skips the restart benchmark)")
    parser.add_argument("--aged-orders", type=int, default=None,
                        help="orders of the realistic-access benchmark (bench/aged_access.py; default 10,000,000; "
                        "0 skips it)")
    parser.add_argument("--traces", action="store_true", help="only the cost of traces: orderflow with traces off, on "
                        "for 1% of requests and for all, ABBA, exporting to a local Jaeger (deploy/local/jaeger.sh)")
    parser.add_argument("--no-write", action="store_true", help="print, do not rewrite docs/benchmarks.md")
    args = parser.parse_args()
    quick = args.quick
    requests = args.requests or (150_000 if quick else 200_000)
    rounds = args.rounds or (5 if quick else 7)
    rates = [int(r) for r in (args.latency_rates or (str(LADDER[0]) if quick else ",".join(map(str, LADDER)))).split(",") if r]
    repeats = args.latency_repeats or (1 if quick else 3)
    restore_orders = args.restore_orders if args.restore_orders is not None else (0 if quick else 1_000_000)
    restart_orders = args.restart_orders if args.restart_orders is not None else (0 if quick else 10_000_000)
    aged_orders = args.aged_orders if args.aged_orders is not None else (0 if quick else 10_000_000)
    make_target = "bench-traces" if args.traces else "bench-quick" if quick else "bench"
    command = f"make {make_target}" if os.environ.get("MAKELEVEL") else "python3 bench/run.py " + " ".join(sys.argv[1:])
    started = time.time()

    log("building release binaries")
    subprocess.run(["cargo", "build", "--release", "--bins"], check=True)
    baseline_sha = None
    if args.baseline:
        BINARIES["baseline"], baseline_sha = build_baseline(args.baseline)
    log("fetching Kafka Streams and the Java clients with Maven")
    subprocess.run(["bash", "bench/kafka-streams/run.sh", "--fetch-only"], check=True)
    last_path = root / "bench" / "last-run.json"
    last = json.loads(last_path.read_text()) if last_path.exists() else {}
    config = {"streams_best_ms": (last.get("streams_best_commit_ms") or 1000)}
    if args.traces:
        systems = list(TRACE_SYSTEMS)
    elif quick:
        systems = ["orderflow", "orderflow-memory", "pipe", "streams-best"]
    else:
        systems = ["orderflow", "orderflow-memory", "pipe", "java-pipe", "streams-default", "streams-best", "streams-memory",
                   "orderflow-traces-1pct", "orderflow-traces-all"]
    traced = any(s in TRACED for s in systems)
    if args.baseline:
        systems.append("baseline")
    if traced:
        log(f"starting Jaeger on 127.0.0.1:{JAEGER_PORT} for the traced passes (built once with Go)")
        subprocess.run(["bash", "deploy/local/jaeger.sh", "up"], check=True, env=JAEGER_ENV)
    log(f"starting a fresh broker on {BOOTSTRAP}")
    KAFKA.up()
    features = KAFKA.script("tool", "features", "--bootstrap-server", BOOTSTRAP, "describe", check=False).stdout
    transaction_version = next((line.split("FinalizedVersionLevel:")[1].split()[0] for line in features.splitlines()
                                if "Feature: transaction.version" in line and "FinalizedVersionLevel:" in line), None)
    log(f"broker transaction.version = {transaction_version}")
    if args.traces:
        quick = True
        rates, restore_orders, restart_orders, aged_orders = [], 0, 0, 0
    try:
        if not quick:
            # Kafka Streams warms up on the first candidate; the calibration passes are not counted.
            one_pass("streams-100", requests, config)
            best, calibration = calibrate_streams(requests, config, [int(c) for c in args.streams_commit_candidates.split(",")])
            config["streams_best_ms"], config["streams_calibration"] = best, calibration
        passes = throughput(systems, requests, rounds, config)
        latencies = ladder(rates, args.latency_seconds, args.latency_warmup_seconds, repeats)
        restore = restore_medians(restore_orders, 3) if restore_orders else None
        restart = restart_bench(restart_orders, 3) if restart_orders else None
        aged = aged_access.run(KAFKA, aged_orders, 3) if aged_orders else None
    finally:
        KAFKA.down()
        if traced:
            subprocess.run(["bash", "deploy/local/jaeger.sh", "down", "--purge"], env=JAEGER_ENV)

    cpu = run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]).strip() or platform.processor()
    machine = f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
    context = {"date": time.strftime("%Y-%m-%d"), "command": command, "machine": machine, "requests": requests, "rounds": rounds,
               "latency_seconds": args.latency_seconds, "latency_warmup": args.latency_warmup_seconds,
               "latency_repeats": repeats, "minutes": round((time.time() - started) / 60, 1), "baseline": baseline_sha,
               "transaction_version": transaction_version}
    traces_text = trace_markdown(context, passes) if traced else None
    if args.traces:
        print(traces_text)
        if not args.no_write:
            record = {**context, "systems": {s: passes[s] for s in systems},
                      "ratios": {f"{s}/orderflow/rate": ratios(passes, s, "orderflow") for s in TRACED}}
            (root / "bench" / "last-traces.json").write_text(json.dumps(record, indent=2) + "\n")
            driver.replace_between(root / "docs" / "benchmarks.md", "traces-run", traces_text)
            log("wrote docs/benchmarks.md (traces-run) and bench/last-traces.json")
        return
    text = markdown(context, passes, config, latencies, restore)
    text += f"\n\nThe whole run took {context['minutes']} minutes."
    print(text)
    if traces_text:
        print(traces_text)
    per_system = {s: {"rate": summary([r["rate"] for r in rs]),
                      "cpu_per_request_us": summary([r["cpu_per_request_us"] for r in rs]),
                      "broker_cpu_per_request_us": summary([r["broker_cpu_per_request_us"] for r in rs]),
                      "outcome_counts": rs[-1]["by_topic"] if rs else None,
                      "passes": rs} for s, rs in passes.items()}
    record = {**context, "quick": quick, "systems": per_system,
              "ratios": {f"{a}/{b}/{key}": ratios(passes, a, b, key) for a, b, key, _, _ in RATIO_LINES
                         if a in passes and b in passes},
              "streams_best_commit_ms": config["streams_best_ms"], "streams_calibration": config.get("streams_calibration"),
              "latency": latencies, "restore": restore, "restart": restart, "aged": aged,
              "per_pod_rate": per_system["orderflow"]["rate"]["median"],
              "highest_rate_held": {s: max([row["rate"] for row in latencies if row[s]["held"]], default=None)
                                    for s in ("orderflow", "pipe", "floor")}}
    if not args.no_write:
        if quick and last and not last.get("quick"):
            # A quick run does not replace the full run's record: it goes beside it.
            last_path = root / "bench" / "last-quick-run.json"
        last_path.write_text(json.dumps(record, indent=2) + "\n")
        if not quick:
            driver.replace_between(root / "docs" / "benchmarks.md", "system-bench", text)
        if restart:
            driver.replace_between(root / "docs" / "benchmarks.md", "restart-run", restart_markdown(context, restart))
        if aged:
            driver.replace_between(root / "docs" / "benchmarks.md", "aged-run", aged_access.markdown(aged, command))
        if traces_text:
            driver.replace_between(root / "docs" / "benchmarks.md", "traces-run", traces_text)
        if quick:
            driver.replace_between(root / "docs" / "benchmarks.md", "quick-bench", text)
        log(f"wrote docs/benchmarks.md and {last_path.relative_to(root)}")


if __name__ == "__main__":
    main()
