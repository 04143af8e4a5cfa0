"""One stage's skill snapshots, scored where deployment runs them and where the selection does.

02_train_hsp.py --select-trials chooses each stage's skill snapshot by rollouts from held-out
demos' skill-start states (--select-starts demos; --select-starts loop starts them where HSP-Priv
episodes reach the skill, as the "in the loop" column here). Those states come from *kept* demos: the data generator's successful
episodes, reached by replaying a source demo's skills. Deployment (Algorithm 1) reaches the same
stage after the learned skills of the earlier stages and a planned connect, from every seeded
scene. This script scores each snapshot of `--stage` both ways, on the same networks:

- in the loop: HSP-Priv episodes (privileged pose, BC skills, oracle termination, as
  06_evaluate.py's row) run through `--stage`; success of that stage among the episodes that
  reach it. Seeds are 06_evaluate.py's for `--seed` (default 1: disjoint from the evaluation's 0);
- from demo starts (`--demo-starts`): one trial from each held-out demo's skill start, as the
  selection runs them, with seeds of its own.

Each trial also records the arm's joint-limit room at the skill start (the least distance, in rad,
of an arm joint to its limit): a second table splits the successes by it (`--room-bins`).

`--skill-from CKPT` scores another checkpoint's skill for `--stage` (e.g. one trained with other
inputs or another LSTM width) in the loop of `--ckpt`'s other networks, on the same episodes.

Prints the Markdown tables and writes them with the per-rollout outcomes as JSON.

    python bench/skill_in_loop.py --task CoffeePreparation_D2 --ckpt runs_rnn/CoffeePreparation_D2/hsp.pt \
        --stage 1 --rollouts 100 --demo-starts --workers 2
"""
import argparse
import json
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import common  # noqa: E402
from common import data as D  # noqa: E402
from common.env import make_env  # noqa: E402
from common.hsp import (SKILL_ACTIONS, AgentOptions, HSPAgent, guarded_init, raise_setup_error,  # noqa: E402
                        skill_action_option,
                        variant_options, wilson_interval)
from common.hsp_checkpoint import load_hsp_models  # noqa: E402
from common.nets import ObsHistory, obs_keys  # noqa: E402
from common.planner import Planner  # noqa: E402
from common.presets import eval_seed  # noqa: E402

DEMO_START_SEED = 5_000_000  # GMM draws of the demo-start trials (the selection's are 1_000_003 * stage + t)
_W: dict = {}


def _init(args):
    torch.set_num_threads(1)  # one core per worker: the workers are the parallelism
    ck, models = load_hsp_models(args.ckpt, args.task, "state")
    env = make_env(args.task, obs_mode="state")
    env.reset(seed=0)  # robosuite steps only after a reset; demo-start trials then restore states
    demos, _ = D.load_all(args.source, task=args.task)
    snaps = torch.load(args.snapshots, weights_only=True)["stages"] if args.snapshots else None
    keys = obs_keys(ck["config"])
    if args.skill_from:  # the stage's skill (network and weights) from another checkpoint
        other, other_models = load_hsp_models(args.skill_from, args.task, "state")
        models[args.stage]["skill"] = other_models[args.stage]["skill"]
        ck["stages"][args.stage]["skill"] = other["stages"][args.stage]["skill"]
        keys += [k for k in obs_keys(other["config"]) if k not in keys]  # e.g. proprio_without_joints
    _W.update(args=args, ck=ck, models=models, env=env, sources=D.SourceSegments(demos, env.stages), keys=keys,
              planner=Planner(env, mode="ompl", seed=0, posture=ck["config"].get("connect_posture", "reset")),
              snaps=snaps, loaded=None)


def _joint_room(env) -> tuple[float, int]:
    """(room, joint): the least distance (rad) of an arm joint to its limit now, and which joint."""
    sim, robot = env.raw.sim, env.raw.robots[0]
    q = sim.data.qpos[robot._ref_joint_pos_indexes]
    lo, hi = sim.model.jnt_range[[sim.model.joint_name2id(n) for n in robot.robot_joints]].T
    room = np.minimum(q - lo, hi - q)
    return float(room.min()), int(room.argmin()) + 1


class _RoomAgent(HSPAgent):
    """HSPAgent that notes the arm's joint room when stage `room_stage`'s skill starts (in an
    episode, or from a restored demo start with `run_skill`)."""
    room_stage, start_room = -1, None

    def _skill(self, i):
        if i == self.room_stage:
            self.start_room = _joint_room(self.env)
        return super()._skill(i)


def _agent(planner, options):
    """A _RoomAgent noting stage --stage's start room, whose observation history holds every key
    the networks read (with --skill-from, also those of the other checkpoint's skill)."""
    agent = _RoomAgent(_W["env"], _W["models"], _W["ck"]["config"], planner, options, _W["sources"])
    agent.history = ObsHistory(_W["ck"]["config"]["obs"]["frame_stack"], _W["keys"])
    agent.room_stage = _W["args"].stage
    return agent


