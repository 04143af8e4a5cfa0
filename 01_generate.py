"""Phase 1: source demonstrations, then object-centric data generation (Sec. III-B).

1. Source demos (Sec. V: 10 per task) come from the task's scripted demonstrator, which uses
   privileged object poses and varies its motions between demos, or from a user-supplied HDF5 in
   the kit's layout (validated). Output: data/<task>/source.hdf5.
2. Generation (MimicGen / SkillMimicGen style): for each attempt, reset the task (D2, seeded);
   for each stage i, pick a source demo, transform its skill segment's end-effector poses into the
   current frame of the stage's reference object R_i (T_W^A' = T_W^R' (T_W^R)^-1 T_W^A), plan and
   execute the connect segment to the first transformed pose (the initiation pose) with the motion
   planner, replay the transformed skill segment as OSC delta actions with the source's gripper
   actions and action noise, and check the stage's termination T_i. Any failure discards the
   attempt; successes are kept. Output: data/<task>/generated.hdf5 + generated_summary.json.

Both files are written one demo at a time (atomically) so an interrupted run keeps every finished
demo and resumes to the target count. With --workers N, each worker writes its own shard
(seeds interleaved), merged at the end; the same --seed and --workers give identical demos.

    python 01_generate.py --task Threading_D2 --preset quick            # 10 source + 50 generated
    python 01_generate.py --task Threading_D2 --preset paper --workers 2  # 1000 generated
    python 01_generate.py --task Threading_D2 --source my_demos.hdf5      # validate + use yours
    python 01_generate.py --task Threading_D2 --images-from data/Threading_D2/generated.hdf5 --num-demos 200

The last form adds camera observations to demos generated in state mode, as robomimic's
dataset_states_to_obs does: every stored `states` row is set in an image-mode env and rendered.
It skips source and generation and writes <out>/<task>/generated_images.hdf5 (resumable).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter

import numpy as np
from tqdm import tqdm

import common
from common import data as D
from common import pose as P
from common.env import check_task_name, default_cameras, make_env, render_states, scripted_demo_fn
from common.planner import CONNECT_POSTURES
from common.presets import DATAGEN_ACTION_NOISE, get_preset
from common.scripted import Demonstrator, pose_action


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="Threading_D2", help=f"one of: {', '.join(sorted(common.TASKS))}")
    p.add_argument("--preset", default="quick", choices=["quick", "paper"])
    p.add_argument("--source", default="scripted",
                   help="'scripted' (the task's scripted demonstrator) or the path of an HDF5 of source demos")
    p.add_argument("--num-source", type=int, default=None, help="source demos to write (default: preset, 10)")
    p.add_argument("--max-source-attempts", type=int, default=None,
                   help="give up after this many scripted attempts (default: 5x --num-source)")
    p.add_argument("--num-demos", type=int, default=None,
                   help="successful generated demos wanted (default: preset; paper 1000); 0 = source only")
    p.add_argument("--workers", type=int, default=1, help="generation processes, one shard each")
    p.add_argument("--max-attempts", type=int, default=None,
                   help="stop generating after this many attempts in total (default: 20x --num-demos)")
    p.add_argument("--planner", default="ompl", choices=["ompl", "linear"],
                   help="connect segments: OMPL collision-free planning or MimicGen's linear interpolation")
    p.add_argument("--connect-posture", default="reset", choices=list(CONNECT_POSTURES),
                   help="how connect segments resolve the arm's redundancy: robosuite's reset posture, pulled to "
                        "the plan's goal only after a stall (reset), or the planned joint path (path); "
                        "recorded in the file, and 06_evaluate.py deploys with the same")
    p.add_argument("--select", default=None, choices=["random", "nearest"],
                   help="source demo per stage: random, or among the 3 nearest in reference-object pose "
                        "(default: the task's datagen_select; random except CoffeePreparation)")
    p.add_argument("--select-per-stage", action="store_true",
                   help="choose a new source demo at every stage (default: one per attempt, as MimicGen)")
    p.add_argument("--replay", default="commanded", choices=["commanded", "achieved"],
                   help="skill replay: re-issue the pose each source action commanded (MimicGen's target "
                        "poses), or step toward each next recorded eef pose (achieved: lags the source)")
    p.add_argument("--action-noise", type=float, default=DATAGEN_ACTION_NOISE,
                   help="Gaussian σ on the normalized pose action during skill replay (MimicGen: 0.05)")
    p.add_argument("--images", action="store_true", help="also store camera observations (rendered by replay)")
    p.add_argument("--images-from", default=None, metavar="HDF5",
                   help="only render camera observations for the first --num-demos demos of this existing "
                        "file (from its stored states) into <out>/<task>/generated_images.hdf5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="data", help="output root; files go to <out>/<task>/")
    p.add_argument("--device", default=None, help="unused here (simulation is CPU); accepted for uniformity")
    args = p.parse_args(argv)
    check_task_name(args.task)
    args.select = args.select or common.TASKS[args.task].datagen_select
    return args


def stage_specs(env) -> list[dict]:
    return [dict(name=s.name, reference_object=s.reference_object, description=s.description) for s in env.stages]


def write_source_scripted(args, preset, path) -> dict:
    """Run the scripted demonstrator until `num_source` successful demos are in `path`."""
    num = args.num_source or preset["num_source"]
    if os.path.exists(path) and not os.path.isdir(D.parts_dir(path)):
        with D.open_dataset(path, task=args.task) as f:
            if len(D.demo_keys(f)) >= num:
                return dict(num_demos=len(D.demo_keys(f)), resumed=True)
    env = make_env(args.task, obs_mode="state")
    image_env = make_env(args.task, obs_mode="image") if args.images else None
    demo_fn = scripted_demo_fn(args.task)
    max_attempts = args.max_source_attempts or 5 * num
    pdir = D.parts_dir(path)
    # Attempt k uses seed args.seed * 100003 + k; resuming continues after the last kept attempt.
    kept = D.list_parts(pdir)
    attempt = (max(int(n.split("_")[1]) for n in kept) + 1) if kept else 0
    failures, times = Counter(), []
    bar = tqdm(total=num, initial=min(len(kept), num), desc=f"source demos {args.task}", unit="demo")
    while len(kept) < num and attempt < max_attempts:
        seed = args.seed * 100003 + attempt
        t0 = time.time()
        d = demo_fn(env, seed, np.random.default_rng(seed), record=True)
        attempt += 1
        if d.failed is not None or not env.success():
            failures[d.failed or "task not successful at the end"] += 1
            continue
        demo = d.rec.to_demo(model_file=env.model_xml(), seed=seed, source_demo=len(kept))
        demo["source_demo_per_stage"][:] = len(kept)
        if image_env is not None:
            demo["obs"].update(render_states(image_env, demo["states"]))
        D.write_part(pdir, f"attempt_{attempt - 1:07d}", demo)
        kept.append(f"attempt_{attempt - 1:07d}")
        times.append(time.time() - t0)
        bar.update(1)
        bar.set_postfix(attempts=attempt, success=f"{len(kept)}/{attempt}")
    bar.close()
    if len(kept) < num:
        raise SystemExit(f"only {len(kept)}/{num} scripted demos succeeded in {attempt} attempts "
                         f"(failures: {dict(failures)}); raise --max-source-attempts")
    D.merge_parts(pdir, path, kept[:num], args.task, {"obs_mode": "state"}, stage_specs(env))
    shutil.rmtree(pdir)
    return dict(num_demos=num, attempts=attempt, failures=dict(failures),
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


# ======================================================================================= workers
def run_workers(target, shards: list[tuple], on_message, bar, interrupted: str):
    """Run `target(*shard, queue)` for every shard: in a thread of this process when there is one
    (simplest to debug and to interrupt), else one forked process each (workers inherit this module
    even when it was loaded by importlib, as the tests and benchmarks do; each builds its own env,
    planner and renderer after the fork). Every queue message goes to `on_message`, which returns
    True for a worker's last. Ctrl-C stops the workers and exits with `interrupted`."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    queue = ctx.Queue()
    if len(shards) == 1:
        import threading
        procs = [threading.Thread(target=target, args=(*shards[0], queue), daemon=True)]
    else:
        procs = [ctx.Process(target=target, args=(*shard, queue)) for shard in shards]
    for p in procs:
        p.start()
    running = len(procs)
    try:
        while running:
            if on_message(queue.get()):
                running -= 1
    except KeyboardInterrupt:
        for p in procs:
            if hasattr(p, "terminate"):
                p.terminate()
        raise SystemExit(interrupted)
    finally:
        bar.close()
    for p in procs:
        p.join()


