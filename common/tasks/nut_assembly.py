"""NutAssembly_D2 (TASKS.md §5): put the square nut on the square peg and the round nut on the round peg.

Stages (Tab. VI, 4 stages): 1. grasp the square nut (reference: square_nut); 2. insert it on its peg
(reference: square_peg); 3. grasp the round nut (reference: round_nut); 4. insert it (reference:
round_peg). The pegs are static fixtures of the scene, not free objects: `object_pose("square_peg")`
/ `object_pose("round_peg")` read their fixed bodies (`FIXTURE_BODIES`), while `object_poses()`
(and so the recorded `datagen_info/object_poses`) stays the free nuts only.

Scene (robosuite's NutAssembly / PegsArena, rebuilt from primitives in our own MJCF):
- table top at z=0.82; peg1 (square, half-size 0.016 x 0.016 x 0.1) at (0.23, 0.10, 0.85) and
  peg2 (round, cylinder r 0.02, half-height 0.1) at (0.23, -0.10, 0.85): 0.13 tall above the table.
- square nut: ring of 4 boxes + handle box at x=0.054; round nut: octagon of 8 boxes + handle box
  at x=0.06. Density 100, friction (0.95, 0.3, 0.1), condim 4, solimp (0.998, 0.998, 0.001),
  solref (0.02, 1). Horizontal radius 0.11. As in robosuite's nut XMLs the placement bottom is at
  z=-0.05 in the nut frame, so with z_offset 0.02 a nut spawns 0.07 above the table and drops ~6 cm.

D2 placement (kit decision, README): nut x in (-0.15, 0.15) (paper App. B); square nut y in
[0.10, 0.25], round nut y in [-0.25, -0.10] (D0: [0.11, 0.225] / [-0.225, -0.11]); yaw uniform in
[0, 2pi); placements whose nut is within (0.11 + peg radius) of a peg in xy are re-sampled.
"""
from __future__ import annotations

import numpy as np
from robosuite.utils.placement_samplers import SequentialCompositeSampler
from robosuite.utils.errors import RandomizationError

from .. import pose as P
from ..data import PHASE_CONNECT, PHASE_SKILL
from ..env import KitTask, Stage, box_geom, register_task, xml_object
from ..scripted import GRIPPER_CLOSED, GRIPPER_OPEN, Demonstrator, top_down

TABLE_TOP = 0.82
NUT_RADIUS = 0.11  # horizontal radius used by the placement sampler
PEGS = {  # reference name -> (body name, world xy, footprint radius used for the overlap test)
    "square_peg": ("peg1", (0.23, 0.10), 0.016 * np.sqrt(2)),
    "round_peg": ("peg2", (0.23, -0.10), 0.02),
}
FIXTURE_BODIES = {k: v[0] for k, v in PEGS.items()}
PEG_OF = {"square_nut": "square_peg", "round_nut": "round_peg"}
PEG_TOP = TABLE_TOP + 0.13
HANDLE_X = {"square_nut": 0.054, "round_nut": 0.06}  # handle box centre on the nut's local x axis
HANDLE_HALF = (0.02525, 0.015875, 0.01)
NUT_HALF_THICKNESS = 0.01
# Success (robosuite NutAssembly.on_peg and _check_success): |dx|, |dy| < 0.03, nut z below
# table top + 0.05, and the reach term 1 - tanh(10 d) < 0.6 for the gripper site (d > ~0.0424).
ON_PEG_XY, ON_PEG_DZ, REACH_MAX = 0.03, 0.05, 0.6
NUT_PHYS = ('density="100" friction="0.95 0.3 0.1" condim="4" solimp="0.998 0.998 0.001" '
            'solref="0.02 1"')


