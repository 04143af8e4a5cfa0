"""Environment layer: the task base class, the task registry and `make_env`.

Every kit task is a robosuite 1.5.2 `ManipulationEnv` subclass (so `robosuite.make("Threading_D2")`
works once `common` is imported: robosuite registers subclasses by class name). On top of robosuite
the base class adds what the ReinforceGen pipeline needs from a task (DESIGN.md, "Environment"):

- a list of stages, each with a reference object R_i (Sec. III-B) and a ground-truth termination
  check T_i(s) computed from sim state;
- the task's success check and evaluation horizon;
- object poses as 4x4 matrices (for data generation and the privileged teacher);
- seeded resets and flattened, replayable MuJoCo states.

`make_env` wraps a task in `KitEnv`, a small gym-like wrapper that produces the kit's observations
(App. B-A): 15-D proprioception, object poses in state mode, 84x84 cameras in image mode.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from typing import Callable

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; osmesa fails on this machine

import numpy as np
import robosuite
import robosuite.macros as macros
from robosuite.controllers import load_composite_controller_config
from robosuite.environments.manipulation.manipulation_env import ManipulationEnv
from robosuite.models.arenas import TableArena
from robosuite.models.objects import MujocoXMLObject
from robosuite.models.tasks import ManipulationTask
from robosuite.utils.observables import Observable, sensor
from robosuite.utils.placement_samplers import SequentialCompositeSampler, UniformRandomSampler

from . import pose as P
from .osc import FastArmSubstep
from .presets import CONTROL_FREQ, IMAGE_SIZE

macros.IMAGE_CONVENTION = "opencv"  # images upright (row 0 = top), as every learning library expects

TASKS: dict[str, type] = {}  # name -> task class, filled by @register_task


def register_task(cls):
    TASKS[cls.__name__] = cls
    return cls


def scripted_demo_fn(task: str):
    """The scripted source demonstrator of a task: `scripted_demo(env, seed, rng, record=True)`."""
    import sys
    return sys.modules[TASKS[check_task_name(task)].__module__].scripted_demo


def check_task_name(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks are: {', '.join(sorted(TASKS))}")
    return task


# ------------------------------------------------------------------------------------------ stages
@dataclass(frozen=True)
class Stage:
    """One stage of a task (Sec. III-A): a skill around a reference object, ended by T_i(s).

    `done` names a method of the task env returning bool (the ground-truth termination check).
    `skill_objects` are the objects the skill touches (used by the planner to allow contact).
    """

    name: str
    reference_object: str
    done: str
    description: str = ""


# ------------------------------------------------------------------------------------------ objects
_MJCF_CACHE = os.path.join(tempfile.gettempdir(), "reinforcegen_kit_mjcf")


def xml_object(name: str, body_xml: str, horizontal_radius: float, bottom: float, top: float,
               joints="default") -> MujocoXMLObject:
    """A robosuite object from an MJCF body snippet written in the task module.

    `body_xml` is the content of the object body (geoms, child bodies); collision geoms need
    group="0" (robosuite duplicates a visual copy for each), visual-only geoms group="1".
    `bottom`/`top` are the z of the object's lowest/highest point in its body frame and
    `horizontal_radius` its footprint radius: robosuite's placement samplers use all three.
    The snippet is written once to a content-addressed file because robosuite loads objects from
    files; the full scene XML is stored with every demo anyway (DESIGN.md, HDF5 layout).
    """
    xml = f"""<mujoco model="{name}">
  <worldbody>
    <body>
      <body name="object">
{body_xml}
      </body>
      <site name="bottom_site" pos="0 0 {bottom}" size="0.002" rgba="0 0 0 0"/>
      <site name="top_site" pos="0 0 {top}" size="0.002" rgba="0 0 0 0"/>
      <site name="horizontal_radius_site" pos="{horizontal_radius} {horizontal_radius} 0" size="0.002" rgba="0 0 0 0"/>
    </body>
  </worldbody>
