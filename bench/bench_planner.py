"""Benchmark of common/planner.py: OMPL RRT-Connect planning vs MimicGen-style linear interpolation.

For every task scene (start: reset with D2 placement) and N random targets per task, each target a
plausible skill initiation pose (6-10 cm above the top of a random object, top-down gripper with a
random yaw folded into the wrist's comfortable range), both modes plan from the same start state
and execute the plan in MuJoCo with OSC delta-pose actions (gripper command: open; the planner is
told so, the fingers open during the first steps). Reported per task and mode: planning success,
median / p95 planning time, reaching error at the end of execution (mm, deg), execution steps, and
robot-scene contacts counted in MuJoCo after every executed step (every contact counts, also one
that the start state already had and that persists into the first steps). Some resets already have
the gripper touching the scene (e.g. Coffee_D2's pod holder or lid right beside the start pose):
"start in contact" counts those runs, "retreats" the plans that begin with a retreat from the
contact (common/planner.py).

    PYTHONPATH=. nice -n 5 python bench/bench_planner.py [--n 100] [--tasks Threading_D2 ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import common  # noqa: E402,F401
from common import pose as P  # noqa: E402
from common.env import TASKS, make_env  # noqa: E402
from common.planner import Planner  # noqa: E402
from common.scripted import GRIPPER_OPEN, top_down, wrap_yaw_near  # noqa: E402

try:
    from common.scripted import WRIST_YAW_CENTER
except ImportError:  # older scripted.py
    WRIST_YAW_CENTER = 0.0


def collision_geoms(raw):
    """(robot geoms, scene geoms): collision geoms of the robot subtree (arm, gripper, mount) and
    every other collision geom (table, objects, fixtures)."""
    m = raw.sim.model._model
    root = m.body_rootid[m.body(raw.robots[0].robot_model.root_body).id]
    robot, scene = [], []
    for g in range(m.ngeom):
        if not (m.geom_contype[g] or m.geom_conaffinity[g]):
            continue
        (robot if m.body_rootid[m.geom_bodyid[g]] == root else scene).append(g)
    return robot, scene


def object_top(raw, name) -> float:
    """Highest world z of the object's collision geoms (MuJoCo geom AABBs)."""
    m, d = raw.sim.model._model, raw.sim.data._data
    root = raw.obj_body_id[name]
    top = -np.inf
    for g in range(m.ngeom):
        b = m.geom_bodyid[g]
        while b > 0 and b != root:
            b = m.body_parentid[b]
        if b != root or not (m.geom_contype[g] or m.geom_conaffinity[g]):
            continue
        R = d.geom_xmat[g].reshape(3, 3)
        c, h = m.geom_aabb[g][:3], m.geom_aabb[g][3:]
        top = max(top, d.geom_xpos[g][2] + R[2] @ c + np.abs(R[2]) @ h)
    return float(top)


def sample_target(raw, rng):
    name = rng.choice(sorted(raw.objects))
    T = raw.object_pose(name)
    pos = np.array([T[0, 3], T[1, 3], object_top(raw, name)]) + [*rng.normal(0, 0.01, 2), rng.uniform(0.06, 0.10)]
    yaw = wrap_yaw_near(rng.uniform(-np.pi, np.pi), WRIST_YAW_CENTER)
    return name, P.make_pose(pos, top_down(yaw))


