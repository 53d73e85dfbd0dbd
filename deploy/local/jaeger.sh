#!/usr/bin/env bash
# A real Jaeger v2 (OTLP receiver, in-memory storage, query API and UI) on 127.0.0.1 for
# development and the trace tests. The binary is built from the Go module pinned in jaeger/go.mod
# (a `tool` directive and its go.sum) with the Go toolchain, and cached outside the clone, so a
# second clone starts without building.
#
# Usage: deploy/local/jaeger.sh up | down [--purge] | status | logs [-f] | fetch | endpoint | ui
#   up        builds the binary if it is not cached, starts Jaeger unless it runs, waits until healthy
#   down      stops it (--purge also removes its data dir: pid file and log)
#   fetch     only builds the binary (prints how long a cold build took)
#   endpoint  prints the OTLP/gRPC endpoint (what OTEL_EXPORTER_OTLP_ENDPOINT takes)
#   ui        prints the query API's and UI's base URL
#
# Environment:
#   JAEGER_PORT      the OTLP/gRPC port (default 4317); OTLP/HTTP listens on JAEGER_PORT+1, the
#                    query API and UI on JAEGER_PORT+2, its gRPC on +3 and the health check on +4
#   JAEGER_DATA_DIR  pid file and log (default <repo>/.jaeger/<port>)
#   ORDERFLOW_CACHE  binary cache root (default ~/.cache/orderflow)
#   JAEGER_UI_ASSETS a built jaeger-ui (packages/jaeger-ui/build of github.com/jaegertracing/jaeger-ui)
#                    to serve as the UI; without it the query API works and / is a placeholder page
#                    (the UI's sources are not in a package registry, so this script cannot fetch them)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=pidfile.sh
. "$here/pidfile.sh"
repo=$(cd "$here/../.." && pwd)
module_dir=$here/jaeger
# The version is the one go.mod pins; the cache is keyed by it.
version=$(sed -n 's|^[[:space:]]*github.com/jaegertracing/jaeger v\([^ ]*\).*|\1|p' "$module_dir/go.mod" | head -1)
base_port=${JAEGER_PORT:-4317}
data_dir=${JAEGER_DATA_DIR:-$repo/.jaeger/$base_port}
cache_root=${ORDERFLOW_CACHE:-$HOME/.cache/orderflow}
binary=$cache_root/jaeger-$version/jaeger
pid_file=$data_dir/jaeger.pid
log_file=$data_dir/jaeger.log

export JAEGER_OTLP_GRPC_PORT=$base_port
export JAEGER_OTLP_HTTP_PORT=$((base_port + 1))
export JAEGER_QUERY_PORT=$((base_port + 2))
export JAEGER_QUERY_GRPC_PORT=$((base_port + 3))
export JAEGER_HEALTH_PORT=$((base_port + 4))

die() {
  echo "jaeger.sh: $*" >&2
  exit 1
}

[ -n "$version" ] || die "cannot read Jaeger's version from $module_dir/go.mod"

fetch() {
  if [ -x "$binary" ]; then
    return 0
  fi
  command -v go >/dev/null || die "'go' not found: install Go 1.24.6 or later (https://go.dev/dl) and retry."
  echo "jaeger.sh: building Jaeger $version with $(go version | cut -d' ' -f3) (once; cached in $binary)"
  local started=$SECONDS tmp
  mkdir -p "$(dirname "$binary")"
  tmp=$binary.tmp.$$
  # -mod=readonly: go.sum is the pin; a build never rewrites it.
  if ! (cd "$module_dir" && CGO_ENABLED=0 go build -mod=readonly -trimpath -o "$tmp" github.com/jaegertracing/jaeger/cmd/jaeger); then
    rm -f "$tmp"
    die "building Jaeger failed (output above). Go modules come from GOPROXY ($(go env GOPROXY)); check that it is reachable."
  fi
  mv "$tmp" "$binary"
  echo "jaeger.sh: built Jaeger $version in $((SECONDS - started)) s"
}

our_pid() {
  running_pid "$pid_file" "$binary"
}

healthy() {
  curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$JAEGER_HEALTH_PORT/status" 2>/dev/null
}

up() {
  fetch
  if our_pid >/dev/null; then
    echo "jaeger.sh: already running on 127.0.0.1:$base_port (pid $(our_pid))"
    return 0
  fi
  local port
  for port in "$JAEGER_OTLP_GRPC_PORT" "$JAEGER_OTLP_HTTP_PORT" "$JAEGER_QUERY_PORT" "$JAEGER_QUERY_GRPC_PORT" "$JAEGER_HEALTH_PORT"; do
    if [ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]; then
      die "port $port is taken by another program; pick other ports with JAEGER_PORT=N (N to N+4)"
    fi
  done
  mkdir -p "$data_dir"
  # setsid: Jaeger is not in the caller's process group, so a Ctrl-C in `make run` leaves it to `down`.
  setsid "$binary" --config "$module_dir/config.yaml" >"$log_file" 2>&1 </dev/null &
  echo $! >"$pid_file"
  local waited=0
  until healthy; do
    if ! our_pid >/dev/null; then
      tail -20 "$log_file" >&2 || true
      die "Jaeger exited at start (log: $log_file)"
    fi
    if [ "$waited" -ge 300 ]; then
      die "Jaeger did not become healthy in 30 s (log: $log_file)"
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  echo "jaeger.sh: Jaeger $version up: OTLP gRPC 127.0.0.1:$JAEGER_OTLP_GRPC_PORT, HTTP 127.0.0.1:$JAEGER_OTLP_HTTP_PORT; UI and query API http://127.0.0.1:$JAEGER_QUERY_PORT"
}

down() {
  local pid
  if pid=$(our_pid); then
    kill "$pid"
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    echo "jaeger.sh: stopped"
  fi
  rm -f "$pid_file"
  if [ "${1:-}" = --purge ]; then
    rm -rf "$data_dir"
  fi
}

case ${1:-} in
up) up ;;
down) down "${2:-}" ;;
status)
  if our_pid >/dev/null && healthy; then
    echo "jaeger.sh: running on 127.0.0.1:$base_port (pid $(our_pid))"
  else
    echo "jaeger.sh: not running on 127.0.0.1:$base_port"
    exit 1
  fi
  ;;
logs)
  if [ "${2:-}" = -f ]; then tail -f "$log_file"; else cat "$log_file"; fi
  ;;
fetch) fetch ;;
endpoint) echo "http://127.0.0.1:$JAEGER_OTLP_GRPC_PORT" ;;
ui) echo "http://127.0.0.1:$JAEGER_QUERY_PORT" ;;
*)
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
  ;;
esac
