"""ThreePieceAssembly_D2 (TASKS.md §2): put piece 1 into the base's hole, then piece 2 onto piece 1.

Stages (Tab. VI, 4): 1. grasp piece 1 (reference: piece 1); 2. insert it into the base (reference:
base); 3. grasp piece 2 (reference: piece 2); 4. put it onto piece 1 (reference: piece 1).

All three parts are red-wood box patterns, as in mimicgen's BoxPatternObject: each body's origin is
the centre of its bounding box. Adjacent unit cubes are merged into bigger boxes (same shape and
mass, fewer contacts):
- base: a 5x5 frame of 0.038 cubes with the middle 3x3 removed = 2 bars along x + 2 bars along y;
- piece 1 (0.034 cubes): a 3x3 bottom plate + a fin (middle x row, two layers) running along local y;
- piece 2 (0.04 cubes): two legs (x = ±0.04, two layers), a full 3x3 plate, a centre knob cube. The
  legs leave a 0.04-wide slot along local y that slides over piece 1's fin.
"""
from __future__ import annotations

import numpy as np

from .. import pose as P
from ..data import PHASE_CONNECT, PHASE_SKILL
from ..env import KitTask, Stage, box_geom, register_task, xml_object
from ..scripted import GRIPPER_CLOSED, GRIPPER_OPEN, Demonstrator, pose_action, top_down, wrap_yaw_near

DEG = np.pi / 180
BASE_UNIT, PIECE_1_UNIT, PIECE_2_UNIT = 0.019, 0.017, 0.02  # cube half-sizes
BASE_HALF = np.array([5, 5, 1]) * BASE_UNIT  # bounding-box half-sizes
PIECE_1_HALF = np.array([3, 3, 3]) * PIECE_1_UNIT
PIECE_2_HALF = np.array([3, 3, 4]) * PIECE_2_UNIT
XY_THRESH = 0.02  # step-1 and task xy thresholds (mimicgen _check_first_piece_is_assembled etc.)
Z_THRESH = 0.02
PIECE_2_Z_ABOVE_BASE = 0.08  # task check: |z piece 2 - (z base + 0.08)| < 0.02
WOOD = ('density="{d}" friction="1 0.005 0.0001"')
RGBA = {"base": "0.55 0.2 0.12 1", "piece_1": "0.65 0.24 0.14 1", "piece_2": "0.75 0.3 0.18 1"}

# Local grasp points (body frame). Piece 1 is held across its fin (fingers close along local x),
# piece 2 across its knob cube (a 4 cm cube; the 12 cm plate does not fit the ~8 cm opening).
FIN_GRASP_LOCAL = np.array([0.0, 0.0, 0.030])  # fin spans local z -0.017..0.051
KNOB_GRASP_LOCAL = np.array([0.0, 0.0, 0.062])  # knob spans local z 0.04..0.08


def base_xml() -> str:
    u, d = BASE_UNIT, WOOD.format(d=10000)
    c = RGBA["base"]
    return "\n".join([  # 16 cubes of the frame merged into 4 bars (the hole is 6u x 6u = 0.114)
        box_geom("bar_py", (5 * u, u, u), (0, 4 * u, 0), rgba=c, extra=d),
        box_geom("bar_ny", (5 * u, u, u), (0, -4 * u, 0), rgba=c, extra=d),
        box_geom("bar_px", (u, 3 * u, u), (4 * u, 0, 0), rgba=c, extra=d),
        box_geom("bar_nx", (u, 3 * u, u), (-4 * u, 0, 0), rgba=c, extra=d),
    ])


def piece_1_xml() -> str:
    u, d = PIECE_1_UNIT, WOOD.format(d=100)
    c = RGBA["piece_1"]
    return "\n".join([
        box_geom("plate", (3 * u, 3 * u, u), (0, 0, -2 * u), rgba=c, extra=d),  # 9 cubes, bottom layer
        box_geom("fin", (u, 3 * u, 2 * u), (0, 0, u), rgba=c, extra=d),  # 6 cubes, middle x row, 2 layers
    ])


