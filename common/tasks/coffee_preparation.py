"""CoffeePreparation_D2 (TASKS.md §4): put the mug on the machine, open the lid, take the pod out of
the drawer, put it into the holder and close the lid.

Stages (Tab. VI, 5 stages; TASKS.md §4 datagen subtasks):
  0 "grasp_mug"            ref mug      done: mug grasped (tolerant grasp) and lifted 3 cm
  1 "place_mug_open_lid"   ref machine  done: mug upright on the base plate AND lid hinge > 2.08 rad
  2 "open_drawer"          ref drawer   done: drawer slide < -0.19
  3 "grasp_pod"            ref pod      done: pod grasped and lifted 3 cm
  4 "insert_pod_close_lid" ref machine  done: task success = Coffee success + mug upright + mug
                                        touching the base plate

Scene:
- machine (free, without the decorative cup) and pod from `coffee.py` (shared geometry);
- mug (free): primitive stand-in for ShapeNet 3143a4ac: a ring of 24 boxes (outer r 0.036, wall
  5 mm, height 0.080), a floor disc and a loop handle sticking out 3 cm along local -y.
  Density 100 (~13 g), friction (1, 1, 1), solref (0.001, 1), margin 0.001;
- drawer cabinet (fixture, no free joint; mimicgen's drawer_long.xml rebuilt with plain geoms):
  at (0.15, -0.35), z 0.805, yaw 180° (front faces world +y), housing 0.236 x 0.29 x 0.14. The
  drawer slides along cabinet y (joint "drawer_slide", damping 100, 7.85 kg). mimicgen's range is
  [-1, 0]; here it is [-0.22, 0], and in practice the drawer's back panel meets the housing's front
  posts at -0.198, so it stays in the housing. The datagen signal needs < -0.19; the demo opens to
  ~-0.195, where the pod (worst case) is ~4 cm in front of the cabinet top's front edge and
  reachable from above. `object_pose("drawer")` returns the
  fixed cabinet body pose (as mimicgen's obj_body_id["drawer"]); `drawer_slide()` the joint value.
  `object_poses()` stays the free objects only (the recorder keys on them).
- camera: `agentview` and `agentview_full` are swapped as in mimicgen (agentview shows the table).

Reset: lid closed (0), drawer closed (0), pod on the drawer floor at (x, y) in
[-0.03, 0.03] x [-0.05, 0.03] from the floor centre (cabinet frame), yaw 0.

D2 placement (kit decision; no public D2 exists). The brief was to widen D1 as far as the arm
still reaches every sample. With this demonstrator (top-down handle grasp, mug slid onto the
plate with its handle toward the machine front) parts of D1 itself cannot be reached, so the
ranges are wider than D1 in some directions and narrower in others:
  machine x [-0.22, -0.15] (D1 [-0.25, -0.15]), y [-0.30, -0.22] (D1 [-0.30, -0.25]),
          yaw [-45°, 10°] (D1 [-30°, 30°]).
          With yaw > 0 the front faces the robot, and the mug-placing grasp (~0.24 m in front of
          the machine) comes within ~0.28 m of the robot base, where top-down poses stall
          (joint 4 near its limit). x stops at -0.15 because at |yaw| 45° the machine reaches
          0.167 m in x and the fixed cabinet starts at x 0.032.
  mug     x [-0.15, 0.12] (D1 [-0.15, 0.20]), y [0.08, 0.22] (D1 [0.05, 0.25]), yaw [0, 360°],
          z_offset 0.02. The handle grasp sits up to 6.6 cm beyond the mug centre. Top-down
          reach ends at ~0.80 m from the base (measured: 0.85 m stalls). For y < 0.08 the hand
          (±0.10 m along the finger axis) can hit the closed drawer's handle bar.
"""
from __future__ import annotations

import numpy as np

from .. import pose as P
from ..data import PHASE_CONNECT, PHASE_SKILL
from ..env import KitTask, Stage, box_geom, register_task, xml_object
from ..scripted import GRIPPER_CLOSED, GRIPPER_OPEN, Demonstrator, top_down
from .coffee import (HINGE_LOCAL, HOLDER_HALF_HEIGHT, LID_HALF_SIZE, LID_LOCAL, POD_HALF_HEIGHT, CoffeeMixin,
                     make_machine, make_pod)

