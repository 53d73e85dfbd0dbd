#!/usr/bin/env python3
"""The embedded-engine comparison for the order store (`make bench-engines`): the same workload
(bench/store-engines) against fjall, LMDB (heed) and RocksDB, one process per pass, the engines
alternated in ABBA rounds; medians and ranges written into docs/benchmarks.md between the
engine-bench markers, the raw passes into bench/last-engines.json.

RocksDB needs libclang to build (Debian's libclang-dev); without it the comparison runs the other
two and says so."""
import argparse
import json
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "deploy" / "local"))
import driver  # noqa: E402

root = driver.ROOT
crate = root / "bench" / "store-engines"
binary = crate / "target" / "release" / "store-engines"


def has_libclang():
    for base in [pathlib.Path("/usr/lib"), pathlib.Path("/usr/lib/x86_64-linux-gnu")]:
        if list(base.glob("llvm-*/lib/libclang.so*")) or list(base.glob("libclang.so*")) or list(
            base.glob("libclang-*.so*")
        ):
            return True
    return False


def build(with_rocksdb):
    command = ["cargo", "build", "--release", "--manifest-path", str(crate / "Cargo.toml")]
    if with_rocksdb:
        command += ["--features", "rocksdb"]
    started = time.monotonic()
    subprocess.run(command, check=True)
    return time.monotonic() - started


def run_pass(engine, args):
    command = [
        str(binary),
        engine,
        "--orders",
        str(args.orders),
        "--batches",
        str(args.batches),
        "--cache-mb",
        str(args.cache_mb),
        "--dir",
        str(args.dir),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


FIELDS = [
    ("preload_orders_per_s", "preload, orders/s", "{:,.0f}"),
    ("steady_requests_per_s", "read + write, requests/s", "{:,.0f}"),
    ("read_p50_us", "point read p50, µs", "{:.1f}"),
    ("read_p99_us", "point read p99, µs", "{:.1f}"),
    ("batch_write_p50_us", "batch write p50, ms", "{:.1f}"),
    ("batch_write_p99_us", "batch write p99, ms", "{:.1f}"),
    ("due_scan_ms", "deadline scan (6 × 10,000 due), ms", "{:.1f}"),
    ("disk_bytes_per_order", "disk bytes per order", "{:.0f}"),
    ("rss_anon_mb", "RssAnon, MB", "{:.0f}"),
    ("rss_file_mb", "RssFile (mapped file pages), MB", "{:.0f}"),
]


def cell(values, key, fmt):
    scale = 1e-3 if key.startswith("batch_write") else 1.0
    vals = [v * scale for v in values]
    med = statistics.median(vals)
    if len(vals) > 1:
        return f"{fmt.format(med)} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"
    return fmt.format(med)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=2_000_000)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache-mb", type=int, default=64)
    parser.add_argument("--dir", default=str(root / "target" / "store-engines"))
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args()
    pathlib.Path(args.dir).mkdir(parents=True, exist_ok=True)

    with_rocksdb = has_libclang()
    build_secs = build(with_rocksdb)
    engines = ["fjall", "lmdb"] + (["rocksdb"] if with_rocksdb else [])
    results = {e: [] for e in engines}
    order = list(engines)
    for round_number in range(args.rounds):
        for engine in order:
            result = run_pass(engine, args)
            print(json.dumps(result), flush=True)
            results[engine].append(result)
        order.reverse()

    header = "| | " + " | ".join(engines) + " |"
    lines = [header, "|---" * (len(engines) + 1) + "|"]
    for key, label, fmt in FIELDS:
        lines.append(
            f"| {label} | "
            + " | ".join(cell([r[key] for r in results[e]], key, fmt) for e in engines)
            + " |"
        )
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    preamble = (
        f"Measured {time.strftime('%Y-%m-%d')} with `make bench-engines` on {cpu}, "
        f"{len(__import__('os').sched_getaffinity(0))} cores, Linux {platform.release()}: "
        f"{args.orders:,} orders of 200 bytes in 6 partitions, preloaded in batches of 2,000, then "
        f"{args.batches} batches of 2,000 requests, each reading a uniformly random order and "
        "writing it back with its deadline entry moved, plus each partition's checkpoint, as one "
        f"atomic batch without fsync; block cache and write buffers {args.cache_mb} MB where the "
        f"engine has them. {args.rounds} rounds, engines alternated (ABBA), one process per pass; "
        "median (min–max)."
    )
    if not with_rocksdb:
        preamble += " RocksDB was not built: libclang is missing (Debian's libclang-dev)."
    block = preamble + "\n\n" + "\n".join(lines) + "\n"
    (root / "bench" / "last-engines.json").write_text(
        json.dumps({"args": vars(args), "build_secs": build_secs, "results": results}, indent=1)
    )
    print(block)
    if not args.no_write:
        driver.replace_between(root / "docs" / "benchmarks.md", "engine-bench", block)


if __name__ == "__main__":
    main()
