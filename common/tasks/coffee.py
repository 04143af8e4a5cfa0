"""Coffee_D2 (TASKS.md §3): put the coffee pod into the machine's pod holder and close the lid.

Stages (Tab. VI): 1. grasp the pod (reference: pod); 2. insert it and close the lid (reference:
machine).

The machine is one free body (origin at its bounding-box centre, half-size MACHINE_HALF_SIZE) with
the lid as a hinged child body (joint "lid_hinge", about machine x at the lid's back edge, range
[0, 120°], 0 = closed). Meshes are replaced by primitives (TASKS.md §6): body = box plus a ridge
cylinder, lid and base plate = boxes, pod = a tapered stack of three cylinders plus a 3 mm rim
(radius 0.0205 → 0.0225, rim 0.0243, total height 0.0462: the measured taper of coffee_pod.stl, so
the 0.7 mm rim clearance to the 0.025 holder wall is kept). The holder is a ring of 64 boxes with a
floor disc, as in mimicgen.

`machine_body_xml(with_cup)`, `pod_body_xml()` and the size constants below are shared with
CoffeePreparation_D2; keep their signatures stable.
"""
from __future__ import annotations

import numpy as np

from .. import pose as P
from ..data import PHASE_CONNECT, PHASE_SKILL
from ..env import KitTask, Stage, box_geom, register_task, xml_object
from ..scripted import GRIPPER_CLOSED, GRIPPER_OPEN, Demonstrator, top_down

DEG = np.pi / 180

# ---------------------------------------------------------------- sizes (machine frame, metres)
MACHINE_HALF_SIZE = np.array([0.0865, 0.1505, 0.1105])  # bounding box; origin 0.1105 above the table
MACHINE_HORIZONTAL_RADIUS = float(np.hypot(MACHINE_HALF_SIZE[0], MACHINE_HALF_SIZE[1]))
POD_RADIUS = 0.0243  # rim radius (widest part)
POD_HALF_HEIGHT = 0.0231
HOLDER_LOCAL = np.array([0.0, 0.1061, 0.0635])  # pod-holder centre in the machine frame
HOLDER_INNER_RADIUS, HOLDER_OUTER_RADIUS, HOLDER_HALF_HEIGHT = 0.025, 0.0295, 0.028
HOLDER_FLOOR_TOP = -0.016  # floor top, relative to the holder centre
LID_LOCAL = np.array([0.0, 0.1045, 0.106])  # lid body origin (closed) in the machine frame
LID_HALF_SIZE = np.array([0.0295, 0.044, 0.0095])
HINGE_LOCAL = np.array([0.0, 0.06, 0.106])  # hinge axis (parallel to machine x) in the machine frame
LID_OPEN_ANGLE = 120 * DEG  # reset value = upper joint limit
LID_CLOSED_ANGLE = 15 * DEG  # success: hinge below this
POD_XY_TOL = HOLDER_OUTER_RADIUS - POD_RADIUS  # 0.0052
CUP_LOCAL = np.array([0.0, 0.1061, -0.0755])

_BODY_PHYS = 'friction="0.95 0.3 0.1"'
_POD_PHYS = 'density="100" friction="1 1 1" condim="4" solref="0.001 1" solimp="0.998 0.998 0.001"'


def _cyl(name, radius, half_h, pos, rgba, extra="", euler=None) -> str:
    rot = f' euler="{euler[0]:.6g} {euler[1]:.6g} {euler[2]:.6g}"' if euler is not None else ""
    return (f'<geom name="{name}" type="cylinder" size="{radius:.6g} {half_h:.6g}" '
            f'pos="{pos[0]:.6g} {pos[1]:.6g} {pos[2]:.6g}"{rot} rgba="{rgba}" group="0" {extra}/>')


def _ring(prefix, center, r_in, r_out, half_h, n, rgba, extra) -> list[str]:
    """A hollow cylinder (axis z) of n boxes; adjacent boxes touch at the outer radius."""
    r_mid, half_t = 0.5 * (r_in + r_out), 0.5 * (r_out - r_in)
    half_w = np.pi * r_out / n
    out = []
    for i in range(n):
        a = 2 * np.pi * i / n
        pos = np.asarray(center) + [r_mid * np.cos(a), r_mid * np.sin(a), 0.0]
        out.append(box_geom(f"{prefix}{i}", (half_t, half_w, half_h), pos, rgba=rgba, euler=(0, 0, a), extra=extra))
    return out


