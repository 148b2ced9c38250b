#!/usr/bin/env bash
# The Moorage demo on the embedded default: sets up (engine, venv, demo images), starts
# `moorage dev` (Temporal dev server + worker + API), deploys the demo project v1, then v2, then a
# broken revision that Moorage rolls back by itself. Leaves the stack running until Ctrl-C so you
# can look at the Temporal Web UI; `--exit` stops right after the demo.
# The demo is throwaway: its Temporal database lives in a fresh .moorage/demo, and when it stops it
# removes the demo project's containers and network (tenant "default", project "demo").
set -euo pipefail
cd "$(dirname "$0")/.."

EXIT_AFTER=0
[ "${1:-}" = "--exit" ] && EXIT_AFTER=1

DATA_DIR=${MOORAGE_DEMO_DATA_DIR:-.moorage/demo}
API_PORT=${MOORAGE_DEMO_API_PORT:-8000}
TEMPORAL_PORT=${MOORAGE_DEMO_TEMPORAL_PORT:-7233}
UI_PORT=${MOORAGE_DEMO_UI_PORT:-8233}
PROJECT=${MOORAGE_DEMO_PROJECT:-demo}

./scripts/setup.sh
M=.venv/bin/moorage
export MOORAGE_TEMPORAL_ADDRESS=127.0.0.1:$TEMPORAL_PORT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

remove_demo_project() {
  # What the demo deployed goes with it (also what an earlier, interrupted demo left).
  local ids
  ids=$(docker ps -aq --filter "label=moorage.tenant=default" --filter "label=moorage.project=$PROJECT")
  [ -n "$ids" ] && docker rm -f $ids >/dev/null
  ids=$(docker network ls -q --filter "label=moorage.tenant=default" --filter "label=moorage.project=$PROJECT")
  [ -n "$ids" ] && docker network rm $ids >/dev/null
  return 0
}
remove_demo_project
rm -rf "$DATA_DIR"

step "starting the local stack: moorage dev --data-dir $DATA_DIR"
mkdir -p "$DATA_DIR"
$M dev --data-dir "$DATA_DIR" --api-port "$API_PORT" --temporal-port "$TEMPORAL_PORT" --ui-port "$UI_PORT" \
  > "$DATA_DIR/dev.out" 2>&1 &
DEV=$!
stop_dev() {
  if kill -0 "$DEV" 2>/dev/null; then
    kill -INT "$DEV" 2>/dev/null || true
    wait "$DEV" 2>/dev/null || true
  fi
  remove_demo_project
}
trap stop_dev EXIT
# dev waits up to 30 s for each of Temporal, the worker and the API (and builds missing images).
started=0
for _ in $(seq 1 360); do
  grep -q "export MOORAGE_TEMPORAL_ADDRESS" "$DATA_DIR/dev.out" 2>/dev/null && { started=1; break; }
  kill -0 "$DEV" 2>/dev/null || { cat "$DATA_DIR/dev.out"; echo "moorage dev did not start" >&2; exit 1; }
  sleep 0.5
done
cat "$DATA_DIR/dev.out"
if [ "$started" != 1 ]; then
  echo "moorage dev did not come up within 180 s (logs: $DATA_DIR/logs)" >&2
  exit 1
fi

latest() { $M history "$PROJECT" --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["deployments"][0]["id"])'; }

step "v1: two services (web depends on api, 2 web replicas), recreate"
$M project apply "$PROJECT" -f demo/compose.v1.yaml
$M deploy "$PROJECT" --version v1 --watch
$M instances "$(latest)"

step "v2: new images for both services"
$M project apply "$PROJECT" -f demo/compose.v2.yaml
$M deploy "$PROJECT" --version v2 --watch
V2=$(latest)
$M instances "$V2"
ROUTE=$($M project show "$PROJECT" --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["routes"]["web"])')
echo "web answers through the router on $ROUTE with: $(.venv/bin/python -c "import urllib.request; print(urllib.request.urlopen('$ROUTE').read().decode().strip())")"

step "v3: web never gets healthy -> Moorage rolls back to v2 by itself"
$M project apply "$PROJECT" -f demo/compose.broken.yaml
if $M deploy "$PROJECT" --version v3-broken --health-check-retries 15 --watch; then
  echo "unexpected: the broken revision completed" >&2
  exit 1
fi
# Not any failure (a refused deploy exits non-zero too): the deployment rolled back.
V3_STATUS=$($M status "$(latest)" --json | .venv/bin/python -c 'import json,sys; d=json.load(sys.stdin); print(d["version"], d["status"])')
if [ "$V3_STATUS" != "v3-broken rolled_back" ]; then
  echo "unexpected: the broken revision ended as: $V3_STATUS (wanted: v3-broken rolled_back)" >&2
  exit 1
fi
$M status "$(latest)"
$M project apply "$PROJECT" -f demo/compose.v2.yaml >/dev/null  # keep the good spec for next time

step "history"
$M history "$PROJECT"

echo
echo "Temporal Web UI: http://127.0.0.1:$UI_PORT  (filter: ProjectId = \"$PROJECT\")"
echo "API docs:        http://127.0.0.1:$API_PORT/docs  (key: $(cat "$DATA_DIR/dev-api-key"))"
if [ "$EXIT_AFTER" = 1 ]; then
  step "stopping the stack"
  exit 0
fi
echo "The stack keeps running; Ctrl-C stops it."
wait "$DEV"
