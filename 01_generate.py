"""Phase 1: source demonstrations (and, with the planner, object-centric data generation).

Source demos (Sec. V: 10 per task) come from the task's scripted demonstrator, which uses
privileged object poses and varies its motions between demos, or from a user-supplied HDF5 in the
kit's layout (validated). Output: data/<task>/source.hdf5 (DESIGN.md, "HDF5 layout"), written one
demo at a time so an interrupted run resumes where it stopped.

    python 01_generate.py --task Threading_D2 --source scripted --num-source 10
    python 01_generate.py --task Threading_D2 --source my_demos.hdf5      # validate + copy
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np
from tqdm import tqdm

import common
from common import data as D
from common.env import check_task_name, make_env, render_states, scripted_demo_fn
from common.presets import get_preset


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="Threading_D2", help=f"one of: {', '.join(sorted(common.TASKS))}")
    p.add_argument("--preset", default="quick", choices=["quick", "paper"])
    p.add_argument("--source", default="scripted",
                   help="'scripted' (the task's scripted demonstrator) or the path of an HDF5 of source demos")
    p.add_argument("--num-source", type=int, default=None, help="source demos to write (default: preset, 10)")
    p.add_argument("--max-source-attempts", type=int, default=None,
                   help="give up after this many scripted attempts (default: 5x --num-source)")
    p.add_argument("--images", action="store_true", help="also store camera observations (rendered by replay)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="data", help="output root; files go to <out>/<task>/")
    p.add_argument("--device", default=None, help="unused here (simulation is CPU); accepted for uniformity")
    args = p.parse_args(argv)
    check_task_name(args.task)
    return args


def stage_specs(env) -> list[dict]:
    return [dict(name=s.name, reference_object=s.reference_object, description=s.description) for s in env.stages]


def write_source_scripted(args, preset, path) -> dict:
    """Run the scripted demonstrator until `num_source` successful demos are in `path`."""
    env = make_env(args.task, obs_mode="state")
    image_env = make_env(args.task, obs_mode="image") if args.images else None
    demo_fn = scripted_demo_fn(args.task)
    num = args.num_source or preset["num_source"]
    max_attempts = args.max_source_attempts or 5 * num
    writer = D.DemoWriter(path, args.task, env_kwargs={"obs_mode": "state"}, stages=stage_specs(env))
    # Attempt k uses seed (args.seed * 100003 + k): resuming continues after the last kept seed.
    done_seeds = [int(writer.f["data"][k].attrs["seed"]) for k in D.demo_keys(writer.f)]
    attempt = 0 if not done_seeds else max(done_seeds) - args.seed * 100003 + 1
    failures: dict[str, int] = {}
    times = []
    bar = tqdm(total=num, initial=writer.num_demos, desc=f"source demos {args.task}", unit="demo")
    while writer.num_demos < num and attempt < max_attempts:
        seed = args.seed * 100003 + attempt
        attempt += 1
        t0 = time.time()
        d = demo_fn(env, seed, np.random.default_rng(seed), record=True)
        ok = d.failed is None and env.success()
        if not ok:
            reason = d.failed or "task not successful at the end"
            failures[reason] = failures.get(reason, 0) + 1
            continue
        demo = d.rec.to_demo(model_file=env.model_xml(), seed=seed, source_demo=writer.next_index())
        if image_env is not None:
            demo["obs"].update(render_states(image_env, demo["states"]))
        writer.append(demo)
        times.append(time.time() - t0)
        bar.update(1)
        bar.set_postfix(attempts=attempt, success=f"{writer.num_demos}/{attempt}")
    bar.close()
    n = writer.num_demos
    writer.close()
    if n < num:
        raise SystemExit(f"only {n}/{num} scripted demos succeeded in {attempt} attempts "
                         f"(failures: {failures}); raise --max-source-attempts")
    return dict(num_demos=n, attempts=attempt, failures=failures,
                seconds_per_demo=float(np.mean(times)) if times else None)


def copy_source_file(args, path) -> dict:
    """Validate a user-supplied source file (clear errors) and copy it into place."""
    with D.open_dataset(args.source, task=args.task) as f:
        n = len(D.demo_keys(f))
        stages = json.loads(f["data"].attrs["stages"])
    expected = [s.name for s in common.TASKS[args.task].stages]
    if [s["name"] for s in stages] != expected:
        raise D.DataError(f"{args.source} declares stages {[s['name'] for s in stages]}, but {args.task} "
                          f"has {expected}; the file was made for another version of the task")
    if os.path.abspath(args.source) != os.path.abspath(path):
        shutil.copyfile(args.source, path + ".tmp")
        os.replace(path + ".tmp", path)
    return dict(num_demos=n, copied_from=args.source)


def main(argv=None):
    args = parse_args(argv)
    preset = get_preset(args.preset)
    out_dir = os.path.join(args.out, args.task)
    os.makedirs(out_dir, exist_ok=True)
    source_path = os.path.join(out_dir, "source.hdf5")

    t0 = time.time()
    if args.source == "scripted":
        summary = write_source_scripted(args, preset, source_path)
    else:
        summary = copy_source_file(args, source_path)
    summary.update(task=args.task, path=source_path, wall_seconds=time.time() - t0, config=vars(args))
    with open(os.path.join(out_dir, "source_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return summary


if __name__ == "__main__":
    main()