def _run(job):
    """job = (candidate, kind, index, payload) -> (candidate, kind, index, reached, success,
    (room, joint) at the skill start or None)."""
    raise_setup_error(_init)
    cand, kind, k, payload = job
    args, models, i = _W["args"], _W["models"], _W["args"].stage
    if _W["loaded"] != cand:
        weights = _W["ck"]["stages"][i]["skill"] if cand == "checkpoint" else _W["snaps"][i][cand]
        models[i]["skill"].load_state_dict(weights)
        _W["loaded"] = cand
    if kind == "loop":
        agent = _agent(_W["planner"], variant_options("HSP-Priv", skill_action=args.skill_action))
        r = agent.run_episode(eval_seed(args.seed, k), last_stage=i)
        reached = r.stages_attempted > i  # as 06_evaluate.py's per-stage columns: a failed plan counts
        return cand, kind, k, reached, bool(reached and r.stage_success[i]), agent.start_room
    state, grip = payload
    agent = _agent(None, AgentOptions(termination="oracle", skill_action=args.skill_action))
    ok = bool(agent.run_skill(i, state, DEMO_START_SEED + k, grip).success)
    return cand, kind, k, True, ok, agent.start_room


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="CoffeePreparation_D2", help=f"one of: {', '.join(sorted(common.TASKS))}")
    p.add_argument("--ckpt", default=None, help="default: runs/<task>/hsp.pt")
    p.add_argument("--snapshots", default=None,
                   help="skill snapshots of the selection (default: hsp_skill_snapshots.pt beside --ckpt, if any)")
    p.add_argument("--steps", nargs="+", default=None,
                   help="snapshot steps to score (default: every snapshot of the stage), besides the checkpoint's own")
    p.add_argument("--checkpoint-only", action="store_true",
                   help="score the checkpoint's skill alone, not the selection's snapshots beside it")
    p.add_argument("--skill-from", default=None,
                   help="score this checkpoint's skill for --stage instead of --ckpt's (no snapshots, as --checkpoint-only)")
    p.add_argument("--skill-action", nargs="+", default=None, choices=list(SKILL_ACTIONS),
                   help="how the GMM skills act, one value or one per stage (06_evaluate.py's --skill-action; "
                        "default: the rules --ckpt's selection stored, else component)")
    p.add_argument("--stage", type=int, default=1)
    p.add_argument("--rollouts", type=int, default=100, help="HSP-Priv episodes per candidate")
    p.add_argument("--demo-starts", action="store_true", help="also one trial from each held-out demo's skill start")
    p.add_argument("--data", default=None, help="generated HDF5 of the demo starts (default: the checkpoint's)")
    p.add_argument("--source", default=None, help="default: data/<task>/source.hdf5")
    p.add_argument("--seed", type=int, default=1, help="06_evaluate.py's seed numbering (0 is the evaluation's)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--room-bins", type=float, nargs="+", default=[0.2, 0.4],
                   help="edges (rad) of the joint-room classes of the second table")
    p.add_argument("--out", default=None, help="JSON (default: results/<task>/skill_in_loop_stage<k>.json)")
    args = p.parse_args()
    args.ckpt = args.ckpt or os.path.join("runs", args.task, "hsp.pt")
    args.source = args.source or os.path.join("data", args.task, "source.hdf5")
    args.checkpoint_only = args.checkpoint_only or bool(args.skill_from)  # that checkpoint's skill, no snapshots
    if args.checkpoint_only and (args.steps or args.snapshots):
        raise SystemExit("error: --checkpoint-only and --skill-from score no snapshots; leave out --steps and --snapshots")
    if args.snapshots is None and not args.checkpoint_only:
        beside = os.path.join(os.path.dirname(args.ckpt), "hsp_skill_snapshots.pt")
        args.snapshots = beside if os.path.exists(beside) else None
    out = args.out or os.path.join("results", args.task, f"skill_in_loop_stage{args.stage}.json")
    for path, what in ((args.ckpt, "--ckpt"), (args.source, "--source"), (args.snapshots, "--snapshots"),
                       (args.skill_from, "--skill-from")):
        if path and not os.path.exists(path):
            raise SystemExit(f"error: {what} {path} does not exist")

    ck, _ = load_hsp_models(args.ckpt, args.task, "state")  # clear error for another task / obs mode
    n_stages = ck["config"]["n_stages"]
    if args.skill_from:
        other, _ = load_hsp_models(args.skill_from, args.task, "state")
        stack = (ck["config"]["obs"]["frame_stack"], other["config"]["obs"]["frame_stack"])
        if stack[0] != stack[1]:
            raise SystemExit(f"error: --skill-from {args.skill_from} reads {stack[1]} frames, --ckpt {stack[0]}: "
                             f"the episode keeps one observation history; train both with the same frame stack")
    if not 0 <= args.stage < n_stages:
        raise SystemExit(f"error: --stage {args.stage}: {args.task} has stages 0..{n_stages - 1}")
    try:
        if args.skill_action is not None:  # else None: the checkpoint's rules, as 06_evaluate.py acts
            args.skill_action = skill_action_option(args.skill_action, n_stages)
    except ValueError as e:
        raise SystemExit(f"error: --skill-action: {e}")
    cands = ["checkpoint"]
    if args.steps and not args.snapshots:
        raise SystemExit(f"error: --steps needs the selection's snapshots: none beside {args.ckpt} "
                         f"(train with --select-trials N, or pass --snapshots FILE)")
    if args.snapshots:
        have = list(torch.load(args.snapshots, weights_only=True)["stages"][args.stage])
        wanted = args.steps or have
        missing = [s for s in wanted if s not in have]
        if missing:
            raise SystemExit(f"error: no snapshot at step(s) {', '.join(missing)} in {args.snapshots}; "
                             f"it has {', '.join(have)}")
        cands += wanted
    jobs = [(c, "loop", k, None) for c in cands for k in range(args.rollouts)]
    if args.demo_starts:
        data = args.data or ck["config"]["train"]["data"]
        with D.open_dataset(data, args.task) as f:
            starts = []
            for key in ck["config"]["train"]["val_demos"]:
                g = f["data"][key]
                a = int(g["skill_bounds"][args.stage, 0])
                if a >= 0:
                    starts.append((g["states"][a], g["actions"][:a, 6]))
        jobs += [(c, "demo", k, s) for c in cands for k, s in enumerate(starts)]

    t0, results = time.time(), []
    with mp.get_context("spawn").Pool(args.workers, initializer=guarded_init, initargs=(_init, args)) as pool:
        for r in tqdm(pool.imap_unordered(_run, jobs, chunksize=4), total=len(jobs), desc=f"stage {args.stage}"):
            results.append(r)
    name = ck["config"]["stage_names"][args.stage]
    rows = []
    for c in cands:
        row = {"candidate": "skill-from" if args.skill_from and c == "checkpoint" else c}
        for kind in ("loop", "demo"):
            got = [r for r in results if r[0] == c and r[1] == kind and r[3]]
            if kind == "demo" and not args.demo_starts:
                continue
            n, ok = len(got), sum(r[4] for r in got)
            row[kind] = {"trials": n, "successes": ok, "rate": ok / max(n, 1), "wilson95": wilson_interval(ok, n),
                         # (trial, success, joint room at the skill start or None, its joint 1-7)
                         "outcomes": sorted((r[2], r[4], *(r[5] or (None, None))) for r in got)}
        rows.append(row)
    print(f"\n{args.task} stage {args.stage} ({name}); {args.rollouts} HSP-Priv episodes per candidate "
          f"(seed {args.seed}), {time.time() - t0:.0f} s\n")
    head = "| skill | in the loop (%) | Wilson 95 % |" + (" from held-out demo starts (%) | Wilson 95 % |"
                                                          if args.demo_starts else "")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for row in rows:
        line = f"| {row['candidate']} | " + _cell(row["loop"])
        if args.demo_starts:
            line += " | " + _cell(row["demo"])
        print(line + " |")
    room_rows = _room_table(rows, sorted(args.room_bins), args.demo_starts)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump({"task": args.task, "stage": args.stage, "stage_name": name, "args": vars(args), "rows": rows,
                   "by_joint_room": room_rows}, f, indent=1)
    print(f"\nwrote {out}")


