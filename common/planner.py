"""Motion planner connecting skill segments (paper Sec. III-C, Algorithm 1 lines 5-12).

The planner keeps a collision world in pybullet (DIRECT mode, one client per `Planner`) that
mirrors the MuJoCo scene of a kit task:

- the Panda of pybullet_data placed at robosuite's `robot0_link0` pose, joints and fingers synced
  from the sim (the two models share the Panda's kinematics; the offset from pybullet's
  `panda_hand` to robosuite's grip site, the OSC controller's frame, is measured from the sim);
- every collision geom of the MuJoCo scene that is not part of the robot, its gripper or its mount,
  built generically from `MjModel` (box, sphere, capsule, cylinder, ellipsoid, mesh via its
  vertices, plane as a thick box), one pybullet multibody per MuJoCo body, so a new task needs no
  planner code. Scene shapes are inflated by `margin`, which turns pybullet's penetration-only
  contact reports into a clearance test: clearance = contact distance + margin;
- optionally an object held in the gripper, rigidly attached to the hand with the relative
  transform measured at plan time, collision-checked against the scene and the arm (its contacts
  with the fingers and the hand are ignored).

Planning: inverse kinematics to the target grip-site pose (damped least squares from the current
joints, then random restarts; a solution must reproduce the target within 2 mm and 2 degrees and be
collision-free), the straight joint-space segment if it is collision-free, else OMPL RRT-Connect in
the 7-D joint space with path simplification. `mode="linear"` instead interpolates the end-effector
pose in task space without collision checks, as MimicGen does.

A start touching the scene (a skill's end state, or a reset right beside a fixture), or closer than
`retreat_clearance`, first gets a retreat: the grip site translated 2-7 cm away from the contacts
(their normals, up, back along the fingers) along a straight joint segment that brings nothing
closer, tracked with the gripper command held; the rest of the path then keeps the full clearance.
Given the gripper command the path will be executed with (`plan(..., gripper=)`), the collision
checks include the fingers at the openings they pass through on the way (they open or close in the
first steps of the execution, while the arm already moves).

Execution: the joint path becomes dense grip-site waypoints (forward kinematics) that are tracked
closed-loop with the skills' own action space, normalized OSC delta poses
(`common.scripted.pose_action`), until the end-effector is within tolerance of the target.
`PathFollower` is the step API (Algorithm 1 re-predicts the target each step and calls `replan`);
`Planner.execute` is the convenience loop.

Failures never raise: `plan` returns a `PlanResult` with `success=False` and a short `reason`
("ik_failed", "start_in_collision", "goal_in_collision", "no_path", "error: ...") callers count.
"""
from __future__ import annotations

import math
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numpy as np

from . import pose as P
from .scripted import pose_action

# Failure reasons (PlanResult.reason / ExecResult.reason)
IK_FAILED = "ik_failed"
START_IN_COLLISION = "start_in_collision"
GOAL_IN_COLLISION = "goal_in_collision"
NO_PATH = "no_path"
TIMEOUT = "timeout"
STALLED = "stalled"
# A follower whose carrot has not moved on and whose hand has not come 0.5 mm or 0.3° closer to it
# in this many steps has stalled (e.g. the OSC took the wrist the other way round into joint 7's limit, 3 cm short: in
# ThreePiece HSP-Priv rollouts such connects ran 200-260 steps to their timeout and every one of
# those episodes failed, 9 of 100 at the evaluation horizon). It stops instead of waiting.
STALL_STEPS, STALL_POS, STALL_ROT = 25, 5e-4, math.radians(0.3)
POSTURE_RECOVERY_STEPS = 60  # steps a stalled connect gets after its OSC posture target became the plan's goal
# How a connect resolves the arm's redundancy (PathFollower `posture`): "reset" leaves robosuite's
# OSC posture target (the reset configuration) and moves it to the plan's goal only once a connect
# stalls; "path" moves it along the planned joint path from the first step (the configuration of
# the carrot waypoint), so the arm follows the collision-checked joint path, not just its hand poses.
CONNECT_POSTURES = ("reset", "path")
# shortcutting: interpolate the path to this many states, try this many shortcuts per batch, stop
# after this many batches without gain
SIMPLIFY_POINTS, SIMPLIFY_BATCH, SIMPLIFY_IDLE, SIMPLIFY_MAX_BATCHES = 30, 6, 3, 12
# RRT-Connect's budget is counted in state validity checks, not seconds: with a wall-clock budget
# a seeded plan came out differently on a loaded machine (a CoffeePreparation connect whose IK took
# 1.1 s instead of 0.07 s under load had 0.01 s left for RRT-Connect and failed, so the same
# rollout took another source demo and ended 2 steps later). A check costs 70-115 µs of one core
# (pybullet, the five scenes), so `time_budget` seconds buy this many checks per second ...
RRT_CHECKS_PER_SECOND = 10_000
# ... and the wall clock only guards against a hang, at this multiple of the budget.
RRT_WALL_GUARD = 20.0
# retreat from a start in contact: grip-site translations tried (m); tracked with this lookahead (m)
# and left once the grip site is this close to its end (m)
RETREAT_DISTANCES, RETREAT_LOOKAHEAD, RETREAT_TOL = (0.02, 0.035, 0.05, 0.07), 0.05, 0.004
_OMPL_SEEDED = False

# Robot links of pybullet_data/franka_panda/panda.urdf (link index = joint index)
_ARM_JOINTS = list(range(7))
_FINGER_JOINTS = (9, 10)
_HAND_LINK = 8
_HAND_LINKS = (7, 8, 9, 10, 11)  # link8, hand, fingers, grasp target: may touch a held object

# Collision filter groups (pybullet ORs the two group/mask tests, so every body sets both).
# The hand and fingers collide with the scene through TOOL bodies mirrored from robosuite's own
# gripper geoms (pybullet's finger meshes are bulkier); pybullet's hand/finger links (HAND) only
# take part in arm self-collision.
_G_ROBOT, _G_SCENE, _G_HELD, _G_TOOL, _G_HAND = 1, 2, 4, 8, 16
_GRIPPER_LINKS = (8, 9, 10, 11)
# Finger motion under a gripper command: each finger body's swept volume (convex hulls of its geoms
# at both ends of the motion), the motion's length rounded up to _SWEEP_QUANTUM (m) so that a few
# cached shapes serve every plan; parked at _SWEEP_PARK while unused.
_SWEEP_QUANTUM, _SWEEP_PARK = 0.002, [10.0, 10.0, -100.0]
GRIPPER_HOLD = 0.0  # robosuite grippers integrate the command's sign: 0 keeps the fingers' command


def _raw(env):
    return getattr(env, "raw", env)


def set_arm_posture(env, q=None):
    """Set the arm OSC's nullspace posture target to joint configuration `q` (None: back to the
    one robosuite set at reset). robosuite's OSC pulls the arm's redundant degree of freedom toward
    this posture (joint kp 10, `nullspace_torques`); by default it is the reset configuration."""
    ctrl = _raw(env).robots[0].composite_controller.part_controllers["right"]
    if q is None:
        if hasattr(ctrl, "_kit_default_posture"):
            ctrl.initial_joint = ctrl._kit_default_posture
            del ctrl._kit_default_posture
        return
    if not hasattr(ctrl, "_kit_default_posture"):  # robosuite builds new controllers at every reset
        ctrl._kit_default_posture = np.array(ctrl.initial_joint, dtype=np.float64)
    ctrl.initial_joint = np.asarray(q, dtype=np.float64).copy()


def _rpy_xyz(rpy, xyz) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", rpy).as_matrix()  # URDF rpy: fixed-axis roll, pitch, yaw
    T[:3, 3] = xyz
    return T


def _mj_quat_to_xyzw(q) -> np.ndarray:
    return np.array([q[1], q[2], q[3], q[0]], dtype=np.float64)


def _interp_poses(A, B, pos_step=0.01, rot_step=0.05) -> np.ndarray:
    """Task-space interpolation from 4x4 A to B (linear position, slerp rotation), B included."""
    from scipy.spatial.transform import Rotation, Slerp
    d = np.linalg.norm(B[:3, 3] - A[:3, 3])
    ang = P.rotation_angle(A[:3, :3], B[:3, :3])
    n = max(1, int(math.ceil(max(d / pos_step, ang / rot_step))))
    s = np.linspace(0.0, 1.0, n + 1)[1:]
    slerp = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([A[:3, :3], B[:3, :3]])))
    out = np.repeat(np.eye(4)[None], n, axis=0)
    out[:, :3, :3] = slerp(s).as_matrix()
    out[:, :3, 3] = A[:3, 3] + s[:, None] * (B[:3, 3] - A[:3, 3])
    out[-1] = B
    return out


