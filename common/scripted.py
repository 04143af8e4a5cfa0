"""Building blocks of the scripted source-demonstration policies (one per task, in common/tasks/).

A scripted demo is a list of waypoint moves with privileged object poses, executed as closed-loop
OSC delta-pose actions, exactly the action space the learned policies use. Each move is labelled
with its stage and phase (connect = free-space approach to the skill's initiation pose, skill =
the contact-rich part that data generation later replays relative to the reference object).
Demos vary a little between seeds (approach offsets, speeds, grasp points), as different human
demonstrations would.
"""
from __future__ import annotations

import numpy as np

from . import pose as P
from .data import PHASE_CONNECT, PHASE_SKILL, EpisodeRecorder

POS_SCALE, ROT_SCALE = 0.05, 0.5  # OSC_POSE output_max: metres / radians per unit action
GRIPPER_OPEN, GRIPPER_CLOSED = -1.0, 1.0


def pose_action(eef_T, target_T, gripper: float, max_pos: float = 1.0, max_rot: float = 1.0,
                gain: float = 1.0) -> np.ndarray:
    """Normalized OSC delta action moving the end-effector from eef_T toward target_T.

    robosuite's OSC sets goal_pos = pos + Δp and goal_R = R(Δaa) · R (rotation delta applied in the
    base frame, which is aligned with the world frame here), so the world-frame errors are the
    deltas, scaled by the controller's output_max.
    """
    dp = (target_T[:3, 3] - eef_T[:3, 3]) * gain / POS_SCALE
    n = np.linalg.norm(dp)
    if n > max_pos:
        dp *= max_pos / n
    daa = P.mat_to_axisangle(target_T[:3, :3] @ eef_T[:3, :3].T) * gain / ROT_SCALE
    n = np.linalg.norm(daa)
    if n > max_rot:
        daa *= max_rot / n
    return np.concatenate([dp, daa, [gripper]])


def action_target(eef_T, action) -> np.ndarray:
    """The pose an OSC delta action commanded from eef_T: the inverse of `pose_action` (gain 1)."""
    a = np.asarray(action, dtype=np.float64)
    return P.make_pose(eef_T[:3, 3] + a[:3] * POS_SCALE, P.axisangle_to_mat(a[3:6] * ROT_SCALE) @ eef_T[:3, :3])


def top_down(yaw: float) -> np.ndarray:
    """Rotation of a gripper pointing straight down (z_eef = -z_world) whose y-axis points along
    `yaw` in the table plane. The Panda's fingers close along the grip site's x-axis, i.e. along
    yaw + 90° (finger pads measured at ±0.0243 m along x)."""
    c, s = np.cos(yaw), np.sin(yaw)
    y_axis = np.array([c, s, 0.0])
    z_axis = np.array([0.0, 0.0, -1.0])
    x_axis = np.cross(y_axis, z_axis)
    return np.stack([x_axis, y_axis, z_axis], axis=1)


# Top-down gripper yaws the Panda wrist reaches from its home pose span about [-140°, 240°]
# (measured by bench-style sweeps); its middle is the safest yaw to aim for.
WRIST_YAW_CENTER = np.deg2rad(50.0)


def wrist_yaw_cost(yaw: float) -> float:
    """Angular distance (rad) of a top-down yaw from the middle of the wrist's range."""
    return abs((yaw - WRIST_YAW_CENTER + np.pi) % (2 * np.pi) - np.pi)


def wrap_yaw_near(yaw: float, ref: float, period: float = np.pi) -> float:
    """The member of yaw + k·period closest to ref (symmetric grasps need not rotate far)."""
    return yaw + period * np.round((ref - yaw) / period)