DEG = np.pi / 180
TABLE_TOP = 0.8

# ---------------------------------------------------------------- mug (mug frame, origin at its centre)
MUG_R_OUT, MUG_WALL, MUG_HALF_H = 0.036, 0.005, 0.040
MUG_HANDLE_OUT = 0.066  # handle tip distance from the mug axis (3 cm beyond the wall)
MUG_GRASP_LOCAL = np.array([0.0, -0.062, 0.016])  # pinch point on the handle bar (fingers along mug x)
MUG_PHYS = 'density="100" friction="1 1 1" solref="0.001 1" solimp="0.998 0.998 0.001" margin="0.001"'

# ---------------------------------------------------------------- drawer cabinet (cabinet frame)
CABINET_POS = np.array([0.15, -0.35, 0.805])
CABINET_YAW = np.pi
DRAWER_LINK_LOCAL = np.array([0.0, -0.01, 0.076])  # drawer body origin at slide 0
DRAWER_FLOOR_LOCAL = np.array([0.0, -0.04, -0.03])  # floor box centre in the drawer body frame
DRAWER_FLOOR_HALF = np.array([0.08, 0.12, 0.008])
DRAWER_HANDLE_LOCAL = np.array([0.0, -0.22, 0.04])  # handle cross bar centre in the drawer body frame
DRAWER_RANGE = (-0.22, 0.0)
DRAWER_OPEN_SIGNAL = -0.19

# ---------------------------------------------------------------- placement and checks
MUG_PLATE_LOCAL_Y = 0.13  # mug centre on the base plate (machine y); the holder is at 0.106
MUG_UPRIGHT_TOL = 1e-3
LID_OPEN_SIGNAL = 2.08


def mug_body_xml() -> str:
    white = "0.92 0.88 0.78 1"
    g = []
    n = 24
    r_mid, half_t = MUG_R_OUT - MUG_WALL / 2, MUG_WALL / 2
    half_w = np.pi * MUG_R_OUT / n
    for i in range(n):
        a = 2 * np.pi * i / n
        g.append(box_geom(f"wall{i}", (half_t, half_w, MUG_HALF_H), (r_mid * np.cos(a), r_mid * np.sin(a), 0),
                          rgba=white, euler=(0, 0, a), extra=MUG_PHYS))
    g.append(f'<geom name="floor" type="cylinder" size="0.0325 0.004" pos="0 0 {-MUG_HALF_H + 0.004:.6g}" '
             f'rgba="{white}" group="0" {MUG_PHYS}/>')
    # Handle: two arms from the wall and a vertical bar 3 cm out, in the mug's y-z plane.
    g.append(box_geom("handle_top", (0.006, 0.013, 0.004), (0, -0.046, 0.026), rgba=white, extra=MUG_PHYS))
    g.append(box_geom("handle_bottom", (0.006, 0.013, 0.004), (0, -0.046, -0.022), rgba=white, extra=MUG_PHYS))
    g.append(box_geom("handle_bar", (0.006, 0.004, 0.028), (0, -0.062, 0.002), rgba=white, extra=MUG_PHYS))
    return "\n".join(g)