def piece_2_xml() -> str:
    u, d = PIECE_2_UNIT, WOOD.format(d=100)
    c = RGBA["piece_2"]
    return "\n".join([
        box_geom("leg_px", (u, 3 * u, 2 * u), (2 * u, 0, -2 * u), rgba=c, extra=d),  # 6 cubes each
        box_geom("leg_nx", (u, 3 * u, 2 * u), (-2 * u, 0, -2 * u), rgba=c, extra=d),
        box_geom("plate", (3 * u, 3 * u, u), (0, 0, u), rgba=c, extra=d),  # 9 cubes, third layer
        box_geom("knob", (u, u, u), (0, 0, 3 * u), rgba=c, extra=d),  # 1 cube on top
    ])


def _yaw(T) -> float:
    """Yaw of a frame's x axis. For the end-effector this is the finger-closing direction."""
    return float(np.arctan2(T[1, 0], T[0, 0]))


def _closing_along(phi: float) -> np.ndarray:
    """Top-down gripper rotation whose fingers close along world direction `phi`.

    On robosuite 1.5.2's Panda the finger pads sit on the grip site's x axis (measured), so the
    closing direction is top_down's `yaw` + π/2; at the start the fingers close along world y.
    """
    return top_down(phi - np.pi / 2)


@register_task
class ThreePieceAssembly_D2(KitTask):
    eval_horizon = 500
    placement = {  # TASKS.md §2, D2 row (base first, then piece 1, piece 2; z_offset 0.001)
        "base": dict(x=(-0.22, 0.22), y=(-0.22, 0.22), yaw=(-45 * DEG, 45 * DEG), z_offset=0.001),
        "piece_1": dict(x=(-0.22, 0.22), y=(-0.22, 0.22), yaw=(0.0, 180 * DEG), z_offset=0.001),
        "piece_2": dict(x=(-0.22, 0.22), y=(-0.22, 0.22), yaw=(0.0, 180 * DEG), z_offset=0.001),
    }
    # Piece 2's square knob can be grasped from any side, and piece 1's square plate fits the base's
    # square hole every 90° (TASKS.md §2, Fit). Our scripted demos use one side and one turn, but
    # user-supplied source demos need not: 02_train_hsp.py folds their labels with these periods.
    grasp_yaw_period = {2: np.pi / 2}
    place_yaw_period = {1: np.pi / 2}
    stages = (
        Stage("grasp_piece_1", "piece_1", "piece_1_grasped", "grasp piece 1 by its fin and lift it"),
        Stage("insert_piece_1", "base", "piece_1_assembled", "put piece 1 into the base's hole and let go"),
        Stage("grasp_piece_2", "piece_2", "piece_2_grasped", "grasp piece 2 by its knob and lift it"),
        Stage("insert_piece_2", "piece_1", "_check_success", "put piece 2's slot over piece 1's fin and let go"),
    )

    def _make_objects(self):
        def radius(half):
            return float(np.hypot(half[0], half[1]))
        return {
            "base": xml_object("base", base_xml(), radius(BASE_HALF), -BASE_HALF[2], BASE_HALF[2]),
            "piece_1": xml_object("piece_1", piece_1_xml(), radius(PIECE_1_HALF), -PIECE_1_HALF[2], PIECE_1_HALF[2]),
            "piece_2": xml_object("piece_2", piece_2_xml(), radius(PIECE_2_HALF), -PIECE_2_HALF[2], PIECE_2_HALF[2]),
        }

    def _add_fixtures(self, arena):
        # mimicgen swaps agentview and agentview_full so that agentview shows the whole table.
        arena.set_camera("agentview", pos=[0.753, 0.0, 1.519], quat=[0.643, 0.294, 0.294, 0.643])
        arena.set_camera("agentview_full", pos=[0.5, 0.0, 1.35], quat=[0.653, 0.271, 0.271, 0.653])

    # ---------------------------------------------------------------- checks
    def _xy_dist(self, a: str, b: str) -> float:
        pa = self.sim.data.body_xpos[self.obj_body_id[a]]
        pb = self.sim.data.body_xpos[self.obj_body_id[b]]
        return float(np.linalg.norm(pa[:2] - pb[:2]))

    def piece_1_grasped(self) -> bool:
        return self.is_grasped("piece_1") and self.lifted("piece_1", 0.03)

    def piece_2_grasped(self) -> bool:
        return self.is_grasped("piece_2") and self.lifted("piece_2", 0.03)

    def piece_1_assembled(self) -> bool:
        """Step 1 of TASKS.md: piece 1 within 0.02 (xy) of the base and not grasped."""
        return self._xy_dist("piece_1", "base") < XY_THRESH and not self.is_grasped("piece_1")

    def _check_success(self) -> bool:
        if not self.piece_1_assembled():
            return False
        z2 = float(self.sim.data.body_xpos[self.obj_body_id["piece_2"]][2])
        zb = float(self.sim.data.body_xpos[self.obj_body_id["base"]][2])
        return bool(self._xy_dist("piece_2", "piece_1") < XY_THRESH
                    and abs(z2 - (zb + PIECE_2_Z_ABOVE_BASE)) < Z_THRESH
                    and not self.is_grasped("piece_2"))


