#!/usr/bin/env bash
# Starts the Kafka Streams incumbent (OrderflowStreams.java) or, with --pipe, the Java exactly-once
# pipe (EosPipe.java), fetching their jars with Maven once into
# a cache. Arguments go to the application (--bootstrap, --prefix, ...); run from the repository root.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
deps=${ORDERFLOW_CACHE:-$HOME/.cache/orderflow}/kafka-streams-4.4.0-bench
if [ ! -f "$deps/.complete" ]; then
  command -v mvn >/dev/null || { echo "run.sh: 'mvn' not found: install Maven to run the Kafka Streams benchmark" >&2; exit 1; }
  mkdir -p "$deps"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -DoutputDirectory="$deps" >&2
  touch "$deps/.complete"
fi
[ "${1:-}" = "--fetch-only" ] && exit 0
# `run.sh --pipe ARGS` runs the Java exactly-once pipe (EosPipe.java) instead of Kafka Streams.
main=OrderflowStreams.java
if [ "${1:-}" = "--pipe" ]; then
  main=EosPipe.java
  shift
fi
exec java -Xmx2g -cp "$deps/*" "$here/$main" "$@"