def drawer_fixture_xml() -> str:
    """The cabinet as a worldbody child (mimicgen's drawer_long.xml geometry, plain colours)."""
    wood, light = "0.55 0.25 0.15 1", "0.85 0.7 0.5 1"
    q = np.array([np.cos(CABINET_YAW / 2), 0, 0, np.sin(CABINET_YAW / 2)])

    def box(name, size, pos, rgba=wood):
        return box_geom(f"drawer_{name}", size, pos, rgba=rgba, extra='mass="0.05"')

    def capsule(name, half_len, pos, axis):
        euler = "1.5708 0 0" if axis == "y" else "0 1.5708 0"
        return (f'<geom name="drawer_{name}" type="capsule" size="0.009 {half_len}" pos="{pos[0]} {pos[1]} {pos[2]}" '
                f'euler="{euler}" rgba="{light}" group="0" mass="0.06"/>')

    housing = [
        box("left_wall", (0.008, 0.1435, 0.064), (-0.11, -0.0315, 0.065)),
        box("right_wall", (0.008, 0.1435, 0.064), (0.11, -0.0315, 0.065)),
        box("back_wall", (0.102, 0.008, 0.064), (0, 0.092, 0.062)),
        box("bottom_surface", (0.102, 0.1335, 0.014), (0, -0.0395, 0.004)),
        box("top_surface", (0.102, 0.1335, 0.008), (0, -0.0215, 0.121)),
        box("cavity_1", (0.012, 0.012, 0.064), (-0.102, -0.163, 0.065)),
        box("cavity_2", (0.012, 0.012, 0.064), (0.102, -0.163, 0.065)),
    ]
    fl, hd = DRAWER_FLOOR_LOCAL, DRAWER_HANDLE_LOCAL
    drawer = [
        '<inertial pos="0 0 0" mass="7.85398" diaginertia="0.923301 0.764585 0.168533"/>',
        f'<joint name="drawer_slide" type="slide" axis="0 1 0" limited="true" range="{DRAWER_RANGE[0]} {DRAWER_RANGE[1]}" '
        'damping="100"/>',
        box("front", (0.088, 0.010, 0.046), (0, -0.155, 0.007)),
        box("back", (0.095, 0.008, 0.028), (0, 0.065, 0.008)),
        box("side_1", (0.008, 0.114, 0.008), (-0.072, -0.042, -0.015)),
        box("side_2", (0.008, 0.114, 0.008), (0.072, -0.042, -0.015)),
        box("floor", DRAWER_FLOOR_HALF, fl),
        capsule("handle_1", 0.03, (-0.05, -0.19, hd[2]), "y"),
        capsule("handle_2", 0.05, (0, hd[1], hd[2]), "x"),
        capsule("handle_3", 0.03, (0.05, -0.19, hd[2]), "y"),
    ]
    link = DRAWER_LINK_LOCAL
    return (f'<body name="drawer_cabinet" pos="{CABINET_POS[0]} {CABINET_POS[1]} {CABINET_POS[2]}" '
            f'quat="{q[0]:.6g} {q[1]:.6g} {q[2]:.6g} {q[3]:.6g}">\n  ' + "\n  ".join(housing) +
            f'\n  <body name="drawer_link" pos="{link[0]} {link[1]} {link[2]}">\n    ' + "\n    ".join(drawer) +
            "\n  </body>\n</body>")


