#!/usr/bin/env bash
# The main job: set up, then run the pipeline's quick preset on the default task:
# 01 source demos + generation -> 02 HSP behaviour cloning -> 06 Algorithm 1 evaluation (Table I rows).
# Usage: bash run_quick.sh [TASK]   (default Threading_D2)
set -euo pipefail
cd "$(dirname "$0")"
. scripts/setup.sh
TASK="${1:-Threading_D2}"
python 01_generate.py --task "$TASK" --preset quick --source scripted --workers 2
python 02_train_hsp.py --task "$TASK" --obs state --preset quick --overwrite
python 06_evaluate.py --task "$TASK" --preset quick --workers 2 --plot
echo "results: results/$TASK/table1.md, results/$TASK/eval.json, results/$TASK/eval.png"
