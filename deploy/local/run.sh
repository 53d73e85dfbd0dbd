#!/usr/bin/env bash
# `make run`: the local broker, the topics, the processor, and a demo load whose outcomes are printed.
# The processor keeps running afterwards when KEEP_RUNNING=1 (Ctrl-C stops it).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
bin=${OF_BIN:-target/release/orderflow}

"$here/kafka.sh" up
"$bin" topics create
log=$(mktemp /tmp/orderflow-run.XXXXXX.log)
"$bin" run 2>"$log" &
processor=$!
stop() {
  if kill -0 "$processor" 2>/dev/null; then
    kill -TERM "$processor"
    wait "$processor" || true
  fi
}
trap stop EXIT
echo "processor running (pid $processor, log $log)"
echo "its orders are kept in a local store under $repo/${ORDERFLOW_STATE__DIR:-orderflow-state}/ (state.backend = disk): a cache of the"
echo "compacted state topic, so the next start reads only what changed since; delete it any time the processor is stopped"
"$bin" demo
if [ "${KEEP_RUNNING:-0}" = 1 ]; then
  echo "processor keeps running; Ctrl-C stops it"
  tail -f "$log" &
  wait "$processor"
else
  echo "stopping the processor (KEEP_RUNNING=1 keeps it running); its log: $log"
fi
