"""Phase 6: deploy the Hybrid Skill Policy with Algorithm 1 and measure success (Table I, Fig. 3).

Each named variant (common/hsp.py VARIANTS) is an Algorithm 1 configuration:

    HSP-Priv     privileged initiation pose I^Priv (Sec. IV-A), BC skills, oracle termination
    HSP          learned pose I_θi predicted once per stage, no replanning
    HSP+Replan   learned pose re-predicted every connect step, replan when it moves > ε = 0.05

Every variant runs the same N seeded rollouts (paired comparison), split over --workers processes;
each seeded reset restarts the planner's random streams too, so a rollout's plans do not depend on
the rollouts its worker ran before.
Each finished rollout is appended to results/<task>/rollouts.jsonl, so an interrupted evaluation
resumes where it stopped (rollouts are reused only for the same checkpoint and variant options).

Outputs in results/<task>/: eval.json (per variant: success rate with a Wilson 95 % interval,
per-stage success, mean steps per skill, planner failures, replans, failure reasons, seeds),
table1.md (ours beside the paper's Table I), eval_config.json, and with --plot eval.png.
results/table1.md collects every task's eval.json into one Table I.

--experiment pose-noise reproduces Fig. 3: the success of one skill (default Nut Assembly stage 2,
i.e. --stage 1 counting from 0) against initiation-pose noise σ (App. E-A) with the privileged pose,
conditional on the episode reaching that stage: pose_noise.json + pose_noise.png.

    python 06_evaluate.py --task Threading_D2 --preset quick --plot
    python 06_evaluate.py --task Threading_D2 --preset paper --workers 8         # 500 rollouts each
    python 06_evaluate.py --task NutAssembly_D2 --experiment pose-noise --rollouts 100
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import time
from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

import common
from common import data as D
from common.env import check_task_name, make_env
from common.hsp import (SKILL_ACTIONS, VARIANTS, HSPAgent, skill_action_option, summarize, variant_options,
                        wilson_interval)
from common.hsp_checkpoint import CheckpointError, load_hsp_models
from common.planner import CONNECT_POSTURES
from common.presets import PAPER_TABLE1, POSE_NOISE_SIGMAS, eval_seed, get_preset


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="Threading_D2", help=f"one of: {', '.join(sorted(common.TASKS))}")
    p.add_argument("--preset", default="quick", choices=["quick", "paper"])
    p.add_argument("--experiment", default="table", choices=["table", "pose-noise"])
    p.add_argument("--variants", nargs="+", default=None,
                   help=f"variants to run (default for table: {' '.join(VARIANTS)}; for pose-noise: HSP-Priv)")
    p.add_argument("--rollouts", type=int, default=None, help="rollouts per variant (default: preset; paper 500)")
    p.add_argument("--workers", type=int, default=1, help="rollout processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt", default=None, help="HSP checkpoint (default: runs/<task>/hsp.pt)")
    p.add_argument("--obs", default=None, choices=["state", "image"],
                   help="require this obs mode of the checkpoint (default: whatever it was trained with)")
    p.add_argument("--source", default=None, help="source demos for I^Priv (default: data/<task>/source.hdf5)")
    p.add_argument("--planner", default="ompl", choices=["ompl", "linear"])
    p.add_argument("--connect-posture", default=None, choices=list(CONNECT_POSTURES),
                   help="how connects resolve the arm's redundancy (common.planner.CONNECT_POSTURES); "
                        "default: as the checkpoint's training data was generated")
    p.add_argument("--termination", default=None, choices=["oracle", "learned"],
                   help="override every variant's termination (Table III compares the two)")
    p.add_argument("--action-noise", type=float, default=None, help="override: σ on skill pose actions")
    p.add_argument("--skill-action", default=None, nargs="+", choices=list(SKILL_ACTIONS),
                   help="override how the GMM skills act (default: the rules 02_train_hsp.py's selection stored in "
                        "the checkpoint, else component: robomimic's low-noise eval; mode: the deterministic "
                        "action): one value for every stage, or one per stage")
    p.add_argument("--finish-skill", default=None, choices=["on", "off"],
                   help="override: after T fires, run the skill for the data's post-termination steps "
                        "(default on; off: stop the skill when T fires)")
    p.add_argument("--source-select", default=None, choices=["task", "random", "nearest", "wrist"],
                   help="override I^Priv's source demo choice (default task: as 01_generate.py chose "
                        "sources for the task, random except CoffeePreparation's nearest; wrist: per stage, one "
                        "of the 3 sources whose pose turns the gripper least)")
    p.add_argument("--arm-room", type=float, default=None,
                   help="override: joint-limit room (rad) a grasp's initiation pose must leave every arm "
                        "joint before the agent takes an equivalent roomier pose (default 0.3; 0: off)")
    p.add_argument("--twin-share-min", type=float, default=None,
                   help="override: least share of a stage's demos at a symmetry twin for a learned grasp "
                        "pose to be turned onto it for joint-limit room (default 0.05; 0: any twin)")
    p.add_argument("--stage", type=int, default=None,
                   help="pose-noise: the stage whose skill is measured, from 0 (default: 1, Nut Assembly's "
                        "second stage as in Fig. 3)")
    p.add_argument("--sigmas", type=float, nargs="+", default=list(POSE_NOISE_SIGMAS), help="pose-noise σ values")
    p.add_argument("--plot", action="store_true", help="also draw a bar chart (table) PNG")
    p.add_argument("--fresh", action="store_true", help="ignore rollouts saved by earlier runs")
    p.add_argument("--out", default="results", help="output root; files go to <out>/<task>/")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    check_task_name(args.task)
    args.ckpt = args.ckpt or os.path.join("runs", args.task, "hsp.pt")
    args.source = args.source or os.path.join("data", args.task, "source.hdf5")
    args.variants = args.variants or (list(VARIANTS) if args.experiment == "table" else ["HSP-Priv"])
    for v in args.variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    return args


# ------------------------------------------------------------------------------------------ jobs
def make_jobs(args, n_stages: int, checkpoint_actions: list | None = None) -> list[dict]:
    """One job per (variant configuration, rollout). Options are part of the job, so a resumed run
    only reuses rollouts of identical configurations. Skills act by --skill-action, else by the
    rules 02_train_hsp.py's selection stored in the checkpoint (`checkpoint_actions`), else by the
    component draw; the job names the rule either way."""
    n = args.rollouts
    overrides = {"skill_action": "component"}
    if checkpoint_actions and args.skill_action is None and len(checkpoint_actions) != n_stages:
        raise CheckpointError(f"the checkpoint stores {len(checkpoint_actions)} skill-action rules for {n_stages} "
                              f"stages: retrain it with 02_train_hsp.py, or give --skill-action")
    if checkpoint_actions:
        overrides["skill_action"] = (checkpoint_actions[0] if len(set(checkpoint_actions)) == 1
                                     else tuple(checkpoint_actions))
    if args.termination:
        overrides["termination"] = args.termination
    if args.action_noise is not None:
        overrides["action_noise"] = args.action_noise
    if args.skill_action is not None:
        try:
            overrides["skill_action"] = skill_action_option(args.skill_action, n_stages)
        except ValueError as e:
            raise SystemExit(f"error: --skill-action: {e}")
    if args.source_select is not None:
        overrides["source_select"] = args.source_select
    if args.finish_skill is not None:
        overrides["finish_skill"] = args.finish_skill == "on"
    if args.arm_room is not None:
        overrides["arm_room"] = args.arm_room
    if args.twin_share_min is not None:
        overrides["twin_share_min"] = args.twin_share_min
    configs = []  # (label, variant, options, last_stage)
    if args.experiment == "table":
        for v in args.variants:
            configs.append((v, v, variant_options(v, **overrides), None))
    else:
        stage = 1 if args.stage is None else args.stage
        if not 0 <= stage < n_stages:
            raise SystemExit(f"--stage {stage} is out of range: {args.task} has stages 0..{n_stages - 1}")
        for v in args.variants:
            for s in args.sigmas:
                o = variant_options(v, **dict(overrides, pose_noise=float(s), pose_noise_stages=(stage,)))
                configs.append((f"{v} σ={s:g}", v, o, stage))
    jobs = []
    for k in range(n):
        for label, v, o, last in configs:  # interleaved: partial runs cover every configuration
            jobs.append(dict(label=label, variant=v, options=asdict(o), last_stage=last,
                             seed=eval_seed(args.seed, k)))
    return jobs


def job_key(job: dict, ckpt_id: str, args) -> str:
    # the planner and its connect posture; "reset" keeps the key of rollouts logged before it was an option
    planner = args.planner if args.connect_posture == "reset" else f"{args.planner}+{args.connect_posture}"
    return json.dumps([ckpt_id, planner, job["label"], job["options"], job["last_stage"], job["seed"]], sort_keys=True)


def file_id(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------ workers
def rollout_worker(worker: int, jobs: list[dict], args, queue):
    """Build the env, planner, networks and source segments once; run this worker's jobs."""
    from common.hsp import AgentOptions
    from common.planner import Planner

    torch.set_num_threads(1)  # one core per worker: the workers are the parallelism
    ck, models = load_hsp_models(args.ckpt, args.task, args.obs, device=args.device)
    env = make_env(args.task, obs_mode=ck["obs_mode"])
    planner = Planner(env, mode=args.planner, seed=args.seed * 7919 + worker, posture=args.connect_posture)
    sources = None
    if any(j["options"]["pose"] == "privileged" for j in jobs):
        demos, _ = D.load_all(args.source, task=args.task)
        sources = D.SourceSegments(demos, env.stages)
    try:
        for job in jobs:
            opts = AgentOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["options"].items()})
            agent = HSPAgent(env, models, ck["config"], planner, opts, sources, device=args.device)
            t0 = time.time()
            res = agent.run_episode(job["seed"], last_stage=job["last_stage"]).to_dict()
            res["seconds"] = time.time() - t0
            queue.put(("ok", job, res))
    except Exception as e:  # noqa: BLE001 (report, do not hang the parent)
        import traceback
        queue.put(("error", worker, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        planner.close()
        env.close()
        queue.put(("done", worker, None))


def run_jobs(args, jobs: list[dict], done: dict, log_path: str, ckpt_id: str) -> dict:
    """Run the jobs not in `done` (key -> result), appending each result to the JSONL log."""
    todo = [j for j in jobs if job_key(j, ckpt_id, args) not in done]
    if not todo:
        return done
    workers = max(1, min(args.workers, len(todo)))
    shards = [todo[w::workers] for w in range(workers)]
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    queue = ctx.Queue()
    if workers == 1:  # in-process thread: easiest to debug and to interrupt
        import threading
        procs = [threading.Thread(target=rollout_worker, args=(0, shards[0], args, queue), daemon=True)]
    else:
        procs = [ctx.Process(target=rollout_worker, args=(w, shards[w], args, queue)) for w in range(workers)]
    for p in procs:
        p.start()
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"evaluate {args.task}", unit="rollout")
    wins, count, running, errors = {}, {}, workers, []
    try:
        with open(log_path, "a") as log:
            while running:
                kind, a, b = queue.get()
                if kind == "done":
                    running -= 1
                elif kind == "error":
                    errors.append(f"worker {a}: {b}")
                else:
                    key = job_key(a, ckpt_id, args)
                    done[key] = b
                    log.write(json.dumps({"key": key, "label": a["label"], "result": b}) + "\n")
                    log.flush()
                    wins[a["label"]] = wins.get(a["label"], 0) + int(b["success"])
                    count[a["label"]] = count.get(a["label"], 0) + 1
                    bar.update(1)
                    bar.set_postfix_str(" ".join(f"{lab}:{wins[lab]}/{count[lab]}" for lab in count)[-80:])
    except KeyboardInterrupt:
        for p in procs:
            if hasattr(p, "terminate"):
                p.terminate()
        raise SystemExit(f"interrupted: finished rollouts are kept in {log_path}; run the same command to resume")
    finally:
        bar.close()
    for p in procs:
        p.join()
    if errors:
        raise SystemExit("evaluation worker failed:\n" + "\n".join(errors))
    return done


def load_done(log_path: str) -> dict:
    done = {}
    if os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: that rollout is simply rerun
                    continue
                done[rec["key"]] = rec["result"]
    return done


# ------------------------------------------------------------------------------------------ outputs
def pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def write_table1(path: str, task: str, variants: dict, stage_names: list[str]):
    lines = [f"# Table I, {task}", "",
             "Success rate (%) over seeded rollouts, Wilson 95 % interval in brackets; paper values from "
             "Table I (500 rollouts).", "",
             "| Variant | Ours | 95 % CI | Paper | Rollouts | " + " | ".join(f"S{i} {n}" for i, n in enumerate(stage_names))
             + " | Planner failures | Replans |",
             "|---|---|---|---|---|" + "---|" * len(stage_names) + "---|---|"]
    for name, v in variants.items():
        s = v["summary"]
        paper = PAPER_TABLE1.get(name, {}).get(task)
        lines.append(
            f"| {name} | {pct(s['success_rate'])} | [{pct(s['wilson95'][0])}, {pct(s['wilson95'][1])}] | "
            f"{'-' if paper is None else f'{paper:.1f}'} | {s['rollouts']} | "
            + " | ".join(pct(st["rate"]) for st in s["stage_success"])
            + f" | {s['planner_failures']} | {s['replans']} |")
    lines += ["", "Per-stage columns: success of stage i among rollouts that reached it."]
    _write_text(path, "\n".join(lines) + "\n")


def write_all_tasks_table(root: str):
    """results/table1.md: every task's eval.json in one Table I (ours / paper)."""
    rows, tasks = {}, []
    for task in sorted(common.TASKS):
        p = os.path.join(root, task, "eval.json")
        if not os.path.exists(p):
            continue
        with open(p) as f:
            ev = json.load(f)
        tasks.append(task)
        for name, v in ev["variants"].items():
            rows.setdefault(name, {})[task] = v["summary"]
    if not tasks:
        return
    lines = ["# Table I (ours / paper), success %", "",
             "| Variant | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for name, per in rows.items():
        cells = []
        for t in tasks:
            s, paper = per.get(t), PAPER_TABLE1.get(name, {}).get(t)
            ours = "-" if s is None else f"{pct(s['success_rate'])} (n={s['rollouts']})"
            cells.append(f"{ours} / {'-' if paper is None else f'{paper:.1f}'}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    _write_text(os.path.join(root, "table1.md"), "\n".join(lines) + "\n")


def plot_table(path: str, task: str, variants: dict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(variants)
    ours = [100 * variants[n]["summary"]["success_rate"] for n in names]
    lo = [o - 100 * variants[n]["summary"]["wilson95"][0] for o, n in zip(ours, names)]
    hi = [100 * variants[n]["summary"]["wilson95"][1] - o for o, n in zip(ours, names)]
    paper = [PAPER_TABLE1.get(n, {}).get(task, np.nan) for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.8 * len(names) + 2, 3.5))
    ax.bar(x - 0.2, ours, 0.4, yerr=[lo, hi], capsize=4, label="ours (Wilson 95 %)")
    ax.bar(x + 0.2, paper, 0.4, label="paper", alpha=0.6)
    ax.set_xticks(x, names)
    ax.set_ylabel("success %")
    _finish_figure(fig, ax, f"{task}: Table I variants", path)


def plot_pose_noise(path: str, task: str, stage: int, stage_name: str, curves: dict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for v, pts in curves.items():
        s = [p["sigma"] for p in pts]
        r = [100 * p["rate"] if p["rate"] is not None else np.nan for p in pts]
        lo = [100 * (p["rate"] - p["wilson95"][0]) if p["rate"] is not None else 0 for p in pts]
        hi = [100 * (p["wilson95"][1] - p["rate"]) if p["rate"] is not None else 0 for p in pts]
        ax.errorbar(s, r, yerr=[lo, hi], marker="o", capsize=3, label=v)
    ax.set_xlabel("initiation pose noise σ (m / rad)")
    ax.set_ylabel("skill success %")
    _finish_figure(fig, ax, f"{task} stage {stage + 1} ({stage_name})", path)


def _finish_figure(fig, ax, title: str, path: str):
    """Success-% axes: 0-100, title, legend; saved as PNG and closed."""
    import matplotlib.pyplot as plt
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_text(path: str, text: str):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, obj):
    _write_text(path, json.dumps(obj, indent=2, default=str))


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    args = parse_args(argv)
    preset = get_preset(args.preset)
    args.rollouts = args.rollouts or preset["eval_rollouts"]
    t_start = time.time()
    ck, _ = load_hsp_models(args.ckpt, args.task, args.obs)  # clear error for another task / obs mode
    args.obs = ck["obs_mode"]
    if args.connect_posture is None:  # connect as the checkpoint's data did (absent before 2026-12-02: "reset")
        args.connect_posture = ck["config"].get("connect_posture", "reset")
    stage_names = [s.name for s in common.TASKS[args.task].stages]
    if ck["config"]["n_stages"] != len(stage_names):
        raise CheckpointError(f"{args.ckpt} has {ck['config']['n_stages']} stages, {args.task} has "
                              f"{len(stage_names)}: retrain it with 02_train_hsp.py")
    jobs = make_jobs(args, len(stage_names), ck["config"].get("skill_action"))
    if any(j["options"]["pose"] == "privileged" for j in jobs):
        with D.open_dataset(args.source, task=args.task):  # clear error if missing or malformed
            pass
    out_dir = os.path.join(args.out, args.task)
    os.makedirs(out_dir, exist_ok=True)
    ckpt_id = file_id(args.ckpt)
    log_path = os.path.join(out_dir, "rollouts.jsonl")
    if args.fresh and os.path.exists(log_path):
        os.remove(log_path)
    done = run_jobs(args, jobs, load_done(log_path), log_path, ckpt_id)

    by_label: dict[str, list] = {}
    for j in jobs:
        by_label.setdefault(j["label"], []).append(done[job_key(j, ckpt_id, args)])
    config = dict(vars(args), checkpoint_id=ckpt_id, checkpoint_obs_mode=ck["obs_mode"],
                  checkpoint_config=ck["config"].get("train"))
    write_json(os.path.join(out_dir, f"eval_config_{args.experiment}.json"), config)
    wall = time.time() - t_start

    if args.experiment == "table":
        eval_path = os.path.join(out_dir, "eval.json")
        old = {}
        if os.path.exists(eval_path):
            with open(eval_path) as f:
                old = json.load(f).get("variants", {})
        variants = dict(old)  # variants evaluated earlier (e.g. by later phases) stay in the table
        for j in jobs[:len(args.variants)]:
            variants[j["label"]] = dict(options=j["options"], checkpoint_id=ckpt_id, planner=args.planner,
                                        connect_posture=args.connect_posture,
                                        summary=summarize(by_label[j["label"]], len(stage_names)))
        ev = dict(task=args.task, obs_mode=ck["obs_mode"], checkpoint=args.ckpt, stage_names=stage_names,
                  variants=variants, wall_seconds=wall)
        write_json(eval_path, ev)
        write_table1(os.path.join(out_dir, "table1.md"), args.task, variants, stage_names)
        write_all_tasks_table(args.out)
        if args.plot:
            plot_table(os.path.join(out_dir, "eval.png"), args.task, variants)
        for name in args.variants:
            s = variants[name]["summary"]
            print(f"{name:12s} success {pct(s['success_rate'])} % [{pct(s['wilson95'][0])}, {pct(s['wilson95'][1])}] "
                  f"over {s['rollouts']} rollouts; stages " +
                  " ".join(pct(st["rate"]) for st in s["stage_success"]) +
                  f"; planner failures {s['planner_failures']}, replans {s['replans']}")
        print(f"wrote {eval_path}, {os.path.join(out_dir, 'table1.md')} in {wall:.0f}s")
        return ev

    stage = 1 if args.stage is None else args.stage
    curves = {}
    for v in args.variants:
        pts = []
        for s in args.sigmas:
            summ = summarize(by_label[f"{v} σ={s:g}"], len(stage_names))["stage_success"][stage]
            pts.append(dict(sigma=float(s), attempted=summ["attempted"], succeeded=summ["succeeded"],
                            rate=summ["rate"], wilson95=list(wilson_interval(summ["succeeded"], summ["attempted"]))))
        curves[v] = pts
    res = dict(task=args.task, stage=stage, stage_name=stage_names[stage], checkpoint=args.ckpt,
               rollouts_per_sigma=args.rollouts, curves=curves, wall_seconds=wall)
    write_json(os.path.join(out_dir, "pose_noise.json"), res)
    plot_pose_noise(os.path.join(out_dir, "pose_noise.png"), args.task, stage, stage_names[stage], curves)
    for v, pts in curves.items():
        print(f"{v}: " + ", ".join(f"σ={p['sigma']:g}: {pct(p['rate'])} % ({p['succeeded']}/{p['attempted']})"
                                   for p in pts))
    print(f"wrote {os.path.join(out_dir, 'pose_noise.json')} and pose_noise.png in {wall:.0f}s")
    return res


if __name__ == "__main__":
    try:
        main()
    except (D.DataError, CheckpointError) as e:  # bad input: its message names the fix
        raise SystemExit(f"error: {e}") from None