def square_nut_xml() -> str:
    c = "0.75 0.6 0.2 1"
    return "\n".join([
        box_geom("side_nx", (0.0105, 0.04375, 0.01), (-0.03325, 0, 0), rgba=c, extra=NUT_PHYS),
        box_geom("side_px", (0.0105, 0.04375, 0.01), (0.03325, 0, 0), rgba=c, extra=NUT_PHYS),
        box_geom("side_ny", (0.03125, 0.0105, 0.01), (0, -0.03325, 0), rgba=c, extra=NUT_PHYS),
        box_geom("side_py", (0.03125, 0.0105, 0.01), (0, 0.03325, 0), rgba=c, extra=NUT_PHYS),
        box_geom("handle", HANDLE_HALF, (HANDLE_X["square_nut"], 0, 0), rgba=c, extra=NUT_PHYS),
    ])


def round_nut_xml() -> str:
    c = "0.6 0.6 0.65 1"
    q = np.pi / 4
    geoms = [
        box_geom("seg0", (0.01125, 0.0225, 0.01), (-0.04245, 0, 0), rgba=c, extra=NUT_PHYS),
        box_geom("seg1", (0.01125, 0.0225, 0.01), (0.04245, 0, 0), rgba=c, extra=NUT_PHYS),
        box_geom("seg2", (0.0225, 0.01125, 0.01), (0, -0.04245, 0), rgba=c, extra=NUT_PHYS),
        box_geom("seg3", (0.0225, 0.01125, 0.01), (0, 0.04245, 0), rgba=c, extra=NUT_PHYS),
        box_geom("seg4", (0.01125, 0.0225, 0.01), (-0.03, -0.03, 0), euler=(0, 0, q), rgba=c, extra=NUT_PHYS),
        box_geom("seg5", (0.01125, 0.0225, 0.01), (0.03, 0.03, 0), euler=(0, 0, q), rgba=c, extra=NUT_PHYS),
        box_geom("seg6", (0.0225, 0.01125, 0.01), (0.03, -0.03, 0), euler=(0, 0, q), rgba=c, extra=NUT_PHYS),
        box_geom("seg7", (0.0225, 0.01125, 0.01), (-0.03, 0.03, 0), euler=(0, 0, q), rgba=c, extra=NUT_PHYS),
        box_geom("handle", HANDLE_HALF, (HANDLE_X["round_nut"], 0, 0), rgba=c, extra=NUT_PHYS),
    ]
    return "\n".join(geoms)


class _ClearOfPegsSampler(SequentialCompositeSampler):
    """Sequential nut sampler that re-samples whole placements until every nut clears every peg:
    xy distance to the peg axis larger than the nut's horizontal radius plus the peg's radius."""

    def sample(self, fixtures=None, reference=None, on_top=True):
        for _ in range(1000):
            placed = super().sample(fixtures=fixtures, reference=reference, on_top=on_top)
            if all(np.hypot(pos[0] - xy[0], pos[1] - xy[1]) > obj.horizontal_radius + r
                   for pos, _, obj in placed.values() for _, xy, r in PEGS.values()):
                return placed
        raise RandomizationError("cannot place the nuts clear of the pegs")