@register_task
class CoffeePreparation_D2(CoffeeMixin, KitTask):
    eval_horizon = 800
    placement = {  # module docstring: D1 widened (drawer fixed; machine, then mug)
        "machine": dict(x=(-0.22, -0.15), y=(-0.30, -0.22), yaw=(-45 * DEG, 10 * DEG)),
        "mug": dict(x=(-0.15, 0.12), y=(0.08, 0.22), yaw=(0.0, 2 * np.pi), z_offset=0.02),
    }
    stages = (
        Stage("grasp_mug", "mug", "mug_grasped", "grasp the mug by its handle and lift it"),
        Stage("place_mug_open_lid", "machine", "mug_placed_lid_open",
              "put the mug on the machine's base plate, then flip the lid open"),
        Stage("open_drawer", "drawer", "drawer_open", "pull the drawer open by its handle"),
        Stage("grasp_pod", "pod", "pod_grasped", "grasp the pod in the drawer and lift it"),
        Stage("insert_pod_close_lid", "machine", "_check_success",
              "put the pod into the holder and close the lid"),
    )

    def _make_objects(self):
        return {
            "machine": make_machine("machine", with_cup=False),
            "pod": make_pod("pod"),
            "mug": xml_object("mug", mug_body_xml(), horizontal_radius=MUG_HANDLE_OUT, bottom=-MUG_HALF_H,
                              top=MUG_HALF_H),
        }

    def _add_fixtures(self, arena):
        import xml.etree.ElementTree as ET
        arena.worldbody.append(ET.fromstring(drawer_fixture_xml()))
        # mimicgen swaps agentview and agentview_full for this task (TASKS.md §0).
        arena.set_camera("agentview", pos=[0.753, 0, 1.519], quat=[0.643, 0.294, 0.294, 0.643])
        arena.set_camera("agentview_full", pos=[0.5, 0, 1.35], quat=[0.653, 0.271, 0.271, 0.653])

    def _setup_references(self):
        super()._setup_references()
        m = self.sim.model
        self.cabinet_body_id = m.body_name2id("drawer_cabinet")
        j = m.joint_name2id("drawer_slide")
        self.drawer_qpos_addr, self.drawer_dof_addr = int(m.jnt_qposadr[j]), int(m.jnt_dofadr[j])
        self.drawer_floor_geom_id = m.geom_name2id("drawer_floor")
        self.base_plate_geom_id = m.geom_name2id("machine_base_plate")
        self.mug_geom_ids = [m.geom_name2id(g) for g in self.objects["mug"].contact_geoms]

    def _after_placement(self):
        self.set_lid_angle(0.0)
        self.sim.data.qpos[self.drawer_qpos_addr] = 0.0
        self.sim.data.qvel[self.drawer_dof_addr] = 0.0
        self.sim.forward()
        # Pod on the drawer floor, offset sampled in the cabinet frame (mimicgen's pod sampler).
        C = self.object_pose("drawer")
        floor = np.array(self.sim.data.geom_xpos[self.drawer_floor_geom_id])
        rel = np.array([self.rng.uniform(-0.03, 0.03), self.rng.uniform(-0.05, 0.03), 0.0])
        pos = floor + C[:3, :3] @ rel
        pos[2] = floor[2] + DRAWER_FLOOR_HALF[2] + POD_HALF_HEIGHT + 0.001
        quat_wxyz = np.roll(P.mat_to_quat(C[:3, :3]), 1)
        self.sim.data.set_joint_qpos(self.objects["pod"].joints[0], np.concatenate([pos, quat_wxyz]))

    # ---------------------------------------------------------------- poses
    def object_pose(self, name: str) -> np.ndarray:
        """4x4 world pose of a free object, or of the fixed drawer cabinet ("drawer")."""
        if name == "drawer":
            b = self.cabinet_body_id
            return P.make_pose(self.sim.data.body_xpos[b], self.sim.data.body_xmat[b].reshape(3, 3))
        return super().object_pose(name)

    def drawer_slide(self) -> float:
        return float(self.sim.data.qpos[self.drawer_qpos_addr])

    def drawer_handle(self) -> np.ndarray:
        b = self.sim.model.body_name2id("drawer_link")
        T = P.make_pose(self.sim.data.body_xpos[b], self.sim.data.body_xmat[b].reshape(3, 3))
        return (T @ np.append(DRAWER_HANDLE_LOCAL, 1.0))[:3]

    # ---------------------------------------------------------------- checks
    def mug_grasped(self) -> bool:
        """Tolerant grasp (mimicgen's mug_grasp): any left finger geom and any right finger geom touch
        the mug, and the mug is lifted 3 cm above the table."""
        g = self.robots[0].gripper["right"]
        touch = self._check_grasp(gripper=[g.important_geoms["left_finger"], g.important_geoms["right_finger"]],
                                  object_geoms=self.objects["mug"])
        bottom = self.object_pose("mug")[2, 3] - MUG_HALF_H
        return bool(touch and bottom > TABLE_TOP + 0.03)

    def mug_upright(self) -> bool:
        return bool(1.0 - self.object_pose("mug")[2, 2] < MUG_UPRIGHT_TOL)

    def mug_on_plate(self) -> bool:
        return self.contacts_between(self.mug_geom_ids, [self.base_plate_geom_id]) > 0

    def mug_placed(self) -> bool:
        return self.mug_upright() and self.mug_on_plate()

    def mug_placed_lid_open(self) -> bool:
        return self.mug_placed() and self.lid_angle() > LID_OPEN_SIGNAL

    def drawer_open(self) -> bool:
        return self.drawer_slide() < DRAWER_OPEN_SIGNAL

    def _check_success(self) -> bool:
        return bool(self.coffee_success() and self.mug_placed())