# ======================================================================================= images for an existing file
def render_worker(task: str, jobs: list, queue):
    """Render each job's demo (`key` of `src`) and write it as part `name`; report each one."""
    env = make_env(task, obs_mode="image")  # built here, after any fork: EGL contexts do not survive one
    try:
        for src, key, name, pdir in jobs:
            with D.open_dataset(src) as f:
                demo = D.load_demo(f, key)  # its attrs (seed, source, model) are written back unchanged
            demo["obs"].update(render_states(env, demo["states"]))
            D.write_part(pdir, name, demo)
            queue.put(name)
    finally:
        env.close()
        queue.put(None)


def render_existing(args, out_dir: str) -> dict:
    """Add camera observations to the first --num-demos demos of --images-from, by setting each
    stored state in an image-mode env (rendering is deterministic given the state)."""
    src = args.images_from
    with D.open_dataset(src, task=args.task) as f:
        keys = D.demo_keys(f)
        have_images = [k for k in f["data"][keys[0]]["obs"].keys() if k.endswith("_image")]
    if have_images:
        raise D.DataError(f"{src} already has camera observations ({', '.join(have_images)})")
    num = len(keys) if args.num_demos is None else min(args.num_demos, len(keys))
    keys = keys[:num]
    out_path = os.path.join(out_dir, "generated_images.hdf5")
    if os.path.abspath(out_path) == os.path.abspath(src):
        raise SystemExit(f"--images-from {src} would be overwritten; use another --out")
    pdir = D.parts_dir(out_path)
    names = [f"r_{int(k.split('_')[1]):07d}" for k in keys]
    done = set(D.list_parts(pdir, "r_"))
    jobs = [(src, k, n, pdir) for k, n in zip(keys, names) if n not in done]
    t0 = time.time()
    bar = tqdm(total=num, initial=num - len(jobs), desc=f"render {args.task}", unit="demo")
    # As generation: one worker per shard, each with its own renderer. The command line forks
    # before any rendering; a caller that has rendered in this process already should use
    # --workers 1 (a fork inherits Mesa's locks and its workers can hang).
    workers = max(1, min(args.workers, len(jobs)))

    def on_message(msg) -> bool:  # a part's name, or None when a worker is done
        if msg is not None:
            bar.update(1)
        return msg is None
    run_workers(render_worker, [(args.task, jobs[w::workers]) for w in range(workers)], on_message, bar,
                "interrupted: rendered demos are kept; run the same command again to resume")
    missing = [n for n in names if n not in set(D.list_parts(pdir, "r_"))]
    if missing:
        raise SystemExit(f"{len(missing)} demos were not rendered (a worker failed; see its error above); "
                         f"run the same command again to resume")
    wall = time.time() - t0
    env = make_env(args.task, obs_mode="state")
    n_final = D.merge_parts(pdir, out_path, names, args.task, {"obs_mode": "state"}, stage_specs(env))
    shutil.rmtree(pdir)
    return dict(path=out_path, images_from=src, num_demos=n_final, cameras=default_cameras(args.task),
                rendered_this_run=len(jobs), wall_seconds=wall,
                seconds_per_demo=wall / len(jobs) if jobs else None, workers=args.workers)


