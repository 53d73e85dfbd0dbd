#!/usr/bin/env python3
"""`make chaos`: break things under load and judge the history with the independent checker.

Each scenario gets a fresh set of topics on one local broker (127.0.0.1:39092, its own data dir) or,
for the cluster scenarios, on a three-node KRaft cluster (127.0.0.1:39192/39194/39196, topics with 3
replicas and min.insync.replicas=2), processors supervised like Kubernetes would (any that exits is
restarted, unless the scenario removed it), `orderflow loadgen` as the load, a fault, and at the end
`orderflow check`. Recovery time is measured from the fault to the next committed outcome (seen by
`orderflow tail`). Results go to docs/reliability.md between the chaos markers.
"""
import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "deploy" / "local"))
import driver  # noqa: E402

root = driver.ROOT
os.chdir(root)
PORT = int(os.environ.get("ORDERFLOW_CHAOS_KAFKA_PORT", "39092"))
CLUSTER_PORT = int(os.environ.get("ORDERFLOW_CHAOS_CLUSTER_PORT", "39192"))
SINGLE = driver.Kafka(PORT, 1, name="chaos-1n")
CLUSTER = driver.Kafka(CLUSTER_PORT, 3, name="chaos-3n")
CURRENT = {"kafka": SINGLE}
ORDERFLOW = driver.ORDERFLOW
PARTITIONS = 6
log = driver.logger("chaos")


def kafka(*args, check=True, cluster=None):
    return (cluster or CURRENT["kafka"]).script(*args, check=check)


STATIC = {"value": "false"}


def env_for(prefix, instance=None):
    kafka_now = CURRENT["kafka"]
    return driver.orderflow_env(
        kafka_now.bootstrap, prefix, PARTITIONS, instance=instance, replicas=kafka_now.replicas,
        RUST_LOG="warn,orderflow::processor=info,orderflow::state=info",
        ORDERFLOW_LOG_FORMAT="json",
        ORDERFLOW_PROCESSOR__SESSION_TIMEOUT_MS="6000",
        ORDERFLOW_PROCESSOR__BATCH_MAX_RECORDS="500",
        ORDERFLOW_PROCESSOR__STATIC_MEMBERSHIP=STATIC["value"],
        ORDERFLOW_STATE__DIR=str(state_root(prefix)),
        # A small budget (2 MB of hot orders per processor): orders leave memory under load and
        # come back from the local store, so every scenario exercises eviction too.
        ORDERFLOW_STATE__MEMORY_BUDGET_MB="4",
    )


def state_root(prefix):
    """The local stores of a scenario's processors (state.backend = disk, one directory each)."""
    return root / ".kafka" / "chaos-state" / prefix.rstrip("-.")