def _room_table(rows: list, edges: list, demo_starts: bool) -> list:
    """Print and return the successes split by the arm's joint room at the skill start."""
    bounds = [-np.inf] + list(edges) + [np.inf]
    classes = [f"< {edges[0]}"] + [f"{a}–{b}" for a, b in zip(edges, edges[1:])] + [f"≥ {edges[-1]}"]
    kinds = ["loop", "demo"] if demo_starts else ["loop"]
    print("\nBy the arm's joint-limit room (rad) at the skill start: successes / trials (%), and the "
          "joint nearest its limit most often\n")
    head = "| skill | room | " + " | ".join({"loop": "in the loop", "demo": "from demo starts"}[k] for k in kinds) + " |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    out = []
    for row in rows:
        for cls, lo, hi in zip(classes, bounds, bounds[1:]):
            cells, entry = [], {"candidate": row["candidate"], "room": cls}
            for kind in kinds:
                got = [o for o in row[kind]["outcomes"] if o[2] is not None and lo <= o[2] < hi]
                ok = sum(o[1] for o in got)
                joint = int(np.bincount([o[3] for o in got]).argmax()) if got else None
                entry[kind] = {"trials": len(got), "successes": ok, "joint": joint}
                cells.append(f"{ok}/{len(got)} ({100 * ok / len(got):.0f} %), joint {joint}" if got else "0/0")
            print(f"| {row['candidate']} | {cls} | " + " | ".join(cells) + " |")
            out.append(entry)
    return out


def _cell(r: dict) -> str:
    lo, hi = r["wilson95"]
    return f"{100 * r['rate']:.1f} ({r['successes']}/{r['trials']}) | [{100 * lo:.1f}, {100 * hi:.1f}]"


if __name__ == "__main__":
    main()
