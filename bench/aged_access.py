#!/usr/bin/env python3
"""Realistic access (`make bench-aged`, and part of `make bench`): the disk backend with a memory
budget against the memory backend, on a state topic of 10 M orders aged over 35 days of the
default lifecycle (bench/aged.rs).

Every pass is a fresh `orderflow run` (as a pod restart is) on the shared state topic and a fresh
requests topic holding one slot's requests: mostly the next step of orders in transit (the last
three days), new orders created and confirmed, a few late returns of delivered orders (skewed);
or one request for every fifth order whatever its age (uniform). The memory backend restores the
whole topic at each start, the disk backend its tail from the checkpoint; the rate is taken from
the first to the last outcome, so neither start is timed. Warm-up passes first (the disk
backend's first start fills its store from the topic), then ABBA rounds; then one skewed pass
with a 16 MB budget (the fixed overhead: anonymous memory beyond what such a budget can hold),
and uniform passes (memory; disk with a warm page cache; disk after dropping the page cache).

For each pass: outcomes/s, CPU-seconds per request, the process's anonymous memory (RssAnon, from
/proc) at its highest while it decided, its file-backed resident memory, the store reads
(`orderflow_store_reads_total`: lookups that missed memory) and the bytes it read from the device
(/proc/PID/io read_bytes).
"""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "deploy" / "local"))
import driver  # noqa: E402

root = driver.ROOT
log = driver.logger("bench-aged")
PARTITIONS = 12
SLOTS = 12  # bench/aged.rs's SLOTS
NAMES = {"REQUESTS": "order-transition-requests", "ACCEPTED": "order-transitions",
         "REJECTED": "order-transition-rejections", "DEAD_LETTERS": "order-transition-requests-dlq"}
STATE_DIR = root / "target" / "bench-aged-state"
SMALL_BUDGET_MB = 16


