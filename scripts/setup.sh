#!/usr/bin/env bash
# Everything Moorage needs on this machine: a Docker engine, HAProxy (the default router),
# busybox-static for the demo images, a virtualenv with Moorage and its dev tools, and the demo
# images on the engine. With --tests, also nginx (the other router, which the tests use) and wrk
# (the benchmark's load). On a fresh Debian machine, as root, it installs what is missing from
# Debian and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[moorage] $*" >&2; }

# A static busybox: a dynamic one (Debian's busybox) does not run in the demo images.
static_busybox() {
  local b
  for b in /bin/busybox /usr/bin/busybox; do
    if [ -x "$b" ] && ! ldd "$b" >/dev/null 2>&1; then return 0; fi
  done
  return 1
}

need_apt=()
static_busybox || need_apt+=(busybox-static)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
python3 -c 'import ensurepip' 2>/dev/null || [ -x .venv/bin/python ] || need_apt+=(python3-venv)
if [ "${1:-}" = "--tests" ]; then
  command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
  # TCP routes (x-moorage: {route: tcp}) through nginx: its stream module, a package of its own.
  [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need_apt+=(libnginx-mod-stream)
  command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    log "installing from Debian: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    log "missing: ${need_apt[*]} (install them, e.g. apt-get install ${need_apt[*]})"
    exit 1
  fi
fi

./scripts/ensure-engine.sh

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import moorage, temporalio, docker, fastapi, pytest" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.moorage-installed ]; then
  log "installing Moorage and its dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  touch .venv/.moorage-installed
fi
# The workflow sandbox imports the workflow modules afresh for every workflow run: without
# bytecode (PYTHONDONTWRITEBYTECODE, or an editable install never imported) each run compiles them
# from source first: ~20 ms of CPU in the first step of every deployment (profiled under the
# benchmark load). Compiled once here.
.venv/bin/python -m compileall -q workflows activities moorage >/dev/null
.venv/bin/python -m moorage.cli images >/dev/null
log "ready: engine answers, demo images built, .venv installed"