@register_task
class NutAssembly_D2(KitTask):
    eval_horizon = 500
    table_offset = (0.0, 0.0, TABLE_TOP)
    composite_sampler = _ClearOfPegsSampler  # re-draws placements whose nut overlaps a peg
    placement = {  # square nut first, as robosuite samples them; see the module docstring
        "square_nut": dict(x=(-0.15, 0.15), y=(0.10, 0.25), yaw=(0.0, 2 * np.pi), z_offset=0.02),
        "round_nut": dict(x=(-0.15, 0.15), y=(-0.25, -0.10), yaw=(0.0, 2 * np.pi), z_offset=0.02),
    }
    stages = (
        Stage("grasp_square_nut", "square_nut", "square_nut_grasped", "grasp the square nut by its handle and lift it"),
        Stage("insert_square_nut", "square_peg", "square_nut_on_peg", "put the square nut down onto the square peg"),
        Stage("grasp_round_nut", "round_nut", "round_nut_grasped", "grasp the round nut by its handle and lift it"),
        Stage("insert_round_nut", "round_peg", "_check_success", "put the round nut down onto the round peg"),
    )

    def _make_objects(self):
        # bottom=-0.05 as robosuite's nut XMLs (the spawn height of TASKS.md §5), real bottom is -0.01.
        return {
            "square_nut": xml_object("square_nut", square_nut_xml(), horizontal_radius=NUT_RADIUS,
                                     bottom=-0.05, top=0.01),
            "round_nut": xml_object("round_nut", round_nut_xml(), horizontal_radius=NUT_RADIUS,
                                    bottom=-0.05, top=0.025),
        }

    def _add_fixtures(self, arena):
        import xml.etree.ElementTree as ET
        for ref, (body, (x, y), _) in PEGS.items():
            b = ET.SubElement(arena.worldbody, "body", name=body, pos=f"{x} {y} {TABLE_TOP + 0.03}")
            if ref == "square_peg":
                shape = dict(type="box", size="0.016 0.016 0.1")
                rgba = "0.75 0.6 0.2 1"
            else:
                shape = dict(type="cylinder", size="0.02 0.1")
                rgba = "0.6 0.6 0.65 1"
            ET.SubElement(b, "geom", name=f"{body}_collision", pos="0 0 0", group="0",
                          friction="1 0.005 0.0001", rgba=rgba, **shape)
            ET.SubElement(b, "geom", name=f"{body}_visual", pos="0 0 0", group="1", contype="0",
                          conaffinity="0", rgba=rgba, **shape)

    def _setup_references(self):
        super()._setup_references()
        self.fixture_body_id = {ref: self.sim.model.body_name2id(b) for ref, b in FIXTURE_BODIES.items()}

    # ---------------------------------------------------------------- poses
    def object_pose(self, name: str) -> np.ndarray:
        """4x4 world pose of a nut's root body, or of a peg ("square_peg", "round_peg")."""
        if name in FIXTURE_BODIES:
            b = self.fixture_body_id[name]
            return P.make_pose(self.sim.data.body_xpos[b], self.sim.data.body_xmat[b].reshape(3, 3))
        return super().object_pose(name)

    # ---------------------------------------------------------------- checks
    def nut_lifted(self, name: str, height: float = 0.03) -> bool:
        """Nut centre `height` above its resting height (table top + half thickness)."""
        return float(self.sim.data.body_xpos[self.obj_body_id[name]][2]) > TABLE_TOP + NUT_HALF_THICKNESS + height

    def nut_on_peg(self, name: str) -> bool:
        nut = self.sim.data.body_xpos[self.obj_body_id[name]]
        peg = self.sim.data.body_xpos[self.fixture_body_id[PEG_OF[name]]]
        grip = self.sim.data.site_xpos[self.eef_site_id]
        r_reach = 1 - np.tanh(10.0 * np.linalg.norm(grip - nut))
        return bool(abs(nut[0] - peg[0]) < ON_PEG_XY and abs(nut[1] - peg[1]) < ON_PEG_XY
                    and nut[2] < self.table_offset[2] + ON_PEG_DZ and r_reach < REACH_MAX)

    def square_nut_grasped(self) -> bool:
        return self.is_grasped("square_nut") and self.nut_lifted("square_nut")

    def round_nut_grasped(self) -> bool:
        return self.is_grasped("round_nut") and self.nut_lifted("round_nut")

    def square_nut_on_peg(self) -> bool:
        return self.nut_on_peg("square_nut")

    def round_nut_on_peg(self) -> bool:
        return self.nut_on_peg("round_nut")

    def _check_success(self) -> bool:
        return self.square_nut_on_peg() and self.round_nut_on_peg()