class Fleet:
    """Processors of one scenario, restarted when they exit unless removed on purpose."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.extra_env = {}
        self.procs = {}
        self.wanted = set()
        self.restarts = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._supervise, daemon=True)
        self.thread.start()

    def _spawn(self, instance):
        env = dict(env_for(self.prefix, instance), **self.extra_env.get(instance, {}))
        self.procs[instance] = driver.start([ORDERFLOW, "run"], env, log_file=self.log_path(instance))

    def add(self, instance, **extra_env):
        with self.lock:
            self.extra_env[instance] = extra_env
            self.wanted.add(instance)
            self._spawn(instance)

    def remove(self, instance, sig=signal.SIGTERM):
        with self.lock:
            self.wanted.discard(instance)
            p = self.procs.pop(instance, None)
        if p:
            p.send_signal(sig)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    def log_path(self, instance):
        return root / ".kafka" / f"chaos-{self.prefix}{instance}.log"

    def log_count(self, instance, message):
        """Log lines of `instance` whose message starts with `message`."""
        count = 0
        if self.log_path(instance).exists():
            with open(self.log_path(instance), "rb") as f:
                for line in f:
                    try:
                        count += str(json.loads(line).get("fields", {}).get("message")).startswith(message)
                    except ValueError:
                        continue
        return count

    def log_sizes(self):
        return {i: self.log_path(i).stat().st_size if self.log_path(i).exists() else 0 for i in self.wanted}

    def restores_since(self, sizes):
        """Partition restores ("partition ready" log lines) written after `sizes` were taken:
        (count, slowest ms, total ms)."""
        elapsed = []
        for instance, offset in sizes.items():
            with open(self.log_path(instance), "rb") as f:
                f.seek(offset)
                for line in f:
                    try:
                        fields = json.loads(line).get("fields", {})
                    except ValueError:
                        continue
                    if fields.get("message") == "partition ready":
                        elapsed.append(int(fields.get("elapsed_ms", 0)))
        return len(elapsed), max(elapsed, default=0), sum(elapsed)

    def signal(self, instance, sig):
        with self.lock:
            p = self.procs.get(instance)
        if p:
            p.send_signal(sig)

    def _supervise(self):
        while not self.stop.is_set():
            with self.lock:
                for instance in list(self.wanted):
                    p = self.procs.get(instance)
                    if p is not None and p.poll() is not None:
                        self.restarts += 1
                        self._spawn(instance)
            time.sleep(0.2)

    def shutdown(self):
        self.stop.set()
        for instance in list(self.procs):
            self.remove(instance)


class Tail:
    """Committed outcomes as they arrive: (arrival time, input partition, requested_at), wall clock."""

    def __init__(self, prefix):
        self.seen = []
        self.log = open(root / ".kafka" / f"chaos-{prefix}tail.log", "ab")
        self.proc = subprocess.Popen([ORDERFLOW, "tail", "--only", "accepted,rejected", "--json"], env=env_for(prefix),
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                o = json.loads(line)
                self.seen.append((time.time(), o["input"]["partition"], o["requested_at_ms"] / 1000.0))
            except (ValueError, KeyError):
                pass

    def recovery(self, fault, timeout=60):
        """Seconds from `fault` (wall clock) until every partition has committed an outcome for a
        request sent after it: the slowest partition's recovery (the load covers all partitions)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            first = {}
            for arrival, partition, requested in list(self.seen):
                if requested >= fault:
                    first.setdefault(partition, arrival)
            if len(first) == PARTITIONS:
                return max(first.values()) - fault
            time.sleep(0.2)
        return None

    def close(self):
        self.proc.terminate()
        self.log.close()


