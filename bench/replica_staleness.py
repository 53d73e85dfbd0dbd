#!/usr/bin/env python3
"""How far a read replica (`orderflow serve`) trails the processors under load.

Starts the test broker's worth of pieces on a broker you name (default: the `make test` one on
127.0.0.1:19092, started if missing): fresh topics, one processor, one replica, `orderflow loadgen`
at --rate for --seconds. Samples the replica's lag (records) every second during the load and
reads its apply-delay histogram (state record written → applied in the replica) at the end.

    python3 bench/replica_staleness.py --rate 3000 --seconds 30
"""
import argparse
import os
import pathlib
import subprocess
import sys
import time
import urllib.request
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "deploy" / "local"))
import driver  # noqa: E402

root = driver.ROOT
ORDERFLOW = driver.ORDERFLOW
free_port = driver.free_port


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def histogram_quantile(text, name, q):
    buckets = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    for le, count in buckets:
        if count >= q * total:
            return le
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=os.environ.get("ORDERFLOW_TEST_BOOTSTRAP", "127.0.0.1:19092"))
    parser.add_argument("--rate", type=int, default=3000)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "--bin", "orderflow"], check=True, cwd=root)
    if args.bootstrap == "127.0.0.1:19092":
        test_kafka = driver.Kafka(19092, 1, name="test")
        if test_kafka.script("status", check=False).returncode != 0:
            test_kafka.up(fresh=False)
    prefix = f"stale{uuid.uuid4().hex[:6]}-"
    env = driver.orderflow_env(args.bootstrap, prefix, 6, RUST_LOG="warn")
    subprocess.run([ORDERFLOW, "topics", "create"], env=env, check=True, capture_output=True)
    processor_port, replica_port = free_port(), free_port()
    processor = subprocess.Popen([ORDERFLOW, "run"], env=dict(env, ORDERFLOW_OPS__LISTEN=f"127.0.0.1:{processor_port}"),
                                 stderr=subprocess.DEVNULL)
    replica = subprocess.Popen([ORDERFLOW, "serve"], env=dict(env, ORDERFLOW_OPS__LISTEN=f"127.0.0.1:{replica_port}",
                                                              ORDERFLOW_INSTANCE_ID="replica-0"), stderr=subprocess.DEVNULL)
    try:
        time.sleep(5)
        orders = int(args.rate * args.seconds / 4.85)
        load = subprocess.Popen([ORDERFLOW, "loadgen", "--orders", str(orders), "--rate", str(args.rate), "--seed", "5",
                                 "--no-progress", "--json"], env=env, stdout=subprocess.DEVNULL)
        lags = []
        while load.poll() is None:
            time.sleep(1)
            text = metrics(replica_port)
            lags.append(sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("orderflow_replica_lag_records{")))
        text = metrics(replica_port)
        lags.sort()
        print(f"load {args.rate} requests/s for {args.seconds} s, 6 partitions, one processor, one replica")
        print(f"replica lag (records, summed over partitions, sampled each second): median {lags[len(lags) // 2]:.0f}, max {lags[-1]:.0f}")
        for q in (0.5, 0.99, 0.999):
            print(f"apply delay p{q * 100:g}: <= {histogram_quantile(text, 'orderflow_replica_apply_delay_seconds', q)} s")
    finally:
        for p in (processor, replica):
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