# ------------------------------------------------------------------------------------ scripted demo
def _eef_for_object_at(raw, name: str, T_obj_target) -> np.ndarray:
    """End-effector pose that puts object `name` at T_obj_target, using the grasp measured now."""
    grip = P.pose_inv(raw.object_pose(name)) @ raw.eef_pose()
    return T_obj_target @ grip


HIGH_CARRY_BOTTOM_Z = 0.985  # lowest point of a piece carried over piece 2 (its knob top is at 0.96)
LOW_CARRY_BOTTOM_Z = 0.89  # ... carried over nothing taller than the base frame (top 0.838)
P2_CARRY_BOTTOM_Z = 0.925  # piece 2 carried onto piece 1 (fin top at 0.902)
TILT_MAX = 22 * DEG
FAR_TILT = (0.66, 0.80)  # radial distance from the robot base where the outward tilt starts / is full
NEAR_TILT = (0.50, 0.38)  # ... where the inward tilt starts / is full (-NEAR_TILT_MAX)
NEAR_TILT_MAX = 15 * DEG
IN_PLANE_TILT_MAX = 8 * DEG
P1_CLOSING_IN_BASE = np.pi / 2  # finger-closing direction in the reference's frame at each insertion
P2_CLOSING_IN_P1 = 0.0


def _robot_xy(raw) -> np.ndarray:
    return np.array(raw.sim.data.body_xpos[raw.sim.model.body_name2id(raw.robots[0].robot_model.root_body)][:2])


def _wanted_tilt(raw, xy) -> np.ndarray:
    """World rotation vector by which a top-down gripper at `xy` should lean (0 in mid-range).

    Far from the base (the table's far corners are ~0.81 m away) a vertical gripper needs an almost
    straight elbow; the arm then hits its joint limit and the OSC cannot bend it back out of that
    near-singular posture: leaning the fingertips outward pulls the wrist toward the base. Close to
    the base a vertical gripper puts the forearm upright, where the wrist joints 5 and 7 align and
    the OSC drifts: leaning the fingertips inward avoids it.
    """
    radial = np.asarray(xy, float) - _robot_xy(raw)
    r = float(np.linalg.norm(radial))
    out = TILT_MAX * float(np.clip((r - FAR_TILT[0]) / (FAR_TILT[1] - FAR_TILT[0]), 0.0, 1.0))
    inward = NEAR_TILT_MAX * float(np.clip((NEAR_TILT[0] - r) / (NEAR_TILT[0] - NEAR_TILT[1]), 0.0, 1.0))
    axis = np.cross([0.0, 0.0, 1.0], np.append(radial / r, 0.0))
    return -(out - inward) * axis  # negative angle about z x radial turns the eef z (down) outward