def machine_body_xml(with_cup: bool = True) -> str:
    """Body snippet (for `xml_object`) of the coffee machine in its own frame, with the hinged lid.

    Child body "lid" (origin at the closed lid's centre) carries the hinge joint "lid_hinge"
    (axis machine +x, positive = opening). `with_cup` adds Coffee's decorative cup on the base plate.
    """
    dark, red, grey = "0.15 0.15 0.17 1", "0.8 0.1 0.1 1", "0.5 0.5 0.52 1"
    g = [
        # Body: 0.173 x 0.201 x 0.200 box, back at y=-0.1505, bottom on the table; 6.31 kg with the ridge.
        box_geom("body", (0.0865, 0.1005, 0.1), (0, -0.05, -0.0105), rgba=dark, extra=f'mass="5.83" {_BODY_PHYS}'),
        # Ridge along y on top (top at the bounding-box top); stops short of the front so the
        # open lid never rests on it.
        _cyl("ridge", 0.03, 0.085, (0, -0.055, 0.0805), dark, f'density="1000" {_BODY_PHYS}', euler=(np.pi / 2, 0, 0)),
        box_geom("base_plate", (0.042, 0.05, 0.005), (0, 0.1005, -0.1055), rgba=dark, extra='density="1000"'),
        box_geom("bracket", (0.01, 0.013, 0.005), (0, 0.0635, 0.0865), rgba=red, extra='density="1000"'),
        _cyl("holder_floor", 0.027, 0.005, HOLDER_LOCAL + [0, 0, HOLDER_FLOOR_TOP - 0.005], red, 'density="1000"'),
    ]
    g += _ring("holder", HOLDER_LOCAL, HOLDER_INNER_RADIUS, HOLDER_OUTER_RADIUS, HOLDER_HALF_HEIGHT, 64, red,
               'density="1000"')
    if with_cup:
        white = "0.9 0.9 0.88 1"
        g += _ring("cup", CUP_LOCAL, 0.025, 0.03, 0.025, 64, white, 'density="1000"')
        g.append(_cyl("cup_floor", 0.025, 0.002, CUP_LOCAL + [0, 0, -0.023], white, 'density="1000"'))
        # Handle: a half ring of boxes in the machine x-z plane on the cup's +x side.
        for i in range(7):
            a = -np.pi / 2 + np.pi * i / 6
            pos = CUP_LOCAL + [0.03 + 0.012 * np.cos(a), 0.0, 0.012 * np.sin(a)]
            g.append(box_geom(f"cup_handle{i}", (0.0025, 0.004, 0.0035), pos, rgba=white, euler=(0, -a, 0),
                              extra='density="1000"'))
    hinge = HINGE_LOCAL - LID_LOCAL
    lid = box_geom("lid_plate", LID_HALF_SIZE, (0, 0, 0), rgba=dark, extra=f'mass="0.091" {_BODY_PHYS}')
    g.append(
        f'<body name="lid" pos="{LID_LOCAL[0]:.6g} {LID_LOCAL[1]:.6g} {LID_LOCAL[2]:.6g}">\n'
        f'  <joint name="lid_hinge" type="hinge" axis="1 0 0" pos="{hinge[0]:.6g} {hinge[1]:.6g} {hinge[2]:.6g}" '
        f'limited="true" range="0 {LID_OPEN_ANGLE:.6f}" damping="0.005"/>\n'
        f'  {lid}\n'
        f'</body>')
    return "\n".join(g)


def pod_body_xml() -> str:
    """Body snippet of the coffee pod: tapered cup (three cylinders) with a 3 mm rim on top."""
    brown, gold = "0.45 0.28 0.12 1", "0.85 0.7 0.3 1"
    z0, h = -POD_HALF_HEIGHT, 0.0144  # three sections of 14.4 mm, then the rim (3 mm)
    g = [_cyl(f"section{i}", r, h / 2, (0, 0, z0 + h * (i + 0.5)), brown, _POD_PHYS)
         for i, r in enumerate((0.0205, 0.0215, 0.0225))]
    g.append(_cyl("rim", POD_RADIUS, 0.0015, (0, 0, POD_HALF_HEIGHT - 0.0015), gold, _POD_PHYS))
    return "\n".join(g)


