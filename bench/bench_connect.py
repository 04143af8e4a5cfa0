"""Connect segments under each OSC posture mode (`Planner(posture=...)`, common/planner.CONNECT_POSTURES):
the same seeded generation attempts (the privileged teacher's poses + replayed source skills, as
01_generate.py makes them) with each mode, one process per mode.

    python bench/bench_connect.py --task ThreePieceAssembly_D2 --attempts 40 [--postures reset path]

Needs data/<task>/source.hdf5 (01_generate.py writes it first). Prints, per mode: attempts kept,
failure reasons, and per stage the connect's mean / 90th-percentile steps, how many connects
stalled (their posture target was then pulled to the plan's goal) and how many ended short of
the pose. The same seeds run in every mode, so rows compare attempt by attempt.
"""
import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import sys
import time
from collections import Counter

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run_mode(task: str, posture: str, seeds: list, out_path: str, generate_args: list):
    import torch
    torch.set_num_threads(1)
    from common import data as D
    from common.env import make_env
    from common.planner import Planner

    spec = importlib.util.spec_from_file_location("generate", os.path.join(ROOT, "01_generate.py"))
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    args = generate.parse_args(["--task", task] + generate_args)
    demos, _ = D.load_all(os.path.join(ROOT, "data", task, "source.hdf5"), task=task)
    env = make_env(task, obs_mode="state")
    sources = D.SourceSegments(demos, env.stages)
    planner = Planner(env, mode="ompl", seed=0, posture=posture)
    followers = []
    follow = planner.follow

    def recording_follow(plan, gripper, **kw):  # keep every follower to read its outcome afterwards
        f = follow(plan, gripper, **kw)
        followers.append(f)
        return f
    planner.follow = recording_follow
    rows = []
    t0 = time.time()
    for seed in seeds:
        followers.clear()
        d, reason = generate.generate_attempt(env, planner, sources, seed, args)
        rows.append(dict(seed=seed, ok=reason is None, reason=reason, steps=len(d.rec.rows["stage_done"]),
                         connects=[dict(steps=f.steps, success=bool(f.result and f.result.success),
                                        stalled=bool(f.posture_recovery)) for f in followers]))
    planner.close()
    with open(out_path, "w") as fh:
        json.dump(dict(posture=posture, seconds=time.time() - t0, rows=rows), fh)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="ThreePieceAssembly_D2")
    p.add_argument("--attempts", type=int, default=40)
    p.add_argument("--seed", type=int, default=0, help="attempt seeds start at 5_000_000 + 1000 * seed")
    p.add_argument("--postures", nargs="+", default=["reset", "path"])
    p.add_argument("--out", default=None, help="folder for the per-mode JSON (default: a temporary one)")
    p.add_argument("--generate-args", default="", help="more 01_generate.py options for every mode, e.g. "
                   "\"--select nearest --select-per-stage\" (the same seeds: compare runs attempt by attempt)")
    args = p.parse_args()
    if not os.path.exists(os.path.join(ROOT, "data", args.task, "source.hdf5")):
        raise SystemExit(f"data/{args.task}/source.hdf5 is missing: run 01_generate.py --task {args.task} first")
    import tempfile
    out = args.out or tempfile.mkdtemp(prefix="bench_connect_")
    os.makedirs(out, exist_ok=True)
    seeds = [5_000_000 + 1000 * args.seed + k for k in range(args.attempts)]
    procs = [mp.get_context("spawn").Process(target=run_mode, args=(args.task, m, seeds, os.path.join(out, f"{m}.json"),
                                                                  args.generate_args.split()))
             for m in args.postures]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join()
    print(f"\n{args.task}, {args.attempts} seeded generation attempts per mode {args.generate_args} (results in {out})\n")
    print("| posture | kept | connects: mean steps per stage | p90 steps | stalled | short of the pose | failures | s/attempt |")
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for m in args.postures:
        with open(os.path.join(out, f"{m}.json")) as fh:
            results[m] = res = json.load(fh)
        rows = res["rows"]
        n_st = max(len(r["connects"]) for r in rows)
        per = [[r["connects"][i] for r in rows if len(r["connects"]) > i] for i in range(n_st)]
        mean = " / ".join(f"{np.mean([c['steps'] for c in cs]):.0f}" for cs in per)
        p90 = " / ".join(f"{np.percentile([c['steps'] for c in cs], 90):.0f}" for cs in per)
        stalled = sum(c["stalled"] for cs in per for c in cs)
        short = sum(not c["success"] for cs in per for c in cs)
        n_conn = sum(len(cs) for cs in per)
        fails = Counter(r["reason"].split(": ", 1)[-1] for r in rows if not r["ok"])
        print(f"| {m} | {sum(r['ok'] for r in rows)}/{len(rows)} | {mean} | {p90} | {stalled}/{n_conn} | "
              f"{short}/{n_conn} | {', '.join(f'{k} {v}' for k, v in fails.most_common()) or '-'} | "
              f"{res['seconds'] / len(rows):.1f} |")
    # attempt by attempt: where the modes disagree
    if len(args.postures) == 2:
        a, b = (results[m]["rows"] for m in args.postures)
        only = [(x["seed"], x["ok"], y["ok"]) for x, y in zip(a, b) if x["ok"] != y["ok"]]
        print(f"\nattempts kept by only one mode ({args.postures[0]} / {args.postures[1]}): "
              f"{sum(o[1] for o in only)} / {sum(o[2] for o in only)}")


if __name__ == "__main__":
    main()
