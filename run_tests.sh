#!/usr/bin/env bash
# Set up, then run the whole test suite (well inside 20 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/setup.sh
# Two pytest workers (pytest-xdist): the suite is one process's simulation work end to end, and on
# a slow 2-core machine it took 16.5 min in one process, 7.3 min in two. PYTEST_WORKERS=0 runs in-process.
python -m pytest -q -n "${PYTEST_WORKERS:-2}" tests "$@"