# ------------------------------------------------------------------------------------ scripted demo
# The Panda's fingers close along the OSC site's x axis, i.e. along yaw + 90° for `top_down(yaw)`.
PLATE_TOP_LOCAL = -0.1005  # base-plate top in the machine frame
MACHINE_ORIGIN_Z = TABLE_TOP + 0.1105  # machine origin height when it stands on the table
LID_PINCH_LOCAL = np.array([0.0, LID_HALF_SIZE[1] - 0.016, 0.0])  # pinch point in the lid frame
ROBOT_BASE_XY = np.array([-0.56, 0.0])
# top_down yaw with joint 7 mid-range when joint 1 points the arm at +x (measured: yaw = 45° - q7
# at the home posture); the arm's azimuth toward the target adds to it. Joint 7 spans ±166°
# around it, so choosing the member of a symmetric grasp's yaw family nearest to this centre
# keeps the wrist away from its limit.
WRIST_CENTER_YAW = 45 * DEG


def _wrist_center(pos) -> float:
    d = np.asarray(pos[:2], float) - ROBOT_BASE_XY
    return WRIST_CENTER_YAW + float(np.arctan2(d[1], d[0]))


def _grip(close_dir: float) -> np.ndarray:
    """Top-down gripper rotation whose fingers close along world direction `close_dir`."""
    return top_down(close_dir - np.pi / 2)


def _td_yaw(R) -> float:
    return float(np.arctan2(-R[0, 0], R[1, 0]))


def _yaw_of(T) -> float:
    return float(np.arctan2(T[1, 0], T[0, 0]))


def _near(yaw: float, ref: float, period: float = np.pi) -> float:
    return yaw + period * np.round((ref - yaw) / period)


def _wrap(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)


def _planner(d):
    """The env's motion planner (built once per env, shared with `Demonstrator.connect`)."""
    pl = getattr(d.env, "_kit_planner", None)
    if pl is None:
        from ..planner import Planner
        pl = d.env._kit_planner = Planner(d.env, seed=0)
    return pl


def _connect(d, target, gripper=None, held=None, speed=1.0, pos_tol=0.006, rot_tol=0.05, **move_kw) -> bool:
    """Free-space move along a collision-free joint-space plan (no wrist-limit or reach traps of
    straight Cartesian servoing); if planning fails, a plain servo move to the same target."""
    if d.failed:
        return False
    if gripper is not None:
        d.gripper = gripper
    pl = _planner(d)
    plan = pl.plan(d.env, target, held=held)
    if plan.success:
        res = pl.execute(d.env, plan, d.gripper, step_fn=d.step, speed=speed, pos_tol=pos_tol, rot_tol=rot_tol)
        if res.success:
            return True
    return d.move(target, speed=speed, pos_tol=pos_tol, rot_tol=max(rot_tol, 0.05), **move_kw)


