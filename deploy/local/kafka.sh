#!/usr/bin/env bash
# A real Apache Kafka (KRaft, combined broker + controller) on 127.0.0.1 for development and tests:
# one node by default, or a three-node cluster with `--nodes 3`. The jars come from Maven Central
# (pom.xml beside this script) and are cached outside the clone, so a second clone starts without
# downloading.
#
# Usage: deploy/local/kafka.sh [--nodes N] up | down [--purge] [--node K] | kill --node K
#                              | status | logs [-f] [--node K] | bootstrap | tool NAME [ARGS...] | fetch
#   up        starts every node that is not running (so it also restarts a killed one)
#   down      stops every node (or node K: a clean, controlled shutdown)
#   kill      SIGKILLs node K (a crash: no controlled shutdown, no leadership hand-over)
#   bootstrap prints the bootstrap servers of all nodes
#
# Environment:
#   KAFKA_PORT        client port of node 1 (default 9092); node K listens on KAFKA_PORT+2(K-1) and its
#                     controller on the port after that
#   KAFKA_NODES       number of nodes (default 1; same as --nodes). With more than one, topics default
#                     to 3 replicas with min.insync.replicas=2, like a production cluster
#   KAFKA_DATA_DIR    KRaft storage, logs and pid file (default <repo>/.kafka/<port>; node K of a
#                     cluster in its node-K subfolder); survives `down`
#   ORDERFLOW_CACHE   jar cache root (default ~/.cache/orderflow)
#   KAFKA_HEAP        broker heap (default 1g)
#   JAVA_HOME         the JDK to use (default: java on PATH, Temurin 25 if that is older than 17)
set -euo pipefail

KAFKA_VERSION=4.4.0
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=pidfile.sh
. "$here/pidfile.sh"
repo=$(cd "$here/../.." && pwd)
base_port=${KAFKA_PORT:-9092}
nodes=${KAFKA_NODES:-1}
only_node=
args=()
while [ $# -gt 0 ]; do
  case $1 in
  --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
  --node) only_node=${2:?--node needs a node number}; shift 2 ;;
  *) args+=("$1"); shift ;;
  esac
done
set -- "${args[@]+"${args[@]}"}"
case $nodes in 1 | 3 | 5) ;; *) echo "kafka.sh: --nodes must be 1, 3 or 5 (a KRaft quorum needs an odd number of voters), got '$nodes'" >&2; exit 1 ;; esac
if [ -n "$only_node" ] && ! { [ "$only_node" -ge 1 ] && [ "$only_node" -le "$nodes" ]; } 2>/dev/null; then
  echo "kafka.sh: --node $only_node: the cluster has nodes 1 to $nodes (pass --nodes N for a cluster)" >&2
  exit 1
fi
cluster_dir=${KAFKA_DATA_DIR:-$repo/.kafka/$base_port}
cache_root=${ORDERFLOW_CACHE:-$HOME/.cache/orderflow}
libs=$cache_root/kafka-$KAFKA_VERSION/libs
# Replication of internal topics and the default for new topics: 3 replicas, 2 in sync for a cluster.
if [ "$nodes" -ge 3 ]; then replicas=3; min_isr=2; else replicas=1; min_isr=1; fi

# Points port, controller_port, data_dir, pid_file and log_file at node $1.
select_node() {
  node=$1
  port=$((base_port + 2 * (node - 1)))
  controller_port=$((port + 1))
  if [ "$nodes" = 1 ]; then data_dir=$cluster_dir; else data_dir=$cluster_dir/node$node; fi
  pid_file=$data_dir/broker.pid
  log_file=$data_dir/logs/server.log
}
select_node 1

# The node numbers a command applies to: --node K, or all.
targets() {
  if [ -n "$only_node" ]; then
    echo "$only_node"
  else
    seq 1 "$nodes"
  fi
}

quorum_voters() {
  local k voters=
  for k in $(seq 1 "$nodes"); do
    voters="$voters${voters:+,}$k@127.0.0.1:$((base_port + 2 * (k - 1) + 1))"
  done
  echo "$voters"
}

bootstrap_servers() {
  local k servers=
  for k in $(seq 1 "$nodes"); do
    servers="$servers${servers:+,}127.0.0.1:$((base_port + 2 * (k - 1)))"
  done
  echo "$servers"
}

die() {
  echo "kafka.sh: $*" >&2
  exit 1
}

