"""Trace one stage's learned skill under HSP-Priv: where the gripper closes, relative to the
stage's reference object, in the rollouts where the stage succeeds and in those where it fails.

Runs Algorithm 1 (privileged pose, BC skills, oracle termination, as 06_evaluate.py's HSP-Priv)
up to and including `--stage`, recording at every skill step of that stage the end-effector pose
in the reference object's frame, the gripper command and the finger opening. Prints one row per
rollout and the means of successes and failures, and writes the traces as JSON.

    python bench/trace_skill.py --task ThreePieceAssembly_D2 --stage 2 --rollouts 60 --ckpt runs_rnn/ThreePieceAssembly_D2/hsp.pt
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import common  # noqa: E402
from common import data as D  # noqa: E402
from common import pose as P  # noqa: E402
from common.env import make_env  # noqa: E402
from common.hsp import HSPAgent, variant_options  # noqa: E402
from common.hsp_checkpoint import load_hsp_models  # noqa: E402
from common.planner import Planner  # noqa: E402
from common.presets import eval_seed  # noqa: E402  (06_evaluate.py's rollout seeds)


class TracingAgent(HSPAgent):
    """HSPAgent that records stage `traced`'s skill steps (pose in the reference frame, gripper)."""

    def __init__(self, *args, traced: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.traced = traced

    def begin_episode(self, seed):
        self.trace = []
        return super().begin_episode(seed)

    def _skill_step(self, i):
        if i == self.traced:
            ref = self.raw.object_pose(self.env.stages[i].reference_object)
            eef_in_ref = P.pose_inv(ref) @ self.env.eef_pose()
            fingers = self.obs["proprio"][6:8]
            self.trace.append(dict(pos=eef_in_ref[:3, 3].tolist(), rot=eef_in_ref[:3, :3].tolist(),
                                   finger_gap=float(fingers[0] - fingers[1]), gripper=float(self.gripper)))
        super()._skill_step(i)


def close_step(trace):
    """First step whose gripper command closes (> 0) after having been open, or None."""
    for k in range(1, len(trace)):
        if trace[k]["gripper"] > 0 >= trace[k - 1]["gripper"]:
            return k
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="ThreePieceAssembly_D2", help=f"one of: {', '.join(sorted(common.TASKS))}")
    p.add_argument("--stage", type=int, default=2)
    p.add_argument("--rollouts", type=int, default=40)
    p.add_argument("--ckpt", default=None, help="default: runs/<task>/hsp.pt")
    p.add_argument("--source", default=None, help="default: data/<task>/source.hdf5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="traces JSON (default: results/<task>/trace_stage<k>.json)")
    args = p.parse_args()
    ckpt = args.ckpt or os.path.join("runs", args.task, "hsp.pt")
    source = args.source or os.path.join("data", args.task, "source.hdf5")
    out = args.out or os.path.join("results", args.task, f"trace_stage{args.stage}.json")
    torch.set_num_threads(1)

    ck, models = load_hsp_models(ckpt, args.task, "state")
    env = make_env(args.task, obs_mode="state")
    planner = Planner(env, mode="ompl", seed=args.seed)
    demos, _ = D.load_all(source, task=args.task)
    sources = D.SourceSegments(demos, env.stages)
    rows = []
    for k in tqdm(range(args.rollouts), desc=f"trace stage {args.stage}"):
        agent = TracingAgent(env, models, ck["config"], planner, variant_options("HSP-Priv"), sources,
                             traced=args.stage)
        res = agent.run_episode(eval_seed(args.seed, k), last_stage=args.stage)
        if not agent.trace:
            continue  # failed before the traced stage's skill
        c = close_step(agent.trace)
        at = agent.trace[c] if c is not None else agent.trace[-1]
        rows.append(dict(seed=res.seed, success=bool(res.success), failure=res.failure, steps=len(agent.trace),
                         close_step=c, close_pos=at["pos"], close_gap=agent.trace[c - 1]["finger_gap"] if c else None,
                         end_gap=agent.trace[-1]["finger_gap"], end_pos=agent.trace[-1]["pos"], trace=agent.trace))
    planner.close()
    env.close()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(rows, f)

    print(f"\n{args.task} stage {args.stage} ({env.stages[args.stage].name}), HSP-Priv, {len(rows)} rollouts reached its skill")
    print("| seed | ok | skill steps | close step | eef at close in ref frame (mm) | gap at close | gap at end |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        pos = " ".join(f"{1000 * v:+.0f}" for v in r["close_pos"])
        gap = f"{1000 * r['close_gap']:.0f}" if r["close_gap"] is not None else "-"
        print(f"| {r['seed']} | {'y' if r['success'] else 'n'} | {r['steps']} | {r['close_step']} | {pos} | {gap} | "
              f"{1000 * r['end_gap']:.0f} |")
    for ok in (True, False):
        group = [r for r in rows if r["success"] == ok and r["close_step"] is not None]
        if not group:
            continue
        pos = np.mean([r["close_pos"] for r in group], axis=0) * 1000
        sd = np.std([r["close_pos"] for r in group], axis=0) * 1000
        print(f"{'successes' if ok else 'failures '} ({len(group)} closing): eef at close "
              f"x {pos[0]:+.1f}±{sd[0]:.1f}  y {pos[1]:+.1f}±{sd[1]:.1f}  z {pos[2]:+.1f}±{sd[2]:.1f} mm; "
              f"close step {np.mean([r['close_step'] for r in group]):.1f}; "
              f"gap at end {1000 * np.mean([r['end_gap'] for r in group]):.1f} mm")
    never = [r for r in rows if r["close_step"] is None]
    print(f"never closed: {len(never)} ({sum(not r['success'] for r in never)} failed)")
    print(f"traces: {out}")


if __name__ == "__main__":
    main()