# ======================================================================================= generation
def generate_attempt(env, planner, sources: D.SourceSegments, seed: int, args) -> tuple[Demonstrator, str | None]:
    """One generation attempt. Returns the recording and None, or the failure reason."""
    rng = np.random.default_rng(seed)
    d = Demonstrator(env, rng, record=True).start(seed)
    raw = env.raw
    # Objects may still be falling into place after reset (NutAssembly spawns its nuts 6 cm up):
    # wait, recorded as stage 0's connect phase, until nothing moves, so that the reference poses
    # read below are the resting ones the source segments were recorded against.
    d.label(0, D.PHASE_CONNECT)
    env.wait_until_still(lambda: d.hold(1))
    src = None
    stage_noise = type(raw).datagen_stage_noise  # per-stage overrides, as MimicGen's per-subtask action_noise
    for i, stage in enumerate(env.stages):
        ref_now = raw.object_pose(stage.reference_object)
        # One source demo per attempt (MimicGen's select_src_per_subtask = False), so the grasp
        # replayed in stage i matches the in-hand pose the next stage's segment assumes.
        if src is None or args.select_per_stage:
            src = sources.choose(i, ref_now, args.select, rng)
        seg = sources.segments[i][src]
        d.rec.source_demo[i] = src
        targets = P.transform_to_new_frame(seg["eef"], seg["ref"], ref_now)  # Sec. III-B

        # Connect: plan to the initiation pose (the first transformed pose) and track the path.
        d.label(i, D.PHASE_CONNECT)
        d.action_noise = 0.0
        plan = planner.plan(env, targets[0], held=env.held_object())
        if not plan.success:
            return d, f"stage {i}: plan {plan.reason}"
        res = planner.execute(env, plan, float(seg["gripper"][0]), step_fn=d.step)
        if not res.success:
            return d, f"stage {i}: connect {res.reason}"

        # Skill: replay the transformed segment (--replay: the source's commanded poses, or its recorded ones).
        d.label(i, D.PHASE_SKILL)
        d.action_noise = stage_noise.get(i, args.action_noise)
        last = i == len(env.stages) - 1
        succ_steps = 0
        if args.replay == "commanded":  # re-issue the source's commands, carried into the new frame
            commands = P.transform_to_new_frame(seg["target"], seg["ref"], ref_now)
            steps = [(commands[t], seg["gripper"][t]) for t in range(len(commands))]
        else:  # step toward each next recorded pose
            steps = [(targets[t], seg["gripper"][t - 1]) for t in range(1, len(targets))]
        for goal, grip in steps:
            d.step(pose_action(raw.eef_pose(), goal, float(grip)))
            if last and env.success():
                succ_steps += 1
                if succ_steps >= 5:
                    break
        if not raw.stage_done()[i]:
            return d, f"stage {i}: {stage.name} not reached"
        # Rows hold the state *before* each action, so a check that became true on the last action
        # is not in the file yet: hold still until it is (the final stage keeps 5 success rows).
        d.action_noise = 0.0
        d.gripper = float(seg["gripper"][-1])
        need = 5 if last else 1
        for _ in range(10):
            recorded = sum(bool(r[i]) for r in d.rec.rows["stage_done"][-need:])
            if recorded >= need or not raw.stage_done()[i]:
                break
            d.hold(1)
        if last and not env.success():
            return d, "task not successful at the end"
    if not env.success():
        return d, "task not successful at the end"
    return d, None


