"""HDF5 I/O in the robomimic layout plus the kit's labels (DESIGN.md, "HDF5 layout").

Demos are appended one at a time and the file is flushed after each, so an interrupted run keeps
every finished demo; a demo is written under a temporary name and renamed when complete, so a
partially written demo is never visible to readers (and is dropped on the next open).
"""
from __future__ import annotations

import json
import os

import h5py
import numpy as np

from . import pose as P

PHASE_CONNECT, PHASE_SKILL = 0, 1
_PARTIAL = "_partial_"

REQUIRED_DEMO_KEYS = ("actions", "states", "stage", "phase", "stage_done", "init_pose", "skill_bounds",
                      "datagen_info/eef_pose", "datagen_info/gripper_action")


class DataError(ValueError):
    """A data file is missing, malformed, or from another task; the message says how to fix it."""


# ------------------------------------------------------------------------------------------ source segments
class SourceSegments:
    """The skill segments of the source demos, per stage: eef poses, gripper actions and the pose
    of the stage's reference object at the segment start (what Sec. III-B transforms against)."""

    def __init__(self, demos: list[dict], stages):
        from .scripted import action_target  # scripted imports this module
        self.stages = stages
        self.segments = []  # [stage][demo] -> dict
        for i, st in enumerate(stages):
            per_demo = []
            for k, d in enumerate(demos):
                a, b = (int(x) for x in d["skill_bounds"][i])
                if a < 0 or b <= a:
                    raise DataError(f"source demo {k} has no skill segment for stage {i} ({st.name})")
                poses = d["datagen_info"]["object_poses"]
                if st.reference_object not in poses:
                    raise DataError(f"source demo {k} lacks datagen_info/object_poses/{st.reference_object}")
                eef = d["datagen_info"]["eef_pose"]
                per_demo.append(dict(eef=eef[a:b],
                                     # the poses the source's actions commanded (MimicGen's target poses)
                                     target=np.stack([action_target(eef[t], d["actions"][t]) for t in range(a, b)]),
                                     gripper=d["datagen_info"]["gripper_action"][a:b, 0],
                                     ref=poses[st.reference_object][a], index=k))
            self.segments.append(per_demo)

    def choose(self, stage: int, ref_now: np.ndarray, select: str, rng, eef_now: np.ndarray | None = None) -> int:
        """Index of a source demo for `stage`: random, or random among the 3 nearest (MimicGen's
        nn_k = 3) in the pose of the stage's reference object ("nearest", MimicGen's
        nearest_neighbor_object) or in the gripper turn from `eef_now` to the source's initiation
        pose carried to the reference object's pose now ("wrist")."""
        segs = self.segments[stage]
        if select == "nearest":
            now = P.mat_to_pose7(ref_now)
            dist = [P.pose_distance(P.mat_to_pose7(s["ref"]), now) for s in segs]
        elif select == "wrist":
            if eef_now is None:
                raise ValueError('source selection "wrist" needs the current end-effector pose (eef_now)')
            dist = [P.rotation_angle(P.transform_to_new_frame(s["eef"][0], s["ref"], ref_now)[:3, :3], eef_now[:3, :3])
                    for s in segs]
        else:
            return int(rng.integers(len(segs)))
        return int(np.argsort(dist, kind="stable")[:3][rng.integers(min(3, len(segs)))])