</mujoco>
"""
    os.makedirs(_MJCF_CACHE, exist_ok=True)
    path = os.path.join(_MJCF_CACHE, hashlib.sha1(xml.encode()).hexdigest()[:16] + ".xml")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(xml)
        os.replace(tmp, path)  # atomic: parallel workers may write the same file
    return MujocoXMLObject(path, name=name, joints=joints, obj_type="all", duplicate_collision_geoms=True)


def box_geom(name, size, pos=(0, 0, 0), rgba="0.6 0.6 0.6 1", quat=None, euler=None, extra="") -> str:
    """One collision box geom line (group 0) for an MJCF snippet."""
    rot = f' quat="{_fmt(quat)}"' if quat is not None else (f' euler="{_fmt(euler)}"' if euler is not None else "")
    return (f'<geom name="{name}" type="box" size="{_fmt(size)}" pos="{_fmt(pos)}"{rot} '
            f'rgba="{rgba}" group="0" {extra}/>')


def _fmt(v) -> str:
    return " ".join(f"{float(x):.6g}" for x in v)


def uniform_sampler(name, obj, x, y, yaw, table_offset, z_offset=0.0, rng=None):
    """UniformRandomSampler over world x/y ranges (offsets from the table-top centre) and yaw range."""
    return UniformRandomSampler(
        name=name, mujoco_objects=obj, x_range=list(x), y_range=list(y),
        rotation=yaw if np.ndim(yaw) == 0 else list(yaw), rotation_axis="z",
        ensure_object_boundary_in_range=False, ensure_valid_placement=True,
        reference_pos=np.array(table_offset), z_offset=z_offset, rng=rng,
    )


# ------------------------------------------------------------------------------------------ base task
class KitTask(ManipulationEnv):
    """Base class of the kit's tasks. Subclasses fill in the scene and the stage checks.

    Subclass hooks: `_make_objects()` -> dict of free MujocoObjects, `_make_placement()` ->
    placement sampler, `_add_fixtures(arena)` for static geometry, `_after_placement()` for joint
    resets (e.g. an open lid), the stage-check methods named by `stages`, and `_check_success()`.
    """

    stages: tuple[Stage, ...] = ()
    eval_horizon: int = 500  # mimicgen registry horizon for evaluation rollouts
    # Data generation's default source-demo choice (01_generate.py --select): "random", or
    # "nearest" (MimicGen's nearest_neighbor_object) where a task's objects rotate so freely that
    # a random source's skill, carried through a large rotation, leaves the arm's reach.
    datagen_select: str = "random"
    # Per-stage action noise during generation, overriding --action-noise (MimicGen configures
    # action_noise per subtask): {stage index: σ}.
    datagen_stage_noise: dict = {}
    # Grasp stages whose grasp repeats under a turn of the gripper about its approach axis by less
    # than the parallel jaw's own half-turn (e.g. a square knob: π/2): {stage index: period in rad}.
    # 02_train_hsp.py folds initiation-pose labels by this period (default π).
    grasp_yaw_period: dict = {}
    # Placement stages (an object in hand) whose target repeats under a turn about the reference
    # object's vertical axis (e.g. a square hole: π/2): {stage index: period in rad}. Source demos
    # may use any of the equivalent placements, so 02_train_hsp.py folds these labels too.
    place_yaw_period: dict = {}
    table_offset = (0.0, 0.0, 0.8)
    table_full_size = (0.8, 0.8, 0.05)
    table_friction = (1.0, 5e-3, 1e-4)
    # D2 placement ranges, documented per task: {object: dict(x=(lo, hi), y=(lo, hi), yaw=(lo, hi))}
    placement: dict = {}
    composite_sampler = SequentialCompositeSampler  # a task may add rejection rules in a subclass

    @classmethod
    def pose_symmetry(cls, stage: int, arrives_empty: bool):
        """(period, about) of stage `stage`'s initiation-pose symmetry, or None: a grasp (the
        gripper arrives empty) repeats about the gripper's approach axis every π (or the task's
        `grasp_yaw_period`), a placement in `place_yaw_period` about the reference's vertical axis.
        02_train_hsp.py folds the labels by it; the agent tries the twins when a pose is unreachable."""
        if arrives_empty:
            return float(cls.grasp_yaw_period.get(stage, np.pi)), "grip"
        if stage in cls.place_yaw_period:
            return float(cls.place_yaw_period[stage]), "reference"
        return None

    def __init__(self, robots="Panda", controller_configs=None, fast_render=True, camera_names="agentview",
                 camera_heights=IMAGE_SIZE, camera_widths=IMAGE_SIZE, use_camera_obs=False,
                 has_offscreen_renderer=False, has_renderer=False, control_freq=CONTROL_FREQ,
                 horizon=None, ignore_done=True, hard_reset=False, seed=None, fast_control=True, **kwargs):
        if controller_configs is None:
            # OSC_POSE arm via robosuite's BASIC composite controller, delta actions (DESIGN.md).
            controller_configs = load_composite_controller_config(controller="BASIC", robot="Panda")
            # A single Panda arm has only the "right" part; the other parts only produce warnings.
            controller_configs["body_parts"] = {"right": controller_configs["body_parts"]["right"]}
        self.fast_render = fast_render
        # Between policy steps, compute the arm's OSC torques without robosuite's per-substep
        # plumbing: bit-identical torques, 1.4-2.4x faster env steps on CPU (common/osc.py).
        self.fast_control = fast_control
        self._fast_substep = None
        self._rest_z = {}
        super().__init__(
            robots=robots, controller_configs=controller_configs, use_camera_obs=use_camera_obs,
            has_offscreen_renderer=has_offscreen_renderer or use_camera_obs, has_renderer=has_renderer,
            camera_names=camera_names, camera_heights=camera_heights, camera_widths=camera_widths,
            control_freq=control_freq, horizon=horizon or self.eval_horizon, ignore_done=ignore_done,
            hard_reset=hard_reset, seed=seed, **kwargs,
        )

    # ---------------------------------------------------------------- scene hooks (override)
    def _make_objects(self) -> dict:
        raise NotImplementedError

    def _make_placement(self):
        """Default: one UniformRandomSampler per object in `self.placement`, in insertion order."""
        sampler = self.composite_sampler(name="placement")
        for name, spec in self.placement.items():
            sampler.append_sampler(uniform_sampler(
                f"{name}_sampler", self.objects[name], spec["x"], spec["y"], spec["yaw"],
                self.table_offset, spec.get("z_offset", 0.0), rng=self.rng))
        return sampler

    def _add_fixtures(self, arena):
        pass

    def _after_placement(self):
        pass

    def placement_yaw_offset(self, name: str) -> float:
        """Yaw of the object's body frame when the placement sampler draws yaw 0 (0 unless a task
        builds an object rotated in its own frame)."""
        return 0.0

    def _make_arena(self):
        return TableArena(table_full_size=self.table_full_size, table_friction=self.table_friction,
                          table_offset=self.table_offset)

    # ---------------------------------------------------------------- robosuite plumbing
    def _load_model(self):
        super()._load_model()
        robot = self.robots[0]
        robot.robot_model.set_base_xpos(robot.robot_model.base_xpos_offset["table"](self.table_full_size[0]))
        arena = self._make_arena()
        arena.set_origin([0, 0, 0])
        self._add_fixtures(arena)
        self.objects = self._make_objects()
        self.placement_initializer = self._make_placement()
        self.model = ManipulationTask(mujoco_arena=arena, mujoco_robots=[robot.robot_model],
                                      mujoco_objects=list(self.objects.values()))
        if self.fast_render:
            # MSAA and shadows off: ~3.5x faster 84x84 rendering on CPU (EGL/Mesa).
            visual = self.model.root.find("visual")
            if visual is None:
                import xml.etree.ElementTree as ET
                visual = ET.SubElement(self.model.root, "visual")
            quality = visual.find("quality")
            if quality is None:
                import xml.etree.ElementTree as ET
                quality = ET.SubElement(visual, "quality")
            quality.set("offsamples", "0")
            for light in self.model.root.iter("light"):
                light.set("castshadow", "false")

    def _setup_references(self):
        super()._setup_references()
        self.obj_body_id = {name: self.sim.model.body_name2id(obj.root_body) for name, obj in self.objects.items()}
        # The OSC controller's reference site (its ref_name); the controller itself is built later.
        self.eef_site_id = self.sim.model.site_name2id(self.robots[0].gripper["right"].important_sites["grip_site"])

    def _setup_observables(self):
        observables = super()._setup_observables()
        for name in self.objects:
            def make(n):
                @sensor(modality="object")
                def pos(obs_cache):
                    return np.array(self.sim.data.body_xpos[self.obj_body_id[n]])

                @sensor(modality="object")
                def quat(obs_cache):
                    return P.quat_normalize(np.roll(self.sim.data.body_xquat[self.obj_body_id[n]], -1))
                pos.__name__, quat.__name__ = f"{n}_pos", f"{n}_quat"
                return pos, quat
            for s in make(name):
                observables[s.__name__] = Observable(name=s.__name__, sensor=s, sampling_rate=self.control_freq)
        return observables

    def _reset_internal(self):
        super()._reset_internal()
        if not self.deterministic_reset:
            for pos, quat, obj in self.placement_initializer.sample().values():
                self.sim.data.set_joint_qpos(self._free_joint(obj), np.concatenate([np.array(pos), np.array(quat)]))
        self._after_placement()
        self.sim.forward()
        self._rest_z = {n: float(self.sim.data.body_xpos[b][2]) for n, b in self.obj_body_id.items()}

    def _pre_action(self, action, policy_step=False):
        if policy_step and self.fast_control:
            # (re)bind to the current controller: robosuite rebuilds controllers on resets
            if self._fast_substep is None or (self._fast_substep and not self._fast_substep.bound_to(self)):
                self._fast_substep = FastArmSubstep(self) if FastArmSubstep.supports(self) else False
        if policy_step or not self._fast_substep:
            return super()._pre_action(action, policy_step)
        self._fast_substep()

    def _post_action(self, action):
        # robosuite's lite physics leaves body poses one sub-step behind qpos after a step; one
        # forward pass makes poses, contacts, success checks and rendered images agree with the
        # state that is recorded and replayed.
        self.sim.forward()
        return super()._post_action(action)

    def _free_joint(self, obj) -> str:
        """The free joint of an object (robosuite lists joints depth-first, so an object with a
        hinged child body, like the coffee machine's lid, need not have it first)."""
        m = self.sim.model
        for j in obj.joints:
            if m.jnt_type[m.joint_name2id(j)] == 0:  # mjJNT_FREE
                return j
        raise ValueError(f"object {obj.name} has no free joint; place it as a fixture instead")

    def reward(self, action=None):
        return float(self._check_success())  # sparse task reward

    # ---------------------------------------------------------------- task interface used by the kit
    def object_pose(self, name: str) -> np.ndarray:
        """4x4 world pose of object `name`'s root body."""
        b = self.obj_body_id[name]
        return P.make_pose(self.sim.data.body_xpos[b], self.sim.data.body_xmat[b].reshape(3, 3))

    def object_poses(self) -> dict[str, np.ndarray]:
        return {name: self.object_pose(name) for name in self.objects}

    def eef_pose(self) -> np.ndarray:
        """4x4 world pose of the OSC controller's end-effector site (the frame actions act on)."""
        return P.make_pose(self.sim.data.site_xpos[self.eef_site_id],
                           self.sim.data.site_xmat[self.eef_site_id].reshape(3, 3))

    def is_grasped(self, name: str) -> bool:
        """Grasp test of TASKS.md: the object touches both finger-pad geom groups."""
        return bool(self._check_grasp(gripper=self.robots[0].gripper, object_geoms=self.objects[name]))

    def lifted(self, name: str, height: float) -> bool:
        return float(self.sim.data.body_xpos[self.obj_body_id[name]][2]) > self._rest_z[name] + height

    def stage_done(self) -> np.ndarray:
        """Ground-truth T_i(s) for every stage i at the current sim state."""
        return np.array([bool(getattr(self, s.done)()) for s in self.stages], dtype=bool)

    def get_flat_state(self) -> np.ndarray:
        return np.asarray(self.sim.get_state().flatten(), dtype=np.float64)

    def set_flat_state(self, state) -> None:
        self.sim.set_state_from_flattened(np.asarray(state, dtype=np.float64))
        # MuJoCo warm-starts its constraint solver from the last step's accelerations, which the
        # flattened state does not hold: without this, a restored state steps differently (by
        # ~1e-13 at first, then chaotically through contacts) depending on what the sim ran
        # before, so a skill trial's outcome (02's snapshot selection) depended on the trial
        # before it in its worker.
        self.sim.data.qacc_warmstart[:] = 0.0
        self.sim.forward()

    def reseed(self, seed: int) -> None:
        """Re-seed in place: placement samplers and robot init noise hold references to self.rng."""
        self.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state

    def contacts_between(self, geoms_a, geoms_b) -> int:
        """Number of active contacts between two sets of geom ids."""
        a, b, n = set(geoms_a), set(geoms_b), 0
        for i in range(self.sim.data.ncon):
            c = self.sim.data.contact[i]
            if (c.geom1 in a and c.geom2 in b) or (c.geom1 in b and c.geom2 in a):
                n += 1
        return n


# ------------------------------------------------------------------------------------------ wrapper
PROPRIO_DIM = 15  # eef pos (3) + axis-angle (3) + finger positions (2) + joint positions (7), App. B-A


def object_in_eef_frame(proprio: np.ndarray, object_state: np.ndarray, n_objects: int) -> np.ndarray:
    """Each object's pose in the end-effector frame: position (3) + 6-D rotation (6) per object.

    The same information as "proprio" + "object", re-expressed where a skill acts: a grasp or an
    insertion is a fixed pose *relative to the hand*, so in this frame the skill policy's input
    varies little across the D2 placement range (what MimicGen's object-centric transform exploits;
    robosuite's own state observations likewise include object-to-eef vectors). Works on one step
    (D,) or a batch (T, D); used by KitEnv in state mode and by 02_train_hsp.py for data files
    written before this key existed.
    """
    proprio, object_state = np.asarray(proprio, np.float64), np.asarray(object_state, np.float64)
    single = proprio.ndim == 1
    proprio, object_state = np.atleast_2d(proprio), np.atleast_2d(object_state)
    R_eef_T = np.swapaxes(P.axisangle_to_mat(proprio[:, 3:6]).reshape(-1, 3, 3), 1, 2)
    out = []
    for k in range(n_objects):
        pos, quat = object_state[:, 7 * k:7 * k + 3], object_state[:, 7 * k + 3:7 * k + 7]
        rel_pos = np.einsum("bij,bj->bi", R_eef_T, pos - proprio[:, :3])
        rel_R = R_eef_T @ P.quat_to_mat(quat).reshape(-1, 3, 3)
        out += [rel_pos, P.rot6d_from_mat(rel_R)]
    rel = np.concatenate(out, axis=1).astype(np.float32)
    return rel[0] if single else rel


PROPRIO_EEF_DIMS = 8  # proprio = eef position (3), axis-angle (3), fingers (2), then joint positions (7)


def proprio_without_joints(proprio: np.ndarray) -> np.ndarray:
    """proprio without the 7 joint positions: what robomimic's low-dim robot keys hold (eef
    position, rotation, gripper fingers), the inputs MimicGen's BC policies read."""
    return np.asarray(proprio)[..., :PROPRIO_EEF_DIMS]


class KitEnv:
    """Gym-like wrapper producing the kit's observations. `raw` is the robosuite env.

    obs keys: "proprio" (15,), "object" (7 per object: pos + quat xyzw, then articulation joints;
    state mode only), "object_rel" (9 per object: pose in the end-effector frame; state mode only),
    "proprio_without_joints" (8,: proprio's end-effector pose and fingers, robomimic's low-dim robot
    keys; state mode only), "<camera>_image" (H, W, 3) uint8 (image mode only).
    """

    def __init__(self, raw: KitTask, obs_mode: str, cameras: list[str], horizon: int):
        self.raw, self.obs_mode, self.cameras, self.horizon = raw, obs_mode, cameras, horizon
        self.task = type(raw).__name__
        self.stages = raw.stages
        self.object_names = list(raw.objects)
        # Poses recorded for data generation: the free objects plus any stage reference object
        # that is a fixture (e.g. NutAssembly's pegs, CoffeePreparation's drawer).
        self.tracked_names = self.object_names + sorted(
            {s.reference_object for s in raw.stages} - set(self.object_names))
        self.action_dim = raw.action_dim
        self.t = 0
        self._articulation_qpos = self._find_articulations()
        # Hide robosuite's debug sites (e.g. the green grip-site line) in camera images; robosuite
        # only does this in reset(), and reset_to() may be called on a never-reset env.
        raw.visualize(vis_settings={vis: False for vis in raw._visualizations})
        # Only cameras are taken from robosuite's observables; the rest is read from sim directly,
        # so disabling robosuite's other sensors saves their per-step cost.
        for name in list(raw._observables):
            if not name.endswith("_image"):
                raw.modify_observable(name, "enabled", False)
                raw.modify_observable(name, "active", False)

    # -------------------------------------------------------- observations
    def proprio(self) -> np.ndarray:
        sim, robot = self.raw.sim, self.raw.robots[0]
        eef = self.raw.eef_pose()
        fingers = sim.data.qpos[robot._ref_gripper_joint_pos_indexes["right"]]
        joints = sim.data.qpos[robot._ref_joint_pos_indexes]
        return np.concatenate([eef[:3, 3], P.mat_to_axisangle(eef[:3, :3]), fingers, joints]).astype(np.float32)

    def object_state(self) -> np.ndarray:
        """Object poses (pos + quat xyzw each), then the scene's articulation joints (e.g. the
        coffee lid hinge, the drawer slide): everything a privileged policy needs to see."""
        out = []
        for name in self.object_names:
            T = self.raw.object_pose(name)
            out.append(np.concatenate([T[:3, 3], P.mat_to_quat(T[:3, :3])]))
        out.append(self.raw.sim.data.qpos[self._articulation_qpos])
        return np.concatenate(out).astype(np.float32)

    def object_rel(self, proprio: np.ndarray, object_state: np.ndarray) -> np.ndarray:
        return object_in_eef_frame(proprio, object_state, len(self.object_names))

    def _find_articulations(self) -> np.ndarray:
        """qpos addresses of hinge/slide joints that belong to neither the robot nor a free joint."""
        m, robot = self.raw.sim.model, self.raw.robots[0]
        robot_q = set(np.atleast_1d(robot._ref_joint_pos_indexes).tolist())
        robot_q |= set(np.atleast_1d(robot._ref_gripper_joint_pos_indexes["right"]).tolist())
        addrs = []
        for j in range(m.njnt):
            if m.jnt_type[j] in (2, 3) and int(m.jnt_qposadr[j]) not in robot_q:  # slide, hinge
                addrs.append(int(m.jnt_qposadr[j]))
        return np.array(addrs, dtype=np.int64)

    def _obs(self, raw_obs=None) -> dict:
        obs = {"proprio": self.proprio()}
        if self.obs_mode == "state":
            obs["object"] = self.object_state()
            obs["object_rel"] = self.object_rel(obs["proprio"], obs["object"])
            obs["proprio_without_joints"] = proprio_without_joints(obs["proprio"])
        else:
            if raw_obs is None:
                raw_obs = self.raw._get_observations(force_update=True)
            for cam in self.cameras:
                obs[f"{cam}_image"] = raw_obs[f"{cam}_image"]
        return obs

    # -------------------------------------------------------- control
    def wait_until_still(self, hold: Callable[[], object], max_steps: int = 30, tol: float = 5e-4) -> int:
        """Call `hold()` (one control step that keeps the robot where it is) until no object moves
        more than `tol` metres in a step, at most `max_steps` times; returns the steps taken.

        Objects may still be falling into place after reset (NutAssembly spawns its nuts 6 cm up).
        Data generation and deployment both wait, so that the reference-object poses they read
        (Sec. III-B transforms, I^Priv) are the resting ones; reading them mid-fall put the
        privileged grasp pose 5 cm too high and the BC nut grasp failed 30 of 30 times."""
        for n in range(1, max_steps + 1):
            before = np.stack([T[:3, 3] for T in self.raw.object_poses().values()])
            hold()
            after = np.stack([T[:3, 3] for T in self.raw.object_poses().values()])
            if np.abs(after - before).max() < tol:
                return n
        return max_steps

    def reset(self, seed: int | None = None) -> dict:
        if seed is not None:
            self.raw.reseed(seed)
        self.t = 0
        return self._obs(self.raw.reset())

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        raw_obs, reward, _, info = self.raw.step(action)
        self.t += 1
        success = bool(self.raw._check_success())
        info = dict(info, success=success)
        done = success or self.t >= self.horizon
        return self._obs(raw_obs if self.obs_mode == "image" else {}), reward, done, info

    def get_state(self) -> np.ndarray:
        return self.raw.get_flat_state()

    def reset_to(self, state, gripper_commands=None) -> dict:
        """Set the sim to a flattened state (from get_state or an HDF5 `states` row).

        The sim state does not hold the gripper controller's own state: robosuite's Panda gripper
        moves its finger command by 0.2 per step toward the sign of each gripper action
        (`format_action`), so the same action acts differently after "open" than after "close".
        To continue a recorded episode (not only to render it), pass the gripper commands (actions[:, 6])
        recorded before `state`: the gripper controller is set to where they left it."""
        self.raw.set_flat_state(state)
        # The arm controllers cache the robot's state and refresh it only when flagged (after each
        # step): right after a reset they would compute the next delta goal from the reset pose.
        for controller in self.raw.robots[0].composite_controller.part_controllers.values():
            controller.update(force=True)
        if gripper_commands is not None:
            gripper = self.raw.robots[0].gripper["right"]
            gripper.current_action = np.zeros(gripper.dof)  # as robosuite's reset leaves it
            for c in np.asarray(gripper_commands, dtype=np.float64).reshape(-1):
                gripper.format_action(np.array([c]))
        return self._obs()

    # -------------------------------------------------------- task facts
    def stage_done(self) -> np.ndarray:
        return self.raw.stage_done()

    def held_object(self) -> str | None:
        """The object in the gripper now, if any (the motion planner carries it with the hand)."""
        for name in self.object_names:
            if self.raw.is_grasped(name):
                return name
        return None

    def success(self) -> bool:
        return bool(self.raw._check_success())

    def eef_pose(self) -> np.ndarray:
        return self.raw.eef_pose()

    def object_poses(self) -> dict:
        return self.raw.object_poses()

    def tracked_poses(self) -> dict:
        """4x4 poses of every tracked name (free objects + fixture reference objects)."""
        return {n: self.raw.object_pose(n) for n in self.tracked_names}

    def gripper_qpos(self) -> np.ndarray:
        robot = self.raw.robots[0]
        return self.raw.sim.data.qpos[robot._ref_gripper_joint_pos_indexes["right"]].copy()

    def model_xml(self) -> str:
        return self.raw.sim.model.get_xml()

    def obs_shapes(self) -> dict:
        return {k: v.shape for k, v in self._obs().items()}

    def close(self):
        self.raw.close()


def default_cameras(task: str) -> list[str]:
    return list(getattr(TASKS[check_task_name(task)], "cameras", ("agentview", "robot0_eye_in_hand")))


def make_env(task: str, obs_mode: str = "state", seed: int | None = None, cameras=None,
             image_size: int = IMAGE_SIZE, fast_render: bool = True, horizon: int | None = None,
             **kwargs) -> KitEnv:
    """Build task `task` for the kit.

    obs_mode "state": proprio + object poses, no renderer (fast). "image": proprio + cameras
    (default: the task's cameras, agentview + robot0_eye_in_hand, Threading adds a side view).
    """
    check_task_name(task)
    if obs_mode not in ("state", "image"):
        raise ValueError(f"unknown obs mode {obs_mode!r}; use 'state' or 'image'")
    cameras = list(cameras) if cameras else default_cameras(task)
    image = obs_mode == "image"
    raw = robosuite.make(
        task, robots="Panda", use_camera_obs=image, has_offscreen_renderer=image,
        camera_names=cameras, camera_heights=image_size, camera_widths=image_size,
        fast_render=fast_render, seed=seed, horizon=horizon, **kwargs,
    )
    return KitEnv(raw, obs_mode, cameras if image else [], horizon or TASKS[task].eval_horizon)


def render_states(image_env: KitEnv, states) -> dict[str, np.ndarray]:
    """Camera observations for a sequence of flattened states (images rendered by replay, so only
    kept demos pay for rendering). Returns {"<camera>_image": (T, H, W, 3) uint8}."""
    frames: dict[str, list] = {f"{c}_image": [] for c in image_env.cameras}
    for s in states:
        obs = image_env.reset_to(s)
        for k in frames:
            frames[k].append(obs[k])
    return {k: np.stack(v).astype(np.uint8) for k, v in frames.items()}
