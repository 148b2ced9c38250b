#!/usr/bin/env bash
# Make sure a Docker engine answers on DOCKER_HOST (default: the local socket).
# On a fresh Debian machine, as root, install Debian's docker.io and start dockerd in the
# background. Says what it does; exits non-zero when no engine can be had.
#
# The dockerd it starts runs with live-restore (containers keep running while dockerd restarts)
# and without the userland proxy (ports published on 127.0.0.1 are served by iptables, which
# outlive dockerd, instead of by docker-proxy processes, which die with it). Together they let a
# dockerd restart pass without a dropped request. `--configure-only` writes that into
# /etc/docker/daemon.json when there is none (run it before installing docker.io, whose
# installer may start dockerd) and does nothing else.
set -euo pipefail

log() { echo "[moorage] $*" >&2; }

daemon_json=/etc/docker/daemon.json
configure() {
  if [ "$(id -u)" = "0" ] && [ ! -e "$daemon_json" ]; then
    mkdir -p "$(dirname "$daemon_json")"
    echo '{"live-restore": true, "userland-proxy": false}' >"$daemon_json"
    log "wrote $daemon_json: live-restore, no userland proxy"
  fi
}
if [ "${1:-}" = "--configure-only" ]; then
  configure
  exit 0
fi

warn_live_restore() {
  if [ "$(docker info --format '{{.LiveRestoreEnabled}}' 2>/dev/null)" != "true" ]; then
    log "warning: this dockerd runs without live-restore: restarting it stops every container"
  fi
}

if docker info >/dev/null 2>&1; then
  warn_live_restore
  exit 0
fi
if [ -n "${DOCKER_HOST:-}" ] && [ "${DOCKER_HOST}" != "unix:///var/run/docker.sock" ]; then
  log "no Docker engine answers at DOCKER_HOST=${DOCKER_HOST}; start it, or unset DOCKER_HOST"
  exit 1
fi
if [ "$(id -u)" != "0" ]; then
  log "no Docker engine answers and this is not root: start dockerd (or run as root) and try again"
  exit 1
fi
if ! command -v dockerd >/dev/null 2>&1; then
  log "no dockerd here: installing Debian's docker.io"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if docker info >/dev/null 2>&1; then
  warn_live_restore
  exit 0
fi
# A dockerd killed hard leaves its pid file, and a new one refuses to start while it exists.
pidfile=/var/run/docker.pid
if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  log "removing stale $pidfile"
  rm -f "$pidfile"
fi
configure
# Flags for what daemon.json leaves unsaid (dockerd refuses a setting given both ways).
flags=()
grep -q '"live-restore"' "$daemon_json" 2>/dev/null || flags+=(--live-restore)
grep -q '"userland-proxy"' "$daemon_json" 2>/dev/null || flags+=(--userland-proxy=false)
mkdir -p /var/log
log "no Docker engine answers: starting dockerd in the background (log: /var/log/moorage-dockerd.log)"
nohup dockerd "${flags[@]}" >>/var/log/moorage-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    log "dockerd is up"
    warn_live_restore
    exit 0
  fi
  sleep 0.5
done
log "dockerd did not answer within 30 s; see /var/log/moorage-dockerd.log"
tail -20 /var/log/moorage-dockerd.log >&2 || true
exit 1