def make_machine(name: str = "machine", with_cup: bool = True):
    """The machine as one free robosuite object with its hinged lid (KitTask places objects by
    their free joint, whatever the joint order)."""
    return xml_object(name, machine_body_xml(with_cup), horizontal_radius=MACHINE_HORIZONTAL_RADIUS,
                      bottom=-MACHINE_HALF_SIZE[2], top=MACHINE_HALF_SIZE[2])


def make_pod(name: str = "pod"):
    return xml_object(name, pod_body_xml(), horizontal_radius=POD_RADIUS, bottom=-POD_HALF_HEIGHT,
                      top=POD_HALF_HEIGHT)


class CoffeeMixin:
    """Machine/pod checks shared with CoffeePreparation (needs objects "machine" and "pod")."""

    machine_name, pod_name = "machine", "pod"

    def _lid_qpos_addr(self) -> int:
        j = self.sim.model.joint_name2id(f"{self.machine_name}_lid_hinge")
        return int(self.sim.model.jnt_qposadr[j])

    def lid_angle(self) -> float:
        return float(self.sim.data.qpos[self._lid_qpos_addr()])

    def set_lid_angle(self, angle: float) -> None:
        self.sim.data.qpos[self._lid_qpos_addr()] = angle
        j = self.sim.model.joint_name2id(f"{self.machine_name}_lid_hinge")
        self.sim.data.qvel[self.sim.model.jnt_dofadr[j]] = 0.0

    def machine_to_world(self, local) -> np.ndarray:
        return (self.object_pose(self.machine_name) @ np.append(np.asarray(local, float), 1.0))[:3]

    def holder_center(self) -> np.ndarray:
        return self.machine_to_world(HOLDER_LOCAL)

    def lid_z(self) -> float:
        return float(self.sim.data.body_xpos[self.sim.model.body_name2id(f"{self.machine_name}_lid")][2])

    def pod_pos(self) -> np.ndarray:
        return np.array(self.sim.data.body_xpos[self.obj_body_id[self.pod_name]])

    def pod_in_holder(self) -> bool:
        """TASKS.md §3 pod tests: xy within 0.0052 of the holder, bottom at/above the holder bottom."""
        pod, holder = self.pod_pos(), self.holder_center()
        return bool(np.linalg.norm(pod[:2] - holder[:2]) <= POD_XY_TOL
                    and pod[2] - POD_HALF_HEIGHT >= holder[2] - HOLDER_HALF_HEIGHT)

    def pod_inserted(self) -> bool:
        """mimicgen's partial metric `insertion`: xy test + pod bottom within 0.02 above the holder bottom."""
        pod, holder = self.pod_pos(), self.holder_center()
        bottom, lo = pod[2] - POD_HALF_HEIGHT, holder[2] - HOLDER_HALF_HEIGHT
        return bool(np.linalg.norm(pod[:2] - holder[:2]) <= POD_XY_TOL and lo <= bottom <= lo + 0.02)

    def lid_closed(self) -> bool:
        return self.lid_angle() < LID_CLOSED_ANGLE

    def pod_under_lid(self) -> bool:
        return self.pod_pos()[2] + POD_HALF_HEIGHT <= self.lid_z() - LID_HALF_SIZE[2]

    def pod_grasped(self) -> bool:
        return self.is_grasped(self.pod_name) and self.lifted(self.pod_name, 0.03)

    def coffee_success(self) -> bool:
        return self.lid_closed() and self.pod_in_holder() and self.pod_under_lid()