def run_task(task, n, seed, time_budget, modes, start="reset"):
    env = make_env(task, seed=seed)
    env.reset(seed=seed)
    raw = env.raw
    robot_g, scene_g = collision_geoms(raw)
    planners = {mode: Planner(env, mode=mode, time_budget=time_budget, seed=seed) for mode in modes}
    rng = np.random.default_rng(seed)
    rows = {mode: [] for mode in modes}
    for i in range(n):
        env.reset(seed=seed * 100000 + i)
        obj, target = sample_target(raw, rng)
        if start == "pregrasp":  # start at the pre-grasp pose of another object (reached by the planner)
            others = [o for o in raw.objects if o != obj] or [obj]
            for _ in range(10):
                o2, pre = sample_target(raw, rng)
                if o2 in others:
                    break
            pl0 = planners.get("ompl") or next(iter(planners.values()))
            r0 = pl0.plan(env, pre, mode="ompl", gripper=GRIPPER_OPEN)
            if r0.success:
                pl0.execute(env, r0, GRIPPER_OPEN)
        state = env.get_state()
        # the gripper's command state lives in robosuite's gripper object, not in the sim state:
        # every mode starts from the same one
        gripper = raw.robots[0].gripper["right"]
        gripper_cmd = np.array(gripper.current_action, copy=True)
        start_contact = raw.contacts_between(robot_g, scene_g) > 0
        for mode, pl in planners.items():
            env.reset_to(state)
            gripper.current_action = gripper_cmd.copy()
            res = pl.plan(env, target, gripper=GRIPPER_OPEN)
            row = dict(ok=res.success, reason=res.reason, t=res.plan_time, obj=obj,
                       planner=res.info.get("planner", mode), start_contact=start_contact,
                       retreat=res.retreat_end is not None)
            if res.success:
                contacts = [0, 0]  # contacts summed over steps, steps with any contact

                def step(a):
                    out = env.step(a)
                    c = raw.contacts_between(robot_g, scene_g)
                    contacts[0] += c
                    contacts[1] += c > 0
                    return out
                ex = pl.execute(env, res, GRIPPER_OPEN, step_fn=step)
                row.update(reached=ex.success, pos_err=ex.pos_err, rot_err=ex.rot_err, steps=ex.steps,
                           contacts=contacts[0], contact_steps=contacts[1])
            rows[mode].append(row)
    for pl in planners.values():
        pl.close()
    env.close()
    return rows


def summarize(task, mode, rows):
    n = len(rows)
    ok = [r for r in rows if r["ok"]]
    ex = [r for r in ok if "steps" in r]
    t = np.array([r["t"] for r in rows]) * 1000
    pe = np.array([r["pos_err"] for r in ex]) * 1000
    re = np.degrees([r["rot_err"] for r in ex])
    reasons = {}
    for r in rows:
        if not r["ok"]:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    direct = sum(r["planner"] == "direct" for r in ok)
    start_contact = sum(r["start_contact"] for r in rows)
    retreats = sum(r["retreat"] for r in ok)
    med = lambda a: float(np.median(a)) if len(a) else float("nan")  # noqa: E731
    p95 = lambda a: float(np.percentile(a, 95)) if len(a) else float("nan")  # noqa: E731
    return (f"| {task} | {mode} | {n} | {100 * len(ok) / n:.1f} | {100 * sum(r['reached'] for r in ex) / max(n, 1):.1f} "
            f"| {med(t):.1f} | {p95(t):.1f} | {med(pe):.1f} / {p95(pe):.1f} | {med(re):.2f} / {p95(re):.2f} "
            f"| {med([r['steps'] for r in ex]):.0f} | {sum(r['contacts'] > 0 for r in ex)} "
            f"| {sum(r['contacts'] for r in ex)} | {sum(r['contact_steps'] for r in ex)} "
            f"| {start_contact} | {retreats} "
            f"| {direct} | {', '.join(f'{k}: {v}' for k, v in reasons.items()) or '-'} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="targets per task")
    ap.add_argument("--tasks", nargs="*", default=None, help="default: every registered task")
    ap.add_argument("--modes", nargs="*", default=["ompl", "linear"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-budget", type=float, default=1.0, help="RRT-Connect budget per plan, in seconds of one core (x RRT_CHECKS_PER_SECOND validity checks)")
    ap.add_argument("--start", choices=["reset", "pregrasp"], default="reset",
                    help="start state: the reset pose, or a pre-grasp pose above another object")
    args = ap.parse_args()
    tasks = args.tasks or sorted(t for t in TASKS if not t.startswith("Test"))
    t0 = time.time()
    lines = ["| task | mode | N | plan success % | reached % | plan ms median | plan ms p95 "
             "| reach err mm median / p95 | reach err deg median / p95 | exec steps median "
             "| runs with contact | contacts (sum over steps) | steps with contact | start in contact | retreats "
             "| direct joint paths | failures |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for task in tasks:
        rows = run_task(task, args.n, args.seed, args.time_budget, args.modes, args.start)
        for mode in args.modes:
            lines.append(summarize(task, mode, rows[mode]))
            print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))
    print(f"\n{len(tasks)} task(s), N={args.n} targets each, start={args.start}, {time.time() - t0:.0f} s wall, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
