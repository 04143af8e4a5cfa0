"""Render the 84x84 agentview frame of every task at reset and at success into docs/, plus a
montage (upscaled 3x) for the README. Runs the scripted demonstrator in state mode and renders the
first and last states of a successful demo by replay.

    python scripts/render_docs.py [--tasks ...] [--seed 0]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402
from common.env import make_env, render_states, scripted_demo_fn  # noqa: E402

SHORT = {"Threading_D2": "threading", "Coffee_D2": "coffee", "NutAssembly_D2": "nut_assembly",
         "ThreePieceAssembly_D2": "three_piece", "CoffeePreparation_D2": "coffee_preparation"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", nargs="*", default=sorted(common.TASKS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for task in args.tasks:
        env, img_env = make_env(task), make_env(task, obs_mode="image", cameras=["agentview"])
        for seed in range(args.seed, args.seed + 10):
            d = scripted_demo_fn(task)(env, seed, np.random.default_rng(seed), record=True)
            if d.failed is None and env.success():
                break
        states = d.rec.to_demo()["states"]
        frames = render_states(img_env, [states[0], states[-1]])["agentview_image"]
        name = SHORT.get(task, task.lower())
        plt.imsave(os.path.join(args.out, f"{name}_reset.png"), frames[0])
        plt.imsave(os.path.join(args.out, f"{name}_success.png"), frames[1])
        rows.append((task, frames))
        print(task, "seed", seed)
    fig, axes = plt.subplots(2, len(rows), figsize=(2.2 * len(rows), 4.6))
    axes = np.array(axes).reshape(2, -1)
    for j, (task, frames) in enumerate(rows):
        for i, label in enumerate(("reset", "success")):
            axes[i, j].imshow(frames[i])
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
            if j == 0:
                axes[i, j].set_ylabel(label)
        axes[0, j].set_title(task.replace("_D2", ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "tasks.png"), dpi=120)


if __name__ == "__main__":
    main()