# Picks a JDK that runs Kafka 4 (Java 17 or newer) and exports JAVA for the rest of the script.
find_java() {
  local candidate version
  for candidate in "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java || true)" /usr/lib/jvm/temurin-25-jdk-amd64/bin/java; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    version=$("$candidate" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
    if [ -n "$version" ] && [ "$version" -ge 17 ]; then
      JAVA=$candidate
      return 0
    fi
  done
  die "no Java 17 or newer found (Kafka $KAFKA_VERSION needs it). Install one, e.g. 'apt-get install openjdk-17-jre-headless', or set JAVA_HOME."
}

# Resolves the broker and tool jars with Maven into the cache, once.
fetch() {
  [ -f "$libs/.complete" ] && return 0
  command -v mvn >/dev/null || die "'mvn' not found: Maven fetches the Kafka jars from Maven Central. Install it ('apt-get install maven') and retry."
  echo "kafka.sh: fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $libs" >&2
  local staging=$libs.partial.$$
  rm -rf "$staging"
  mkdir -p "$staging"
  if ! mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$staging" >"$staging.log" 2>&1; then
    tail -20 "$staging.log" >&2
    rm -rf "$staging"
    die "Maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION (log above). Check that Maven Central is reachable and retry."
  fi
  rm -f "$staging.log"
  touch "$staging/.complete"
  rm -rf "$libs"
  mv "$staging" "$libs"
}

our_pid() {
  running_pid "$pid_file" "kafka.Kafka $data_dir/server.properties"
}

# Prints "pid/program" of whatever listens on the port, empty if nothing does.
port_owner() {
  ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\("[^"]*",pid=[0-9]*\).*/\1/p' | head -1
}

port_in_use() {
  [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
}

write_config() {
  mkdir -p "$data_dir/logs" "$data_dir/kraft"
  cat >"$data_dir/server.properties" <<EOF
# Written by deploy/local/kafka.sh: node $node of $nodes, combined broker + controller, for development and tests.
process.roles=broker,controller
node.id=$node
controller.quorum.voters=$(quorum_voters)
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$data_dir/kraft
# Topics are provisioned explicitly (orderflow topics create); a typo must not create a topic.
auto.create.topics.enable=false
num.partitions=1
# Internal topics: one replica on one node; on a cluster 3 replicas, 2 in sync, like production.
offsets.topic.replication.factor=$replicas
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$min_isr
default.replication.factor=$replicas
min.insync.replicas=$min_isr
# Tests form groups constantly: do not wait 3 s for more members.
group.initial.rebalance.delay.ms=0
# A killed processor's open transaction is aborted within seconds of its timeout, so it does not hold
# back the last stable offset (and read_committed readers) for a minute.
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
transaction.remove.expired.transaction.cleanup.interval.ms=60000
# Let the compaction of small test topics happen soon after it is due.
log.cleaner.backoff.ms=1000
EOF
  cat >"$data_dir/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $log_file
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
EOF
}

run_class() {
  local class=$1
  shift
  "$JAVA" -Xmx512m -Dlog4j2.configurationFile="$here/log4j2-tools.properties" -cp "$libs/*" "$class" "$@"
}

# True once the broker answers a metadata request on the client port.
broker_answers() {
  run_class org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" --list >/dev/null 2>&1
}

# Starts node $node in the background unless it runs; prints nothing when it already runs.
start_node() {
  if our_pid >/dev/null; then
    return 0
  fi
  for p in "$port" "$controller_port"; do
    if port_in_use "$p"; then
      die "port $p is taken by $(port_owner "$p" || true) which is not node $node of $cluster_dir. Stop it, or choose another port with KAFKA_PORT=<port> (node K uses KAFKA_PORT+2(K-1) and the port after it)."
    fi
  done
  write_config
  if [ ! -f "$data_dir/kraft/meta.properties" ]; then
    local cluster_id
    # Every node of a cluster is formatted with the same cluster id.
    if [ ! -f "$cluster_dir/cluster.id" ]; then
      mkdir -p "$cluster_dir"
      run_class kafka.tools.StorageTool random-uuid >"$cluster_dir/cluster.id"
    fi
    cluster_id=$(cat "$cluster_dir/cluster.id")
    run_class kafka.tools.StorageTool format --cluster-id "$cluster_id" \
      --config "$data_dir/server.properties" --ignore-formatted >"$data_dir/logs/format.log" 2>&1 ||
      {
        cat "$data_dir/logs/format.log" >&2
        die "formatting KRaft storage in $data_dir/kraft failed (output above). Wipe it with '$0 down --purge' and retry."
      }
  fi
  echo "kafka.sh: starting Apache Kafka $KAFKA_VERSION node $node/$nodes on 127.0.0.1:$port (data $data_dir)"
  # setsid: the broker is not in the caller's process group, so a Ctrl-C in `make run` does not kill
  # it mid-write; `down` stops it.
  setsid "$JAVA" -Xms${KAFKA_HEAP:-1g} -Xmx${KAFKA_HEAP:-1g} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$data_dir/log4j2.properties" \
    -cp "$libs/*" kafka.Kafka "$data_dir/server.properties" \
    >"$data_dir/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$pid_file"
  started_any=1
}

# Waits until node $node answers a metadata request (a cluster node needs a controller quorum first).
wait_node() {
  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-90}))
  until port_in_use "$port" && broker_answers; do
    if ! our_pid >/dev/null; then
      tail -40 "$log_file" "$data_dir/logs/stdout.log" >&2 2>/dev/null || true
      die "node $node exited during start-up (log tail above; full log: $log_file)."
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -40 "$log_file" >&2 2>/dev/null || true
      stop_node >/dev/null
      die "node $node did not answer on 127.0.0.1:$port within ${KAFKA_START_TIMEOUT:-90}s (log tail above; full log: $log_file)."
    fi
    sleep 0.5
  done
}

up() {
  find_java
  fetch
  started_any=0
  local k
  for k in $(targets); do
    select_node "$k"
    if pid=$(our_pid); then
      echo "kafka.sh: node $k already running on 127.0.0.1:$port (pid $pid, data $data_dir)"
    fi
    start_node
  done
  for k in $(targets); do
    select_node "$k"
    wait_node
    if [ "$started_any" = 1 ]; then
      echo "kafka.sh: node $k ready on 127.0.0.1:$port (pid $(cat "$pid_file"))"
    fi
  done
  if [ "$nodes" != 1 ]; then
    echo "kafka.sh: cluster of $nodes ready; bootstrap servers $(bootstrap_servers)"
  elif [ "$started_any" = 1 ]; then
    echo "kafka.sh: broker ready on 127.0.0.1:$base_port"
  fi
}

stop_node() {
  local pid signal=${1:-TERM}
  if pid=$(our_pid); then
    kill "-$signal" "$pid"
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "kafka.sh: node $node (pid $pid) did not stop within 30 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    if [ "$signal" = KILL ]; then
      echo "kafka.sh: node $node on 127.0.0.1:$port killed"
    else
      echo "kafka.sh: node $node on 127.0.0.1:$port stopped"
    fi
  else
    echo "kafka.sh: node $node of $cluster_dir is not running"
  fi
  rm -f "$pid_file"
}

down() {
  local k
  # Stopping the nodes of a cluster one by one would leave the last ones waiting for a quorum that is
  # gone: signal all first, then wait.
  local -A pids=()
  for k in $(targets); do
    select_node "$k"
    if pid=$(our_pid); then
      kill -TERM "$pid"
      pids[$k]=$pid
    fi
  done
  for k in $(targets); do
    select_node "$k"
    if [ -n "${pids[$k]:-}" ]; then
      for _ in $(seq 1 60); do
        kill -0 "${pids[$k]}" 2>/dev/null || break
        sleep 0.5
      done
      if kill -0 "${pids[$k]}" 2>/dev/null; then
        echo "kafka.sh: node $k (pid ${pids[$k]}) did not stop within 30 s; killing it" >&2
        kill -KILL "${pids[$k]}" 2>/dev/null || true
      fi
      echo "kafka.sh: node $k on 127.0.0.1:$port stopped"
    else
      echo "kafka.sh: node $k of $cluster_dir is not running"
    fi
    rm -f "$pid_file"
  done
  if [ "${1:-}" = "--purge" ]; then
    if [ -n "$only_node" ]; then
      rm -rf "$data_dir"
      echo "kafka.sh: wiped $data_dir"
    else
      rm -rf "$cluster_dir"
      echo "kafka.sh: wiped $cluster_dir"
    fi
  fi
}

crash() {
  [ -n "$only_node" ] || die "kill needs --node K (the node to crash)"
  select_node "$only_node"
  stop_node KILL
}

status() {
  local k down_count=0
  for k in $(targets); do
    select_node "$k"
    if pid=$(our_pid); then
      echo "running: node $k 127.0.0.1:$port pid $pid data $data_dir"
    else
      echo "stopped: node $k 127.0.0.1:$port data $data_dir"
      down_count=$((down_count + 1))
    fi
  done
  [ "$down_count" = 0 ] || return 3
}

# Kafka's own Java tools, for interop tests and by hand.
tool() {
  local name=${1:-}
  [ -n "$name" ] || die "usage: $0 tool console-producer|console-consumer|topics|producer-perf|consumer-perf|transactions|consumer-groups|configs|features [ARGS...]"
  shift
  local class
  case $name in
  console-producer) class=org.apache.kafka.tools.ConsoleProducer ;;
  console-consumer) class=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
  topics) class=org.apache.kafka.tools.TopicCommand ;;
  producer-perf) class=org.apache.kafka.tools.ProducerPerformance ;;
  consumer-perf) class=org.apache.kafka.tools.ConsumerPerformance ;;
  transactions) class=org.apache.kafka.tools.TransactionsCommand ;;
  consumer-groups) class=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
  configs) class=org.apache.kafka.tools.ConfigCommand ;;
  features) class=org.apache.kafka.tools.FeatureCommand ;;
  *) die "unknown tool '$name': use console-producer, console-consumer, topics, producer-perf, consumer-perf, transactions, consumer-groups, configs or features" ;;
  esac
  find_java
  fetch
  run_class "$class" "$@"
}

case ${1:-} in
up) up ;;
down) down "${2:-}" ;;
kill) crash ;;
status) status ;;
logs) select_node "${only_node:-1}"; if [ "${2:-}" = "-f" ]; then tail -F "$log_file"; else tail -n 200 "$log_file"; fi ;;
bootstrap) bootstrap_servers ;;
tool) shift; tool "$@" ;;
fetch) find_java; fetch; echo "$libs" ;;
*) die "usage: $0 [--nodes N] up | down [--purge] [--node K] | kill --node K | status | logs [-f] [--node K] | bootstrap | tool NAME [ARGS...] | fetch" ;;
esac