class Demonstrator:
    """Runs waypoint moves in a KitEnv and records them; `failed` is set when a move times out."""

    def __init__(self, env, rng: np.random.Generator, record: bool = True, action_noise: float = 0.0):
        self.env, self.rng = env, rng
        self.rec = EpisodeRecorder(env, len(env.stages)) if record else None
        self.obs = None
        self.stage, self.phase = 0, PHASE_CONNECT
        self.gripper = GRIPPER_OPEN
        self.action_noise = action_noise
        self.steps = 0
        self.failed = None  # reason string once a move fails

    def start(self, seed: int):
        self.obs = self.env.reset(seed=seed)
        return self

    def label(self, stage: int, phase: int):
        self.stage, self.phase = stage, phase

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if self.action_noise > 0:  # noise on the pose part only, as in MimicGen
            action[:6] = action[:6] + self.rng.normal(0, self.action_noise, 6)
        action = np.clip(action, -1, 1)
        if self.rec is not None:
            self.rec.record(self.obs, action, self.stage, self.phase)
        self.obs, _, _, info = self.env.step(action)
        self.steps += 1
        return info

    def move(self, target_T, gripper=None, max_steps=80, pos_tol=0.004, rot_tol=0.05, speed=1.0,
             rot_speed=1.0, until=None) -> bool:
        """Servo to target_T (4x4); stop when within tolerance or `until()` holds."""
        if self.failed:
            return False
        if gripper is not None:
            self.gripper = gripper
        for _ in range(max_steps):
            eef = self.env.eef_pose()
            if until is not None and until():
                return True
            if (np.linalg.norm(eef[:3, 3] - target_T[:3, 3]) < pos_tol
                    and P.rotation_angle(eef[:3, :3], target_T[:3, :3]) < rot_tol):
                return True
            self.step(pose_action(eef, target_T, self.gripper, max_pos=speed, max_rot=rot_speed))
        if until is not None and until():
            return True
        self.failed = f"stage {self.stage}: move timed out"
        return False

    def track(self, target_fn, gripper=None, max_steps=80, speed=1.0, until=None, pos_tol=0.003,
              rot_tol=0.05) -> bool:
        """Servo to a target recomputed every step (closed loop on object poses)."""
        if self.failed:
            return False
        if gripper is not None:
            self.gripper = gripper
        for _ in range(max_steps):
            if until is not None and until():
                return True
            target = target_fn()
            eef = self.env.eef_pose()
            if (until is None and np.linalg.norm(eef[:3, 3] - target[:3, 3]) < pos_tol
                    and P.rotation_angle(eef[:3, :3], target[:3, :3]) < rot_tol):
                return True
            self.step(pose_action(eef, target, self.gripper, max_pos=speed))
        if until is not None and until():
            return True
        self.failed = f"stage {self.stage}: tracking timed out"
        return False

    def connect(self, target_T, gripper=None, held: str | None = None, fallback: bool = False,
                retry_budget: float = 3.0, **follow_kw) -> bool:
        """Free-space move with the motion planner (collision-free joint-space path tracked with
        OSC actions). Joint-space paths avoid the wrist-limit traps that straight Cartesian
        servoing runs into on long rotations; the planner is built once per env. The planner is
        told the gripper command, so the fingers' opening or closing on the way is checked too.

        fallback (opt-in; off: a failed plan or a timed-out path fails the demo): when planning
        fails, plan once more with `retry_budget` seconds of RRT-Connect (and fresh IK restarts);
        when that fails too, or the path's tracking times out, servo straight to the target
        (`move`, no collision checking), as CoffeePreparation's own connect does. Each use is
        counted in `self.connect_fallbacks` ("retry", "servo")."""
        if self.failed:
            return False
        if gripper is not None:
            self.gripper = gripper
        planner = getattr(self.env, "_kit_planner", None)
        if planner is None:
            from .planner import Planner
            planner = self.env._kit_planner = Planner(self.env, seed=0)
        plan = planner.plan(self.env, target_T, held=held, gripper=self.gripper)
        if not plan.success and fallback:
            self._count_fallback("retry")
            plan = planner.plan(self.env, target_T, held=held, gripper=self.gripper, time_budget=retry_budget)
        if plan.success:
            res = planner.execute(self.env, plan, self.gripper, step_fn=self.step, **follow_kw)
            if res.success or not fallback:
                if not res.success:
                    self.failed = f"stage {self.stage}: connect {res.reason}"
                return res.success
        elif not fallback:
            self.failed = f"stage {self.stage}: plan {plan.reason}"
            return False
        self._count_fallback("servo")
        kw = follow_kw.get
        return self.move(target_T, max_steps=kw("max_steps") or 150, pos_tol=kw("pos_tol", 0.004),
                         rot_tol=max(kw("rot_tol", 0.05), 0.05), speed=kw("speed", 1.0))

    def _count_fallback(self, kind: str):
        self.connect_fallbacks = getattr(self, "connect_fallbacks", {})
        self.connect_fallbacks[kind] = self.connect_fallbacks.get(kind, 0) + 1

    def actuate(self, gripper: float, steps: int = 8):
        """Open/close the gripper while holding the current pose target."""
        if self.failed:
            return False
        self.gripper = gripper
        hold = self.env.eef_pose()
        for _ in range(steps):
            self.step(pose_action(self.env.eef_pose(), hold, gripper))
        return True

    def hold(self, steps: int):
        return self.actuate(self.gripper, steps)
