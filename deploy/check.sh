#!/usr/bin/env bash
# `make deploy-check`: renders the Kubernetes manifests and validates them offline, checks the
# Prometheus rules (syntax and unit tests), the Grafana dashboard's queries and the cluster config,
# then proves the checks bite: every file in deploy/fixtures/ must be rejected.
#
# Tools, installed on first use into ~/.cache/orderflow (ORDERFLOW_CACHE):
#   kustomize  - `kubectl kustomize` when kubectl exists, else `go install` of kustomize v5.5.0
#   kubernetes-validate 1.34.0, check-jsonschema 0.39.0 - PyPI, in a virtualenv
#   promtool   - Debian's prometheus package (apt-get, as root)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${ORDERFLOW_CACHE:-$HOME/.cache/orderflow}
k8s_version=1.33.0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$repo"

fail() { echo "deploy-check: $*" >&2; exit 1; }
step() { echo "deploy-check: $*"; }

# --- tools -------------------------------------------------------------------------------------
venv=$cache/deploy-venv
if [ ! -x "$venv/bin/check-jsonschema" ] || [ ! -x "$venv/bin/kubernetes-validate" ]; then
  step "installing kubernetes-validate and check-jsonschema into $venv"
  python3 -m venv "$venv" || fail "cannot create a Python virtualenv: install python3-venv and retry"
  "$venv/bin/pip" install --quiet kubernetes-validate==1.34.0 check-jsonschema==0.39.0 \
    || fail "pip could not install kubernetes-validate/check-jsonschema from PyPI (network?)"
fi
python=$venv/bin/python

if command -v kubectl >/dev/null 2>&1; then
  kustomize() { kubectl kustomize "$@"; }
else
  if [ ! -x "$cache/bin/kustomize" ]; then
    command -v go >/dev/null || fail "neither kubectl nor go is installed: install one of them to render the kustomization"
    step "installing kustomize v5.5.0 into $cache/bin (go install)"
    GOBIN=$cache/bin go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0 \
      || fail "go install of kustomize failed (network?)"
  fi
  kustomize() { "$cache/bin/kustomize" build "$@"; }
fi

if ! command -v promtool >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || fail "promtool is missing: run 'sudo apt-get install prometheus' and retry"
  step "installing promtool (Debian package prometheus)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >"$work/apt.log" 2>&1 \
    || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >"$work/apt.log" 2>&1; } \
    || { cat "$work/apt.log" >&2; fail "apt-get could not install prometheus (for promtool)"; }
fi

# --- checks, each a function so the fixtures can be run through the same ones -------------------

# Validates a multi-document manifest: built-in kinds against Kubernetes' schemas (strict: unknown
# fields are errors), KEDA ScaledObjects against deploy/k8s/schemas; any other kind is an error.
check_manifests() {
  local file=$1 out=$work/split.$RANDOM
  mkdir -p "$out"
  "$python" - "$file" "$out" <<'PY' || return 1
import sys, yaml, pathlib
src, out = sys.argv[1], pathlib.Path(sys.argv[2])
for i, doc in enumerate(d for d in yaml.safe_load_all(open(src)) if d):
    kind = doc.get("kind", "")
    target = "keda" if kind == "ScaledObject" else "k8s"
    (out / f"{i:03}-{target}-{kind}.json").write_text(__import__("json").dumps(doc))
PY
  local rc=0 doc
  for doc in "$out"/*; do
    case "$doc" in
      *-keda-*) "$venv/bin/check-jsonschema" --schemafile "$repo/deploy/k8s/schemas/keda-scaledobject.schema.json" "$doc" >"$work/out" 2>&1 || { cat "$work/out"; rc=1; } ;;
      *)
        "$venv/bin/kubernetes-validate" -k "$k8s_version" --strict --quiet "$doc" >"$work/out" 2>&1 || rc=1
        # An unknown kind is only a warning there; here it is an error.
        if grep -qE "ERROR|FATAL|Couldn't find schema" "$work/out"; then cat "$work/out"; rc=1; fi ;;
    esac
  done
  return $rc
}

check_rules() { promtool check rules "$1"; }

# Every dashboard query must parse: they are checked as recording rules by promtool.
check_dashboard() {
  "$python" - "$1" "$work/dashboard-rules.yaml" <<'PY' || return 1
import json, sys
dash = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
if not exprs:
    sys.exit(f"{sys.argv[1]}: no queries")
with open(sys.argv[2], "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        e = e.replace("$__rate_interval", "5m").replace("$namespace", "default")
        out.write(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(e)}\n")
PY
  promtool check rules "$work/dashboard-rules.yaml" >"$work/out" 2>&1 || { cat "$work/out"; return 1; }
}

# The cluster config and definition, as orderflow itself reads them (no connection).
check_config() {
  ORDERFLOW_CONFIG=$1 ORDERFLOW_DEFINITION=$2 ORDERFLOW_INSTANCE_ID=orderflow-0 \
    "$repo/target/debug/orderflow" config check
}

# --- the real files ------------------------------------------------------------------------------
cmp -s machines/order-lifecycle.toml deploy/k8s/base/order-lifecycle.toml \
  || fail "deploy/k8s/base/order-lifecycle.toml differs from machines/order-lifecycle.toml: copy it over (kustomize cannot read files outside deploy/k8s/base)"

for target in base overlays/keda overlays/hpa; do
  step "kustomize deploy/k8s/$target"
  kustomize "deploy/k8s/$target" >"$work/rendered.yaml" || fail "deploy/k8s/$target does not render"
  check_manifests "$work/rendered.yaml" || fail "deploy/k8s/$target: invalid manifests (above)"
done

step "promtool: alert rules and their unit tests"
check_rules deploy/prometheus/alerts.yaml >/dev/null || fail "deploy/prometheus/alerts.yaml is invalid"
(cd deploy/prometheus && promtool test rules alerts.test.yaml) >"$work/out" 2>&1 \
  || { cat "$work/out"; fail "deploy/prometheus/alerts.test.yaml: an alert does not behave as tested"; }

step "grafana dashboard queries"
check_dashboard deploy/grafana/orderflow.json || fail "deploy/grafana/orderflow.json has an invalid query"

step "orderflow config check on the cluster config"
cargo build --quiet --bin orderflow
check_config deploy/k8s/base/config.toml deploy/k8s/base/order-lifecycle.toml >/dev/null \
  || fail "deploy/k8s/base/config.toml is not a valid orderflow config"

# --- the checks must reject every broken fixture -------------------------------------------------
step "broken fixtures must be rejected"
for fixture in deploy/fixtures/*; do
  case "$fixture" in
    *.md) continue ;;
    */k8s-*) check=(check_manifests "$fixture") ;;
    */alerts-*) check=(check_rules "$fixture") ;;
    */dashboard-*) check=(check_dashboard "$fixture") ;;
    */config-*) check=(check_config "$fixture" machines/order-lifecycle.toml) ;;
    *) fail "$fixture: no check knows this fixture; name it k8s-*, alerts-*, dashboard-* or config-*" ;;
  esac
  if "${check[@]}" >"$work/fixture.out" 2>&1; then
    fail "$fixture was accepted, but it is broken on purpose: the check does not check"
  fi
  echo "  rejected as expected: $fixture ($(grep -m1 -iE 'error|invalid|unknown|not|fail' "$work/fixture.out" | cut -c1-110))"
done
step "all deploy checks passed"