def generate_worker(worker: int, target: int, args, out_path: str, source_path: str, queue):
    """Add kept demos of worker `worker` until it has `target`. Attempt j of this worker uses seed
    base + worker + workers * j, so workers never share seeds and runs are reproducible."""
    from common.planner import Planner  # imported here: each process starts its own pybullet

    demos, _ = D.load_all(source_path, task=args.task)
    env = make_env(args.task, obs_mode="state")
    sources = D.SourceSegments(demos, env.stages)
    planner = Planner(env, mode=args.planner, seed=args.seed * 7919 + worker, posture=args.connect_posture)
    image_env = make_env(args.task, obs_mode="image") if args.images else None
    pdir = D.parts_dir(out_path)
    mine = D.list_parts(pdir, prefix=f"w{worker}_")
    j = (int(mine[-1].split("_")[1]) + 1) if mine else 0  # resume after the last kept attempt
    n_kept = len(mine)
    base = 1_000_000 + args.seed * 100003
    try:
        while n_kept < target and j < args.max_attempts_per_worker:
            seed = base + worker + args.workers * j
            t0 = time.time()
            d, reason = generate_attempt(env, planner, sources, seed, args)
            if reason is None:
                demo = d.rec.to_demo(model_file=env.model_xml(), seed=seed, attempt=j, worker=worker,
                                     connect_posture=args.connect_posture)
                t_render = time.time()
                if image_env is not None:
                    demo["obs"].update(render_states(image_env, demo["states"]))
                D.write_part(pdir, f"w{worker}_{j:07d}", demo)
                n_kept += 1
                queue.put(("ok", worker, time.time() - t0, time.time() - t_render if image_env else 0.0))
            else:
                queue.put(("fail", worker, reason.split(": ", 1)[-1], reason))
            j += 1
    finally:
        planner.close()
        queue.put(("done", worker, j, None))


