#!/usr/bin/env bash
# `make test`: starts a broker for the tests on its own port and data dir (never the `make run` one),
# runs the unit and integration tests against it, and stops it again if it started it.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"

command -v cargo >/dev/null || {
  echo "test.sh: 'cargo' not found: install Rust with rustup (https://rustup.rs) and retry." >&2
  exit 1
}

export KAFKA_PORT=${ORDERFLOW_TEST_KAFKA_PORT:-19092}
export KAFKA_DATA_DIR=${ORDERFLOW_TEST_KAFKA_DIR:-$repo/.kafka/test-$KAFKA_PORT}
export ORDERFLOW_TEST_BOOTSTRAP=127.0.0.1:$KAFKA_PORT

# Jaeger for the trace tests (built from deploy/local/jaeger/go.mod once, then cached).
export JAEGER_PORT=${ORDERFLOW_TEST_JAEGER_PORT:-14317}
export JAEGER_DATA_DIR=${ORDERFLOW_TEST_JAEGER_DIR:-$repo/.jaeger/test-$JAEGER_PORT}
export ORDERFLOW_TEST_JAEGER_PORT=$JAEGER_PORT

started=0
jaeger_started=0
if "$here/kafka.sh" status >/dev/null 2>&1; then
  echo "test.sh: reusing the test broker already running on $ORDERFLOW_TEST_BOOTSTRAP"
else
  # A fresh data dir each run: tests never see an earlier run's topics.
  "$here/kafka.sh" down --purge >/dev/null 2>&1 || true
  "$here/kafka.sh" up || exit 1
  started=1
fi
stop() {
  # A test that panics leaves the orderflow processes it spawned running (retrying forever once the
  # broker is gone), and they would hold this script's output open: stop them first.
  pkill -f "^$repo/target/debug/orderflow " 2>/dev/null || true
  if [ "$started" = 1 ]; then
    "$here/kafka.sh" down --purge >/dev/null
  fi
  if [ "$jaeger_started" = 1 ]; then
    "$here/jaeger.sh" down --purge >/dev/null
  fi
}
trap stop EXIT INT TERM
if "$here/jaeger.sh" status >/dev/null 2>&1; then
  echo "test.sh: reusing the test Jaeger already running on 127.0.0.1:$JAEGER_PORT"
else
  "$here/jaeger.sh" up || exit 1
  jaeger_started=1
fi

# The tests' local stores (state.backend = disk): one directory per test, emptied per run.
rm -rf "${TMPDIR:-/tmp}/orderflow-test-state"

# The failpoints (crash, zombie, watchdog tests) exist only with this feature.
cargo test --all-targets --features failpoints "$@"