def loadgen(prefix, seconds, rate, extra=(), wait_secs=240):
    """Load for about `seconds` at `rate` requests/s (an order makes ~4.85 requests)."""
    orders = int(rate * seconds / 4.85)
    return subprocess.Popen([ORDERFLOW, "loadgen", "--orders", str(orders), "--rate", str(rate), "--seed", "17",
                             "--concurrency", "500", "--wait-secs", str(wait_secs), "--no-progress", "--json", *extra],
                            env=env_for(prefix), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def finish(prefix, fleet, tail, load):
    out, _ = load.communicate(timeout=600)
    report = json.loads(out.strip().splitlines()[-1])
    fleet.shutdown()
    tail.close()
    checked = subprocess.run([ORDERFLOW, "check", "--json"], env=env_for(prefix), capture_output=True, text=True, timeout=600)
    verdict = json.loads(checked.stdout.strip().splitlines()[-1])
    return report, verdict


def scenario_kill(prefix, rng, rate):
    fleet, tail = Fleet(prefix), Tail(prefix)
    fleet.add("p0")
    time.sleep(3)
    # Each restart waits out the killed member's session (6 s): the load must outlast five of them.
    load = loadgen(prefix, 75, rate)
    recoveries = []
    for _ in range(5):
        time.sleep(rng.uniform(1.0, 3.0))
        t = time.time()
        fleet.signal("p0", signal.SIGKILL)  # the supervisor restarts it
        recoveries.append(tail.recovery(t))
    return finish(prefix, fleet, tail, load), recoveries


def with_static_membership(run):
    """`run` as a scenario whose processors join with static group membership."""
    def scenario(prefix, rng, rate):
        STATIC["value"] = "true"
        try:
            return run(prefix, rng, rate)
        finally:
            STATIC["value"] = "false"
    return scenario


scenario_kill_static = with_static_membership(scenario_kill)


def scenario_churn(prefix, rng, rate):
    fleet, tail = Fleet(prefix), Tail(prefix)
    for p in ("p0", "p1", "p2"):
        fleet.add(p)
    time.sleep(4)
    load = loadgen(prefix, 25, rate)
    recoveries = []
    for action, instance in (("add", "p3"), ("remove", "p1"), ("add", "p1"), ("remove", "p3"), ("remove", "p0")):
        time.sleep(rng.uniform(1.5, 3.0))
        t = time.time()
        fleet.add(instance) if action == "add" else fleet.remove(instance)
        recoveries.append(tail.recovery(t))
    return finish(prefix, fleet, tail, load), recoveries


HANGING = "a hanging transaction blocks"


def resolve_hanging(prefix, fleet):
    """The operator's runbook for a hanging transaction (docs/operations.md, "Hanging
    transactions"), applied once a processor reports one: stop the processors, delete their local
    stores, abort the transaction on every partition `kafka-transactions.sh find-hanging` lists,
    start the processors again. Returns what was done, or None when no processor reported one."""
    deadline = time.time() + 120
    while not any(fleet.log_count(i, HANGING) for i in fleet.wanted):
        if time.time() > deadline:
            return None
        time.sleep(1)
    instances = sorted(fleet.wanted)
    for instance in instances:
        fleet.remove(instance)
    shutil.rmtree(state_root(prefix), ignore_errors=True)
    aborted = 0
    for broker_id in range(1, CURRENT["kafka"].nodes + 1):
        out = kafka("tool", "transactions", "--bootstrap-server", CURRENT["kafka"].bootstrap, "find-hanging",
                    "--broker-id", str(broker_id), "--max-transaction-timeout", "1").stdout
        for line in out.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 6:
                kafka("tool", "transactions", "--bootstrap-server", CURRENT["kafka"].bootstrap, "abort",
                      "--topic", fields[0], "--partition", fields[1], "--start-offset", fields[5])
                aborted += 1
    for instance in instances:
        fleet.add(instance)
    log(f"hanging transaction: aborted on {aborted} partitions, local stores deleted, processors restarted")
    return f"the broker lost a transaction's markers in its shutdown (hanging transaction on {aborted} partitions): resolved by the runbook"


def scenario_broker_restart(prefix, rng, rate):
    fleet, tail = Fleet(prefix), Tail(prefix)
    fleet.add("p0")
    fleet.add("p1")
    time.sleep(4)
    load = loadgen(prefix, 25, rate, wait_secs=420)
    time.sleep(rng.uniform(2.0, 4.0))
    kafka("down")  # returns once the broker process is gone
    t = time.time()
    time.sleep(5)
    kafka("up")
    recovery = tail.recovery(t, timeout=100)
    extra = ""
    if recovery is None:
        # Kafka 4.4 skips the markers of a transaction whose commit is in flight when a single
        # broker shuts down or crashes: the processors cannot resolve that, an operator must.
        extra = resolve_hanging(prefix, fleet) or ""
        recovery = tail.recovery(t, timeout=240)
    return finish(prefix, fleet, tail, load), [recovery], extra


def leaders(topic):
    """Partition → node id of its leader, from the cluster's own topic tool."""
    out = kafka("tool", "topics", "--bootstrap-server", CURRENT["kafka"].bootstrap, "--describe", "--topic", topic).stdout
    found = {}
    for line in out.splitlines():
        fields = dict(part.split(": ", 1) for part in line.strip().split("\t") if ": " in part)
        if "Partition" in fields and "Leader" in fields:
            found[int(fields["Partition"])] = int(fields["Leader"])
    return found


def transaction_coordinator(transactional_id):
    """Node id of the transaction coordinator of `transactional_id`."""
    out = kafka("tool", "transactions", "--bootstrap-server", CURRENT["kafka"].bootstrap, "describe",
                "--transactional-id", transactional_id).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    column = rows[0].index("CoordinatorId")
    return int(rows[1][column])


def group_coordinator(group):
    """Node id of the group coordinator of `group`."""
    out = kafka("tool", "consumer-groups", "--bootstrap-server", CURRENT["kafka"].bootstrap, "--describe",
                "--group", group, "--state").stdout
    for line in out.splitlines():
        if line.startswith(group):
            return int(line.split("(")[1].split(")")[0])
    raise RuntimeError(f"no coordinator for {group} in: {out}")


def crash_node(prefix, rng, rate, pick):
    """Two processors under load on the cluster; SIGKILL the node `pick` chooses, restart it 15 s later."""
    fleet, tail = Fleet(prefix), Tail(prefix)
    fleet.add("p0")
    fleet.add("p1")
    time.sleep(8)
    # Chosen before the load: the tools are JVMs, too heavy to start next to it on two cores.
    coordinators = {transaction_coordinator(f"{prefix}group.{p}") for p in ("p0", "p1")}
    group_node = group_coordinator(f"{prefix}group")
    request_leaders = leaders(f"{prefix}order-transition-requests")
    node, why = pick(coordinators, request_leaders, group_node)
    load = loadgen(prefix, 60, rate)
    time.sleep(rng.uniform(10.0, 15.0))
    log(f"killing node {node}: {why} (transaction coordinators {sorted(coordinators)}, group coordinator {group_node}, requests leaders {request_leaders})")
    t = time.time()
    kafka("kill", "--node", str(node))
    recoveries = [tail.recovery(t, timeout=180)]
    time.sleep(max(0.0, 15 - (time.time() - t)))
    kafka("up")  # starts the killed node again; it catches up and rejoins the ISR
    return finish(prefix, fleet, tail, load), recoveries, why


def scenario_leader_kill(prefix, rng, rate):
    def pick(coordinators, request_leaders, group_node):
        candidates = sorted({n for n in request_leaders.values() if n not in coordinators and n != group_node})
        if not candidates:
            candidates = sorted(set(request_leaders.values()))
        node = rng.choice(candidates)
        parts = sorted(p for p, n in request_leaders.items() if n == node)
        return node, f"node {node} led requests partitions {parts}, no coordinator"
    return crash_node(prefix, rng, rate, pick)


def scenario_coordinator_kill(prefix, rng, rate):
    def pick(coordinators, request_leaders, group_node):
        node = min(coordinators)
        parts = sorted(p for p, n in request_leaders.items() if n == node)
        group = ", the group coordinator" if node == group_node else ""
        return node, f"node {node} was a transaction coordinator{group} and led requests partitions {parts}"
    return crash_node(prefix, rng, rate, pick)


def scenario_group_coordinator_kill(prefix, rng, rate):
    def pick(coordinators, request_leaders, group_node):
        parts = sorted(p for p, n in request_leaders.items() if n == group_node)
        txn = ", a transaction coordinator" if group_node in coordinators else ""
        return group_node, f"node {group_node} was the group coordinator{txn} and led requests partitions {parts}"
    return crash_node(prefix, rng, rate, pick)


def scenario_rolling(prefix, rng, rate):
    """Three processors; restart each in turn like a StatefulSet rolling update (SIGTERM, wait for the
    exit, start the same instance id again). Pause per instance, and the partition restores it caused."""
    fleet, tail = Fleet(prefix), Tail(prefix)
    for p in ("p0", "p1", "p2"):
        fleet.add(p)
    time.sleep(6)
    load = loadgen(prefix, 45, rate)
    time.sleep(8)
    sizes = fleet.log_sizes()
    pauses = []
    for p in ("p0", "p1", "p2"):
        t = time.time()
        fleet.remove(p)
        fleet.add(p)
        pauses.append(tail.recovery(t))
        time.sleep(4)
    restores, slowest, total = fleet.restores_since(sizes)
    return finish(prefix, fleet, tail, load), pauses, f"{restores} partition restores (slowest {slowest} ms, {total} ms in all)"


scenario_rolling_static = with_static_membership(scenario_rolling)


def scenario_poison(prefix, rng, rate):
    fleet, tail = Fleet(prefix), Tail(prefix)
    fleet.add("p0")
    fleet.add("p1")
    time.sleep(4)
    load = loadgen(prefix, 15, rate, ("--poison-share", "0.01"))
    return finish(prefix, fleet, tail, load), []


ZOMBIE_FREEZES = 3


def scenario_zombie(prefix, rng, rate):
    """Two processors; p0 freezes (SIGSTOP from its own failpoint) right after sending a batch's
    offsets to its transaction, for 7-9 s: past the 6 s session timeout, so its partitions move to
    p1, but inside the 10 s transaction timeout, so the transaction still commits when it wakes
    and p1's restore must wait for it. Three times, at batches the seed picks; then one outside
    SIGSTOP of 12 s, past the transaction timeout, whose open transaction the broker aborts."""
    fleet, tail = Fleet(prefix), Tail(prefix)
    batches = sorted(rng.sample(range(15, 90), ZOMBIE_FREEZES))
    freezes = ",".join(f"freeze-after-offsets:{b}:{rng.randint(7000, 9000)}" for b in batches)
    fleet.add("p0", ORDERFLOW_FAILPOINT=freezes)
    fleet.add("p1")
    time.sleep(4)
    load = loadgen(prefix, 60, rate)
    time.sleep(45)
    t = time.time()
    fleet.signal("p0", signal.SIGSTOP)  # past the 10 s transaction timeout: its open transaction is aborted
    time.sleep(12)
    fleet.signal("p0", signal.SIGCONT)  # the zombie wakes up with a batch in hand: it must be fenced
    recoveries = [tail.recovery(t)]
    result = finish(prefix, fleet, tail, load)
    woke = fleet.log_count("p0", "failpoint freeze-after-offsets: woke up")
    waits = sum(fleet.log_count(p, "restore waits") for p in ("p0", "p1"))
    return result, recoveries, f"{woke} of {ZOMBIE_FREEZES} freezes after offsets (batches {batches}), {waits} restores waited"


def garble_files(directory):
    """Overwrites 16 bytes in the middle of every file under `directory` (a corrupted disk)."""
    for path in pathlib.Path(directory).rglob("*"):
        if path.is_file() and path.name != "LOCK":
            data = bytearray(path.read_bytes())
            middle = len(data) // 2
            for i in range(max(0, middle - 8), min(len(data), middle + 8)):
                data[i] ^= 0x5A
            path.write_bytes(bytes(data) if data else b"junk")


def scenario_store_loss(prefix, rng, rate):
    import shutil
    fleet, tail = Fleet(prefix), Tail(prefix)
    fleet.add("p0")
    fleet.add("p1")
    time.sleep(4)
    load = loadgen(prefix, 60, rate)
    recoveries = []
    for round_number in range(4):
        time.sleep(rng.uniform(3.0, 6.0))
        t = time.time()
        fleet.remove("p0", signal.SIGKILL)
        store = state_root(prefix) / "p0"
        if round_number % 2 == 0:
            shutil.rmtree(store, ignore_errors=True)
        else:
            garble_files(store)
        fleet.add("p0")
        recoveries.append(tail.recovery(t))
    result = finish(prefix, fleet, tail, load)
    discarded = fleet.log_count("p0", "the local store")
    from_checkpoint = sum(fleet.log_count(p, "restoring from the local store's checkpoint") for p in ("p0", "p1"))
    return result, recoveries, f"{discarded} store discards logged by p0, {from_checkpoint} partition restores from a checkpoint"


SCENARIOS = {
    "kill": ("SIGKILL the processor at 5 random moments, restarted each time", scenario_kill),
    "kill-static": ("the same with static group membership (processor.static_membership)", scenario_kill_static),
    "churn": ("3 processors; add and remove instances during the load", scenario_churn),
    "broker-restart": ("stop the broker under load, start it 5 s later; processors recover by themselves (recovery counts from the broker gone)", scenario_broker_restart),
    "poison": ("1% poison records (not Avro, unknown schema, no key, too many attributes)", scenario_poison),
    "zombie": ("a processor frozen 3 times between sending its offsets and committing, past the session timeout but inside the transaction timeout (its late commit must be restored by the new owner), then SIGSTOPped past the transaction timeout (fenced, aborted)", scenario_zombie),
    "store-loss": ("2 processors; p0 SIGKILLed 4 times, its local store deleted (1st, 3rd) or garbled (2nd, 4th) before it restarts", scenario_store_loss),
    "rolling": ("3 processors restarted one after another (SIGTERM, start again), dynamic membership", scenario_rolling),
    "rolling-static": ("the same rolling restart with static group membership", scenario_rolling_static),
    "leader-kill": ("3-node cluster, RF 3, min ISR 2: SIGKILL a broker leading requests partitions that coordinates nothing, restart it 15 s later", scenario_leader_kill),
    "coordinator-kill": ("3-node cluster: SIGKILL the broker that is the processors' transaction coordinator, restart it 15 s later", scenario_coordinator_kill),
    "group-coordinator-kill": ("3-node cluster: SIGKILL the broker that is the consumer group's coordinator, restart it 15 s later", scenario_group_coordinator_kill),
}
ON_CLUSTER = {"leader-kill", "coordinator-kill", "group-coordinator-kill"}
COUNTS = ["lost", "duplicated", "illegal", "version_gaps", "state_mismatches", "duplicate_mismatches", "decided_twice",
          "dead_letters_lost", "dead_letters_duplicated", "dead_letters_unexpected", "orphan_outcomes"]


def create_topics(prefix):
    """`orderflow topics create` for the scenario's topics, retried for a minute: right after a
    cluster scenario a restarted node may not have registered yet, and topics with 3 replicas
    cannot be created until it has."""
    deadline = time.time() + 60
    while True:
        done = subprocess.run([ORDERFLOW, "topics", "create"], env=env_for(prefix), capture_output=True, text=True)
        if done.returncode == 0:
            return
        if time.time() > deadline:
            sys.exit(f"chaos: orderflow topics create failed: {done.stderr.strip()}")
        log(f"topics create failed, retrying: {done.stderr.strip()[-300:]}")
        time.sleep(3)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--cluster-rate", type=int, default=500,
                        help="load of the three-node scenarios: three brokers share the two cores with everything else")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    # The zombie scenario freezes processors with a failpoint: a build with the feature.
    subprocess.run(["cargo", "build", "--release", "--features", "failpoints", "--bin", "orderflow"], check=True)
    names = args.only.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        sys.exit(f"chaos: unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    rows, ok = [], True
    try:
        # Single-broker scenarios first, then the cluster ones: one Kafka runs at a time.
        for name in sorted(names, key=lambda n: n in ON_CLUSTER):
            what, run = SCENARIOS[name]
            wanted = CLUSTER if name in ON_CLUSTER else SINGLE
            if CURRENT["kafka"] is not wanted or not wanted.up_now:
                if CURRENT["kafka"].up_now:
                    CURRENT["kafka"].down()
                CURRENT["kafka"] = wanted
                wanted.up()
            prefix = f"c{uuid.uuid4().hex[:6]}-{name}-"
            create_topics(prefix)
            log(f"{name}: {what}")
            started = time.monotonic()
            outcome = run(prefix, rng, args.cluster_rate if name in ON_CLUSTER else args.rate)
            (report, verdict), recoveries = outcome[0], outcome[1]
            extra = outcome[2] if len(outcome) > 2 else ""
            clean = all(verdict.get(c) == 0 for c in COUNTS) and report.get("missing") == 0 and report.get("repeated") == 0
            ok &= clean
            if not clean:
                # The broker's log goes with the next purge: keep it beside the processors' logs.
                for k, server_log in enumerate(CURRENT["kafka"].server_logs()):
                    shutil.copy(server_log, root / ".kafka" / f"chaos-{prefix}broker{k}.log")
            rec = [f"{r:.1f} s" if r is not None else "none" for r in recoveries] + ([extra] if extra else [])
            log(f"{name}: {'CLEAN' if clean else 'VIOLATED'} in {time.monotonic() - started:.0f} s; recoveries {rec}; "
                f"verdict {json.dumps({c: verdict.get(c) for c in COUNTS})}; examples {verdict.get('examples')}; "
                f"loadgen {json.dumps({k: report.get(k) for k in ('sent', 'missing', 'repeated', 'unexpected')})}")
            rows.append((name, what, verdict, report, rec, clean))
    finally:
        kafka("down", "--purge", check=False)
    command = "make chaos" if args.only == ",".join(SCENARIOS) else f"python3 tests/chaos/run.py --only {args.only}"
    lines = [f"Last run: {time.strftime('%Y-%m-%d')}, `{command}` (seed {args.seed}), load at {args.rate:,} requests/s ({args.cluster_rate:,} on the three-node cluster) "
             f"(75 s for kill, 45 s for rolling, 60 s for cluster and zombie, 25 s for the others, 15 s for poison), {PARTITIONS} partitions, "
             "one local broker (cluster scenarios: three nodes, RF 3, min ISR 2), session timeout 6 s. "
             "Recovery: from the fault until every partition has committed an outcome for a request sent after it.", "",
             "| scenario | inputs | requests | poison | lost | duplicated | illegal | version gaps | state mismatches | duplicate answers wrong / decided twice | DLQ lost/dup/unexpected | recovery (fault → next outcome) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, what, v, r, rec, clean in rows:
        lines.append(f"| {name}: {what} | {v.get('inputs')} | {v.get('requests')} | {v.get('poison')} | {v.get('lost')} | {v.get('duplicated')} | "
                     f"{v.get('illegal')} | {v.get('version_gaps')} | {v.get('state_mismatches')} | {v.get('duplicate_mismatches')}/{v.get('decided_twice')} | {v.get('dead_letters_lost')}/"
                     f"{v.get('dead_letters_duplicated')}/{v.get('dead_letters_unexpected')} | {', '.join(rec) or '—'} | "
                     f"{'exactly once' if clean else 'VIOLATED'} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        doc = root / "docs" / "reliability.md"
        previous = driver.section(doc, "chaos")
        # Rows of scenarios not run this time stay, marked with their own earlier run.
        ran = {name for name, *_ in rows}
        kept = [line for line in previous.splitlines()
                if line.startswith("| ") and not line.startswith("| scenario") and line.split(":")[0][2:] not in ran]
        if kept:
            text += "\n" + "\n".join(kept)
        driver.replace_between(doc, "chaos", text)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