def generate(args, preset, out_dir: str, source_path: str) -> dict:
    num = preset["num_generated"] if args.num_demos is None else args.num_demos
    total_attempts = args.max_attempts or 20 * max(num, 1)
    args.max_attempts_per_worker = int(np.ceil(total_attempts / args.workers))
    targets = [num // args.workers + (w < num % args.workers) for w in range(args.workers)]
    out_path = os.path.join(out_dir, "generated.hdf5")
    pdir = D.parts_dir(out_path)
    if os.path.exists(out_path) and not os.path.isdir(pdir):  # a finished run: reuse its demos
        with D.open_dataset(out_path, task=args.task) as f:
            for k in D.demo_keys(f):
                a = f["data"][k].attrs
                if "worker" in a and int(a["worker"]) < args.workers:
                    D.write_part(pdir, f"w{int(a['worker'])}_{int(a['attempt']):07d}", D.load_demo(f, k))
    # a resumed run must connect as the demos it continues did (parts from before 2026-12-02: "reset")
    for name in D.list_parts(pdir)[:1]:
        before = str(D.part_attrs(pdir, name).get("connect_posture", "reset"))
        if before != args.connect_posture:
            raise SystemExit(f"error: {out_path} is being generated with --connect-posture {before}, not "
                             f"{args.connect_posture}; resume with --connect-posture {before}, or use another --out")
    have = sum(min(len(D.list_parts(pdir, f"w{w}_")), targets[w]) for w in range(args.workers))

    t0 = time.time()
    failures, ok_times, render_times, attempts = Counter(), [], [], 0
    bar = tqdm(total=num, initial=have, desc=f"generate {args.task}", unit="demo")

    def on_message(msg) -> bool:  # (kind, worker, a, b); kind "done" when a worker has finished
        nonlocal attempts
        kind, _, a, b = msg
        if kind == "done":
            return True
        attempts += 1
        if kind == "ok":
            ok_times.append(a)
            render_times.append(b)
            bar.update(1)
        else:
            failures[a] += 1
        bar.set_postfix(attempts=attempts, success=f"{len(ok_times) / attempts:.0%}")
        return False
    run_workers(generate_worker, [(w, targets[w], args, out_path, source_path) for w in range(args.workers)],
                on_message, bar, "interrupted: finished demos are kept; run the same command again to resume")
    wall = time.time() - t0

    # Merge: worker order, then attempt order (the same --seed and --workers give the same file).
    names = [n for w in range(args.workers) for n in D.list_parts(pdir, f"w{w}_")[:targets[w]]]
    env = make_env(args.task, obs_mode="state")
    n_final = D.merge_parts(pdir, out_path, names, args.task, {"obs_mode": "state"}, stage_specs(env),
                            extra_attrs={"connect_posture": args.connect_posture})
    if n_final >= num:
        shutil.rmtree(pdir)
    kept = len(ok_times)
    return dict(
        path=out_path, num_demos=n_final, target=num, attempts_this_run=attempts, kept_this_run=kept,
        success_rate=kept / attempts if attempts else None,
        failures=dict(failures.most_common()),
        seconds_per_success=float(np.mean(ok_times)) if ok_times else None,
        demos_per_hour=kept / wall * 3600 if kept else 0.0,
        render_seconds_per_demo=float(np.mean(render_times)) if args.images and render_times else None,
        wall_seconds=wall, workers=args.workers, planner=args.planner,
        complete=n_final >= num,
    )


def main(argv=None):
    args = parse_args(argv)
    preset = get_preset(args.preset)
    out_dir = os.path.join(args.out, args.task)
    os.makedirs(out_dir, exist_ok=True)
    source_path = os.path.join(out_dir, "source.hdf5")
    if args.images_from:
        summary = render_existing(args, out_dir)
        summary.update(task=args.task, config=vars(args))
        write_json(os.path.join(out_dir, "generated_images_summary.json"), summary)
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
        return summary

    t0 = time.time()
    if args.source == "scripted":
        summary = write_source_scripted(args, preset, source_path)
    else:
        summary = copy_source_file(args, source_path)
    summary.update(task=args.task, path=source_path, wall_seconds=time.time() - t0, config=vars(args))
    write_json(os.path.join(out_dir, "source_summary.json"), summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))

    num = preset["num_generated"] if args.num_demos is None else args.num_demos
    if num > 0:
        gen = generate(args, preset, out_dir, source_path)
        gen.update(task=args.task, config=vars(args))
        write_json(os.path.join(out_dir, "generated_summary.json"), gen)
        print(json.dumps({k: v for k, v in gen.items() if k != "config"}, indent=2))
        summary["generation"] = gen
    return summary


def write_json(path: str, obj: dict):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


if __name__ == "__main__":
    try:
        main()
    except D.DataError as e:  # bad input: its message names the fix
        raise SystemExit(f"error: {e}") from None