def _seed_ompl(seed):
    """OMPL draws every planner's random seed from one process-wide generator, which can be
    seeded once, before first use: with the same seed and the same sequence of plans, RRT-Connect
    then returns the same paths."""
    if seed is None or _OMPL_SEEDED:
        return
    _reseed_ompl(seed)


def _reseed_ompl(seed: int):
    """Restart OMPL's process-wide seed generator. Every plan builds a new RRT-Connect and path
    simplifier, whose RNGs draw their seeds from it, so the plans that follow depend on `seed`
    only. OMPL logs an error when the seed changes after first use (its sampling is then no
    longer tied to the first seed); that is the point here, so the message is silenced."""
    global _OMPL_SEEDED
    from ompl import util as ou
    level = ou.getLogLevel()
    ou.setLogLevel(ou.LogLevel.LOG_NONE)
    try:
        ou.RNG.setSeed(int(seed) % (2**31 - 2) + 1)
    finally:
        ou.setLogLevel(level)
    _OMPL_SEEDED = True


# ================================================================================== results
@dataclass
class PlanResult:
    """Outcome of `Planner.plan`. `waypoints` are grip-site poses (M, 4, 4) ending at `target`."""

    success: bool
    reason: str = ""
    mode: str = "ompl"
    target: np.ndarray | None = None
    joint_path: np.ndarray | None = None  # (K, 7) joint configurations, start..goal (ompl mode)
    waypoints: np.ndarray | None = None
    waypoint_q: np.ndarray | None = None  # (M, 7) the joint configuration of each waypoint (ompl mode)
    goal_q: np.ndarray | None = None
    plan_time: float = 0.0
    held: str | None = None
    info: dict = field(default_factory=dict)
    retreat_end: int | None = None  # waypoints[:retreat_end + 1]: a retreat from a start in contact

    def __bool__(self):
        return self.success


@dataclass
class ExecResult:
    success: bool
    reason: str = ""
    steps: int = 0
    pos_err: float = float("nan")  # metres, at the end
    rot_err: float = float("nan")  # radians, at the end


# ================================================================================== kinematics
class PandaKinematics:
    """Forward kinematics and Jacobian of pybullet_data's panda.urdf, base link0 to panda_hand.

    The chain (joint origins) is read from the URDF, so it is exactly the model pybullet uses;
    `Planner` checks it against pybullet and MuJoCo numerically.
    """

    def __init__(self, urdf_path: str, base_T=np.eye(4), tip_T=np.eye(4)):
        root = ET.parse(urdf_path).getroot()
        joints = {j.find("child").get("link"): j for j in root.findall("joint")}
        chain, link = [], "panda_hand"
        while link in joints:
            j = joints[link]
            chain.append(j)
            link = j.find("parent").get("link")
        chain.reverse()
        self.origins, self.revolute = [], []
        for j in chain:
            o = j.find("origin")
            rpy = [float(x) for x in (o.get("rpy", "0 0 0") if o is not None else "0 0 0").split()]
            xyz = [float(x) for x in (o.get("xyz", "0 0 0") if o is not None else "0 0 0").split()]
            self.origins.append(_rpy_xyz(rpy, xyz))
            self.revolute.append(j.get("type") == "revolute")
        assert sum(self.revolute) == 7, "expected a 7-DoF arm chain"
        self.base_T = np.asarray(base_T, dtype=np.float64)
        self.tip_T = np.asarray(tip_T, dtype=np.float64)  # panda_hand -> grip site

        # fixed origin of each revolute joint, with the fixed joints folded into the next one
        pre, acc = [], np.eye(4)
        for O, rev in zip(self.origins, self.revolute):
            acc = acc @ O
            if rev:
                pre.append(acc)
                acc = np.eye(4)
        self._O = np.array(pre)  # (7, 4, 4)
        self._post = acc  # last revolute joint -> panda_hand

    def _locals(self, q):
        """(7, 4, 4) transforms parent joint frame -> child, O_i @ Rz(q_i), in one vectorized step."""
        c, s = np.cos(q), np.sin(q)
        L = self._O.copy()
        x, y = self._O[:, :, 0], self._O[:, :, 1]
        L[:, :, 0] = c[:, None] * x + s[:, None] * y
        L[:, :, 1] = -s[:, None] * x + c[:, None] * y
        return L

    def hand(self, q) -> np.ndarray:
        """4x4 world pose of panda_hand."""
        L = self._locals(np.asarray(q, dtype=np.float64))
        T = self.base_T
        for i in range(7):
            T = T @ L[i]
        return T @ self._post

    def fk(self, q) -> np.ndarray:
        """4x4 world pose of the grip site (robosuite's eef_pose frame)."""
        return self.hand(q) @ self.tip_T

    def fk_jac(self, q):
        """Grip-site pose and its 6x7 geometric Jacobian (linear; angular) in the world frame."""
        L = self._locals(np.asarray(q, dtype=np.float64))
        T = self.base_T
        z = np.empty((7, 3))
        o = np.empty((7, 3))
        for i in range(7):
            Tj = T @ self._O[i]  # joint frame before its rotation: axis = its z
            z[i], o[i] = Tj[:3, 2], Tj[:3, 3]
            T = T @ L[i]
        E = T @ self._post @ self.tip_T
        J = np.empty((6, 7))
        J[:3] = np.cross(z, E[:3, 3] - o).T
        J[3:] = z.T
        return E, J