@register_task
class Coffee_D2(CoffeeMixin, KitTask):
    eval_horizon = 400
    placement = {  # TASKS.md §3, D2 row (machine first; pod yaw 0)
        "machine": dict(x=(-0.05, 0.05), y=(0.1, 0.2), yaw=(120 * DEG, 210 * DEG)),
        "pod": dict(x=(-0.2, 0.05), y=(-0.30, -0.17), yaw=0.0),
    }
    stages = (
        Stage("grasp_pod", "pod", "pod_grasped", "grasp the coffee pod and lift it"),
        Stage("insert_pod_close_lid", "machine", "_check_success",
              "put the pod into the holder and close the lid"),
    )

    def _make_objects(self):
        return {"machine": make_machine("machine", with_cup=True), "pod": make_pod("pod")}

    def _after_placement(self):
        self.set_lid_angle(LID_OPEN_ANGLE)  # reset: lid open

    def _check_success(self) -> bool:
        return bool(self.coffee_success())


# ------------------------------------------------------------------------------------ scripted demo
# Geometry of the Panda fingers relative to the OSC site (grip_site): the fingertips reach ~0.011
# below it and each finger is ~0.021 wide. Note that the fingers close along the site's x axis,
# i.e. along yaw + 90° for `top_down(yaw)`.
FINGERTIP_BELOW_SITE = 0.011


def _yaw_of(T) -> float:
    return float(np.arctan2(T[1, 0], T[0, 0]))


