#!/usr/bin/env bash
# Make sure a Docker engine answers on DOCKER_HOST (default: the local socket).
# On a fresh Debian machine, as root, install Debian's docker.io and start dockerd in the
# background. Says what it does; exits non-zero when no engine can be had.
set -euo pipefail

log() { echo "[moorage] $*" >&2; }

if docker info >/dev/null 2>&1; then
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
  exit 0
fi
# A dockerd killed hard leaves its pid file, and a new one refuses to start while it exists.
pidfile=/var/run/docker.pid
if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  log "removing stale $pidfile"
  rm -f "$pidfile"
fi
mkdir -p /var/log
log "no Docker engine answers: starting dockerd in the background (log: /var/log/moorage-dockerd.log)"
nohup dockerd >/var/log/moorage-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    log "dockerd is up"
    exit 0
  fi
  sleep 0.5
done
log "dockerd did not answer within 30 s; see /var/log/moorage-dockerd.log"
tail -20 /var/log/moorage-dockerd.log >&2 || true
exit 1