def _quat_xyzw(R) -> list:
    """Quaternion (x, y, z, w) of a rotation matrix (fast path for the collision loop)."""
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        return [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    if R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * math.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        return [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    if R[1, 1] > R[2, 2]:
        s = 2.0 * math.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        return [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    s = 2.0 * math.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
    return [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]


def _log_rot(R) -> np.ndarray:
    """Axis-angle vector of a rotation matrix (fast path for the IK loop)."""
    cos = (R[0, 0] + R[1, 1] + R[2, 2] - 1.0) * 0.5
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if cos > 0.999999:
        return 0.5 * v
    if cos < -0.99:
        return P.mat_to_axisangle(R)  # near pi: the robust (slow) path
    ang = math.acos(max(-1.0, min(1.0, cos)))
    return v * (ang / (2.0 * math.sin(ang)))


# ================================================================================== planner
class Planner:
    """Collision world + IK + OMPL RRT-Connect + OSC path tracking for one KitTask env.

    Args:
        env: KitEnv (or the raw KitTask) whose scene is mirrored; the planner can serve any later
            state of the same env (call `sync`/`plan`/`replan` with it).
        mode: "ompl" (collision-free joint-space planning) or "linear" (task-space interpolation,
            no collision checking, MimicGen's connection).
        time_budget: RRT-Connect's budget per plan, in seconds of one core: it gets
            time_budget * RRT_CHECKS_PER_SECOND state validity checks, so that a seeded plan is
            the same on any machine and under any load (simplification is likewise bounded by a
            number of shortcut batches); the wall clock stops it only at RRT_WALL_GUARD times that.
        margin: required clearance (m) between robot/held object and the scene. Relaxed for a plan
            whose goal is closer than that, and, when no retreat is made (or none is found), per
            (robot link, scene geom) pair for pairs already closer at the start (so a plan can leave
            a contact-rich skill end state).
        retreat: start with a short straight retreat when the start is closer to the scene than
            `retreat_clearance` (m), so the rest of the path needs no relaxed pairs.
        start_tol: a start penetrating the mirrored scene deeper than this is "start_in_collision"
            unless MuJoCo itself finds no robot-scene penetration deeper than start_tol (the
            pybullet Panda is slightly bulkier than robosuite's); the mirror may then disagree with
            the sim by up to `max_model_error`.
        ik_restarts: random restarts of the damped-least-squares IK after the current-joint seed.
    """

    def __init__(self, env, mode: str = "ompl", time_budget: float = 1.0,
                 margin: float = 0.01, ik_restarts: int = 30, ik_pos_tol: float = 0.002,
                 ik_rot_tol: float = math.radians(2.0), start_tol: float = 0.004, max_model_error: float = 0.02,
                 retreat: bool = True, retreat_clearance: float = 0.005, seed: int | None = None,
                 posture: str = "reset"):
        if mode not in ("ompl", "linear"):
            raise ValueError(f"unknown planner mode {mode!r}; use 'ompl' or 'linear'")
        if posture not in CONNECT_POSTURES:
            raise ValueError(f"unknown connect posture {posture!r}; use one of {CONNECT_POSTURES}")
        self.posture = posture  # how its followers resolve the arm's redundancy (CONNECT_POSTURES)
        import pybullet as pb
        import pybullet_data

        self.pb = pb
        self.mode, self.time_budget = mode, time_budget
        self.margin, self.ik_restarts, self.start_tol = margin, ik_restarts, start_tol
        self.max_model_error = max_model_error
        self.ik_pos_tol, self.ik_rot_tol = ik_pos_tol, ik_rot_tol
        self.retreat, self.retreat_clearance = retreat, retreat_clearance
        self.rng = np.random.default_rng(seed)
        _seed_ompl(seed)
        self.cid = pb.connect(pb.DIRECT)
        self._held = None  # (pb body, T_hand_obj, root mj body, [mj bodies]) while planning with a held object
        self._tool = []
        self._finger_bodies = {}  # mj body of a finger joint -> [(mj body, [geoms])] moved by that joint
        self._ghosts, self._ghost_active = [], True  # swept finger volumes in use: [pb body, mj body, T_hand_body]
        self._sweep_cache = {}  # (mj body, signed length in quanta) -> pb body
        self._last_target, self._last_held, self._last_ignore, self._last_gripper = None, None, (), None

        raw = _raw(env)
        m, d = raw.sim.model._model, raw.sim.data._data
        self._m = m
        robot = raw.robots[0]
        self._qidx = np.array(robot._ref_joint_pos_indexes)
        self._fidx = np.array(robot._ref_gripper_joint_pos_indexes["right"])
        import mujoco
        name = lambda t, i: mujoco.mj_id2name(m, t, i)  # noqa: E731
        B = mujoco.mjtObj.mjOBJ_BODY
        base_body = m.body(robot.robot_model.root_body).id
        link0 = next((b for b in range(m.nbody) if (name(B, b) or "").endswith("link0")
                      and m.body_rootid[b] == m.body_rootid[base_body]), base_body)
        self._robot_root = m.body_rootid[base_body]
        jids = [m.joint(n).id for n in robot.robot_joints]
        rng_ = m.jnt_range[jids].copy()
        self.q_lo, self.q_hi = rng_[:, 0] + 1e-3, rng_[:, 1] - 1e-3

        # ---- robot
        self.urdf = os.path.join(pybullet_data.getDataPath(), "franka_panda", "panda.urdf")
        base_T = P.make_pose(d.xpos[link0], d.xmat[link0].reshape(3, 3))
        self.robot = pb.loadURDF(self.urdf, basePosition=base_T[:3, 3], baseOrientation=P.mat_to_quat(base_T[:3, :3]),
                                 useFixedBase=True, flags=pb.URDF_USE_SELF_COLLISION | pb.URDF_USE_SELF_COLLISION_EXCLUDE_PARENT,
                                 physicsClientId=self.cid)
        self._nlinks = pb.getNumJoints(self.robot, physicsClientId=self.cid)
        for li in range(-1, self._nlinks):
            if li in _GRIPPER_LINKS:
                pb.setCollisionFilterGroupMask(self.robot, li, _G_HAND, _G_ROBOT, physicsClientId=self.cid)
            else:
                pb.setCollisionFilterGroupMask(self.robot, li, _G_ROBOT, _G_ROBOT | _G_HAND | _G_SCENE | _G_HELD,
                                               physicsClientId=self.cid)
        self.kin = PandaKinematics(self.urdf, base_T)
        # Grip-site offset from panda_hand, measured at the synced current configuration.
        q = d.qpos[self._qidx].copy()
        self.kin.tip_T = P.pose_inv(self.kin.hand(q)) @ raw.eef_pose()

        # ---- scene: one multibody per MuJoCo body with collision geoms outside the robot subtree
        self.scene = {}  # mj body id -> pybullet body id
        self._body_geoms = {}  # mj body id -> [geom ids]
        for g in range(m.ngeom):
            b = m.geom_bodyid[g]
            if m.geom_contype[g] == 0 and m.geom_conaffinity[g] == 0:
                continue
            if m.body_rootid[b] == self._robot_root:
                continue
            self._body_geoms.setdefault(b, []).append(g)
        self.skipped_geoms = []
        for b, geoms in self._body_geoms.items():
            pbid = self._make_body(geoms, self.margin, _G_SCENE, _G_ROBOT | _G_HELD | _G_TOOL, mass=0.0)
            if pbid is not None:
                self.scene[b] = pbid
        # ---- tool: robosuite's gripper collision geoms, one body per gripper body, moved with the
        # hand (relative poses measured at each sync, so the finger opening is the sim's)
        grip_root = m.body(robot.gripper["right"].root_body).id
        self._tool = []  # [pb body, mj body, T_hand_body]
        for b in range(m.nbody):
            a = b
            while a > 0 and a != grip_root:
                a = m.body_parentid[a]
            if a != grip_root:
                continue
            geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] == b and (m.geom_contype[g] or m.geom_conaffinity[g])]
            tb = self._make_body(geoms, 0.0, _G_TOOL, _G_SCENE, mass=0.1) if geoms else None
            if tb is not None:
                self._tool.append([tb, b, np.eye(4)])
                jb = self._finger_joint_body(b, grip_root)
                if jb is not None:
                    self._finger_bodies.setdefault(jb, []).append((b, geoms))
        self._finger_ends = self._finger_open_closed(raw)
        self._scratch = mujoco.MjData(m)  # kinematics of other finger openings
        # movable bodies: anything not welded to the world (has a joint on the way up to world)
        self._movable = [b for b in self.scene if self._is_movable(b)]
        self._held_cache = {}  # mj root body -> (pybullet body, [mj bodies])
        self._parked = set()

        # ---- self-collision: ignore robot link pairs in contact at the home and current configs
        self._self_ignored = set()
        for qq in (np.array(robot.init_qpos), q):
            self._set_q(qq, fingers=(0.04, 0.04))
            for f in ((0.0, 0.0), (0.04, 0.04)):
                for k, j in enumerate(_FINGER_JOINTS):
                    pb.resetJointState(self.robot, j, f[k], physicsClientId=self.cid)
                pb.performCollisionDetection(physicsClientId=self.cid)
                for c in pb.getContactPoints(self.robot, self.robot, physicsClientId=self.cid):
                    pair = (min(c[3], c[4]), max(c[3], c[4]))
                    if pair not in self._self_ignored:
                        self._self_ignored.add(pair)
                        pb.setCollisionFilterPair(self.robot, self.robot, pair[0], pair[1], 0, physicsClientId=self.cid)
        self.sync(env, all_bodies=True)

    # ------------------------------------------------------------------ world construction
    def _finger_joint_body(self, b, grip_root):
        """The body of the nearest joint between gripper body b and grip_root (the finger joint
        moving b relative to the hand), or None if b is rigid with the hand."""
        m = self._m
        while b > 0 and b != grip_root:
            if m.body_jntnum[b] > 0:
                return b
            b = m.body_parentid[b]
        return None

    def _finger_open_closed(self, raw):
        """(open, closed) qpos values of the gripper joints (`self._fidx`): for each joint the end
        of its range that puts its body farther from / nearer to the grip site."""
        import mujoco
        m, d = self._m, raw.sim.data._data
        scratch = mujoco.MjData(m)
        site = raw.eef_site_id
        opened, closed = [], []
        for adr in self._fidx:
            j = int(np.flatnonzero(m.jnt_qposadr == adr)[0])
            lo, hi = m.jnt_range[j]
            dist = []
            for v in (lo, hi):
                scratch.qpos[:] = d.qpos
                scratch.qpos[adr] = v
                mujoco.mj_kinematics(m, scratch)
                dist.append(np.linalg.norm(scratch.xpos[m.jnt_bodyid[j]] - scratch.site_xpos[site]))
            opened.append(hi if dist[1] >= dist[0] else lo)
            closed.append(lo if dist[1] >= dist[0] else hi)
        return np.array(opened), np.array(closed)

    def _finger_sweep(self, env, gripper):
        """Model the fingers' motion under gripper command `gripper` (robosuite's convention: < 0
        opens, > 0 closes, 0 or None holds): each finger gets the volume it sweeps from its current
        opening to the commanded end of its joint range (a slide joint translates it: the convex
        hull of the finger at both ends, which contains the exact sweep), checked along the whole
        path besides the current fingers (they move in the first few steps of the execution, while
        the arm already moves). Returns the number of swept volumes in use."""
        import mujoco
        self._clear_sweep()
        if gripper is None or gripper == 0 or not self._finger_bodies:
            return 0
        d = _raw(env).sim.data._data
        now = d.qpos[self._fidx].copy()
        end = self._finger_ends[0] if gripper < 0 else self._finger_ends[1]
        if np.max(np.abs(end - now)) < 1e-3:
            return 0
        m, sc = self._m, self._scratch
        sc.qpos[:] = d.qpos
        sc.qpos[self._fidx] = end
        mujoco.mj_kinematics(m, sc)
        pose = lambda data, b: P.make_pose(data.xpos[b], data.xmat[b].reshape(3, 3))  # noqa: E731
        for jb, parts in self._finger_bodies.items():
            T_now = pose(d, jb)
            rel = P.pose_inv(T_now) @ pose(sc, jb)  # a translation along the slide axis, in jb's frame
            length = float(np.linalg.norm(rel[:3, 3]))
            if length < 1e-3 or P.rotation_angle(rel[:3, :3], np.eye(3)) > 1e-3:
                continue  # not a translation (e.g. a hinged finger): keep the current one only
            quanta = int(math.ceil(length / _SWEEP_QUANTUM))
            axis = rel[:3, 3] / length
            key = (jb, tuple(np.round(axis, 3)), quanta)
            if key not in self._sweep_cache:
                frames = {b: P.pose_inv(T_now) @ pose(d, b) for b, _ in parts}  # rigid within the finger
                self._sweep_cache[key] = self._make_sweep_body(parts, frames, axis * quanta * _SWEEP_QUANTUM)
            gb = self._sweep_cache[key]
            if gb is not None:
                T_hand = P.pose_inv(self.kin.hand(self._q_now)) @ T_now
                self._ghosts.append([gb, jb, T_hand])
        self._set_q(self._q_now)
        return len(self._ghosts)

    def _clear_sweep(self):
        for gh in self._ghosts:
            self.pb.resetBasePositionAndOrientation(gh[0], _SWEEP_PARK, [0, 0, 0, 1], physicsClientId=self.cid)
        self._ghosts = []

    def _geom_points(self, g):
        """Points (geom frame) whose convex hull is MuJoCo geom g (sampled for round shapes, scaled
        out so the hull contains the shape); None for types not mirrored."""
        m = self._m
        t, s = int(m.geom_type[g]), m.geom_size[g]
        if t == 6:  # box
            return np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) * s
        if t == 7:  # mesh
            mid = m.geom_dataid[g]
            a, n = m.mesh_vertadr[mid], m.mesh_vertnum[mid]
            return np.array(m.mesh_vert[a:a + n], dtype=np.float64)
        u = self._sphere_points() * 1.06  # the hull of 60 points on a sphere lies within 6 % of it
        if t == 2:
            return u * s[0]
        if t == 4:
            return u * s[:3]
        if t == 3:  # capsule
            return np.concatenate([u * s[0] + [0, 0, s[1]], u * s[0] - [0, 0, s[1]]])
        if t == 5:  # cylinder
            a = np.linspace(0, 2 * np.pi, 32, endpoint=False)
            c = np.stack([np.cos(a), np.sin(a)], axis=1) * s[0] * 1.005
            return np.concatenate([np.c_[c, np.full(32, s[1])], np.c_[c, np.full(32, -s[1])]])
        return None

    def _make_sweep_body(self, parts, frames, shift):
        """A pybullet body (frame: the finger joint body's) holding the convex hull of a finger's
        geoms (`parts`: [(mj body, [geoms])], `frames`: mj body -> pose in the finger's frame) at
        its current place and translated by `shift`: the volume the finger sweeps. One hull per
        finger (one collision object; it also fills the small gaps between the finger's geoms)."""
        pb, m, cid = self.pb, self._m, self.cid
        pts, kept = [], []
        for b, geoms in parts:
            for g in geoms:
                v = self._geom_points(g)
                if v is None:
                    continue
                T = frames[b] @ P.make_pose(m.geom_pos[g], P.quat_to_mat(_mj_quat_to_xyzw(m.geom_quat[g])))
                pts.append(v @ T[:3, :3].T + T[:3, 3])
                kept.append(int(g))
        if not pts:
            return None
        v = np.concatenate(pts)
        v = np.concatenate([v, v + shift])
        try:
            from scipy.spatial import ConvexHull
            v = v[ConvexHull(v).vertices]
        except Exception:
            pass
        sid = pb.createCollisionShape(pb.GEOM_MESH, vertices=v.tolist(), physicsClientId=cid)
        if sid is None or sid < 0:
            return None
        bid = pb.createMultiBody(
            baseMass=0.0, baseCollisionShapeIndex=-1, basePosition=_SWEEP_PARK, baseOrientation=[0, 0, 0, 1],
            linkMasses=[0.1], linkCollisionShapeIndices=[sid], linkVisualShapeIndices=[-1],
            linkPositions=[[0, 0, 0]], linkOrientations=[[0, 0, 0, 1]], linkInertialFramePositions=[[0, 0, 0]],
            linkInertialFrameOrientations=[[0, 0, 0, 1]], linkParentIndices=[0], linkJointTypes=[pb.JOINT_FIXED],
            linkJointAxis=[[0, 0, 1]], physicsClientId=cid)
        for li in (-1, 0):
            pb.setCollisionFilterGroupMask(bid, li, _G_TOOL, _G_SCENE, physicsClientId=cid)
        self._geoms_of[bid] = kept[:1]  # named after the finger's first geom in collision reports
        return bid

    def _is_movable(self, b) -> bool:
        m = self._m
        while b > 0:
            if m.body_jntnum[b] > 0:
                return True
            b = m.body_parentid[b]
        return False

    def _shape(self, g, inflate):
        """pybullet collision shape of MuJoCo geom g (inflated by `inflate`) and its extra local offset."""
        pb, m, cid = self.pb, self._m, self.cid
        t, s = int(m.geom_type[g]), m.geom_size[g]
        off = np.zeros(3)
        if t == 6:  # box
            return pb.createCollisionShape(pb.GEOM_BOX, halfExtents=(s + inflate).tolist(), physicsClientId=cid), off
        if t == 2:  # sphere
            return pb.createCollisionShape(pb.GEOM_SPHERE, radius=float(s[0] + inflate), physicsClientId=cid), off
        if t == 3:  # capsule: radius, half-length of the cylinder part
            return pb.createCollisionShape(pb.GEOM_CAPSULE, radius=float(s[0] + inflate), height=float(2 * s[1]),
                                           physicsClientId=cid), off
        if t == 5:  # cylinder: radius, half-height
            return pb.createCollisionShape(pb.GEOM_CYLINDER, radius=float(s[0] + inflate),
                                           height=float(2 * (s[1] + inflate)), physicsClientId=cid), off
        if t == 0:  # plane: a thick box below it (size 0 = infinite)
            hx = float(s[0]) if s[0] > 0 else 5.0
            hy = float(s[1]) if s[1] > 0 else 5.0
            off = np.array([0.0, 0.0, -0.05])
            return pb.createCollisionShape(pb.GEOM_BOX, halfExtents=[hx, hy, 0.05 + inflate], physicsClientId=cid), off
        if t == 4:  # ellipsoid: convex hull of a scaled sphere point set
            u = self._sphere_points()
            v = u * (s + inflate)
            return pb.createCollisionShape(pb.GEOM_MESH, vertices=v.tolist(), physicsClientId=cid), off
        if t == 7:  # mesh: convex hull of its vertices (MuJoCo also collides meshes as convex hulls)
            mid = m.geom_dataid[g]
            a, n = m.mesh_vertadr[mid], m.mesh_vertnum[mid]
            v = np.array(m.mesh_vert[a:a + n], dtype=np.float64)
            if inflate > 0:
                c = v.mean(axis=0)
                r = v - c
                nr = np.linalg.norm(r, axis=1, keepdims=True)
                v = v + inflate * r / np.maximum(nr, 1e-9)
            if len(v) > 64:  # pass only the hull's vertices (same hull, faster to build)
                try:
                    from scipy.spatial import ConvexHull
                    v = v[ConvexHull(v).vertices]
                except Exception:
                    pass
            return pb.createCollisionShape(pb.GEOM_MESH, vertices=v.tolist(), physicsClientId=cid), off
        return None, off  # height fields, SDFs: not mirrored

    @staticmethod
    def _sphere_points(n=60):
        i = np.arange(n) + 0.5
        phi, th = np.arccos(1 - 2 * i / n), np.pi * (1 + 5 ** 0.5) * i
        return np.stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)], axis=1)

    def _make_body(self, geoms, inflate, group, mask, mass, frames=None):
        """A pybullet multibody whose base frame is a MuJoCo body frame and whose (fixed) links are
        the given geoms at their poses in that frame (`frames`: geom -> 4x4 local pose)."""
        pb, m, cid = self.pb, self._m, self.cid
        shapes, pos, orn, kept = [], [], [], []
        for g in geoms:
            sid, off = self._shape(g, inflate)
            if sid is None or sid < 0:
                self.skipped_geoms.append(int(g))
                continue
            if frames is not None:
                T = frames[g]
            else:
                T = P.make_pose(m.geom_pos[g], P.quat_to_mat(_mj_quat_to_xyzw(m.geom_quat[g])))
            shapes.append(sid)
            pos.append((T[:3, 3] + T[:3, :3] @ off).tolist())
            orn.append(P.mat_to_quat(T[:3, :3]).tolist())
            kept.append(int(g))
        if not shapes:
            return None
        n = len(shapes)
        bid = pb.createMultiBody(
            baseMass=0.0, baseCollisionShapeIndex=-1, basePosition=[0, 0, -50], baseOrientation=[0, 0, 0, 1],
            linkMasses=[mass] * n, linkCollisionShapeIndices=shapes, linkVisualShapeIndices=[-1] * n,
            linkPositions=pos, linkOrientations=orn, linkInertialFramePositions=[[0, 0, 0]] * n,
            linkInertialFrameOrientations=[[0, 0, 0, 1]] * n, linkParentIndices=[0] * n,
            linkJointTypes=[pb.JOINT_FIXED] * n, linkJointAxis=[[0, 0, 1]] * n, physicsClientId=cid)
        for li in range(-1, n):
            pb.setCollisionFilterGroupMask(bid, li, group, mask, physicsClientId=cid)
        self._geoms_of = getattr(self, "_geoms_of", {})
        self._geoms_of[bid] = kept
        return bid

    # ------------------------------------------------------------------ sync
    def reseed(self, seed: int):
        """Restart the planner's random streams (IK restarts, RRT-Connect, shortcutting) from
        `seed`. The agent calls it at every seeded reset, so a rollout's plans depend on its own
        seed, not on the rollouts this process planned before: resumed evaluations and any
        --workers split give the same rollouts."""
        self.rng = np.random.default_rng((int(seed), 0x5EED))  # not the agent's own stream
        _reseed_ompl(seed)

    def sync(self, env, all_bodies: bool = False):
        """Copy joints, fingers and the poses of movable scene bodies from the sim (cheap)."""
        raw = _raw(env)
        d = raw.sim.data._data
        self._q_now = d.qpos[self._qidx].copy()
        self._fingers = (float(np.clip(d.qpos[self._fidx[0]], 0, 0.04)), float(np.clip(-d.qpos[self._fidx[1]], 0, 0.04)))
        for k, j in enumerate(_FINGER_JOINTS):
            self.pb.resetJointState(self.robot, j, self._fingers[k], physicsClientId=self.cid)
        T_hand_inv = P.pose_inv(self.kin.hand(self._q_now))
        for t in self._tool:
            t[2] = T_hand_inv @ P.make_pose(d.xpos[t[1]], d.xmat[t[1]].reshape(3, 3))
        self._set_q(self._q_now)
        for b in (self.scene if all_bodies else set(self._movable) | self._parked):
            self._place(b, d.xpos[b], _mj_quat_to_xyzw(d.xquat[b]))
        self._parked.clear()
        self._clear_sweep()  # no finger sweep until a plan asks for one
        return self

    def _place(self, b, pos, quat_xyzw):
        self.pb.resetBasePositionAndOrientation(self.scene[b], list(pos), list(quat_xyzw), physicsClientId=self.cid)

    def _park(self, b):
        """Take scene body b out of the world (held or ignored object) until the next sync."""
        self.pb.resetBasePositionAndOrientation(self.scene[b], [0, 0, -50 - 3 * len(self._parked)], [0, 0, 0, 1],
                                                physicsClientId=self.cid)
        self._parked.add(b)

    def _set_q(self, q, fingers=None):
        pb = self.pb
        pb.resetJointStatesMultiDof(self.robot, _ARM_JOINTS, [[x] for x in np.asarray(q, dtype=np.float64).tolist()],
                                    physicsClientId=self.cid)
        if fingers is not None:
            for k, j in enumerate(_FINGER_JOINTS):
                pb.resetJointState(self.robot, j, fingers[k], physicsClientId=self.cid)
        H = self.kin.hand(q)
        for tb, _, T_hb in self._tool:
            T = H @ T_hb
            pb.resetBasePositionAndOrientation(tb, T[:3, 3].tolist(), _quat_xyzw(T), physicsClientId=self.cid)
        for gb, _, T_hb in (self._ghosts if self._ghost_active else ()):
            T = H @ T_hb
            pb.resetBasePositionAndOrientation(gb, T[:3, 3].tolist(), _quat_xyzw(T), physicsClientId=self.cid)
        if self._held is not None:
            hb, T_ho = self._held[0], self._held[1]
            T = H @ T_ho
            pb.resetBasePositionAndOrientation(hb, T[:3, 3].tolist(), _quat_xyzw(T), physicsClientId=self.cid)

    # ------------------------------------------------------------------ objects: held / ignored
    def _object_bodies(self, env, name) -> list[int]:
        """MuJoCo body ids of object `name` (a task object name or a body name) and its subtree."""
        raw, m = _raw(env), self._m
        root = raw.obj_body_id[name] if name in getattr(raw, "obj_body_id", {}) else m.body(name).id
        out = []
        for b in range(m.nbody):
            a = b
            while a > 0 and a != root:
                a = m.body_parentid[a]
            if a == root:
                out.append(b)
        return out

    def _attach(self, env, name):
        """Attach object `name` to the hand with the transform measured now; park its scene copy."""
        raw = _raw(env)
        d = raw.sim.data._data
        bodies = self._object_bodies(env, name)
        root = bodies[0]
        if root not in self._held_cache:
            geoms, frames = [], {}
            T_root_inv = None
            for b in bodies:
                for g in self._body_geoms.get(b, []):
                    geoms.append(g)
            # geom poses relative to the root body, measured now (child bodies may have joints)
            T_root = P.make_pose(d.xpos[root], d.xmat[root].reshape(3, 3))
            T_root_inv = P.pose_inv(T_root)
            for g in geoms:
                frames[g] = T_root_inv @ P.make_pose(d.geom_xpos[g], d.geom_xmat[g].reshape(3, 3))
            hb = self._make_body(geoms, 0.0, _G_HELD, _G_ROBOT | _G_SCENE, mass=0.1, frames=frames)
            if hb is None:
                return
            for li in range(self.pb.getNumJoints(hb, physicsClientId=self.cid)):
                for rl in _HAND_LINKS:
                    self.pb.setCollisionFilterPair(self.robot, hb, rl, li, 0, physicsClientId=self.cid)
            self._held_cache[root] = hb
        hb = self._held_cache[root]
        T_root = P.make_pose(d.xpos[root], d.xmat[root].reshape(3, 3))
        T_ho = P.pose_inv(self.kin.hand(self._q_now)) @ T_root
        self._held = (hb, T_ho, root, bodies)
        for b in bodies:
            if b in self.scene:
                self._park(b)

    def _detach(self):
        if self._held is not None:
            self.pb.resetBasePositionAndOrientation(self._held[0], [0, 0, -40], [0, 0, 0, 1], physicsClientId=self.cid)
            self._held = None

    # ------------------------------------------------------------------ collision queries
    def clearance(self, q) -> float:
        """Smallest distance (m) between robot/held object and the scene at joints q, capped at
        `margin` (any value >= margin means "at least margin"); -inf on robot self-collision or
        held object vs arm collision."""
        best = self.margin
        for key, dist in self._contacts(q):
            if key is not None:
                best = min(best, dist + self.margin)
            elif dist < -0.001:  # robot self-collision or held object vs arm
                return -math.inf
        return best

    def _scene_contacts(self, q):
        """{(robot or held body, its link, scene body, its link): clearance} for the scene pairs closer than
        `margin` at q, or None on robot self-collision / held object vs arm collision."""
        out = {}
        for key, dist in self._contacts(q):
            if key is None:
                if dist < -0.001:
                    return None
                continue
            out[key] = min(out.get(key, math.inf), dist + self.margin)
        return out

    def _contacts(self, q):
        """Set the arm to q and yield (key, distance) for every pybullet contact: key =
        (robot body, link, scene body, scene link) for robot/held-object vs scene pairs, None for
        self-collision and held-object vs arm pairs."""
        pb, cid, scene = self.pb, self.cid, self._scene_ids
        self._set_q(q)
        pb.performCollisionDetection(physicsClientId=cid)
        for c in pb.getContactPoints(physicsClientId=cid):
            if c[1] in scene:
                yield (c[2], c[4], c[1], c[3]), c[8]
            elif c[2] in scene:
                yield (c[1], c[3], c[2], c[4]), c[8]
            else:
                yield None, c[8]

    def _validity(self, thr: float, pair_thr: dict):
        """State validity: every scene pair's clearance above its threshold (pair_thr, else thr),
        no self-collision, no held-object/arm collision."""
        margin = self.margin

        def valid(q) -> bool:
            for key, dist in self._contacts(q):
                if key is None:
                    if dist < -0.001:
                        return False
                elif dist + margin <= pair_thr.get(key, thr):
                    return False
            return True
        return valid

    def _mj_penetration(self, env, skip_bodies=()) -> float:
        """Deepest robot-scene penetration (m, <= 0) in the MuJoCo sim now, ignoring skip_bodies."""
        raw = _raw(env)
        m, d = self._m, raw.sim.data._data
        robot_root, skip, worst = self._robot_root, set(skip_bodies), 0.0
        for i in range(d.ncon):
            c = d.contact[i]
            b1, b2 = m.geom_bodyid[c.geom1], m.geom_bodyid[c.geom2]
            r1, r2 = m.body_rootid[b1] == robot_root, m.body_rootid[b2] == robot_root
            if r1 == r2:
                continue
            other = b2 if r1 else b1
            if other in skip:
                continue
            worst = min(worst, float(c.dist))
        return worst

    @property
    def _scene_ids(self):
        s = getattr(self, "_scene_id_set", None)
        if s is None:
            s = self._scene_id_set = set(self.scene.values())
        return s

    def in_collision(self, q, margin: float = 0.0) -> bool:
        return self.clearance(q) <= margin

    def collision_report(self, q) -> list[tuple[str, str, float]]:
        """(robot/held part, scene geom, clearance) for every contact at q (debugging)."""
        import mujoco
        pb, cid, m = self.pb, self.cid, self._m
        self._set_q(q)
        pb.performCollisionDetection(physicsClientId=cid)
        inv = {v: k for k, v in self.scene.items()}
        out = []
        for c in pb.getContactPoints(physicsClientId=cid):
            names = []
            for body, link in ((c[1], c[3]), (c[2], c[4])):
                if body == self.robot:
                    names.append(pb.getJointInfo(self.robot, link, physicsClientId=cid)[12].decode() if link >= 0 else "panda_link0")
                elif body in self._geoms_of and link >= 0:  # scene, tool (gripper) or held geom
                    g = self._geoms_of[body][link]
                    names.append(mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_GEOM, g) or f"geom{g}")
                else:
                    names.append("?")
            out.append((names[0], names[1], c[8] + (self.margin if (c[1] in inv or c[2] in inv) else 0.0)))
        return out

    # ------------------------------------------------------------------ kinematics
    def fk(self, q) -> np.ndarray:
        """Grip-site pose (robosuite eef_pose frame) at joints q, 4x4 world."""
        return self.kin.fk(np.asarray(q, dtype=np.float64))

    def ik(self, target, q_seed=None, check_collision=True, min_clearance=None, max_solutions=3):
        """Joints whose grip site reaches 4x4 `target` within ik_pos_tol / ik_rot_tol, or None.

        Seeds: q_seed (default: the synced current joints), then random restarts (near the seed
        first, then anywhere within the joint limits). With check_collision, a solution needs
        clearance > min_clearance (default: margin). Among up to max_solutions accepted solutions
        the one closest to q_seed is returned.
        """
        thr = self.margin * 0.999 if min_clearance is None else min_clearance
        cands = self._ik_candidates(target, q_seed, check_collision, thr, max_solutions)
        ok = [c for c in cands if not check_collision or c[1] > thr]
        return ok[0][0] if ok else None

    _W = np.array([1.5, 1.5, 1.2, 1.0, 0.8, 0.6, 0.4])  # joint distance weights: proximal joints move more

    def _ik_candidates(self, target, q_seed, check_collision, thr, max_solutions):
        """Converged IK solutions as (q, clearance), the good ones (clearance > thr) first, each
        group sorted by weighted joint distance to the seed."""
        target = np.asarray(target, dtype=np.float64)
        q0 = self._q_now if q_seed is None else np.asarray(q_seed, dtype=np.float64)
        # far beyond the arm's reach (shoulder to grip site < 1.1 m): no restarts needed
        shoulder = self.kin.base_T @ np.array([0.0, 0.0, 0.333, 1.0])
        if np.linalg.norm(target[:3, 3] - shoulder[:3]) > 1.1:
            return []
        sols, n_good = [], 0
        for k in range(self.ik_restarts + 1):
            if k == 0:
                qs = q0
            elif k <= self.ik_restarts // 3:
                qs = np.clip(q0 + self.rng.normal(0, 0.4, 7), self.q_lo, self.q_hi)
            else:
                qs = self.rng.uniform(self.q_lo, self.q_hi)
            q = self._dls(target, qs)
            if q is None:
                continue
            c = self.clearance(q) if check_collision else math.inf
            sols.append((q, c))
            if c > thr:
                n_good += 1
                if n_good >= max_solutions or k == 0:
                    break
        dist = lambda s: float(np.sum(self._W * np.abs(s[0] - q0)))  # noqa: E731
        return sorted(sols, key=lambda s: (0, dist(s)) if s[1] > thr else (1, -s[1]))

    def _dls(self, target, q, iters=100, damping=0.05):
        """Damped least squares from q; returns the converged joints or None."""
        q = np.clip(np.array(q, dtype=np.float64), self.q_lo, self.q_hi)
        tp, tR = target[:3, 3], target[:3, :3]
        lam = damping ** 2 * np.eye(6)
        best, stall = math.inf, 0
        for _ in range(iters):
            E, J = self.kin.fk_jac(q)
            ep = tp - E[:3, 3]
            er = _log_rot(tR @ E[:3, :3].T)
            err = math.sqrt(ep @ ep) + 0.1 * math.sqrt(er @ er)
            if err < 2e-4:
                break
            if err > best * 0.995:  # no progress: stuck at a limit or a local minimum
                stall += 1
                if stall >= 8:
                    break
            else:
                stall = 0
            best = min(best, err)
            e = np.concatenate([ep, er])
            nrm = math.sqrt(e @ e)
            if nrm > 0.2:
                e *= 0.2 / nrm
            q = np.clip(q + J.T @ np.linalg.solve(J @ J.T + lam, e), self.q_lo, self.q_hi)
        E = self.kin.fk(q)
        if (np.linalg.norm(E[:3, 3] - tp) <= self.ik_pos_tol
                and P.rotation_angle(E[:3, :3], tR) <= self.ik_rot_tol):
            return q
        return None

    # ------------------------------------------------------------------ planning
    def plan(self, env, target, held: str | None = None, ignore=(), time_budget: float | None = None,
             sync: bool = True, mode: str | None = None, gripper: float | None = None) -> PlanResult:
        """Plan from the env's current state to grip-site pose `target` (4x4 world).

        held: name of an object held in the gripper (moves with the hand, collision-checked).
        ignore: object names left out of collision checking (e.g. one the gripper touches now).
        gripper: the gripper command the plan will be executed with (< 0 opens, > 0 closes). The
            fingers move during the first steps of the execution: with a command that moves them,
            the path is checked with the fingers at every opening from the current one to the
            commanded one. None (default): the fingers as they are now.
        """
        t0 = time.perf_counter()
        mode = mode or self.mode
        target = np.asarray(target, dtype=np.float64)
        self._last_target, self._last_held, self._last_ignore = target, held, tuple(ignore)
        self._last_gripper = gripper
        try:
            if sync:
                self.sync(env)
            # fingers closing on a held object stay where they are
            closing_on_held = held is not None and gripper is not None and gripper > 0
            self._finger_sweep(env, None if mode == "linear" or closing_on_held else gripper)
            self._detach()
            if held is not None:
                self._attach(env, held)
            for name in ignore:
                for b in self._object_bodies(env, name):
                    if b in self.scene:
                        self._park(b)
            if mode == "linear":
                res = self._plan_linear(env, target)
            else:
                res = self._plan_ompl(env, target, self.time_budget if time_budget is None else time_budget)
        except Exception as e:  # never raise out of pybullet / OMPL
            res = PlanResult(False, f"error: {type(e).__name__}: {e}", mode, target)
        finally:
            try:
                self._set_q(self._q_now)
            except Exception:
                pass
        res.mode, res.held, res.target = mode, held, target
        res.plan_time = time.perf_counter() - t0
        return res

    def replan(self, env, new_target, held="__last__", ignore="__last__", time_budget=None,
               gripper="__last__") -> PlanResult:
        """Plan again from the current sim state to a new target, reusing the world (only joints
        and object poses are re-synced). held/ignore/gripper default to the previous call's."""
        held = self._last_held if held == "__last__" else held
        ignore = self._last_ignore if ignore == "__last__" else ignore
        gripper = self._last_gripper if isinstance(gripper, str) and gripper == "__last__" else gripper
        return self.plan(env, new_target, held=held, ignore=ignore, time_budget=time_budget, gripper=gripper)

    def _plan_linear(self, env, target) -> PlanResult:
        start = _raw(env).eef_pose()
        if self.ik(target, check_collision=False, max_solutions=1) is None:
            return PlanResult(False, IK_FAILED, "linear", target)
        wps = _interp_poses(start, target)
        return PlanResult(True, "", "linear", target, waypoints=wps)

    def _plan_ompl(self, env, target, budget) -> PlanResult:
        q_start = self._q_now.copy()
        sweep = bool(self._ghosts)
        self._ghosts_on(False)
        now = self._scene_contacts(q_start)  # the fingers as they are
        self._ghosts_on(True)
        start = self._scene_contacts(q_start) if sweep else now  # and as they move under the command
        c_now = min(now.values(), default=self.margin) if now is not None else -math.inf
        info = {"start_clearance": c_now}
        if c_now < -self.start_tol:
            # The pybullet Panda (its finger meshes especially) is a little bigger than robosuite's:
            # trust the sim. A start that MuJoCo finds contact-free (or only touching) may start
            # inside the mirror; those pairs get a threshold relaxed to their start clearance.
            skip = set(self._held[3]) if self._held is not None else set()
            skip |= self._parked
            if now is None or c_now < -self.max_model_error or self._mj_penetration(env, skip) < -self.start_tol:
                return PlanResult(False, START_IN_COLLISION, "ompl", target, info=info)
        c_start = min(start.values(), default=self.margin)
        info["start_clearance_sweep"] = c_start
        cands = self._ik_candidates(target, None, True, self.margin * 0.999, 3)
        if not cands:
            return PlanResult(False, IK_FAILED, "ompl", target, info=info)
        q_goal, c_goal = cands[0]
        info["goal_clearance"] = c_goal
        if not c_goal > 0.0:  # every solution found collides (or nearly touches) the scene
            return PlanResult(False, GOAL_IN_COLLISION, "ompl", target, info=info)
        thr = min(self.margin * 0.999, c_goal - 0.001)
        pair_thr = {k: min(thr, v - 0.001) for k, v in start.items() if v - 0.001 < thr}
        info["threshold"] = thr

        # 0) a start touching the scene (or about to, once the fingers move): first a short
        # straight retreat away from the contacts with the fingers held, after which the whole
        # path keeps the full clearance. Without one, the close pairs keep a threshold relaxed to
        # their start clearance along the whole path (they may stay that close).
        q_from = q_start
        if self.retreat and pair_thr and c_start < self.retreat_clearance:
            q_r = self._find_retreat(q_start, now, thr, info)
            info["retreat"] = q_r is not None
            if q_r is not None:
                q_from, pair_thr = q_r, {}
        info["relaxed_pairs"] = len(pair_thr)
        valid = self._validity(thr, pair_thr)

        # 1) the straight joint-space segment
        direct = self._segment_valid(q_from, q_goal, valid)
        if direct:
            path = np.stack([q_from, q_goal])
            info["planner"] = "direct"
        else:
            path = self._rrt_connect(q_from, q_goal, valid, budget, info)
            if path is None:
                return PlanResult(False, NO_PATH, "ompl", target, goal_q=q_goal, info=info)
            info["planner"] = "rrtconnect"
        dense = self._densify(path)
        retreat_end = None
        if q_from is not q_start:  # the retreat, densely (tracked closely), then the path
            back = self._densify(np.stack([q_start, q_from]), step=0.004)
            retreat_end = len(back) - 1
            dense = np.concatenate([back, dense[1:]])
            path = np.concatenate([q_start[None], path])
        wps = np.stack([self.kin.fk(q) for q in dense])
        wps[-1] = target
        return PlanResult(True, "", "ompl", target, joint_path=path, waypoints=wps, waypoint_q=dense, goal_q=q_goal,
                          info=info, retreat_end=retreat_end)

    def _ghosts_on(self, on: bool):
        """Switch the finger-sweep copies into (placed at the next `_set_q`) or out of the world."""
        self._ghost_active = on
        if not on:
            for gh in self._ghosts:
                self.pb.resetBasePositionAndOrientation(gh[0], _SWEEP_PARK, [0, 0, 0, 1], physicsClientId=self.cid)

    def _away_direction(self, q, thr):
        """Unit vector (world) pointing away from the scene at joints q: the contact normals of
        the pairs closer than thr, weighted by how much closer; None without such pairs."""
        pb, cid, scene = self.pb, self.cid, self._scene_ids
        self._set_q(q)
        pb.performCollisionDetection(physicsClientId=cid)
        acc = np.zeros(3)
        for c in pb.getContactPoints(physicsClientId=cid):
            if c[1] in scene:  # normal on B (robot side) points toward A (the scene)
                away = -np.asarray(c[7])
            elif c[2] in scene:
                away = np.asarray(c[7])
            else:
                continue
            w = thr - (c[8] + self.margin)
            if w > 0:
                acc += w * away
        n = np.linalg.norm(acc)
        return acc / n if n > 1e-9 else None

    def _find_retreat(self, q_start, now, thr, info):
        """Joints a few cm from q_start, grip site translated away from the scene (contact normals,
        up, back along the fingers), clear of the scene by thr with the finger sweep, and reached
        from q_start along a straight joint segment that brings no pair closer than it is now
        (fingers held). None if no candidate qualifies."""
        E0 = self.kin.fk(q_start)
        up = np.array([0.0, 0.0, 1.0])
        away = self._away_direction(q_start, thr)
        dirs = []
        cands = ([away, away + up] if away is not None else []) + [up, -E0[:3, 2], up - E0[:3, 2]]
        for u in cands:
            n = np.linalg.norm(u)
            if n > 1e-6 and all(float(u @ v) / n < 0.97 for v in dirs):
                dirs.append(u / n)
        relaxed = {k: min(thr, v - 0.001) for k, v in now.items() if v - 0.001 < thr}
        held_fingers = self._validity(thr, relaxed)
        try:
            for dist in RETREAT_DISTANCES:
                for u in dirs:
                    T = E0.copy()
                    T[:3, 3] += dist * u
                    q = self._dls(T, q_start)
                    if q is None or np.max(np.abs(q - q_start)) > 0.6:
                        continue
                    self._ghosts_on(True)
                    if not self.clearance(q) > thr:
                        continue
                    self._ghosts_on(False)
                    if self._segment_valid(q_start, q, held_fingers, step=0.01):
                        info["retreat_dist"], info["retreat_dir"] = dist, u.round(3).tolist()
                        return q
        finally:
            self._ghosts_on(True)
        return None

    @staticmethod
    def _densify(path, step=0.03) -> np.ndarray:
        out = [path[0]]
        for a, b in zip(path[:-1], path[1:]):
            n = max(1, int(math.ceil(np.max(np.abs(b - a)) / step)))
            for k in range(1, n + 1):
                out.append(a + (b - a) * k / n)
        return np.array(out)

    def _segment_valid(self, a, b, valid, step=0.025) -> bool:
        n = max(1, int(math.ceil(np.max(np.abs(b - a)) / step)))
        # check in bisection order: collisions in the middle are found early
        order, seen = [], set()
        k = 1
        while len(order) < n:
            for i in range(k):
                idx = int(round((2 * i + 1) * n / (2 * k)))
                if 1 <= idx <= n and idx not in seen:
                    seen.add(idx)
                    order.append(idx)
            k *= 2
            if k > 4 * n:
                order.extend(i for i in range(1, n + 1) if i not in seen)
                break
        return all(valid(a + (b - a) * i / n) for i in order)

    def _rrt_connect(self, q_start, q_goal, valid, budget, info):
        from ompl import base as ob, geometric as og, util as ou
        ou.setLogLevel(ou.LOG_ERROR)
        space = ob.RealVectorStateSpace(7)
        bounds = ob.RealVectorBounds(7)
        for i in range(7):
            bounds.setLow(i, float(self.q_lo[i]))
            bounds.setHigh(i, float(self.q_hi[i]))
        space.setBounds(bounds)
        ss = og.SimpleSetup(space)

        checks = [0]

        def checker(s):
            checks[0] += 1
            try:
                return bool(valid(np.array([s[i] for i in range(7)])))
            except Exception:
                return False
        ss.setStateValidityChecker(checker)
        si = ss.getSpaceInformation()
        # motion checking resolution: ~0.025 rad of joint motion
        si.setStateValidityCheckingResolution(0.025 / space.getMaximumExtent())
        ss.setPlanner(og.RRTConnect(si))
        st, gl = space.allocState(), space.allocState()
        for i in range(7):
            st[i], gl[i] = float(q_start[i]), float(q_goal[i])
        ss.setStartAndGoalStates(st, gl)
        max_checks = max(1, int(round(budget * RRT_CHECKS_PER_SECOND)))
        out_of_checks = ob.PlannerTerminationCondition(lambda: checks[0] >= max_checks)  # asked every iteration
        ptc = ob.plannerOrTerminationCondition(out_of_checks,
                                               ob.timedPlannerTerminationCondition(RRT_WALL_GUARD * float(budget)))
        t = time.perf_counter()
        ss.solve(ptc)
        info["rrt_time"], info["rrt_checks"] = time.perf_counter() - t, checks[0]
        if not ss.haveExactSolutionPath():
            return None
        t = time.perf_counter()
        p = ss.getSolutionPath()
        ps = og.PathSimplifier(si)
        # shortcutting: connect random pairs of states along the (interpolated) path when the
        # straight joint-space segment between them is valid, in small batches until a few batches
        # in a row gain nothing. Bounded by a batch count, not by time, so that a seeded planner
        # gives the same path on every run (data generation must be reproducible).
        ps.reduceVertices(p)
        idle, batches = 0, 0
        while idle < SIMPLIFY_IDLE and batches < SIMPLIFY_MAX_BATCHES:
            batches += 1
            L0 = p.length()
            if p.getStateCount() < SIMPLIFY_POINTS:
                p.interpolate(SIMPLIFY_POINTS)
            ps.reduceVertices(p, SIMPLIFY_BATCH, 0, 0.5)
            idle = idle + 1 if p.length() > 0.99 * L0 else 0
        ps.collapseCloseVertices(p)
        info["simplify_time"] = time.perf_counter() - t
        path = np.array([[p.getState(k)[i] for i in range(7)] for k in range(p.getStateCount())])
        return path

    # ------------------------------------------------------------------ execution
    def follow(self, plan: PlanResult, gripper: float, **kw) -> "PathFollower":
        kw.setdefault("posture", self.posture)
        return PathFollower(plan, gripper, **kw)

    def actions(self, env, plan: PlanResult, gripper: float, **kw):
        """Generator of OSC actions for `plan`; the caller steps the env between items."""
        f = self.follow(plan, gripper, **kw)
        while True:
            a = f.step(env)
            if a is None:
                return f.result
            yield a

    def execute(self, env, plan: PlanResult, gripper: float, record_fn=None, step_fn=None, **kw) -> ExecResult:
        """Track `plan` in the env until the target is reached (or max_steps).

        record_fn(action): called before each env step. step_fn(action): steps the env instead of
        env.step (e.g. a Demonstrator's recording step)."""
        if not plan.success:
            return ExecResult(False, plan.reason)
        f = self.follow(plan, gripper, **kw)
        step = step_fn or env.step
        while True:
            a = f.step(env)
            if a is None:
                return f.result
            if record_fn is not None:
                record_fn(a)
            step(a)

    def close(self):
        """Disconnect the pybullet client (idempotent: pybullet reuses client ids, so a second
        disconnect could close another planner's world)."""
        cid, self.cid = getattr(self, "cid", None), None
        if cid is not None:
            try:
                self.pb.disconnect(physicsClientId=cid)
            except Exception:
                pass

    def __del__(self):
        self.close()


