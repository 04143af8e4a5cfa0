"""Environment throughput: env steps per second of make_env in state and image mode, against raw
robosuite.make("NutAssembly") measured in the same run (issue 2 goal: state >= 0.9x raw), and
state mode with robosuite's own per-substep controller (`fast_control=False`) against the kit's
fast OSC substeps (common/osc.py), which give bit-identical states.

    python bench/bench_env.py --steps 500
    python bench/bench_env.py --steps 300 --no-images --tasks ThreePieceAssembly_D2 Coffee_D2
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import robosuite  # noqa: E402
from robosuite.controllers import load_composite_controller_config  # noqa: E402

import common  # noqa: E402


def rate(env_step, reset, steps, rng, episode=200):
    """Steps per second of env_step alone (resets every `episode` steps are not timed)."""
    elapsed = 0.0
    for start in range(0, steps, episode):
        reset()
        n = min(episode, steps - start)
        t = time.perf_counter()
        for _ in range(n):
            env_step(rng.uniform(-0.3, 0.3, 7))
        elapsed += time.perf_counter() - t
    return steps / elapsed


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--tasks", nargs="*", default=sorted(common.TASKS))
    p.add_argument("--no-images", action="store_true", help="skip the image-mode rows")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    cfg = load_composite_controller_config(controller="BASIC", robot="Panda")
    raw = robosuite.make("NutAssembly", robots="Panda", controller_configs=cfg, has_renderer=False,
                         has_offscreen_renderer=False, use_camera_obs=False, ignore_done=True)
    raw_rate = rate(raw.step, raw.reset, args.steps, rng)
    rows = [("robosuite NutAssembly (raw, state)", raw_rate, 1.0)]
    for task in args.tasks:
        env = common.make_env(task, obs_mode="state", fast_control=False)
        slow = rate(env.step, env.reset, args.steps, rng)
        rows.append((f"{task} state, robosuite substeps", slow, slow / raw_rate))
        env.close()
        env = common.make_env(task, obs_mode="state")
        r = rate(env.step, env.reset, args.steps, rng)
        rows.append((f"{task} state (fast OSC substeps: {r / slow:.2f}x)", r, r / raw_rate))
        env.close()
        if args.no_images:
            continue
        env = common.make_env(task, obs_mode="image")
        n = max(50, args.steps // 5)
        r = rate(env.step, env.reset, n, rng)
        rows.append((f"{task} image ({len(env.cameras)} cams 84x84)", r, r / raw_rate))
        env.close()
    print("| env | steps/s | vs raw |\n|---|---|---|")
    for name, r, rel in rows:
        print(f"| {name} | {r:.0f} | {rel:.2f}x |")


if __name__ == "__main__":
    main()
