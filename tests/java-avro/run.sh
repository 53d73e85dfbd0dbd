#!/usr/bin/env bash
# Runs AvroInterop.java with Java's Avro, fetching the jars with Maven once into a cache.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
deps=${ORDERFLOW_CACHE:-$HOME/.cache/orderflow}/java-avro-1.12.1
if [ ! -f "$deps/.complete" ]; then
  command -v mvn >/dev/null || { echo "run.sh: 'mvn' not found: install Maven to run the Java Avro interop test" >&2; exit 1; }
  mkdir -p "$deps"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -DoutputDirectory="$deps" >&2
  touch "$deps/.complete"
fi
exec java -cp "$deps/*" "$here/AvroInterop.java" "$@"
