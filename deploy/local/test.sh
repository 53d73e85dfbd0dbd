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

started=0
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
}
trap stop EXIT INT TERM

# The tests' local stores (state.backend = disk): one directory per test, emptied per run.
rm -rf "${TMPDIR:-/tmp}/orderflow-test-state"

# The failpoints (crash, zombie, watchdog tests) exist only with this feature.
cargo test --all-targets --features failpoints "$@"