class PathFollower:
    """Tracks a plan's grip-site waypoints with normalized OSC delta-pose actions.

    Each `step(env)` reads the current eef pose, advances a carrot along the waypoints (the next
    waypoint farther than `lookahead` / `rot_lookahead`), and returns the action toward it, or None
    when done (`result` then holds the ExecResult). The gripper command is held constant, except
    along a plan's retreat from a start in contact (`PlanResult.retreat_end`): that part is tracked
    closely (lookahead RETREAT_LOOKAHEAD, until the grip site is within RETREAT_TOL of its end) with
    the gripper command GRIPPER_HOLD, so the fingers do not move before they are clear.
    """

    def __init__(self, plan: PlanResult, gripper: float, pos_tol: float = 0.004, rot_tol: float = math.radians(2.0),
                 lookahead: float = 0.03, rot_lookahead: float = 0.3, speed: float = 1.0, max_steps: int | None = None,
                 posture: str = "reset"):
        if posture not in CONNECT_POSTURES:
            raise ValueError(f"unknown connect posture {posture!r}; use one of {CONNECT_POSTURES}")
        self.wps = plan.waypoints
        self.target = plan.target
        self.gripper = gripper
        self.pos_tol, self.rot_tol = pos_tol, rot_tol
        self.lookahead, self.rot_lookahead, self.speed = lookahead, rot_lookahead, speed
        self.max_steps = max_steps if max_steps is not None else 40 + 2 * len(self.wps)
        self.i, self.steps, self.result = 0, 0, None
        self.retreat_end = getattr(plan, "retreat_end", None)
        self.best_i, self.best, self.best_step = -1, (math.inf, math.inf), 0  # stall detection
        self.goal_q = getattr(plan, "goal_q", None)
        self.posture_recovery = False  # the OSC posture target was moved to goal_q after a stall
        # "path": the OSC's posture target follows the planned joint configuration of the carrot
        # (plans with a joint path only; see CONNECT_POSTURES)
        self.path_q = getattr(plan, "waypoint_q", None) if posture == "path" else None

    @property
    def done(self) -> bool:
        return self.result is not None

    def _finish(self, env, result: ExecResult):
        self.result = result
        if self.posture_recovery or self.path_q is not None:  # the skill acts with robosuite's posture, as in the data
            set_arm_posture(env, None)
        return None

    def _pull_posture(self, env):
        if self.path_q is not None and not self.posture_recovery:
            set_arm_posture(env, self.path_q[self.i])

    def errors(self, eef):
        return (float(np.linalg.norm(eef[:3, 3] - self.target[:3, 3])),
                P.rotation_angle(eef[:3, :3], self.target[:3, :3]))

    def step(self, env):
        if self.result is not None:
            return None
        eef = _raw(env).eef_pose()
        pe, re = self.errors(eef)
        last = len(self.wps) - 1
        if self.i >= last and pe < self.pos_tol and re < self.rot_tol:
            return self._finish(env, ExecResult(True, "", self.steps, pe, re))
        if self.steps >= self.max_steps:
            return self._finish(env, ExecResult(False, TIMEOUT, self.steps, pe, re))
        if self.retreat_end is not None:
            k = self.retreat_end
            if np.linalg.norm(self.wps[k][:3, 3] - eef[:3, 3]) < RETREAT_TOL:
                self.retreat_end, self.i = None, max(self.i, k)
            else:
                while self.i < k and np.linalg.norm(self.wps[self.i][:3, 3] - eef[:3, 3]) < RETREAT_LOOKAHEAD:
                    self.i += 1
                self._pull_posture(env)
                self.steps += 1
                return pose_action(eef, self.wps[self.i], GRIPPER_HOLD, max_pos=self.speed, max_rot=self.speed)
        while self.i < last:
            w = self.wps[self.i]
            if (np.linalg.norm(w[:3, 3] - eef[:3, 3]) < self.lookahead
                    and P.rotation_angle(w[:3, :3], eef[:3, :3]) < self.rot_lookahead):
                self.i += 1
            else:
                break
        # progress: the carrot moved on, or the hand came closer to it
        w = self.wps[self.i]
        d = (float(np.linalg.norm(w[:3, 3] - eef[:3, 3])), P.rotation_angle(w[:3, :3], eef[:3, :3]))
        if self.i != self.best_i or d[0] < self.best[0] - STALL_POS or d[1] < self.best[1] - STALL_ROT:
            self.best_step = self.steps
        self.best = d if self.i != self.best_i else (min(self.best[0], d[0]), min(self.best[1], d[1]))
        self.best_i = self.i
        if self.steps - self.best_step >= STALL_STEPS:
            if self.goal_q is None or self.posture_recovery:
                return self._finish(env, ExecResult(False, STALLED, self.steps, pe, re))
            # The OSC resolves the arm's redundancy toward its reset posture, not along the planned
            # joint path, and near a wrist-heavy goal it can turn joint 7 into its limit (NutAssembly:
            # 2.9 rad, the plan's goal at 2.7-2.85) and stop 2-10 cm short. Pulling the redundancy
            # toward the plan's goal configuration instead lets the other joints take the turn.
            set_arm_posture(env, self.goal_q)
            self.posture_recovery, self.best_step = True, self.steps
            self.max_steps = max(self.max_steps, self.steps + POSTURE_RECOVERY_STEPS)
        self._pull_posture(env)
        self.steps += 1
        return pose_action(eef, self.wps[self.i], self.gripper, max_pos=self.speed, max_rot=self.speed)
