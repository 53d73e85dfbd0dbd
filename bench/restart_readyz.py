#!/usr/bin/env python3
"""Process start → /readyz of `orderflow run`, disk backend (its store already built) against the
memory backend, alternating (ABBA), each start a fresh process as a pod restart is.

Prepare the topics and the store first (the same topics, instance id `bench` and store directory):
    ./target/release/orderflow-bench --bootstrap 127.0.0.1:19092 --prefix ps- restart --orders 2000000 --rounds 0 --dir target/ps-state
then run this against the same broker. Each start joins the group, opens the store (disk), restores
every partition (from the checkpoint, or the memory backend from the topic's beginning) and is
stopped with SIGTERM once /readyz answers 200.
"""
import argparse
import json
import os
import pathlib
import subprocess
import time
import urllib.request

root = pathlib.Path(__file__).resolve().parents[1]


def environment(args, backend):
    # Only orderflow's own settings: ORDERFLOW_BENCH_* (the bench driver's) is not one of them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_BENCH_")}
    env.update({
        "ORDERFLOW_KAFKA__BOOTSTRAP_SERVERS": args.bootstrap, "ORDERFLOW_TOPICS__PREFIX": args.prefix,
        "ORDERFLOW_TOPICS__PARTITIONS": str(args.partitions), "ORDERFLOW_INSTANCE_ID": "bench",
        "ORDERFLOW_STATE__DIR": str(root / args.dir), "ORDERFLOW_STATE__BACKEND": backend,
        "ORDERFLOW_OPS__LISTEN": f"127.0.0.1:{args.port}", "ORDERFLOW_KAFKA__GROUP_ID": f"{args.prefix}group",
        "RUST_LOG": "warn",
    })
    return env


def start_until_ready(args, backend):
    started = time.time()
    log_path = root / "target" / f"restart-readyz-{backend}.log"
    log_file = open(log_path, "w")
    process = subprocess.Popen([str(root / "target" / "release" / "orderflow"), "run"], env=environment(args, backend),
                               stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{args.port}/readyz", timeout=1).status == 200:
                    return time.time() - started
            except OSError:
                pass
            if process.poll() is not None:
                tail = "".join(log_path.read_text().splitlines(keepends=True)[-5:])
                raise SystemExit(f"orderflow ({backend}) exited with {process.returncode} before it was ready; "
                                 f"the end of {log_path}:\n{tail}")
            if time.time() - started > 300:
                raise SystemExit(f"orderflow ({backend}) not ready after 300 s")
            time.sleep(0.02)
    finally:
        process.terminate()
        process.wait(timeout=60)
        log_file.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--prefix", default="ps-")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--dir", default="target/ps-state")
    parser.add_argument("--port", type=int, default=19499)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    seconds = {"disk": [], "memory": []}
    order = ["disk", "memory"]
    for round_number in range(args.rounds):
        for backend in order:
            seconds[backend].append(start_until_ready(args, backend))
            print(f"round {round_number} {backend}: {seconds[backend][-1]:.2f} s", flush=True)
        order.reverse()
    print(json.dumps(seconds))


if __name__ == "__main__":
    main()
