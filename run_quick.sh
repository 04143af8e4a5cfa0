#!/usr/bin/env bash
# The main job: set up, then run the pipeline's quick preset on the default task.
# Usage: bash run_quick.sh [TASK]   (default Threading_D2)
set -euo pipefail
cd "$(dirname "$0")"
. scripts/setup.sh
TASK="${1:-Threading_D2}"
python 01_generate.py --task "$TASK" --preset quick --source scripted --workers 2