def _rotz(yaw: float) -> np.ndarray:
    return P.axisangle_to_mat([0.0, 0.0, yaw])


def _grasp_tilt(raw, pick_xy, pick_yaw: float, place_xy, place_yaw: float) -> np.ndarray:
    """Tilt (world rotation at the pick) that serves both the pick and the place pose.

    The tilt is fixed in the object's frame once grasped, so the wanted tilts at pick and place are
    expressed in the object frame and added (limited to TILT_MAX). Its component that tips the
    fingers within their closing plane (object local y; one finger lower than the other) is capped
    so a finger never lands on the fin / knob edge; pitch about the closing axis (local x) is free.
    """
    g = _rotz(-pick_yaw) @ _wanted_tilt(raw, pick_xy) + _rotz(-place_yaw) @ _wanted_tilt(raw, place_xy)
    g[2] = 0.0
    n = np.linalg.norm(g)
    if n > TILT_MAX:
        g *= TILT_MAX / n
    g[1] = np.clip(g[1], -IN_PLANE_TILT_MAX, IN_PLANE_TILT_MAX)
    return P.axisangle_to_mat(_rotz(pick_yaw) @ g)


def _wrap(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)


def _place_yaw(ref_yaw: float, grip_yaw: float, period: float, closing_in_ref: float) -> float:
    """Symmetric placement yaw (ref yaw + k·period) for a held object, at one convention.

    `grip_yaw` is the finger-closing direction minus the object yaw. Of the placements the symmetry
    allows, it takes the one whose closing direction in the reference's frame is nearest
    `closing_in_ref`, whatever the wrist's yaw now: source demos that insert at different turns
    about the reference teach the generated data several initiation poses for one skill (Coffee's
    two pod yaws cost 11 points of HSP-Priv)."""
    k = np.round(_wrap(closing_in_ref - grip_yaw) / period)
    return ref_yaw + k * period


def _pick(d: Demonstrator, raw, stage: int, name: str, grasp_local, half_z: float, carry_bottom_z: float,
          ref: str, place_period: float, closing_in_ref: float, rng) -> bool:
    """Connect above `name`, then the skill: descend, close on the grasp point, lift clear of the scene."""
    obj = raw.object_pose(name)
    point = (obj @ np.append(grasp_local + [0, rng.uniform(-0.003, 0.003), 0], 1.0))[:3]
    # Fingers close along the object's local +x (across the fin / the knob), never its -x or (knob)
    # its y: one grasp per skill in the object's frame, so that generated demos share it. The
    # pieces lie at yaw 0°..180° (TASKS.md §2), so the closing direction stays within 90° of the
    # start's (world y) and the wrist's comfortable range.
    closing = wrap_yaw_near(_yaw(obj), ref=np.pi / 2, period=2 * np.pi)
    # The grasp may lean (fixed in the object frame) so that both the pick and the later place
    # (on `ref`, with the yaw _place will choose) keep the arm away from its awkward postures.
    ref_T = raw.object_pose(ref)
    place_yaw = _place_yaw(_yaw(ref_T), closing - _yaw(obj), place_period, closing_in_ref)
    R = _grasp_tilt(raw, point[:2], _yaw(obj), ref_T[:2, 3], place_yaw) @ _closing_along(closing)
    above = P.make_pose(point + [0, 0, rng.uniform(0.07, 0.09)], R)
    grasp = P.make_pose(point + [0, 0, rng.uniform(-0.003, 0.002)], R)

    d.label(stage, PHASE_CONNECT)
    # Turn the wrist first, in place, then translate: turning while reaching lets the OSC fold the
    # arm into postures from which targets near the robot base are out of reach.
    d.move(P.make_pose(raw.eef_pose()[:3, 3], R), GRIPPER_OPEN, max_steps=100, pos_tol=0.03, rot_tol=0.1,
           rot_speed=0.4)
    d.move(above, max_steps=150, speed=rng.uniform(0.7, 1.0), pos_tol=0.005, rot_tol=0.05)
    d.label(stage, PHASE_SKILL)
    d.move(grasp, speed=0.5, max_steps=80)
    d.actuate(GRIPPER_CLOSED, steps=10)
    # Lift until the piece's bottom clears everything on the table (grasp point to bottom: half_z + local z).
    lift_z = carry_bottom_z + half_z + grasp_local[2] + rng.uniform(0.0, 0.015)
    lift = P.make_pose([grasp[0, 3], grasp[1, 3], lift_z], R)
    d.move(lift, speed=0.6, max_steps=80, pos_tol=0.008)
    if not d.failed and not raw.stage_done()[stage]:
        d.failed = f"stage {stage}: {name} not grasped"
    return not d.failed


