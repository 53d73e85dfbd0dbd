"""What the project's Python drivers share (`make bench`, `make chaos`, the replica staleness
measurement, the core-bench report): the repository's paths, a local Kafka started and stopped by
deploy/local/kafka.sh, the `ORDERFLOW_*` environment of one topic set, starting and stopping
processes, free ports, readiness, and rewriting a generated section of a document between its
markers.

Import it with:

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[N] / "deploy" / "local"))
    import driver
"""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
ORDERFLOW = str(ROOT / "target" / "release" / "orderflow")
BENCH = str(ROOT / "target" / "release" / "orderflow-bench")


class Kafka:
    """A local Kafka of `nodes` KRaft nodes on `port` (and port + 2k), its data under .kafka/."""

    def __init__(self, port, nodes=1, name="local", heap=None):
        self.port = port
        self.nodes = nodes
        self.env = dict(os.environ, KAFKA_PORT=str(port), KAFKA_NODES=str(nodes),
                        KAFKA_DATA_DIR=str(ROOT / ".kafka" / f"{name}-{port}"),
                        KAFKA_HEAP=heap or ("768m" if nodes > 1 else "1g"))
        self.bootstrap = ",".join(f"127.0.0.1:{port + 2 * k}" for k in range(nodes))
        self.replicas = 3 if nodes >= 3 else 1
        self.up_now = False

    def script(self, *args, check=True):
        """Runs deploy/local/kafka.sh with this cluster's environment."""
        return subprocess.run(["bash", str(ROOT / "deploy" / "local" / "kafka.sh"), *args], env=self.env, check=check,
                              capture_output=True, text=True)

    def up(self, fresh=True):
        """Starts it (from an empty data dir when `fresh`)."""
        if fresh:
            self.script("down", "--purge", check=False)
        self.script("up")
        self.up_now = True

    def pids(self):
        """The broker processes' pids (from their pid files, which sit at the top of the data dir
        or of a node's dir: never walk the log dirs, topics are deleted under them), for CPU
        accounting."""
        data = pathlib.Path(self.env["KAFKA_DATA_DIR"])
        pids = []
        for pid_file in [data / "broker.pid", *sorted(data.glob("*/broker.pid"))]:
            try:
                pids.append(int(pid_file.read_text().strip()))
            except (OSError, ValueError):
                pass
        return pids

    def server_logs(self):
        """The brokers' own logs (server.log of each node), for keeping after a failed run."""
        data = pathlib.Path(self.env["KAFKA_DATA_DIR"])
        return [path for path in [data / "logs" / "server.log", *sorted(data.glob("node*/logs/server.log"))]
                if path.exists()]

    def down(self, purge=True):
        """Stops it (and wipes its data when `purge`)."""
        self.script("down", *(["--purge"] if purge else []), check=False)
        self.up_now = False


def orderflow_env(bootstrap, prefix, partitions, instance=None, replicas=1, **settings):
    """The environment of an orderflow process on the topic set `prefix` (topics.prefix), its group
    `<prefix>group`, its ops server on a free port; `settings` are further ORDERFLOW_* variables
    (as NAME=value, e.g. ORDERFLOW_PROCESSOR__BATCH_MAX_RECORDS="500"). The drivers' own
    ORDERFLOW_BENCH_*/ORDERFLOW_CHAOS_* variables are left out: orderflow would read them as
    settings."""
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("ORDERFLOW_BENCH_", "ORDERFLOW_CHAOS_"))}
    env = dict(
        inherited,
        RUST_LOG=inherited.get("RUST_LOG", "warn"),
        ORDERFLOW_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        ORDERFLOW_KAFKA__GROUP_ID=f"{prefix}group",
        ORDERFLOW_OPS__LISTEN="127.0.0.1:0",
        ORDERFLOW_TOPICS__PREFIX=prefix,
        ORDERFLOW_TOPICS__PARTITIONS=str(partitions),
        ORDERFLOW_TOPICS__REPLICATION_FACTOR=str(replicas),
    )
    if instance:
        env["ORDERFLOW_INSTANCE_ID"] = instance
    env.update({k: str(v) for k, v in settings.items()})
    return env


def cpu_seconds(pid):
    """CPU time (user + system, all threads) a live process has used, from /proc; None once gone."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(cmd, env, log_file=None):
    """Starts `cmd` in its own process group (so stop() reaches its children), output to
    `log_file` (a path, appended) or nowhere."""
    err = open(log_file, "ab") if log_file else subprocess.DEVNULL
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def stop(process, sig=signal.SIGTERM, timeout=30):
    """Stops a process started by start(): `sig` to its group, SIGKILL after `timeout` s."""
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def free_port():
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, timeout=60, path="/readyz"):
    """Waits until http://127.0.0.1:<port><path> answers 200 (an instance with its partitions
    restored); raises after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"nothing on 127.0.0.1:{port}{path} answered 200 within {timeout} s")


def replace_between(path, name, text):
    """Replaces the section of `path` between `<!-- name:start -->` and `<!-- name:end -->` with
    `text`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    document = pathlib.Path(path).read_text()
    if start not in document or end not in document:
        raise RuntimeError(f"{path} has no {start} ... {end} section")
    head, rest = document.split(start, 1)
    _, tail = rest.split(end, 1)
    pathlib.Path(path).write_text(f"{head}{start}\n{text}\n{end}{tail}")


def section(path, name):
    """The current text of `path` between the `name` markers."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    return pathlib.Path(path).read_text().split(start, 1)[1].split(end, 1)[0]


def logger(tag):
    """A log function printing `tag: ...` to stderr."""
    def log(*parts):
        print(f"{tag}:", *parts, file=sys.stderr, flush=True)
    return log
