#!/usr/bin/env bash
# Set up, then run the whole test suite (well inside 20 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/setup.sh
python -m pytest -q tests "$@"