def scripted_demo(env, seed: int, rng: np.random.Generator, record: bool = True) -> Demonstrator:
    """Grasp the pod from above, drop it into the holder, then swing the lid shut by pushing it
    along an arc about the hinge with the closed fingers. All machine targets are computed in the
    machine frame (D2 yaw range [120°, 210°])."""
    d = Demonstrator(env, rng, record=record).start(seed)
    raw = env.raw
    M = raw.object_pose("machine")
    mach = lambda local: (M @ np.append(np.asarray(local, float), 1.0))[:3]  # noqa: E731
    # Fingers close along machine x (the hand's long axis then lies across the holder, clear of
    # the body and of the open lid); top_down(yaw) closes along yaw + 90°. Always the same one of
    # the two such yaws in the machine frame: the D2 range puts it at [30°, 120°] in the world, in
    # the middle of the wrist's range. (Taking the one nearer the start pose flipped by 180° for
    # machines turned past 180°; the generated data then held few of those source poses, and the
    # privileged teacher's flipped initiation poses failed 34 % of rollouts against 9 %.)
    yaw = _yaw_of(M) - np.pi / 2
    R = top_down(yaw)
    # The pod is round: grasp it with the hand turned ~40° from the start pose (the arm's natural
    # turn toward the pod region; the long hand then stays clear of the machine's front, and a
    # wrist turned further runs into joint limits low near the robot), turn to R on the way.
    Rg = top_down(_yaw_of(raw.eef_pose()) - np.pi / 2 - rng.uniform(30, 50) * DEG)

    # ---- stage 0: grasp the pod and lift it
    pod = raw.pod_pos()
    grasp_z = pod[2] + rng.uniform(-0.002, 0.003)
    d.label(0, PHASE_CONNECT)
    # Translate first, then turn: turning the long Panda hand near the start pose can sweep it
    # into the open lid when the machine sits close to the robot.
    # The fingers stay closed until then: the machine may sit right beside the start pose, where an
    # opening finger would catch its top edge.
    eef0 = raw.eef_pose()
    above_pod = [pod[0], pod[1], pod[2] + rng.uniform(0.07, 0.10)]
    d.move(P.make_pose(eef0[:3, 3] + [0, 0, rng.uniform(0.03, 0.05)], eef0[:3, :3]), GRIPPER_CLOSED,
           max_steps=30, speed=0.6, pos_tol=0.01, rot_tol=0.3)
    d.move(P.make_pose(above_pod, eef0[:3, :3]), max_steps=100, speed=rng.uniform(0.7, 1.0), pos_tol=0.02,
           rot_tol=0.3)
    d.move(P.make_pose(above_pod, Rg), GRIPPER_OPEN, max_steps=100, speed=rng.uniform(0.7, 1.0), pos_tol=0.005)
    d.label(0, PHASE_SKILL)
    pod = raw.pod_pos()
    d.move(P.make_pose([pod[0], pod[1], grasp_z], Rg), speed=rng.uniform(0.4, 0.6), max_steps=60)
    d.actuate(GRIPPER_CLOSED, steps=10)
    d.move(P.make_pose([pod[0], pod[1], pod[2] + rng.uniform(0.08, 0.11)], Rg), speed=0.6, max_steps=60,
           pos_tol=0.01)
    if not d.failed and not raw.pod_grasped():
        d.failed = "stage 0: pod not grasped"

    # ---- stage 1: carry the pod above the holder, drop it in, close the lid
    holder = raw.holder_center()
    d.label(1, PHASE_CONNECT)
    eef = raw.eef_pose()[:3, 3]
    travel_z = holder[2] + rng.uniform(0.10, 0.12)
    d.move(P.make_pose([eef[0], eef[1], travel_z], R), speed=rng.uniform(0.7, 1.0), max_steps=60, pos_tol=0.01)

    def above_holder(h):
        def target():
            eef = raw.eef_pose()[:3, 3]
            pod = raw.pod_pos()
            return P.make_pose(np.r_[eef[:2] + holder[:2] - pod[:2], holder[2] + h], R)
        return target

    d.track(above_holder(travel_z - holder[2]), max_steps=150, speed=rng.uniform(0.7, 1.0))
    d.label(1, PHASE_SKILL)
    release_h = HOLDER_HALF_HEIGHT + FINGERTIP_BELOW_SITE + rng.uniform(0.004, 0.007)
    d.track(above_holder(release_h), max_steps=80, speed=0.3)
    d.actuate(GRIPPER_OPEN, steps=8)
    eef = raw.eef_pose()[:3, 3]
    d.move(P.make_pose(eef + [0, 0, 0.06], R), speed=0.5, max_steps=40, pos_tol=0.01)
    if not d.failed and not raw.pod_in_holder():
        d.failed = "stage 1: pod not in the holder"

    # Lid: from above, drop in behind the open lid (over the body, the hand above the lid's top
    # edge), push the lid's upper end forward along an arc about the hinge until it falls past
    # vertical, then sweep down onto it and press it shut.
    hinge_yz = HINGE_LOCAL[1:]
    behind = np.array([rng.uniform(-0.016, -0.010), rng.uniform(0.172, 0.178)])  # grip site, machine (y, z)
    rel = behind - hinge_yz
    r0, phi0 = np.hypot(*rel), np.arctan2(rel[1], rel[0])
    r1 = rng.uniform(0.068, 0.076)
    arc = lambda r, phi: mach([0.0, hinge_yz[0] + r * np.cos(phi), hinge_yz[1] + r * np.sin(phi)])  # noqa: E731
    eef = raw.eef_pose()[:3, 3]
    high = HINGE_LOCAL[2] + rng.uniform(0.15, 0.17)
    d.move(P.make_pose(eef + [0, 0, mach([0, 0, high])[2] - eef[2]], R), GRIPPER_CLOSED,
           speed=rng.uniform(0.6, 0.9), max_steps=60, pos_tol=0.01)
    d.move(P.make_pose(mach([0.0, behind[0], high]), R), speed=rng.uniform(0.6, 0.9), max_steps=80, pos_tol=0.008)
    d.move(P.make_pose(arc(r0, phi0), R), speed=0.5, max_steps=60, pos_tol=0.005)
    # Push the lid past vertical; the radius shrinks as the lid turns so the fingers stay on it.
    r_push = rng.uniform(0.076, 0.082)
    for phi in np.linspace(phi0, 80 * DEG, 9)[1:]:
        r = np.interp(phi, [100 * DEG, phi0], [r_push, r0])
        d.move(P.make_pose(arc(r, phi), R), speed=0.4, max_steps=25, pos_tol=0.008, rot_tol=0.2)
    for k, phi in enumerate(np.linspace(80, -5, 8)[1:] * DEG):  # sweep down and press it shut
        r = r_push + (r1 - r_push) * (k + 1) / 7
        # Press on until the lid is nearly flat (3°), not just past the 15° success limit:
        # replayed (generated) closings then end with margin instead of on the threshold.
        shut = lambda: raw._check_success() and raw.lid_angle() < 3 * DEG  # noqa: E731
        d.move(P.make_pose(arc(r, phi), R), speed=0.4, max_steps=25, pos_tol=0.008, rot_tol=0.2, until=shut)
        if shut():
            break
    d.hold(3)
    if not d.failed and not raw._check_success():
        d.failed = "stage 1: lid not closed over the pod"
    return d