def _pick_yaw(d, candidates, pos_fn, bias=None):
    """Among equivalent gripper rotations (or grasp choices), the one whose IK solutions (seeded
    from the current joints, then chained through the poses `pos_fn(c)` returns) move the joints
    least and keep joint 7 away from its limits; `bias(c)` adds a preference cost."""
    if d.failed:
        return candidates[0]
    pl = _planner(d)
    pl.sync(d.env)
    q0 = pl._q_now.copy()
    best, best_cost = candidates[0], np.inf
    for c in candidates:
        q, cost = q0, 0.0 if bias is None else bias(c)
        for T in pos_fn(c):
            qn = pl.ik(T, q_seed=q, check_collision=False)
            if qn is None:
                cost = np.inf
                break
            margin = min(qn[6] - pl.q_lo[6], pl.q_hi[6] - qn[6])
            cost += float(np.sum(pl._W * np.abs(qn - q))) + (5.0 if margin < 0.25 else 0.0)
            q = qn
        if cost < best_cost:
            best, best_cost = c, cost
    return best


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def scripted_demo(env, seed: int, rng: np.random.Generator, record: bool = True) -> Demonstrator:
    """Mug by its handle onto the base plate, lid flipped open by pinching its sides and carrying
    the pinch point along the hinge arc, drawer pulled by its handle, pod from the drawer into the
    holder, lid pinched and carried back closed. Targets are computed in the frame of each stage's
    reference object from privileged poses, closed loop where an object is carried. Free-space
    moves (each stage's connect, the approaches to the lid) follow motion-planner paths; of the two
    equivalent gripper yaws of each symmetric grasp, the one the joints reach with least motion and
    joint 7 away from its limits is used."""
    d = Demonstrator(env, rng, record=record).start(seed)
    raw = env.raw
    _planner(d).rng = np.random.default_rng(seed)  # IK restarts: reproducible per seed
    M = raw.object_pose("machine")
    m_yaw = _yaw_of(M)
    mach = lambda local: (M @ np.append(np.asarray(local, float), 1.0))[:3]  # noqa: E731
    mdir = lambda v: M[:3, :3] @ np.asarray(v, float)  # noqa: E731

    def fail(msg):
        if not d.failed:
            d.failed = msg

    y_place = MUG_PLATE_LOCAL_Y + rng.uniform(-0.004, 0.004)
    carry_h = 0.235 + rng.uniform(0.0, 0.02)  # mug bottom above the plate top while carried in

    def R_mug(beta):  # placed: handle (mug -y) along machine +y, turned by beta
        return M[:3, :3] @ P.axisangle_to_mat([0, 0, np.pi + beta])

    def mug_target(G, beta, y, h):
        return P.make_pose(mach([0.0, y, PLATE_TOP_LOCAL + MUG_HALF_H + h]), R_mug(beta)) @ G

    # ---- stage 0: grasp the mug by its handle (fingers across the handle, along mug x) and lift
    mug = raw.object_pose("mug")
    psi = _yaw_of(mug)
    grasp_local = MUG_GRASP_LOCAL + [0, rng.uniform(-0.002, 0.002), rng.uniform(-0.003, 0.003)]
    grasp = (mug @ np.append(grasp_local, 1.0))[:3]
    pre_h = rng.uniform(0.07, 0.09)

    def mug_poses(c):  # pre-grasp, grasp, then the placing poses with this grasp
        R, beta = c
        G = P.pose_inv(mug) @ P.make_pose(grasp, R)
        return [P.make_pose(grasp + [0, 0, pre_h], R), P.make_pose(grasp, R),
                mug_target(G, beta, 0.195, carry_h), mug_target(G, beta, y_place, 0.0)]

    # The gripper turns with the mug from its yaw on the table to the placed yaw; where that turn
    # nears 180° and runs joint 7 into a limit, the handle may point up to 30° off the machine's
    # front (the hand still clears the holder).
    R0, beta = _pick_yaw(d, [(top_down(psi + k * np.pi / 2), b) for k in (-1, 1) for b in (0.0, 30 * DEG, -30 * DEG)],
                         mug_poses, bias=lambda c: 10.0 * abs(c[1]))
    d.label(0, PHASE_CONNECT)
    _connect(d, mug_poses((R0, beta))[0], GRIPPER_OPEN, speed=rng.uniform(0.8, 1.0), max_steps=150)
    d.label(0, PHASE_SKILL)
    grasp = (raw.object_pose("mug") @ np.append(grasp_local, 1.0))[:3]
    d.move(P.make_pose(grasp, R0), speed=rng.uniform(0.5, 0.7), max_steps=60)
    d.actuate(GRIPPER_CLOSED, steps=10)
    d.move(P.make_pose(grasp + [0, 0, rng.uniform(0.09, 0.11)], R0), speed=0.6, max_steps=60, pos_tol=0.01)
    if not raw.mug_grasped():
        fail("stage 0: mug not grasped")

    # ---- stage 1: mug onto the base plate (slid in under the holder), then flip the lid open
    G = P.pose_inv(raw.object_pose("mug")) @ raw.eef_pose()  # grasp, measured

    d.label(1, PHASE_CONNECT)
    # The planner keeps the carried mug clear of the machine (its top is at ~1.02 m).
    _connect(d, mug_target(G, beta, 0.195, carry_h), held="mug", speed=rng.uniform(0.7, 0.9), max_steps=200)
    d.label(1, PHASE_SKILL)
    G = P.pose_inv(raw.object_pose("mug")) @ raw.eef_pose()  # re-measured: the mug may swing in the grasp
    d.move(mug_target(G, beta, 0.195, 0.04), speed=0.8, max_steps=60, pos_tol=0.01)
    d.move(mug_target(G, beta, 0.195, 0.008), speed=0.4, max_steps=40, pos_tol=0.005)
    d.move(mug_target(G, beta, y_place, 0.008), speed=0.4, max_steps=80, pos_tol=0.006)
    d.move(mug_target(G, beta, y_place, -0.008), speed=0.3, max_steps=30, pos_tol=0.006, until=raw.mug_on_plate)
    d.actuate(GRIPPER_OPEN, steps=6)
    eef = raw.eef_pose()
    d.move(P.make_pose(eef[:3, 3] + mdir([0, 0.05, 0]) + [0, 0, 0.03], eef[:3, :3]), speed=0.8, max_steps=40,
           pos_tol=0.01)
    if not raw.mug_placed():
        fail("stage 1: mug not placed upright on the base plate")
    _lid_move(d, raw, rng, M, 0.0, rng.uniform(110, 116) * DEG, open_after=True)
    d.hold(2)
    if not raw.mug_placed_lid_open():
        fail(f"stage 1: lid not open ({raw.lid_angle():.2f} rad)")

    # ---- stage 2: pull the drawer open by its handle bar (fingers close along the pull direction)
    C = raw.object_pose("drawer")
    pull = C[:3, :3] @ np.array([0.0, -1.0, 0.0])
    handle = raw.drawer_handle()
    target_slide = rng.uniform(-0.197, -0.194)  # the cavity posts stop the drawer at ~-0.198
    pre_h = rng.uniform(0.07, 0.09)
    a = np.arctan2(pull[1], pull[0])
    Rd = _pick_yaw(d, [_grip(a), _grip(a + np.pi)], lambda R: [
        P.make_pose(handle + [0, 0, pre_h], R), P.make_pose(handle - pull * target_slide, R)])
    d.label(2, PHASE_CONNECT)
    _connect(d, P.make_pose(handle + [0, 0, pre_h], Rd), GRIPPER_OPEN, speed=rng.uniform(0.8, 1.0), max_steps=150)
    d.label(2, PHASE_SKILL)
    # Fully open fingers would touch the drawer front: half-close them (the gripper command
    # integrates its sign, 0 holds) and centre the fingers a little in front of the bar.
    d.actuate(GRIPPER_CLOSED, steps=2)
    off = pull * rng.uniform(0.008, 0.012)
    d.move(P.make_pose(handle + off + [0, 0, rng.uniform(-0.003, 0.0)], Rd), 0.0, speed=0.6, max_steps=60,
           pos_tol=0.008)
    d.actuate(GRIPPER_CLOSED, steps=8)
    d.move(P.make_pose(raw.eef_pose()[:3, 3] + pull * (-target_slide + 0.05), Rd), speed=1.0, max_steps=150,
           until=lambda: raw.drawer_slide() < target_slide)
    d.actuate(GRIPPER_OPEN, steps=5)
    eef = raw.eef_pose()
    d.move(P.make_pose(eef[:3, 3] + [0, 0, 0.06], Rd), speed=1.0, max_steps=40, pos_tol=0.015)
    if not raw.drawer_open():
        fail("stage 2: drawer not open")

    # ---- stage 3: grasp the pod in the drawer (fingers along the cabinet's x axis) and lift it
    pod = raw.pod_pos()
    holder = raw.holder_center()
    pre_h, travel = rng.uniform(0.07, 0.09), rng.uniform(0.11, 0.13)
    Rp = _pick_yaw(d, [_grip(_yaw_of(C)), _grip(_yaw_of(C) + np.pi)], lambda R: [
        P.make_pose(pod + [0, 0, pre_h], R), P.make_pose(pod, R)])
    d.label(3, PHASE_CONNECT)
    _connect(d, P.make_pose(pod + [0, 0, pre_h], Rp), GRIPPER_OPEN, speed=rng.uniform(0.8, 1.0), max_steps=150)
    d.label(3, PHASE_SKILL)
    pod = raw.pod_pos()
    d.move(P.make_pose(pod + [0, 0, rng.uniform(-0.002, 0.003)], Rp), speed=0.6, max_steps=60)
    d.actuate(GRIPPER_CLOSED, steps=8)
    d.move(P.make_pose(pod + [0, 0, rng.uniform(0.10, 0.12)], Rp), speed=1.0, max_steps=60, pos_tol=0.015)
    if not raw.pod_grasped():
        fail("stage 3: pod not grasped")

    # ---- stage 4: pod into the holder (fingers along machine x), then carry the lid back closed
    def above_holder(h):
        def target():
            eef = raw.eef_pose()[:3, 3]
            return P.make_pose(np.r_[eef[:2] + holder[:2] - raw.pod_pos()[:2], holder[2] + h], Ri)
        return target

    off = raw.eef_pose()[:3, 3] - raw.pod_pos()  # pod in the hand, measured
    Ri = _pick_yaw(d, [_grip(m_yaw), _grip(m_yaw + np.pi)], lambda R: [
        P.make_pose(np.r_[holder[:2] + off[:2], holder[2] + travel], R)])
    d.label(4, PHASE_CONNECT)
    _connect(d, P.make_pose(np.r_[holder[:2] + off[:2], holder[2] + travel], Ri), held="pod",
             speed=rng.uniform(0.8, 1.0), max_steps=150)
    d.track(above_holder(travel), max_steps=40, speed=0.6, pos_tol=0.004)
    d.label(4, PHASE_SKILL)
    d.track(above_holder(HOLDER_HALF_HEIGHT + 0.025), max_steps=60, speed=0.5)
    d.track(above_holder(HOLDER_HALF_HEIGHT + 0.011 + rng.uniform(0.004, 0.007)), max_steps=60, speed=0.2)
    d.actuate(GRIPPER_OPEN, steps=8)
    eef = raw.eef_pose()
    d.move(P.make_pose(eef[:3, 3] + [0, 0, 0.05], Ri), speed=0.6, max_steps=40, pos_tol=0.01)
    if not raw.pod_in_holder():
        fail("stage 4: pod not in the holder")
    _lid_move(d, raw, rng, M, raw.lid_angle(), rng.uniform(-2, 1) * DEG, open_after=True,
              until=raw._check_success)
    d.hold(2)
    if not raw._check_success():
        fail("stage 4: not successful at the end")
    return d


