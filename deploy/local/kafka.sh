#!/usr/bin/env bash
# A real, single-node Apache Kafka (KRaft, combined broker + controller) on 127.0.0.1 for development
# and tests. The jars come from Maven Central (pom.xml beside this script) and are cached outside the
# clone, so a second clone starts without downloading.
#
# Usage: deploy/local/kafka.sh up | down [--purge] | status | logs [-f] | tool NAME [ARGS...] | fetch
#
# Environment:
#   KAFKA_PORT        client port (default 9092); the controller listens on KAFKA_PORT+1
#   KAFKA_DATA_DIR    KRaft storage, logs and pid file (default <repo>/.kafka/<port>); survives `down`
#   ORDERFLOW_CACHE   jar cache root (default ~/.cache/orderflow)
#   KAFKA_HEAP        broker heap (default 1g)
#   JAVA_HOME         the JDK to use (default: java on PATH, Temurin 25 if that is older than 17)
set -euo pipefail

KAFKA_VERSION=4.4.0
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
port=${KAFKA_PORT:-9092}
controller_port=$((port + 1))
data_dir=${KAFKA_DATA_DIR:-$repo/.kafka/$port}
cache_root=${ORDERFLOW_CACHE:-$HOME/.cache/orderflow}
libs=$cache_root/kafka-$KAFKA_VERSION/libs
pid_file=$data_dir/broker.pid
log_file=$data_dir/logs/server.log

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
  [ -f "$pid_file" ] || return 1
  local pid
  pid=$(cat "$pid_file")
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka.Kafka $data_dir/server.properties" || return 1
  echo "$pid"
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
# Written by deploy/local/kafka.sh: one combined broker + controller for development and tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$data_dir/kraft
# Topics are provisioned explicitly (orderflow topics create); a typo must not create a topic.
auto.create.topics.enable=false
num.partitions=1
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
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

up() {
  if pid=$(our_pid); then
    echo "kafka.sh: broker already running on 127.0.0.1:$port (pid $pid, data $data_dir)"
    return 0
  fi
  for p in "$port" "$controller_port"; do
    if port_in_use "$p"; then
      die "port $p is taken by $(port_owner "$p" || true) which is not an orderflow broker of $data_dir. Stop it, or choose another port with KAFKA_PORT=<port> (the controller uses KAFKA_PORT+1)."
    fi
  done
  find_java
  fetch
  write_config
  if [ ! -f "$data_dir/kraft/meta.properties" ]; then
    local cluster_id
    cluster_id=$(run_class kafka.tools.StorageTool random-uuid)
    run_class kafka.tools.StorageTool format --cluster-id "$cluster_id" \
      --config "$data_dir/server.properties" --ignore-formatted >"$data_dir/logs/format.log" 2>&1 ||
      {
        cat "$data_dir/logs/format.log" >&2
        die "formatting KRaft storage in $data_dir/kraft failed (output above). Wipe it with '$0 down --purge' and retry."
      }
  fi
  echo "kafka.sh: starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$port (data $data_dir)"
  # setsid: the broker is not in the caller's process group, so a Ctrl-C in `make run` does not kill
  # it mid-write; `down` stops it.
  setsid "$JAVA" -Xms${KAFKA_HEAP:-1g} -Xmx${KAFKA_HEAP:-1g} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$data_dir/log4j2.properties" \
    -cp "$libs/*" kafka.Kafka "$data_dir/server.properties" \
    >"$data_dir/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$pid_file"
  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-90}))
  until port_in_use "$port" && broker_answers; do
    if ! our_pid >/dev/null; then
      tail -40 "$log_file" "$data_dir/logs/stdout.log" >&2 2>/dev/null || true
      die "the broker exited during start-up (log tail above; full log: $log_file)."
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -40 "$log_file" >&2 2>/dev/null || true
      down >/dev/null
      die "the broker did not answer on 127.0.0.1:$port within ${KAFKA_START_TIMEOUT:-90}s (log tail above; full log: $log_file)."
    fi
    sleep 0.5
  done
  echo "kafka.sh: broker ready on 127.0.0.1:$port (pid $(cat "$pid_file"))"
}

down() {
  local pid
  if pid=$(our_pid); then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "kafka.sh: broker pid $pid did not stop within 30 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "kafka.sh: broker on 127.0.0.1:$port stopped"
  else
    echo "kafka.sh: no broker of $data_dir is running"
  fi
  rm -f "$pid_file"
  if [ "${1:-}" = "--purge" ]; then
    rm -rf "$data_dir"
    echo "kafka.sh: wiped $data_dir"
  fi
}

status() {
  if pid=$(our_pid); then
    echo "running: 127.0.0.1:$port pid $pid data $data_dir"
  else
    echo "stopped: 127.0.0.1:$port data $data_dir"
    return 3
  fi
}

# Kafka's own Java tools, for interop tests and by hand.
tool() {
  local name=${1:-}
  [ -n "$name" ] || die "usage: $0 tool console-producer|console-consumer|topics|producer-perf|consumer-perf [ARGS...]"
  shift
  local class
  case $name in
  console-producer) class=org.apache.kafka.tools.ConsoleProducer ;;
  console-consumer) class=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
  topics) class=org.apache.kafka.tools.TopicCommand ;;
  producer-perf) class=org.apache.kafka.tools.ProducerPerformance ;;
  consumer-perf) class=org.apache.kafka.tools.ConsumerPerformance ;;
  *) die "unknown tool '$name': use console-producer, console-consumer, topics, producer-perf or consumer-perf" ;;
  esac
  find_java
  fetch
  run_class "$class" "$@"
}

case ${1:-} in
up) up ;;
down) down "${2:-}" ;;
status) status ;;
logs) if [ "${2:-}" = "-f" ]; then tail -F "$log_file"; else tail -n 200 "$log_file"; fi ;;
tool) shift; tool "$@" ;;
fetch) find_java; fetch; echo "$libs" ;;
*) die "usage: $0 up | down [--purge] | status | logs [-f] | tool NAME [ARGS...] | fetch" ;;
esac