# ------------------------------------------------------------------------------------------ recording
class EpisodeRecorder:
    """Collects one episode step by step: call `record(env, action, stage, phase)` *before* stepping.

    Each row t holds the state s_t, the observation at s_t, the action applied at s_t and the
    ground-truth stage checks T_i(s_t), so `states[t]`, `obs[t]` and `actions[t]` line up as in
    robomimic.
    """

    def __init__(self, env, n_stages: int):
        self.env, self.n_stages = env, n_stages
        self.rows = {k: [] for k in ("actions", "states", "stage", "phase", "stage_done", "eef_pose", "gripper_action")}
        self.obs: dict[str, list] = {}
        self.object_poses = {n: [] for n in env.tracked_names}
        self.skill_bounds = np.full((n_stages, 2), -1, dtype=np.int64)
        self.init_pose = np.zeros((n_stages, 7))
        self.source_demo = np.full(n_stages, -1, dtype=np.int64)

    def __len__(self):
        return len(self.rows["actions"])

    def record(self, obs: dict, action, stage: int, phase: int):
        env, t = self.env, len(self)
        if phase == PHASE_SKILL and self.skill_bounds[stage, 0] < 0:
            self.skill_bounds[stage, 0] = t  # first skill step: the skill's initiation pose
            self.init_pose[stage] = P.mat_to_pose7(env.eef_pose())
        if phase == PHASE_SKILL:
            self.skill_bounds[stage, 1] = t + 1
        r = self.rows
        r["actions"].append(np.asarray(action, dtype=np.float32))
        r["states"].append(env.get_state())
        r["stage"].append(stage)
        r["phase"].append(phase)
        r["stage_done"].append(env.stage_done())
        r["eef_pose"].append(env.eef_pose())
        r["gripper_action"].append([float(action[-1])])
        for k, v in obs.items():
            if k == "proprio_without_joints":  # a slice of proprio, re-derived when a dataset is loaded
                continue
            self.obs.setdefault(k, []).append(np.asarray(v))
        for n, T in env.tracked_poses().items():
            self.object_poses[n].append(T)

    def to_demo(self, **attrs) -> dict:
        r = self.rows
        T = len(self)
        demo = {
            "actions": np.stack(r["actions"]).astype(np.float32),
            "states": np.stack(r["states"]),
            "rewards": np.zeros(T, dtype=np.float32),
            "dones": np.zeros(T, dtype=np.int64),
            "stage": np.asarray(r["stage"], dtype=np.int64),
            "phase": np.asarray(r["phase"], dtype=np.int64),
            "stage_done": np.stack(r["stage_done"]).astype(bool),
            "init_pose": self.init_pose.copy(),
            "skill_bounds": self.skill_bounds.copy(),
            "source_demo_per_stage": self.source_demo.copy(),
            "obs": {k: np.stack(v) for k, v in self.obs.items()},
            "datagen_info": {
                "eef_pose": np.stack(r["eef_pose"]),
                "gripper_action": np.asarray(r["gripper_action"], dtype=np.float32),
                "object_poses": {n: np.stack(v) for n, v in self.object_poses.items()},
            },
            "attrs": attrs,
        }
        demo["rewards"][-1] = 1.0
        demo["dones"][-1] = 1
        return demo


# ------------------------------------------------------------------------------------------ writing
def _write_group(g: h5py.Group, d: dict):
    for k, v in d.items():
        if k == "attrs":
            for ak, av in v.items():
                g.attrs[ak] = av
        elif isinstance(v, dict):
            _write_group(g.create_group(k), v)
        else:
            v = np.asarray(v)
            comp = {"compression": "gzip", "compression_opts": 4} if v.dtype == np.uint8 and v.ndim >= 3 else {}
            g.create_dataset(k, data=v, **comp)


class DemoWriter:
    """Append-only writer of a robomimic-style HDF5 file; reopening resumes after the last full demo."""

    def __init__(self, path: str, task: str, env_kwargs: dict, stages: list[dict], extra_attrs: dict | None = None):
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self.path = path
        self.f = h5py.File(path, "a")
        data = self.f.require_group("data")
        if "task" in data.attrs and data.attrs["task"] != task:
            other = data.attrs["task"]
            self.f.close()
            raise DataError(f"{path} holds demos of task {other!r}, not {task!r}; "
                            f"use another --out path or delete the file")
        for k in list(data.keys()):  # drop a demo whose write was interrupted
            if k.startswith(_PARTIAL):
                del data[k]
        data.attrs["task"] = task
        data.attrs["env_args"] = json.dumps({"env_name": task, "type": 1, "env_kwargs": env_kwargs})
        data.attrs["stages"] = json.dumps(stages)
        for k, v in (extra_attrs or {}).items():
            data.attrs[k] = v
        self._update_total()
        self.f.flush()

    @property
    def num_demos(self) -> int:
        return len(demo_keys(self.f))

    def _update_total(self):
        data = self.f["data"]
        data.attrs["total"] = int(sum(data[k].attrs["num_samples"] for k in demo_keys(self.f)))

    def next_index(self) -> int:
        keys = demo_keys(self.f)
        return 0 if not keys else max(int(k.split("_")[1]) for k in keys) + 1

    def append(self, demo: dict, index: int | None = None) -> str:
        index = self.next_index() if index is None else index
        name = f"demo_{index}"
        data = self.f["data"]
        if name in data:
            raise DataError(f"{self.path}: {name} already exists")
        tmp = f"{_PARTIAL}{index}"
        g = data.create_group(tmp)
        _write_group(g, demo)
        g.attrs["num_samples"] = int(len(demo["actions"]))
        self.f.flush()
        data.move(tmp, name)  # the rename is the commit point
        self._update_total()
        self.f.flush()
        return name

    def close(self):
        if self.f:
            self.f.close()
            self.f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------------------------ reading
def demo_keys(f: h5py.File) -> list[str]:
    """Complete demos in index order (demo_2 before demo_10)."""
    keys = [k for k in f["data"].keys() if k.startswith("demo_")]
    return sorted(keys, key=lambda k: int(k.split("_")[1]))


def _read_group(g: h5py.Group) -> dict:
    out = {}
    for k, v in g.items():
        out[k] = _read_group(v) if isinstance(v, h5py.Group) else v[()]
    return out