def _lid_move(d, raw, rng, M, theta_from, theta_to, open_after=True, until=None):
    """Pinch the lid's sides near its free edge (fingers along the hinge axis) and carry the pinch
    point along its circle about the hinge from `theta_from` to `theta_to`, closed loop on the
    hinge angle; the gripper stays top down, so the lid turns between the finger pads."""
    if d.failed:
        return
    mach = lambda local: (M @ np.append(np.asarray(local, float), 1.0))[:3]  # noqa: E731
    rel0 = LID_LOCAL + LID_PINCH_LOCAL - HINGE_LOCAL  # pinch point relative to the hinge, lid closed

    def point(theta):
        return mach(HINGE_LOCAL + _rot_x(theta) @ rel0)

    start = point(theta_from)
    pre = start + [0, 0, rng.uniform(0.06, 0.08)]
    m_yaw = _yaw_of(M)
    R = _pick_yaw(d, [_grip(m_yaw), _grip(m_yaw + np.pi)], lambda R: [
        P.make_pose(pre, R), P.make_pose(start, R), P.make_pose(point((theta_from + theta_to) / 2), R),
        P.make_pose(point(theta_to), R)])
    _connect(d, P.make_pose(pre, R), GRIPPER_OPEN, speed=rng.uniform(0.8, 1.0), max_steps=150)
    d.move(P.make_pose(start, R), speed=0.6, max_steps=60, pos_tol=0.004)
    d.actuate(GRIPPER_CLOSED, steps=8)
    # Aim a fixed angle ahead of the lid's current angle along the arc.
    sgn, lead = np.sign(theta_to - theta_from), rng.uniform(18, 22) * DEG
    lo, hi = min(theta_from, theta_to), max(theta_from, theta_to)

    end = point(theta_to)

    def reached():  # the lid lags the fingers a few degrees: stop at the arc's end point
        return (sgn * (raw.lid_angle() - theta_to) >= -2 * DEG or np.linalg.norm(raw.eef_pose()[:3, 3] - end) < 0.006
                or (until is not None and until()))

    d.track(lambda: P.make_pose(point(float(np.clip(raw.lid_angle() + sgn * lead, lo, hi))), R), max_steps=100,
            speed=0.6, until=reached)
    if open_after:
        d.actuate(GRIPPER_OPEN, steps=6)
        eef = raw.eef_pose()
        d.move(P.make_pose(eef[:3, 3] + [0, 0, 0.07], R), speed=1.0, max_steps=40, pos_tol=0.015, rot_tol=0.2)