def _servo(d: Demonstrator, raw, target_fn, max_steps: int, speed: float, until=None, tol: float = 0.003,
           ki: float = 0.3, limit: float = 0.02) -> bool:
    """Closed-loop servo to a target recomputed every step (from measured object poses), with an
    integral term on position: the OSC has none, and under load or contact it settles several mm
    short of its goal. Ends when within `tol` of the (unbiased) target, or when `until()` holds."""
    if d.failed:
        return False
    bias = np.zeros(3)
    for _ in range(max_steps):
        if until is not None and until():
            return True
        T, eef = target_fn(), raw.eef_pose()
        err = T[:3, 3] - eef[:3, 3]
        if until is None and np.linalg.norm(err) < tol:
            return True
        bias = np.clip(bias + ki * err, -limit, limit)
        goal = T.copy()
        goal[:3, 3] += bias
        d.step(pose_action(eef, goal, d.gripper, max_pos=speed))
    if until is not None and until():
        return True
    d.failed = f"stage {d.stage}: servo timed out"
    return False


def _place(d: Demonstrator, raw, stage: int, name: str, ref: str, half_z: float, yaw_period: float,
           closing_in_ref: float, seat_offset: float, engage: float, carry_bottom_z: float, rng, done) -> bool:
    """Connect: carry `name` above `ref` (high, then down to a hover pose) with a matching yaw;
    skill: lower it closed-loop, release, retreat.

    The target keeps `name` centred on `ref` (xy) with yaw = ref yaw + k·yaw_period (k chosen so the
    fingers close along `closing_in_ref` in ref's frame) and its centre `seat_offset` above ref's
    centre when seated. Below `engage` above the seated height the piece is inside the hole /
    around the fin.
    """
    ref_T = raw.object_pose(ref)
    obj = raw.object_pose(name)
    grip = P.pose_inv(obj) @ raw.eef_pose()
    grip_yaw = float(np.arctan2(grip[1, 0], grip[0, 0]))  # finger-closing direction in the object frame
    target_yaw = _place_yaw(_yaw(ref_T), grip_yaw, yaw_period, closing_in_ref)

    def obj_target(dz=None, z=None):
        r = raw.object_pose(ref)
        pos = r[:3, 3] + [0, 0, seat_offset + (dz or 0.0)]
        if z is not None:
            pos[2] = z
        return P.make_pose(pos, P.axisangle_to_mat([0.0, 0.0, target_yaw + (_yaw(r) - _yaw(ref_T))]))

    d.label(stage, PHASE_CONNECT)
    carry_z = max(raw.object_pose(name)[2, 3], carry_bottom_z + half_z)
    d.move(_eef_for_object_at(raw, name, obj_target(z=carry_z)), max_steps=180,
           speed=rng.uniform(0.5, 0.7), rot_speed=0.6, pos_tol=0.01, rot_tol=0.05)
    hover = engage + rng.uniform(0.03, 0.045)
    d.move(_eef_for_object_at(raw, name, obj_target(hover)), max_steps=80, speed=0.5, pos_tol=0.005,
           rot_tol=0.04)
    d.label(stage, PHASE_SKILL)
    # Settle above the target closed-loop (object pose measured every step), then lower slowly.
    # The settle never commands the piece back up: the OSC overshoots the settle height by up to
    # 1.5 cm on the way down, and climbing back made half the source demos go down, up, then down
    # again, which a BC skill cannot tell apart from going down (it looped at the turn-around).
    lowest_z = np.inf

    def settle_target():
        nonlocal lowest_z
        T = _eef_for_object_at(raw, name, obj_target(engage + 0.015))
        lowest_z = min(lowest_z, raw.eef_pose()[2, 3])
        T[2, 3] = min(T[2, 3], lowest_z)
        return T
    _servo(d, raw, settle_target, max_steps=60, speed=0.25)
    seated = lambda: raw.object_pose(name)[2, 3] < raw.object_pose(ref)[2, 3] + seat_offset + 0.006
    _servo(d, raw, lambda: _eef_for_object_at(raw, name, obj_target(-0.01)), max_steps=80, speed=0.12,
           until=seated, ki=0.1)
    d.actuate(GRIPPER_OPEN, steps=8)
    up = raw.eef_pose()
    up[2, 3] += rng.uniform(0.08, 0.10)
    d.move(up, speed=0.6, max_steps=60, pos_tol=0.01, rot_tol=0.2)
    if not d.failed and not done():
        d.failed = f"stage {stage}: {name} not placed on {ref}"
    return not d.failed


