"""Scripted source demonstrator: success rate and seconds per demo over N seeds per task.

    python bench/bench_scripted.py --seeds 50 [--tasks Threading_D2 ...]
"""
import argparse
import os
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import common  # noqa: E402
from common.env import scripted_demo_fn  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--tasks", nargs="*", default=sorted(common.TASKS))
    args = p.parse_args()
    rows = []
    for task in args.tasks:
        env = common.make_env(task, obs_mode="state")
        fn = scripted_demo_fn(task)
        ok, times, steps, reasons = 0, [], [], Counter()
        for s in tqdm(range(args.seeds), desc=task):
            t = time.perf_counter()
            d = fn(env, s, np.random.default_rng(s), record=True)
            times.append(time.perf_counter() - t)
            steps.append(d.steps)
            if d.failed is None and env.success():
                ok += 1
            else:
                reasons[d.failed or "not successful at the end"] += 1
        rows.append((task, ok, args.seeds, np.mean(times), np.mean(steps), dict(reasons)))
        env.close()
    print("| task | success | s/demo | steps/demo | failures |\n|---|---|---|---|---|")
    for task, ok, n, t, st, r in rows:
        print(f"| {task} | {ok}/{n} ({100 * ok / n:.0f} %) | {t:.2f} | {st:.0f} | {r or '-'} |")


if __name__ == "__main__":
    main()