# ------------------------------------------------------------------------------------ scripted demo
# Top-down gripper yaws (of `top_down`) the Panda reaches without joint 7 at its limits, relative to
# the azimuth of the target seen from the robot base (joint 1 turns the whole range). Measured.
GRIP_YAW_RANGE = (-1.75, 3.25)
BASE_XY = np.array([-0.56, 0.0])
# Grip-site height above the nut's centre plane where the fingers close. The finger pads reach
# 4.5 mm below the grip site and the handle is 20 mm tall (+-10 mm about that plane). Aiming at
# +2..5 mm (the fingers then closed at +6 mm on average, up to +10 mm) the pads held only the
# handle's top 4-12 mm, and learned grasps that closed a few mm higher slid off it as they lifted.
# Aiming at -2..0 mm they close at -1..+3.5 mm: the pads cover 11-15 mm of the handle and stay
# 4-9 mm above the table (30 seeds, README "NutAssembly").
GRASP_Z = (-0.002, 0.0)
CARRY_Z = 1.02  # nut centre height while carrying: nut bottom ~6 cm above the peg tops (0.95)


def _yaw(T) -> float:
    return float(np.arctan2(T[1, 0], T[0, 0]))


def _wrap(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)


def _azimuth(p) -> float:
    """Direction of point p seen from the robot base, in the table plane."""
    return float(np.arctan2(p[1] - BASE_XY[1], p[0] - BASE_XY[0]))


def _grip_yaw(eef_T) -> float:
    """The g of `top_down(g)` closest to the eef pose, unwrapped into GRIP_YAW_RANGE (relative to
    the eef's azimuth), i.e. the way the wrist is actually turned."""
    g = float(np.arctan2(eef_T[1, 1], eef_T[0, 1]))
    az = _azimuth(eef_T[:3, 3])
    mid = az + 0.5 * sum(GRIP_YAW_RANGE)
    return mid + _wrap(g - mid)


def _grasp_rotation(grip_yaw: float, tilt: float, lean_dir: np.ndarray) -> np.ndarray:
    """Top-down gripper `top_down(grip_yaw)`, tilted by `tilt` about the finger-closing axis so
    that the approach axis leans (at the fingertips) toward the horizontal `lean_dir`.

    Measured: the Panda's finger pads separate along the grip site's x axis, i.e. along
    grip_yaw + pi/2 for `top_down(grip_yaw)`.
    """
    R = top_down(grip_yaw)
    n = R[:, 1]  # horizontal, perpendicular to the closing axis (eef x)
    sign = 1.0 if float(n @ np.append(lean_dir, 0.0)) >= 0 else -1.0
    # Rotating about eef x by a moves eef z toward -eef y.
    return R @ P.axisangle_to_mat([-sign * tilt, 0.0, 0.0])


def _plan_yaws(name: str, nut_yaw: float, az_grasp: float, az_insert: float) -> tuple[float, float]:
    """Choose the grasp gripper yaw g and the nut yaw at insertion psi.

    The fingers close along the nut's local y axis (across the handle); they close along
    g + pi/2 for `top_down(g)`, so g = nut_yaw or nut_yaw + pi;
    carrying the nut turns both by the same delta. psi must fit the peg (square: a multiple of
    pi/2; round: any), keep the handle within ~60 deg of pointing at the robot (with the handle
    beside or beyond the peg, the arm is nearly stretched at the peg), and keep the
    gripper yaw inside GRIP_YAW_RANGE at grasp and at insertion. Among those, turn the least.
    """
    if name == "square_nut":
        psis = np.arange(4) * np.pi / 2
    else:
        psis = np.deg2rad(np.arange(0, 360, 5.0))
    psis = psis[np.cos(psis) <= -0.45]  # handle toward the robot: the arm stays well inside its reach
    lo, hi = GRIP_YAW_RANGE
    best, best_cost = None, np.inf
    for s in (0.0, 1.0):
        for k in (-1, 0, 1):
            g = nut_yaw + s * np.pi + 2 * np.pi * k
            if not lo <= g - az_grasp <= hi:
                continue
            for psi in psis:
                delta = (psi - nut_yaw + np.pi) % (2 * np.pi) - np.pi
                for dd in (delta, delta - 2 * np.pi, delta + 2 * np.pi):
                    g2 = g + dd
                    if not lo + 0.1 <= g2 - az_insert <= hi - 0.1:
                        continue
                    # Handle toward the robot keeps the arm's elbow well bent at the peg.
                    cost = abs(dd) + 1.5 * (1 + np.cos(psi)) + 0.1 * abs(g - az_grasp)
                    if cost < best_cost:
                        best, best_cost = (g, nut_yaw + dd), cost
    assert best is not None
    return best