def _segment_distance(p, a, b) -> float:
    """Distance from point p to the segment a-b (2-D)."""
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


def scripted_demo(env, seed: int, rng: np.random.Generator, record: bool = True) -> Demonstrator:
    """Pick piece 1 by its fin and drop it into the base; pick piece 2 by its knob and seat it on
    piece 1 (slot over fin)."""
    d = Demonstrator(env, rng, record=record).start(seed)
    raw = env.raw
    # Seated heights relative to the reference's centre (bounding-box centres, resting on contact):
    # piece 1 stands on the table inside the hole; piece 2 stands on piece 1's plate / the frame.
    p1_on_base = -BASE_HALF[2] + PIECE_1_HALF[2]
    p2_on_p1 = -PIECE_1_HALF[2] + 2 * PIECE_1_UNIT + PIECE_2_HALF[2]
    h1, h2 = PIECE_1_HALF[2], PIECE_2_HALF[2]
    # Piece 1 goes over piece 2 only when piece 2 stands near its straight path to the base.
    poses = raw.object_poses()
    clear = _segment_distance(poses["piece_2"][:2, 3], poses["piece_1"][:2, 3], poses["base"][:2, 3])
    p1_carry = LOW_CARRY_BOTTOM_Z if clear > 0.18 else HIGH_CARRY_BOTTOM_Z
    # One convention per skill (see _pick and _place_yaw). Piece 1 goes in with the fingers closing
    # along the base's local y, so that it sits at +90° in the base (world closing 45°..135° over the
    # base's ±45°); piece 2 then goes on at piece 1's own yaw (the fingers close along both pieces' x).
    _pick(d, raw, 0, "piece_1", FIN_GRASP_LOCAL, h1, p1_carry, "base", np.pi / 2, P1_CLOSING_IN_BASE, rng)
    _place(d, raw, 1, "piece_1", "base", h1, np.pi / 2, P1_CLOSING_IN_BASE, p1_on_base, 2 * BASE_UNIT, p1_carry,
           rng, raw.piece_1_assembled)
    _pick(d, raw, 2, "piece_2", KNOB_GRASP_LOCAL, h2, P2_CARRY_BOTTOM_Z, "piece_1", np.pi, P2_CLOSING_IN_P1, rng)
    _place(d, raw, 3, "piece_2", "piece_1", h2, np.pi, P2_CLOSING_IN_P1, p2_on_p1, 4 * PIECE_1_UNIT,
           P2_CARRY_BOTTOM_Z, rng, raw._check_success)
    d.hold(3)
    if not d.failed and not raw._check_success():
        d.failed = "stage 3: task not successful at the end"
    return d