def proc_status(pid):
    """RssAnon and RssFile of a live process in bytes, from /proc; None once gone."""
    try:
        fields = dict(line.split(":", 1) for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines())
        return {k: int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")}
    except (OSError, KeyError, ValueError):
        return None


def read_bytes(pid):
    try:
        for line in pathlib.Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Sampler:
    """RssAnon, RssFile and CPU seconds of one process every 100 ms."""

    def __init__(self, pid):
        self.pid, self.samples, self.stop_flag = pid, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop_flag.is_set():
            status, cpu = proc_status(self.pid), driver.cpu_seconds(self.pid)
            if status and cpu is not None:
                self.samples.append((time.time() * 1000, status, cpu))
            time.sleep(0.1)

    def stop(self):
        self.stop_flag.set()
        self.thread.join()

    def within(self, first_ms, last_ms):
        inside = [s for s in self.samples if first_ms - 100 <= s[0] <= last_ms + 100] or self.samples[-1:]
        return {"rss_anon_max": max(s[1]["RssAnon"] for s in inside),
                "rss_file_max": max(s[1]["RssFile"] for s in inside),
                "cpu_seconds": inside[-1][2] - inside[0][2] if len(inside) > 1 else None}

    def peak_anon(self):
        return max((s[1]["RssAnon"] for s in self.samples), default=None)


def metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


class Aged:
    def __init__(self, kafka, orders):
        self.kafka, self.bench, self.bootstrap, self.orders = kafka, driver.BENCH, kafka.bootstrap, orders
        self.now_ms = int(time.time() * 1000)
        self.state_prefix = f"as{uuid.uuid4().hex[:6]}-"
        self.perf_dir = None

    def tool(self, prefix, *args, timeout=1800):
        out = subprocess.run([self.bench, "--bootstrap", self.bootstrap, "--prefix", prefix, "--partitions", str(PARTITIONS),
                              *args], check=True, text=True, capture_output=True, timeout=timeout,
                             env=dict(os.environ, RUST_LOG="warn")).stdout
        return json.loads(out.strip().splitlines()[-1])

    def write_state(self):
        shutil.rmtree(STATE_DIR, ignore_errors=True)
        result = self.tool(self.state_prefix, "aged-state", "--orders", str(self.orders), "--now-ms", str(self.now_ms))
        log(f"{result['orders']:,} aged orders written in {result['seconds']:.0f} s")
        return result

    def env(self, prefix, backend, budget_mb, port):
        env = driver.orderflow_env(self.bootstrap, prefix, PARTITIONS, instance="bench", RUST_LOG="warn",
                                   ORDERFLOW_PROCESSOR__BATCH_MAX_WAIT_MS="20", ORDERFLOW_STATE__BACKEND=backend,
                                   ORDERFLOW_STATE__DIR=str(STATE_DIR), ORDERFLOW_STATE__MEMORY_BUDGET_MB=str(budget_mb),
                                   ORDERFLOW_OPS__LISTEN=f"127.0.0.1:{port}")
        # The requests and outcomes are the pass's own, the state topic is shared.
        del env["ORDERFLOW_TOPICS__PREFIX"]
        for key, name in NAMES.items():
            env[f"ORDERFLOW_TOPICS__{key}"] = prefix + name
        env["ORDERFLOW_TOPICS__STATE"] = self.state_prefix + "order-state"
        return env

    def expected(self, slot, access):
        """How many requests pass `slot` sends (`aged-requests --count-only`)."""
        return self.tool("count-", "aged-requests", "--orders", str(self.orders), "--now-ms", str(self.now_ms), "--slot",
                         str(slot), "--access", access, "--count-only")["requests"]

    def one_pass(self, system, slot, access, budget_mb=256, drop_cache=False):
        """One fresh `orderflow run` through slot `slot`'s requests."""
        backend = "memory" if system == "memory" else "disk"
        prefix = f"a{uuid.uuid4().hex[:6]}-"
        args = ["aged-requests", "--orders", str(self.orders), "--now-ms", str(self.now_ms), "--slot", str(slot),
                "--access", access]
        self.tool(prefix, *args, "--topics-only")
        expected = self.expected(slot, access)
        if drop_cache:
            subprocess.run(["sync"], check=True)
            pathlib.Path("/proc/sys/vm/drop_caches").write_text("3\n")
        port = driver.free_port()
        started = time.time()
        process = driver.start([driver.ORDERFLOW, "run"], self.env(prefix, backend, budget_mb, port))
        sampler = Sampler(process.pid)
        waiter = None
        try:
            # The requests come once every partition is restored: the memory backend's restore
            # of the whole topic is not what this measures (the restart benchmark is).
            driver.wait_ready(port, timeout=1800)
            ready_s = time.time() - started
            reads_at_ready = metric(port, "orderflow_store_reads_total")
            waiter = subprocess.Popen([self.bench, "--bootstrap", self.bootstrap, "--prefix", prefix, "--partitions",
                                       str(PARTITIONS), "await", "--count", str(expected),
                                       "--timeout-secs", "1200"],
                                      stdout=subprocess.PIPE, text=True, env=dict(os.environ, RUST_LOG="warn"))
            time.sleep(2)  # the reader has its partitions before the first outcome
            perf = None
            if self.perf_dir:
                perf = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-p", str(process.pid), "-o",
                                         str(self.perf_dir / f"{system}-{access}-{slot}.data")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            count = self.tool(prefix, *args)["requests"]
            assert count == expected, (count, expected)
            out, _ = waiter.communicate(timeout=1500)
            if perf:
                perf.send_signal(2)
                perf.wait()
            reads = metric(port, "orderflow_store_reads_total") - reads_at_ready
            evicted = metric(port, "orderflow_evicted_orders_total")
            device = read_bytes(process.pid)
        finally:
            sampler.stop()
            driver.stop(process)
            if waiter and waiter.poll() is None:
                waiter.kill()
            # A broker holding every earlier pass's logs slows down run after run.
            self.kafka.script("tool", "topics", "--bootstrap-server", self.bootstrap, "--delete", "--topic",
                              f"{prefix}.*", check=False)
        result = json.loads(out.strip().splitlines()[-1])
        within = sampler.within(result["first_unix_ms"], result["last_unix_ms"])
        outcomes = max(result["outcomes"], 1)
        row = {"system": system, "access": access, "slot": slot, "budget_mb": budget_mb if backend == "disk" else None,
               "drop_cache": drop_cache, "requests": count, "rate": result["rate"], "by_topic": result["by_topic"],
               "start_to_ready_s": ready_s,
               "cpu_per_request_us": None if within["cpu_seconds"] is None else within["cpu_seconds"] / outcomes * 1e6,
               "rss_anon_max_mb": within["rss_anon_max"] / 2**20, "rss_file_max_mb": within["rss_file_max"] / 2**20,
               "rss_anon_peak_whole_pass_mb": (sampler.peak_anon() or 0) / 2**20,
               "store_reads": reads, "evicted": evicted, "device_read_bytes": device}
        log(f"{system} {access} slot {slot}: {row['rate']:,.0f} outcomes/s, "
            f"{row['cpu_per_request_us'] or 0:.1f} µs CPU/request, RssAnon {row['rss_anon_max_mb']:.0f} MiB while deciding "
            f"(peak {row['rss_anon_peak_whole_pass_mb']:.0f}), RssFile {row['rss_file_max_mb']:.0f} MiB, "
            f"{reads:,.0f} store reads, {device or 0:,} bytes from the device, {row['by_topic']}")
        return row


def run(kafka, orders, rounds, perf_dir=None):
    """Every pass of the realistic-access benchmark; returns its record."""
    if 2 + 2 * rounds + 4 > SLOTS:
        raise SystemExit(f"--rounds {rounds} needs more than the {SLOTS} slots of bench/aged.rs")
    aged = Aged(kafka, orders)
    aged.perf_dir = perf_dir
    written = aged.write_state()
    slots = iter(range(SLOTS))
    warmup = [aged.one_pass("disk", next(slots), "skewed"), aged.one_pass("memory", next(slots), "skewed")]
    passes = {"disk": [], "memory": []}
    for n in range(rounds):
        for system in (["disk", "memory"] if n % 2 == 0 else ["memory", "disk"]):
            passes[system].append(aged.one_pass(system, next(slots), "skewed"))
    small = aged.one_pass("disk", next(slots), "skewed", budget_mb=SMALL_BUDGET_MB)
    uniform = {"memory": aged.one_pass("memory", next(slots), "uniform"),
               "disk": aged.one_pass("disk", next(slots), "uniform"),
               "disk_cold": aged.one_pass("disk", next(slots), "uniform", drop_cache=True)}
    store_bytes = sum(p.stat().st_size for p in STATE_DIR.rglob("*") if p.is_file())
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    kafka.script("tool", "topics", "--bootstrap-server", kafka.bootstrap, "--delete", "--topic", f"{aged.state_prefix}.*",
                 check=False)
    ratios = [d["rate"] / m["rate"] for d, m in zip(passes["disk"], passes["memory"])]
    record = {"orders": orders, "rounds": rounds, "state_write": written, "warmup": warmup, "passes": passes,
              "ratio_disk_memory": {"median": statistics.median(ratios), "all": ratios},
              "small_budget": small, "uniform": uniform, "store_bytes": store_bytes}
    # The fixed overhead: what a 16 MB budget leaves in anonymous memory beyond its own parts (8 MiB
    # of hot orders, a 4 MiB block cache, the 16 MiB floor of write buffers).
    record["fixed_overhead_mb"] = small["rss_anon_max_mb"] - (SMALL_BUDGET_MB / 2 + SMALL_BUDGET_MB / 4 + 16)
    return record


def markdown(record, command):
    def med(rows, key):
        return statistics.median(r[key] for r in rows)
    p, u = record["passes"], record["uniform"]
    lines = [
        f"Command: `{command}`; {record['orders']:,} orders aged over 35 days, {record['rounds']} ABBA rounds of one "
        f"fresh `orderflow run` per pass (requests per pass: {', '.join(str(r['requests']) for r in p['disk'][:1])}).",
        "",
        "| pass | outcomes/s (median) | CPU µs/request | RssAnon while deciding | RssFile | store reads | bytes read from the device |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, rows in (("skewed, memory backend", p["memory"]), ("skewed, disk backend, 256 MB budget", p["disk"]),
                        (f"skewed, disk backend, {SMALL_BUDGET_MB} MB budget (1 pass)", [record["small_budget"]]),
                        ("uniform, memory backend (1 pass)", [u["memory"]]),
                        ("uniform, disk backend, page cache warm (1 pass)", [u["disk"]]),
                        ("uniform, disk backend, page cache dropped first (1 pass)", [u["disk_cold"]])):
        lines.append(f"| {label} | {med(rows, 'rate'):,.0f} | {med(rows, 'cpu_per_request_us'):.1f} | "
                     f"{med(rows, 'rss_anon_max_mb'):,.0f} MiB | {med(rows, 'rss_file_max_mb'):,.0f} MiB | "
                     f"{med(rows, 'store_reads'):,.0f} | {med(rows, 'device_read_bytes') or 0:,.0f} |")
    r = record["ratio_disk_memory"]
    lines += ["", f"Disk / memory throughput, skewed access: **{r['median']:.2f}** (per round: "
              f"{', '.join(f'{x:.2f}' for x in r['all'])}). Uniform access: "
              f"{u['disk']['rate'] / u['memory']['rate']:.2f} with a warm page cache, "
              f"{u['disk_cold']['rate'] / u['memory']['rate']:.2f} after dropping it. "
              f"Fixed overhead (RssAnon at a {SMALL_BUDGET_MB} MB budget less the budget's parts): "
              f"{record['fixed_overhead_mb']:.0f} MiB. Local store: {record['store_bytes'] / record['orders']:.0f} bytes "
              f"per order on disk."]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--perf", metavar="DIR", help="record a CPU profile of every timed pass (`perf record -g`) into DIR")
    args = parser.parse_args()
    command = "make bench-aged" if os.environ.get("MAKELEVEL") else "python3 bench/aged_access.py " + " ".join(sys.argv[1:])
    kafka = driver.Kafka(int(os.environ.get("ORDERFLOW_BENCH_KAFKA_PORT", "29092")), 1, name="bench")
    log("building release binaries")
    subprocess.run(["cargo", "build", "--release", "--bins"], check=True)
    kafka.up()
    try:
        perf_dir = pathlib.Path(args.perf) if args.perf else None
        if perf_dir:
            perf_dir.mkdir(parents=True, exist_ok=True)
        record = run(kafka, args.orders, args.rounds, perf_dir)
    finally:
        kafka.down()
    record["date"], record["command"] = time.strftime("%Y-%m-%d"), command
    text = markdown(record, command)
    print(text)
    if not args.no_write:
        (root / "bench" / "last-aged.json").write_text(json.dumps(record, indent=2) + "\n")
        driver.replace_between(root / "docs" / "benchmarks.md", "aged-run", text)
        log("wrote docs/benchmarks.md (aged-run) and bench/last-aged.json")


if __name__ == "__main__":
    main()