def open_dataset(path: str, task: str | None = None, require=REQUIRED_DEMO_KEYS) -> h5py.File:
    """Open and validate a kit HDF5 file; every problem is reported with its fix."""
    if not os.path.exists(path):
        raise DataError(f"{path} does not exist; create it with 01_generate.py (e.g. "
                        f"`python 01_generate.py --task {task or '<task>'} --source scripted`)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path} is not a readable HDF5 file ({e}); regenerate it with 01_generate.py") from None
    try:
        if "data" not in f:
            raise DataError(f"{path} has no 'data' group: it is not a robomimic-layout file")
        data = f["data"]
        for a in ("task", "stages", "env_args"):
            if a not in data.attrs:
                raise DataError(f"{path}: 'data' lacks the attribute {a!r}; files must be written by the kit's "
                                f"DemoWriter (common/data.py) or follow DESIGN.md's layout")
        if task is not None and data.attrs["task"] != task:
            raise DataError(f"{path} holds demos of task {data.attrs['task']!r}, but --task is {task!r}")
        keys = demo_keys(f)
        if not keys:
            raise DataError(f"{path} contains no demos (no data/demo_<k> groups)")
        n_stages = len(json.loads(data.attrs["stages"]))
        for k in keys:
            g = data[k]
            missing = [r for r in require if r not in g]
            if missing:
                raise DataError(f"{path}: {k} lacks {', '.join(missing)} (DESIGN.md, HDF5 layout)")
            T = g["actions"].shape[0]
            if g["actions"].ndim != 2 or g["actions"].shape[1] != 7:
                raise DataError(f"{path}: {k}/actions has shape {g['actions'].shape}, expected (T, 7)")
            for key in ("states", "stage", "phase", "stage_done"):
                if key in g and g[key].shape[0] != T:
                    raise DataError(f"{path}: {k}/{key} has {g[key].shape[0]} rows but actions has {T}")
            if "stage_done" in g and g["stage_done"].shape[1] != n_stages:
                raise DataError(f"{path}: {k}/stage_done has {g['stage_done'].shape[1]} columns, task has {n_stages} stages")
    except Exception:
        f.close()
        raise
    return f


def load_demo(f: h5py.File, key: str) -> dict:
    g = f["data"][key]
    d = _read_group(g)
    d["attrs"] = dict(g.attrs)
    return d


def load_all(path: str, task: str | None = None) -> tuple[list[dict], dict]:
    """All demos of a file as dicts, plus the file-level attributes."""
    with open_dataset(path, task) as f:
        attrs = dict(f["data"].attrs)
        return [load_demo(f, k) for k in demo_keys(f)], attrs


# ------------------------------------------------------------------------------------------ crash-safe parts
# Long runs (data generation) write every kept demo to its own small file under <out>.parts/,
# created under a temporary name and renamed when complete: a run killed at any instant (even
# SIGKILL in the middle of an HDF5 write) leaves only complete parts, and resuming just lists them.
# `merge_parts` then builds the single robomimic-layout file, again atomically.

def parts_dir(path: str) -> str:
    return path + ".parts"


def write_part(pdir: str, name: str, demo: dict):
    os.makedirs(pdir, exist_ok=True)
    final = os.path.join(pdir, name + ".hdf5")
    tmp = os.path.join(pdir, f".{name}.{os.getpid()}.tmp")
    with h5py.File(tmp, "w") as f:
        g = f.create_group("demo")
        _write_group(g, demo)
        g.attrs["num_samples"] = int(len(demo["actions"]))
    os.replace(tmp, final)


def list_parts(pdir: str, prefix: str = "") -> list[str]:
    """Complete parts (names without extension) starting with `prefix`, in natural order."""
    if not os.path.isdir(pdir):
        return []
    names = [f[:-5] for f in os.listdir(pdir) if f.endswith(".hdf5") and f.startswith(prefix)]
    return sorted(names, key=lambda n: [int(x) if x.isdigit() else x for x in n.replace("_", " ").split()])


def part_attrs(pdir: str, name: str) -> dict:
    with h5py.File(os.path.join(pdir, name + ".hdf5"), "r") as f:
        return dict(f["demo"].attrs)


def merge_parts(pdir: str, path: str, names: list[str], task: str, env_kwargs: dict, stages: list[dict],
                extra_attrs: dict | None = None) -> int:
    """Write `path` with the given parts as demo_0..demo_{n-1}; atomic (tmp file + rename).
    extra_attrs: more attributes of the file's `data` group (e.g. the connect posture)."""
    tmp = path + ".merging"
    if os.path.exists(tmp):
        os.remove(tmp)
    with DemoWriter(tmp, task, env_kwargs, stages, extra_attrs) as w:
        for k, name in enumerate(names):
            with h5py.File(os.path.join(pdir, name + ".hdf5"), "r") as f:
                f.copy(f["demo"], w.f["data"], name=f"demo_{k}")
        w._update_total()
    os.replace(tmp, path)
    return len(names)