def _one_nut(d: Demonstrator, raw, name: str, stage: int, rng) -> None:
    """Stages `stage` (grasp `name`) and `stage + 1` (put it on its peg)."""
    peg = raw.object_pose(PEG_OF[name])[:3, 3]
    hx = HANDLE_X[name] + (0.006 if name == "square_nut" else 0.007) + rng.uniform(-0.003, 0.003)
    hy = rng.uniform(-0.003, 0.003)

    # Plan once: the grasp yaw g (relative to the nut's yaw, so it follows the nut if it moves)
    # and the nut's yaw psi on the peg.
    nut0 = raw.object_pose(name)
    h0 = (nut0 @ np.array([hx, hy, 0.0, 1.0]))[:2] - BASE_XY
    g, psi = _plan_yaws(name, _yaw(nut0), np.arctan2(h0[1], h0[0]), _azimuth(peg))

    def grasp_pose(z_above: float, frac: float = 1.0, g_from: float | None = None):
        """Pre-grasp/grasp pose above the handle; with frac < 1 the yaw is interpolated from g_from."""
        nut = raw.object_pose(name)
        handle = (nut @ np.array([hx, hy, 0.0, 1.0]))[:3]
        radial = handle[:2] - BASE_XY
        r = np.linalg.norm(radial)
        gg = g + _wrap(_yaw(nut) - _yaw(nut0))
        if g_from is not None:
            gg = g_from + frac * (gg - g_from)
        # Lean the fingertips away from the robot when the handle is far (extends the reach).
        tilt = frac * float(np.clip((r - 0.70) / 0.08, 0.0, 1.0)) * 0.45
        return P.make_pose(handle + [0, 0, z_above], _grasp_rotation(gg, tilt, radial / r))

    # ---- stage `stage`: connect above the handle, then the skill: descend, close, lift.
    d.label(stage, PHASE_CONNECT)
    z_above = rng.uniform(0.07, 0.09)
    start = raw.eef_pose()
    g_from = _grip_yaw(start)
    above = grasp_pose(z_above)
    path = [start[:3, 3], above[:3, 3]]
    if stage > 0 and np.linalg.norm(start[:2, 3] - above[:2, 3]) > 0.15:  # via a point nearer the robot
        path.insert(1, np.append(0.5 * (start[:2, 3] + above[:2, 3]) - [0.08, 0], 1.0))
    seg = np.array([np.linalg.norm(q - p) for p, q in zip(path[:-1], path[1:])])
    n = int(max(len(seg), np.ceil(abs(g - g_from) / 0.5), np.ceil(seg.sum() / 0.12)))
    speed = rng.uniform(0.7, 1.0)
    for i in range(1, n + 1):  # turn the gripper in steps so it turns the planned way round
        frac = i / n
        t = frac * seg.sum()
        k = min(int(np.searchsorted(np.cumsum(seg), t)), len(seg) - 1)
        u = (t - np.concatenate([[0], np.cumsum(seg)])[k]) / max(seg[k], 1e-9)
        pos = path[k] + np.clip(u, 0, 1) * (path[k + 1] - path[k])
        wp = P.make_pose(pos, grasp_pose(z_above, frac, g_from)[:3, :3])
        d.move(wp, GRIPPER_OPEN, max_steps=60, speed=speed, pos_tol=0.02 if i < n else 0.01,
               rot_tol=0.2 if i < n else 0.1)
    d.move(grasp_pose(z_above), max_steps=60, speed=0.6)  # refine on the settled nut
    d.label(stage, PHASE_SKILL)
    grasp = grasp_pose(rng.uniform(*GRASP_Z))
    d.move(grasp, speed=0.4, max_steps=80)
    d.actuate(GRIPPER_CLOSED, steps=10)
    lift = grasp.copy()
    lift[2, 3] = CARRY_Z + rng.uniform(0.0, 0.02)
    d.move(lift, speed=0.6, max_steps=80, pos_tol=0.01)
    if not d.failed and not getattr(raw, f"{name}_grasped")():
        d.failed = f"stage {stage}: {name} not grasped"

    # ---- stage `stage + 1`: carry the ring centre above the peg, lower it onto the peg, release.
    R_nut = P.axisangle_to_mat([0.0, 0.0, psi])

    def eef_for_nut_at(point):
        grip = P.pose_inv(raw.object_pose(name)) @ raw.eef_pose()
        return P.make_pose(point, R_nut) @ grip

    d.label(stage + 1, PHASE_CONNECT)
    top = peg + np.array([rng.uniform(-0.002, 0.002), rng.uniform(-0.002, 0.002), 0.0])
    top[2] = CARRY_Z
    start_yaw = _yaw(nut0) + _wrap(_yaw(raw.object_pose(name)) - _yaw(nut0))  # same branch as psi
    start_xy = raw.object_pose(name)[:2, 3]
    n = int(max(2, np.ceil(abs(psi - start_yaw) / 0.5)))
    for i in range(1, n + 1):  # turn the nut in steps so every rotation goes the planned way
        a = i / n
        wp = np.append(start_xy + a * (top[:2] - start_xy), CARRY_Z)
        R_wp = P.axisangle_to_mat([0.0, 0.0, start_yaw + a * (psi - start_yaw)])
        grip = P.pose_inv(raw.object_pose(name)) @ raw.eef_pose()
        d.move(P.make_pose(wp, R_wp) @ grip, max_steps=60, speed=rng.uniform(0.6, 0.9),
               pos_tol=0.02 if i < n else 0.01, rot_tol=0.2 if i < n else 0.08)
    d.track(lambda: eef_for_nut_at(top), max_steps=60, speed=0.4)
    d.label(stage + 1, PHASE_SKILL)
    # Lower the ring over the peg (peg top 0.95), then let go: the nut slides down to the table.
    nut_z = lambda: float(raw.object_pose(name)[2, 3])  # noqa: E731
    # A carrot 1 cm below the nut keeps the xy alignment dominant in the (norm-capped) action.
    # Release once the ring is 2-3 cm down the peg: lower would stretch the arm to its limits.
    release_z = rng.uniform(0.944, 0.95)
    d.track(lambda: eef_for_nut_at(np.array([top[0], top[1], max(nut_z() - 0.01, 0.86)])),
            max_steps=80, until=lambda: nut_z() < release_z)
    d.actuate(GRIPPER_OPEN, steps=8)
    up = raw.eef_pose()
    up[:3, 3] += [-rng.uniform(0.01, 0.03), 0.0, rng.uniform(0.08, 0.1)]  # up (and a little back)
    # The arm is near its reach here, so the move ends once the gripper is well clear above.
    d.move(up, max_steps=40, speed=0.8, pos_tol=0.01, rot_tol=0.2,
           until=lambda: raw.eef_pose()[2, 3] > up[2, 3] - 0.02)
    d.hold(3)
    if not d.failed and not raw.nut_on_peg(name):
        d.failed = f"stage {stage + 1}: {name} not on its peg"


def scripted_demo(env, seed: int, rng: np.random.Generator, record: bool = True) -> Demonstrator:
    """Square nut onto the square peg, then the round nut onto the round peg (privileged poses)."""
    d = Demonstrator(env, rng, record=record).start(seed)
    raw = env.raw
    _one_nut(d, raw, "square_nut", 0, rng)
    _one_nut(d, raw, "round_nut", 2, rng)
    return d
