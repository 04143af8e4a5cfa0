"""Phase 2: behaviour cloning of the Hybrid Skill Policy (Sec. III-C), one set of networks per stage.

From data/<task>/generated.hdf5 (01_generate.py), for every stage i of the task:

- initiation pose predictor I_θi: observation -> end-effector pose (position + 6-D rotation), trained
  on the *connect-phase* observations of stage i, each labeled with the stage's initiation pose
  (the pose at its first skill step), so that it can be queried at every connect step to replan;
- skill policy π_θi: observation -> action, a robomimic GMM policy trained on the skill-phase
  steps of stage i; its deterministic action (`mode()`) is the base action for residual RL. With
  `--skill-net rnn` (the state-mode default) it is robomimic's BC-RNN-GMM, which MimicGen trains on
  generated data: an LSTM over training sequences of `rnn_horizon` steps cut from the skill
  segments (padded at the segment's end, robomimic's SequenceDataset), its state reset every
  `rnn_horizon` steps at deployment; `--skill-net mlp` is BC-GMM on one (frame-stacked) step;
- termination classifier T_θi: observation -> P(stage i done), binary cross-entropy (Eq. 3) on the
  ground-truth `stage_done[:, i]` labels of stage i's skill steps and the few steps after it.

`--obs state`: proprio + object poses (privileged, HSP-Priv). `--obs image`: the
task's cameras (DrQ-v2 conv trunk each, random-shift augmentation) + proprio, with a history of 3
frames; the data file must have camera observations (`01_generate.py --images`, or rendered
afterwards from the stored states with `01_generate.py --images-from data/<task>/generated.hdf5`,
which writes generated_images.hdf5: pass it with --data).

Demos are split into train / validation (`val_fraction` of the demos, at least one); validation
losses are logged beside the training losses. Output in <out>/<task>/:
hsp.pt (DESIGN.md format), hsp_config.json, hsp_losses.json, hsp_losses.png.

With `--select-trials N`, each stage's skill is the snapshot (a validation evaluation of the
second half of its training) that succeeds most often in N rollouts, started where held-out demos'
skills began (`--select-starts demos`) or where HSP-Priv episodes with the skills chosen for the
earlier stages reach the skill (`--select-starts loop`, the default: the states deployment gives it).

Interrupted runs resume: every network is saved to <out>/<task>/hsp_progress/ as soon as it is
trained, with a key of everything that determines it (data file, configuration, steps, seed); a
rerun of the same command loads those and trains only the rest (each network draws its minibatches
from its own seeded generator, so a resumed run equals an uninterrupted one). `--fresh` ignores
them. The skill selection's trials are logged there too, so an interrupted selection resumes. The
folder is removed once hsp.pt is complete.

    python 02_train_hsp.py --task Threading_D2 --obs state --preset quick     # about a minute on CPU
    python 02_train_hsp.py --task Threading_D2 --obs image --preset paper --device cuda \
        --data data/Threading_D2/generated_images.hdf5
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import time

import numpy as np
import torch
from tqdm import tqdm

import common
from common import data as D
from common import pose as P
from common.env import check_task_name, default_cameras, make_env, object_in_eef_frame, proprio_without_joints
from common.hsp_checkpoint import CheckpointError, atomic_torch_save, load_checkpoint, save_checkpoint
from common.nets import ObsNormalizer, build_stage_models, count_params, get_obs, rot6d_to_matrix
from common.presets import IMAGE_SIZE, get_preset, select_seed

# State-mode inputs: proprio + object poses (world frame) + object poses in the end-effector frame.
# The last is derived from the first two (common.env.object_in_eef_frame) and is what makes the
# skills precise: 264 Threading demos, HSP-Priv 38 % without it (see README, Table I).
STATE_KEYS = ("proprio", "object", "object_rel")  # the default inputs of --obs state
# --state-keys may also name proprio_without_joints (robomimic's low-dim robot keys), instead of proprio
STATE_KEY_CHOICES = STATE_KEYS + ("proprio_without_joints",)
DERIVED_KEYS = ("object_rel", "proprio_without_joints")  # recomputed from proprio (+ object) when loading
# Each network keeps its weights from the validation evaluation where this metric was lowest
# (early stopping; --keep-last turns it off). Skills are selected on the deterministic action's
# error, not the GMM NLL: the NLL keeps worsening as the variances shrink while the mode improves.
# On 100 NutAssembly demos the grasp skill's action MSE doubles between 5k and 20k steps.
SELECT_METRIC = {"pose": "loss", "skill": "action_mse", "termination": "loss"}
VAL_MAX_ROWS = 4096  # validation rows per network (a fixed random subset of the held-out demos' rows)
# The presets' settings of the snapshot selection: they determine its trials (selection_key), not
# the networks (progress_key), so a rerun with other values redoes the selection, not the training.
SELECTION_HP = ("select_trials", "select_starts", "select_actions")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="Threading_D2", help=f"one of: {', '.join(sorted(common.TASKS))}")
    p.add_argument("--obs", default="state", choices=["state", "image"])
    p.add_argument("--preset", default="quick", choices=["quick", "paper"])
    p.add_argument("--state-keys", nargs="+", default=list(STATE_KEYS), choices=list(STATE_KEY_CHOICES),
                   help="low-dimensional inputs in --obs state (ablations: drop object_rel; "
                        "proprio_without_joints instead of proprio: no joint positions)")
    p.add_argument("--data", default=None, help="generated HDF5 (default: data/<task>/generated.hdf5)")
    p.add_argument("--out", default="runs", help="output root; files go to <out>/<task>/")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-on-device", action="store_true",
                   help="hold the observations (images) on --device and draw batches there instead of copying "
                        "each batch from host memory: about a third faster per image step on a GPU "
                        "(bench/bench_image_step.py --images-on-device); needs the data to fit in its memory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is much faster on a busy CPU)")
    p.add_argument("--steps", type=int, default=None,
                   help="gradient steps for every network (default: preset's skill/pose/termination steps)")
    for kind in ("skill", "pose", "termination"):
        p.add_argument(f"--{kind}-steps", type=int, nargs="+", default=None,
                       help=f"gradient steps of the {kind} networks (overrides --steps and the preset): one value "
                            f"for every stage, or one per stage (e.g. more for a task's hardest skill)")
    p.add_argument("--epochs", type=float, default=None,
                   help="instead of --steps: passes over each network's training set")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--lr-schedule", default=None, choices=["constant", "cosine"],
                   help="learning rate over each network's steps: constant (robomimic) or cosine decay to 0")
    p.add_argument("--hidden", type=int, nargs="+", default=None, help="MLP hidden sizes, e.g. 1024 1024")
    p.add_argument("--skill-net", default=None, choices=["mlp", "rnn"],
                   help="skill policy: robomimic BC-RNN-GMM (rnn: LSTM --rnn-hidden x 2 layers over sequences of "
                        "--rnn-horizon steps, GMM head on it; the default for --obs state) or BC-GMM (mlp, "
                        "hidden sizes --hidden, on a frame-stacked history; the default for --obs image)")
    p.add_argument("--rnn-hidden", type=int, default=None,
                   help="LSTM width of --skill-net rnn (paper preset: robomimic's 400; quick: 128)")
    p.add_argument("--rnn-horizon", type=int, default=None,
                   help="training sequence length of --skill-net rnn; deployment resets the LSTM state this often")
    p.add_argument("--pose-modes", type=int, default=None,
                   help="hypotheses of the initiation pose head (1 = plain regression; see nets.PoseNet)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between validation evaluations")
    p.add_argument("--val-fraction", type=float, default=None, help="fraction of demos held out (0 = none)")
    p.add_argument("--grasp-symmetry", default="fold", choices=["fold", "none"],
                   help="fold: map each empty-gripper initiation pose to its twin (turned by π, or the task's "
                        "grasp_yaw_period) nearest the stage's most common grasp, and each placement into a "
                        "symmetric target (the task's place_yaw_period) likewise (a single mode for I_θi); "
                        "none: raw labels")
    p.add_argument("--select-trials", type=int, default=None,
                   help="choose each stage's skill among its snapshots by this many rollouts from held-out "
                        "demos' skill-start states (0 = keep the best validation evaluation; see README)")
    p.add_argument("--select-starts", default=None, choices=["demos", "loop"],
                   help="where the selection's trials start: where HSP-Priv episodes with the skills chosen for "
                        "the earlier stages reach the skill (loop, the default: the states deployment gives it; "
                        "needs --source), or held-out demos' skill starts (demos)")
    # not "sample": it draws from torch's global generator, not the trial's seed, so its trials
    # would be neither paired with the others nor the same on a resumed run
    p.add_argument("--select-actions", nargs="+", default=None, choices=["component", "mode"],
                   help="the skill-action rules each snapshot is tried with (AgentOptions.skill_action; default "
                        "component mode): the best (snapshot, rule) is kept, and the checkpoint stores the rule")
    p.add_argument("--source", default=None,
                   help="source demos for I^Priv in --select-starts loop (default: source.hdf5 beside --data)")
    p.add_argument("--select-workers", type=int, default=1, help="processes for the selection rollouts")
    p.add_argument("--max-demos", type=int, default=None, help="use only the first N demos of the file")
    p.add_argument("--keep-last", action="store_true",
                   help="keep each network's final weights instead of its best validation evaluation")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing hsp.pt even if it is of another obs mode")
    p.add_argument("--fresh", action="store_true",
                   help="train every network anew, ignoring those an interrupted run saved in hsp_progress/")
    p.add_argument("--no-tqdm", action="store_true", help="no progress bars (logs one line per evaluation)")
    args = p.parse_args(argv)
    check_task_name(args.task)
    args.data = args.data or os.path.join("data", args.task, "generated.hdf5")
    args.source = args.source or os.path.join(os.path.dirname(args.data), "source.hdf5")  # 01 writes both there
    return args


# ------------------------------------------------------------------------------------------ data
def load_flat(path: str, task: str, obs_mode: str, max_demos: int | None = None,
              state_keys=STATE_KEYS) -> dict:
    """Every demo's steps concatenated into flat arrays, plus per-row bookkeeping.

    Rows are time steps; `ep_start[r]` is the row of its episode's first step (for histories),
    `demo[r]` its demo number, `init_pose` the (n_demos, n_stages, 7) initiation poses,
    `init_ref_pose` the (n_demos, n_stages, 4, 4) reference-object poses there and
    `init_gripper_open` whether the gripper was open (empty) on arrival.
    """
    # the reference objects' poses are read where each skill starts (fold_grasp_symmetry)
    refs = tuple(f"datagen_info/object_poses/{st.reference_object}"
                 for st in common.TASKS[check_task_name(task)].stages)
    with D.open_dataset(path, task, require=D.REQUIRED_DEMO_KEYS + refs) as f:
        keys = D.demo_keys(f)[:max_demos]
        stages = json.loads(f["data"].attrs["stages"])
        connect_posture = str(f["data"].attrs.get("connect_posture", "reset"))  # absent before 2026-12-02
        g0 = f["data"][keys[0]]
        if obs_mode == "state":
            low_dim, cameras = list(state_keys), []
        else:
            low_dim = ["proprio"]
            have = [k[: -len("_image")] for k in g0["obs"].keys() if k.endswith("_image")]
            cameras = [c for c in default_cameras(task) if c in have]
            missing = [c for c in default_cameras(task) if c not in have]
            if missing or not cameras:
                raise D.DataError(f"{path} has no camera images for {', '.join(missing or default_cameras(task))}; "
                                  f"--obs image needs them: render them from the stored states with "
                                  f"`python 01_generate.py --task {task} --images-from {path}` (then pass "
                                  f"--data <out>/{task}/generated_images.hdf5), generate with --images, "
                                  f"or train with --obs state")
        obs_keys = low_dim + [f"{c}_image" for c in cameras]
        derived = [k for k in obs_keys if k in DERIVED_KEYS]  # always recomputed from proprio (+ object)
        needs = {"object_rel": ("proprio", "object"), "proprio_without_joints": ("proprio",)}
        stored = [k for k in obs_keys if k not in derived]
        stored += [k for k in dict.fromkeys(n for d in derived for n in needs[d]) if k not in stored]
        for k in stored:
            if k not in g0["obs"]:
                raise D.DataError(f"{path}: {keys[0]} lacks obs/{k} needed by --obs {obs_mode}")
        cols = {k: [] for k in stored}
        rest = {k: [] for k in ("actions", "stage", "phase", "stage_done", "demo", "ep_start")}
        init_pose, init_ref, init_open, row = [], [], [], 0
        for j, k in enumerate(tqdm(keys, desc="loading demos", leave=False)):
            g = f["data"][k]
            T = g["actions"].shape[0]
            for ok in stored:
                cols[ok].append(g["obs"][ok][()])
            rest["actions"].append(g["actions"][()].astype(np.float32))
            rest["stage"].append(g["stage"][()].astype(np.int64))
            rest["phase"].append(g["phase"][()].astype(np.int64))
            rest["stage_done"].append(g["stage_done"][()].astype(bool))
            rest["demo"].append(np.full(T, j, dtype=np.int64))
            rest["ep_start"].append(np.full(T, row, dtype=np.int64))
            init_pose.append(g["init_pose"][()].astype(np.float64))
            # the reference object's pose and the gripper command where each skill starts (its
            # initiation pose): for folding the gripper's half-turn symmetry (fold_grasp_symmetry)
            starts = g["skill_bounds"][:, 0]
            init_ref.append(np.stack([g[ref][a] for ref, a in zip(refs, starts)]))
            init_open.append(g["actions"][np.maximum(starts - 1, 0), 6] < 0)
            row += T
    data = {"obs": {k: np.concatenate(v) for k, v in cols.items()}}
    if "object_rel" in derived:
        n_objects = len(make_env(task, obs_mode="state").object_names)
        data["obs"]["object_rel"] = object_in_eef_frame(data["obs"]["proprio"], data["obs"]["object"], n_objects)
    if "proprio_without_joints" in derived:
        data["obs"]["proprio_without_joints"] = proprio_without_joints(data["obs"]["proprio"])
    data["obs"] = {k: data["obs"][k] for k in obs_keys}
    data.update({k: np.concatenate(v) for k, v in rest.items()})
    data.update(init_pose=np.stack(init_pose), init_ref_pose=np.stack(init_ref), init_gripper_open=np.stack(init_open),
                n_demos=len(keys), stages=stages, low_dim_keys=low_dim,
                cameras=cameras, demo_keys=keys, connect_posture=connect_posture)
    if obs_mode == "image":
        shape = data["obs"][f"{cameras[0]}_image"].shape[1:]
        if shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise D.DataError(f"{path}: images are {shape}, the DrQ-v2 encoder expects ({IMAGE_SIZE}, {IMAGE_SIZE}, 3)")
    return data


def fold_grasp_symmetry(init_pose: np.ndarray, ref_pose: np.ndarray, period: float = np.pi,
                        window_deg: float = 45.0, about: str = "grip"):
    """Fold the parallel-jaw gripper's half-turn symmetry (or a finer one, `period`, of a grasped
    knob: the task's `grasp_yaw_period`) out of one stage's initiation poses.

    An empty parallel-jaw gripper grasps the same way turned by π about its approach axis, so
    source demos (and the demos generated from them) grasp an object at either of two wrist yaws:
    NutAssembly's square-nut grasp is 70 % at -90° and 30 % at +90° about the nut, Threading's needle
    grasp 60/40 at 180°/0°. Regressing such labels averages the two into a pose that is neither.
    In the reference object's frame we take as canonical the label orientation with the most labels
    within `window_deg` (the most common grasp), and replace each label by whichever of itself and
    its twins (turned by multiples of `period` about the approach axis) is nearest to it. A label is
    turned only when a twin lands nearer the common grasp than it is, so every folded label is a
    grasp the demos (and so the skill policy) know. Positions are unchanged (the turn is about the
    grip site). Returns (poses (N, 7), turn (N,)): the angle each label was turned by, 0 where it
    was kept (see `turn_shares`).

    `about="reference"` folds a placement instead: the twins turn about the reference object's
    vertical axis through its origin (ThreePiece's square hole: piece 1 fits it every 90°), which
    moves the label's position with it.
    """
    T = np.stack([P.pose7_to_mat(p) for p in init_pose])
    rel = np.einsum("nji,njk->nik", ref_pose[:, :3, :3], T[:, :3, :3])  # R_ref^T R_eef
    def angle(A, B):  # pairwise rotation angle (deg) between stacks A (n, 3, 3) and B (m, 3, 3)
        cos = (np.einsum("aij,bij->ab", A, B) - 1.0) / 2.0
        return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    pick = np.linspace(0, len(rel) - 1, min(len(rel), 256)).astype(int)  # candidates for the canonical grasp
    canonical = rel[pick[(angle(rel[pick], rel) < window_deg).sum(1).argmax()]]
    angles = P.symmetry_turns(period)
    turns = [P.axisangle_to_mat([0.0, 0.0, a]) for a in angles]  # angles[0] = 0: itself
    if about not in ("grip", "reference"):
        raise ValueError(f"about = {about!r}; choose 'grip' or 'reference'")
    twin = (lambda Rz: rel @ Rz) if about == "grip" else (lambda Rz: Rz @ rel)
    dist = np.stack([angle(twin(Rz), canonical[None])[:, 0] for Rz in turns], axis=1)  # (N, number of turns)
    best = dist.argmin(axis=1)
    out = np.array(init_pose, dtype=np.float64, copy=True)
    for j in np.flatnonzero(best > 0):
        out[j] = P.mat_to_pose7(P.symmetry_twin(T[j], angles[best[j]], about, ref_pose[j]))
    return out, np.asarray(angles, dtype=np.float64)[best]


def turn_shares(turn: np.ndarray, period: float) -> list[float]:
    """Share of a stage's demos at each twin of the folded (common) pose, in the order of
    `P.symmetry_turns(period)` (index 0: the common pose itself). A label turned by a onto the
    common pose was a demo at the common pose's twin turned by -a. The agent takes a learned pose's
    twin for joint-limit room only where the skill has seen demos start there (HSPAgent._roomier_pose):
    NutAssembly's square-nut grasps are 70/30 over the two twins, ThreePiece's source demos grasp
    each piece at one yaw only."""
    n = len(P.symmetry_turns(period))
    k = np.round(np.mod(-np.asarray(turn, dtype=np.float64), 2 * np.pi) / period).astype(int) % n
    return [float(np.mean(k == j)) for j in range(n)]


def gripper_values(commands: np.ndarray, max_values: int = 5) -> list[float] | None:
    """The distinct gripper commands of the data (e.g. [-1, 0, 1]), or None when continuous."""
    values = np.unique(np.round(np.asarray(commands, dtype=np.float64), 4))
    return [float(v) for v in values] if len(values) <= max_values else None


def skill_net_config(hp: dict) -> dict:
    """π_θi's network config: robomimic BC-GMM (MLP `hidden`) or BC-RNN-GMM (robomimic's BC-RNN:
    an LSTM of `rnn_hidden` x `rnn_layers`, no MLP after it, sequences of `rnn_horizon` steps)."""
    c = {"gmm_modes": int(hp["gmm_modes"]), "gmm_min_std": float(hp["gmm_min_std"])}
    if hp["skill_net"] == "rnn":
        return dict(c, hidden=list(hp["rnn_mlp"]), rnn_hidden=int(hp["rnn_hidden"]), rnn_layers=int(hp["rnn_layers"]),
                    rnn_horizon=int(hp["rnn_horizon"]))
    if hp["skill_net"] != "mlp":
        raise ValueError(f"skill_net {hp['skill_net']!r}: choose mlp or rnn")
    return dict(c, hidden=list(hp["hidden"]))


def connect_gripper(data: dict, i: int) -> float | None:
    """The most common gripper command on stage i's connect rows (None if the data has none)."""
    rows = (data["stage"] == i) & (data["phase"] == D.PHASE_CONNECT)
    if not rows.any():
        return None
    values, counts = np.unique(np.round(data["actions"][rows, 6].astype(np.float64), 4), return_counts=True)
    return float(values[counts.argmax()])


def post_termination_steps(data: dict, i: int) -> int:
    """Median number of skill steps stage i's demos keep after T_i(s) first holds (0 if none).

    The source demos' skill segments do not end where the stage check first holds: a grasp goes on
    lifting, an insertion opens the fingers and backs off (NutAssembly: 20 and 10 steps). Stopping
    the skill the moment T fires starts the next connect from states the data never shows (fingers
    half closed, the nut still dropping down the peg), where I_θ's predictions are far off. The
    agent finishes the skill for this many steps, as MimicGen's subtask_term_offset_range does."""
    skill = np.flatnonzero((data["stage"] == i) & (data["phase"] == D.PHASE_SKILL))
    if not len(skill):
        return 0
    tails = []
    for last in np.unique(segment_end(data, skill)):
        rows = skill[(skill <= last) & (data["demo"][skill] == data["demo"][last])]
        done = data["stage_done"][rows, i].astype(bool)
        if done.any():
            tails.append(len(rows) - 1 - int(np.argmax(done)))  # steps after the first row where T_i holds
    return int(np.median(tails)) if tails else 0


def move_obs_to_device(data: dict, device) -> None:
    """--data-on-device: the observation arrays become tensors on `device` (in place); get_obs then
    indexes them there."""
    try:
        data["obs"] = {k: torch.from_numpy(v).to(device) for k, v in data["obs"].items()}
    except torch.OutOfMemoryError:
        need = sum(v.nbytes for v in data["obs"].values())
        raise SystemExit(f"error: --data-on-device: the observations ({need / 2**30:.1f} GiB) do not fit on "
                         f"{device}; drop --data-on-device (batches are then copied from host memory) or "
                         f"train on fewer demos (--max-demos)") from None


def segment_end(data: dict, rows: np.ndarray) -> np.ndarray:
    """For each of `rows` (one stage's skill rows, ascending), the last row of its demo's segment."""
    demo = data["demo"][rows]
    ends = np.r_[np.flatnonzero(np.diff(demo)), len(rows) - 1]  # segments are contiguous per demo
    return rows[ends][np.searchsorted(demo[ends], demo)]


def sequence_rows(starts: np.ndarray, seg_end: np.ndarray, length: int) -> np.ndarray:
    """(B,) start rows -> (B, length) rows of a training sequence for BC-RNN. As robomimic's
    SequenceDataset (pad_seq_length), a sequence that would run past its skill segment repeats
    the segment's last step."""
    return np.minimum(starts[:, None] + np.arange(length)[None, :], seg_end[:, None])


def stage_rows(data: dict, i: int, after_steps: int) -> dict[str, np.ndarray]:
    """Rows each network of stage i trains on."""
    stage, phase = data["stage"], data["phase"]
    pose = np.flatnonzero((stage == i) & (phase == D.PHASE_CONNECT))
    skill = np.flatnonzero((stage == i) & (phase == D.PHASE_SKILL))
    # termination: the stage's skill steps plus up to `after_steps` steps after the stage ends (same
    # episode), where T_i(s) normally holds: the classifier sees both sides of the boundary.
    term = [skill]
    for last in (np.unique(segment_end(data, skill)) if len(skill) else []):
        ep_rows = np.flatnonzero(data["demo"] == data["demo"][last])
        term.append(np.arange(last + 1, min(last + 1 + after_steps, ep_rows.max() + 1)))
    return {"pose": pose, "skill": skill, "termination": np.unique(np.concatenate(term))}


# ------------------------------------------------------------------------------------------ losses
def make_loss_fns(data: dict, i: int, frame_stack: int, device, pos_weight: float, seq_len: int = 0):
    """loss(net, rows, metrics=False) -> (loss, {metric: value}) for each network kind of stage i.
    seq_len > 0: the skill is a BC-RNN and each row starts a training sequence of seq_len steps.
    metrics=True adds each kind's interpretable validation metric where it costs a forward pass."""
    init_R = torch.tensor(P.quat_to_mat(data["init_pose"][:, i, 3:7].reshape(-1, 4)), dtype=torch.float32)
    init_pos = torch.tensor(data["init_pose"][:, i, :3], dtype=torch.float32)
    actions = torch.from_numpy(data["actions"])
    done = torch.from_numpy(data["stage_done"][:, i].astype(np.float32))
    seg_end = np.full(len(data["actions"]), -1, dtype=np.int64)  # BC-RNN: where each skill row's segment ends
    skill_rows = np.flatnonzero((data["stage"] == i) & (data["phase"] == D.PHASE_SKILL))
    if seq_len > 0 and len(skill_rows):
        seg_end[skill_rows] = segment_end(data, skill_rows)

    def pose(net, rows, metrics=False):
        obs = get_obs(data, rows, frame_stack, device)
        demo = data["demo"][rows]
        pos, R = init_pos[demo].to(device), init_R[demo].to(device)
        loss, l_pos, l_rot = net.loss(obs, pos, R)
        return loss, {"pos_mse": l_pos.item(), "rot_mse": l_rot.item()}

    def skill(net, rows, metrics=False):
        if seq_len > 0:
            rows = sequence_rows(rows, seg_end[rows], seq_len)  # (B, T)
        obs, act = get_obs(data, rows, frame_stack, device), actions[rows].to(device)
        loss = net.loss(obs, act)
        if not metrics:
            return loss, {}
        # the deterministic action's error: a closer proxy for rollouts than the NLL (SELECT_METRIC)
        return loss, {"action_mse": ((net.mode(obs) - act.reshape(-1, act.shape[-1])) ** 2).mean().item()}

    def termination(net, rows, metrics=False):
        obs = get_obs(data, rows, frame_stack, device)
        return net.loss(obs, done[rows].to(device), pos_weight), {}

    return {"pose": pose, "skill": skill, "termination": termination}


@torch.no_grad()
def val_metrics(kind: str, net, data: dict, i: int, rows: np.ndarray, frame_stack: int, device, loss_fn,
                chunk: int = 512) -> dict:
    """Validation loss plus an interpretable metric per network kind (means over `rows`)."""
    net.eval()
    out, n = {}, 0
    for s in range(0, len(rows), chunk):
        r = rows[s:s + chunk]
        loss, extra = loss_fn(net, r, metrics=True)
        m = {"loss": loss.item()}
        if kind == "pose":
            obs = get_obs(data, r, frame_stack, device)
            pos, r6 = net(obs)
            R = rot6d_to_matrix(r6).cpu().double().numpy()
            tgt = data["init_pose"][data["demo"][r], i]
            m["pos_err_m"] = float(np.linalg.norm(pos.cpu().numpy() - tgt[:, :3], axis=1).mean())
            Rt = P.quat_to_mat(tgt[:, 3:7])
            cos = (np.einsum("bij,bij->b", R, Rt) - 1.0) / 2.0
            m["rot_err_deg"] = float(np.degrees(np.arccos(np.clip(cos, -1, 1))).mean())
        elif kind == "skill":
            m["action_mse"] = extra["action_mse"]
        else:
            p = net.prob(get_obs(data, r, frame_stack, device)).cpu().numpy()
            y = data["stage_done"][r, i]
            m["accuracy"] = float(((p > 0.5) == y).mean())
        for k, v in m.items():
            out[k] = out.get(k, 0.0) + v * len(r)
        n += len(r)
    net.train()
    return {k: v / n for k, v in out.items()}


def train_net(desc, kind, net, loss_fn, train_rows, val_rows, steps, hp, rng, device, data, i, frame_stack,
              no_tqdm=False, snapshots: dict | None = None) -> dict:
    """Adam on random minibatches of `train_rows`; validation every `eval_every` steps and at the end.
    `snapshots`, if given, receives {step: weights} at the evaluations of the run's second half."""
    hist = {"step": [], "train": [], "val": [], "val_metrics": [], "lr": []}
    if len(train_rows) == 0 or steps <= 0:
        print(f"[{desc}] no training rows ({len(train_rows)}) or steps ({steps}): left at initialization")
        return hist
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    # Cosine decay to 0 over the run: a short CPU run at a high lr otherwise ends on noisy weights.
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
             if hp["lr_schedule"] == "cosine" else None)
    run_sum, run_n, val = 0.0, 0, None
    best_score, best_state, best_step = math.inf, None, None
    bar = tqdm(range(steps), desc=desc, disable=no_tqdm, leave=True)
    for step in bar:
        rows = train_rows[rng.integers(0, len(train_rows), size=hp["batch_size"])]
        loss, _ = loss_fn(net, rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        run_sum, run_n = run_sum + loss.item(), run_n + 1
        if (step + 1) % hp["eval_every"] == 0 or step + 1 == steps:
            vm = val_metrics(kind, net, data, i, val_rows, frame_stack, device, loss_fn) if len(val_rows) else None
            val = vm["loss"] if vm else None
            hist["step"].append(step + 1)
            hist["train"].append(run_sum / run_n)
            hist["val"].append(val)
            hist["val_metrics"].append(vm)
            hist["lr"].append(opt.param_groups[0]["lr"])  # the rate the next step would use
            if snapshots is not None and step + 1 >= steps / 2:
                snapshots[step + 1] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            if vm is not None and hp.get("keep_best", True) and vm[SELECT_METRIC[kind]] < best_score:
                best_score, best_step = vm[SELECT_METRIC[kind]], step + 1
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            if no_tqdm:
                print(f"[{desc}] step {step + 1}/{steps} train {run_sum / run_n:.4f} val "
                      f"{'-' if vm is None else ', '.join(f'{k} {v:.4f}' for k, v in vm.items())}")
            run_sum, run_n = 0.0, 0
        bar.set_postfix(loss=f"{loss.item():.4f}", val="-" if val is None else f"{val:.4f}", refresh=False)
    bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
        hist["best_step"] = best_step
        if best_step != steps:
            print(f"[{desc}] keeping step {best_step} (best validation {SELECT_METRIC[kind]} {best_score:.4f})")
    net.eval()
    return hist


# ------------------------------------------------------------------------------------------ selection
def select_skills(args, ckpt_path, out_dir, data, val_demos, snapshots, losses, stages, n_trials, starts_from,
                  actions: list, log_path: str, key: str) -> tuple[list, list]:
    """Choose each stage's skill among its snapshots (the validation evaluations of the second half
    of its training), each acting by each rule of `actions` (AgentOptions.skill_action), by rollout
    success; put the winning snapshot into `stages` (in place) and return the selection's record
    with the winning rule per stage.

    Validation losses say little about closed-loop success (robomimic, Mandlekar et al. 2021; MimicGen
    reports the best checkpoint by rollouts). Here every snapshot of stage i runs the same
    `n_trials` trials, each from a sim state where stage i's skill begins, run to termination (the
    oracle check). Where those states come from (`starts_from`):

    - "demos": the held-out demos' skill starts (cycled through, with a new seed for the GMM
      component draws each lap): kept demos of the data generator, whose earlier stages replayed
      a source demo's skills;
    - "loop": the first `n_trials` seeds whose HSP-Priv episode (Table I's privileged row: I^Priv,
      the skills chosen for the earlier stages, oracle termination) reaches stage i's skill: the
      states deployment brings the skill to. Stages are chosen in order, and the episodes' seeds
      are 02's own (presets.select_seed), never the evaluation's.

    Every (snapshot, rule) runs the same trials with the same seeds, so they are compared paired.
    Ties go to the best validation evaluation, then the later step, then the rule listed first. Each
    trial's outcome is appended to `log_path` under `key` as it finishes: an interrupted selection
    resumes with the trials it has not run (a loop selection re-runs its start episodes, which are
    seeded).
    """
    from common.hsp import SkillTrials

    names = [f"stage{i}_{st['name']}" for i, st in enumerate(data["stages"])]
    cand_path = os.path.join(out_dir, "hsp_skill_snapshots.pt")
    atomic_torch_save({"stages": [{str(k): v for k, v in snaps.items()} for snaps in snapshots]}, cand_path)
    logged = {}
    if os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # a line cut short by the interruption
                if r.get("key") == key:
                    logged[(r["stage"], r["step"], r.get("action"), r["seed"])] = bool(r["ok"])
    n_cand = sum(len(s) for s in snapshots)
    print(f"skill selection: {n_cand} snapshots x {len(actions)} action rules ({', '.join(actions)}) x "
          f"{n_trials} trials from "
          + (f"{len(val_demos)} held-out demos' skill starts" if starts_from == "demos"
             else "in-loop skill starts (HSP-Priv episodes)") + f", {args.select_workers} workers")
    selection, chosen = [], {}  # chosen: stage -> (snapshot step, action rule)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with SkillTrials(args.task, ckpt_path, cand_path, workers=args.select_workers, device=args.device,
                     source=args.source if starts_from == "loop" else None) as runner, open(log_path, "a") as log:
        for i, snaps in enumerate(snapshots):
            if starts_from == "demos":
                starts, reach = demo_starts(args, data, val_demos, i, n_trials), None
            else:
                starts, reach = loop_starts(runner, i, chosen, n_trials, args)
            cands = [(step, how) for step in snaps for how in actions]
            jobs = [("trial", i, step, how, start.state, start.gripper_commands, seed, start.steps)
                    for start, seed in starts for step, how in cands]
            wins = {c: [0, 0] for c in cands}
            bar = tqdm(total=len(jobs), desc=f"{names[i]} skill selection", unit="trial", disable=args.no_tqdm)

            def count(cand, ok):
                wins[cand][0] += int(ok)
                wins[cand][1] += 1
                bar.update(1)

            todo = []
            for job in jobs:
                if (i, job[2], job[3], job[6]) in logged:
                    count((job[2], job[3]), logged[(i, job[2], job[3], job[6])])
                else:
                    todo.append(job)
            if len(todo) < len(jobs):
                print(f"[{names[i]} skill] {len(jobs) - len(todo)} trials resumed from {log_path}")

            def progress(res):
                _, _, step, how, seed, ok, _ = res
                count((step, how), ok)
                log.write(json.dumps({"key": key, "stage": i, "step": int(step), "action": how, "seed": int(seed),
                                      "ok": bool(ok)}) + "\n")
                log.flush()

            runner.run(todo, progress=progress)
            bar.close()
            best_val = losses[names[i]]["skill"].get("best_step")
            rows = [{"step": int(step), "action": how, "successes": wins[(step, how)][0],
                     "trials": wins[(step, how)][1],
                     "val_action_mse": losses[names[i]]["skill"]["val_metrics"][
                         losses[names[i]]["skill"]["step"].index(step)]["action_mse"],
                     "best_validation": step == best_val} for step, how in cands]
            best = max(rows, key=lambda r: (r["successes"], r["best_validation"], r["step"],
                                            -actions.index(r["action"])))
            stages[i]["skill"] = snapshots[i][best["step"]]
            chosen[i] = (best["step"], best["action"])
            selection.append({"stage": names[i], "chosen_step": best["step"], "chosen_action": best["action"],
                              "starts": starts_from, "candidates": rows, **({"episodes": reach} if reach else {})})
            print(f"[{names[i]} skill] " + ", ".join(
                f"{'*' if r is best else ''}{label(r)}: {r['successes']}/{r['trials']}" for r in rows))
    with open(os.path.join(out_dir, "hsp_skill_selection.md"), "w") as f:
        f.write(selection_markdown(selection, starts_from, actions))
    write_json(os.path.join(out_dir, "hsp_skill_selection.json"), selection)
    return selection, [chosen[i][1] if i in chosen else "component" for i in range(len(snapshots))]


def label(row: dict) -> str:
    return f"{row['step']} {row['action']}"


def selection_markdown(selection: list, starts_from: str, actions: list) -> str:
    """hsp_skill_selection.md: per stage and snapshot, successes/trials of each action rule; the
    chosen (snapshot, rule) in bold."""
    where = ("held-out demos' skill-start states" if starts_from == "demos" else
             "in-loop skill starts (HSP-Priv episodes with the skills chosen for the earlier stages)")
    md = [f"Skill success from {where}: successes/trials per snapshot and action rule, the chosen one in bold",
          "", "| stage | snapshot step | " + " | ".join(actions) + " |"
          + (" episodes reaching the skill / run |" if starts_from == "loop" else ""),
          "|---|---|" + "---|" * (len(actions) + (starts_from == "loop"))]
    for sel in selection:
        by = {(r["step"], r["action"]): r for r in sel["candidates"]}
        for k, step in enumerate(dict.fromkeys(r["step"] for r in sel["candidates"])):
            cells = []
            for how in actions:
                r = by.get((step, how))
                cell = f"{r['successes']}/{r['trials']}" if r else "-"
                cells.append(f"**{cell}**" if (step, how) == (sel["chosen_step"], sel.get("chosen_action")) else cell)
            ep = sel.get("episodes")
            md.append(f"| {sel['stage'] if k == 0 else ''} | {step} | " + " | ".join(cells) + " |"
                      + (f" {ep['reached']}/{ep['run']} |" if ep and k == 0 else " |" if ep else ""))
    return "\n".join(md) + "\n"


def demo_starts(args, data, val_demos, i: int, n_trials: int) -> list:
    """[(SkillStart, GMM seed)]: stage i's skill starts of the held-out demos, cycled to n_trials."""
    from common.hsp import SkillStart
    starts = []
    with D.open_dataset(args.data, args.task) as f:
        for j in val_demos:
            g = f["data"][data["demo_keys"][j]]
            a = int(g["skill_bounds"][i, 0])
            if a >= 0:
                starts.append(SkillStart(g["states"][a], g["actions"][:a, 6], 0))
    return [(starts[t % len(starts)], 1_000_003 * i + t) for t in range(n_trials)] if starts else []


# An in-loop selection runs at most this many episodes per start it wants: a stage that few
# episodes reach is scored on the starts there are rather than searched for without end.
LOOP_EPISODES_PER_START = 4


def loop_starts(runner, i: int, chosen: dict, n: int, args) -> tuple[list, dict]:
    """[(SkillStart, seed)] of the first n seeds (in order) whose HSP-Priv episode, with the skills
    chosen for stages before i (chosen: stage -> (snapshot step, action rule)), reaches stage i's skill; and how many episodes that took, with the
    reasons the others ended (e.g. an earlier skill failing, a plan not found)."""
    reached, ended, k, cap = {}, {}, 0, LOOP_EPISODES_PER_START * n
    bar = tqdm(total=n, desc=f"stage {i} in-loop skill starts", unit="start", disable=args.no_tqdm)
    while len(reached) < n and k < cap:
        rate = len(reached) / k if reached else 1.0  # episodes for the starts still missing, at the rate so far
        batch = min(cap - k, max(args.select_workers, int(math.ceil((n - len(reached)) / max(rate, 0.25)))))
        jobs = [("start", i, select_seed(args.seed, k + j), dict(chosen)) for j in range(batch)]
        for _, _, seed, start, failure in runner.run(jobs):
            if start is not None:
                reached[seed] = start
                bar.update(int(len(reached) <= n))
            else:
                head, _, rest = (failure or "episode ended").partition(": ")
                ended[seed] = f"{head}: {' '.join(rest.split()[:4])}".rstrip(": ")  # "stage 0: skill did not terminate"
        k += batch
    bar.close()
    seeds = sorted(reached)[:n]
    # count the episodes up to the n-th start only: the batches' sizes depend on --select-workers
    last = seeds[-1] if len(seeds) == n else select_seed(args.seed, k - 1)
    failures = {}
    for seed, why in ended.items():
        if seed <= last:
            failures[why] = failures.get(why, 0) + 1
    run = sum(1 for s in list(reached) + list(ended) if s <= last)
    if len(seeds) < n:
        print(f"[stage {i}] warning: {len(seeds)} of {run} HSP-Priv episodes reached the skill, "
              f"fewer than the {n} trials asked for")
    return [(reached[s], s) for s in seeds], {"run": run, "reached": len(seeds), "ended_before": failures}


# ------------------------------------------------------------------------------------------ outputs
def plot_losses(losses: dict, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = ["pose", "skill", "termination"]
    n = len(losses)
    fig, axes = plt.subplots(n, 3, figsize=(12, 3 * n), squeeze=False)
    for i, (stage, per_kind) in enumerate(losses.items()):
        for j, kind in enumerate(kinds):
            ax, h = axes[i][j], per_kind[kind]
            ax.plot(h["step"], h["train"], label="train")
            if any(v is not None for v in h["val"]):
                ax.plot(h["step"], [np.nan if v is None else v for v in h["val"]], label="validation")
            ax.set_title(f"{stage}: {kind}" + (" (NLL)" if kind == "skill" else " (BCE)" if kind == "termination" else ""))
            ax.set_xlabel("gradient step")
            if kind == "skill":  # the GMM NLL goes negative, and its validation value may blow up
                ax.set_yscale("symlog", linthresh=1.0)
            else:
                ax.set_yscale("log")
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_json(path: str, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def stage_value(values: list, i: int, n_stages: int, flag: str):
    """Stage i's entry of a per-stage flag given either one value (every stage) or one per stage."""
    if len(values) == 1:
        return values[0]
    if len(values) != n_stages:
        raise SystemExit(f"error: {flag} takes one value or one per stage ({n_stages} for this task), "
                         f"got {len(values)}")
    return values[i]


def progress_key(config: dict, hp: dict, data_path: str) -> str:
    """What determines every network of a run: the configuration (data, split, nets, optimizer), the
    presets' values and the data file's identity (size and modification time)."""
    st = os.stat(data_path)
    blob = json.dumps([config, hp, st.st_size, st.st_mtime_ns], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


def selection_key(run_key: str, config: dict, hp: dict, args) -> str:
    """What determines the selection's trials: the networks, their steps, the selection's settings
    and, for in-loop starts, the source demos I^Priv reads (its file's size and modification time)."""
    parts = [run_key, config["train"]["steps"], {k: hp[k] for k in SELECTION_HP}]
    if hp["select_starts"] == "loop":
        st = os.stat(args.source)
        parts.append([os.path.abspath(args.source), st.st_size, st.st_mtime_ns])
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def load_progress(path: str, key: str):
    """A network an interrupted run saved (weights, history, skill snapshots), or None if absent or
    from another configuration."""
    if not os.path.exists(path):
        return None
    try:
        saved = torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 (a damaged file is retrained, never trusted)
        return None
    return saved if saved.get("key") == key else None


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.time()
    hp = get_preset(args.preset)["hsp"]
    for k, v in (("batch_size", args.batch_size), ("lr", args.lr), ("lr_schedule", args.lr_schedule),
                 ("hidden", args.hidden), ("skill_net", args.skill_net), ("rnn_hidden", args.rnn_hidden),
                 ("rnn_horizon", args.rnn_horizon),
                 ("eval_every", args.eval_every), ("val_fraction", args.val_fraction),
                 ("pose_modes", args.pose_modes), ("select_trials", args.select_trials),
                 ("select_starts", args.select_starts), ("select_actions", args.select_actions)):
        if v is not None:
            hp[k] = v
    hp["select_actions"] = list(dict.fromkeys(hp["select_actions"]))  # in order, once each
    hp["keep_best"] = not args.keep_last
    if isinstance(hp["skill_net"], dict):  # the preset's choice for this obs mode
        hp["skill_net"] = hp["skill_net"][args.obs]
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    device = torch.device(args.device)
    out_dir = os.path.join(args.out, args.task)
    ckpt_path = os.path.join(out_dir, "hsp.pt")
    if os.path.exists(ckpt_path) and not args.overwrite:  # never silently replace another kind of model
        try:
            old = load_checkpoint(ckpt_path)
        except CheckpointError:
            old = None  # unreadable: nothing worth keeping
        if old is not None and (old["task"], old["obs_mode"]) != (args.task, args.obs):
            raise CheckpointError(
                f"{ckpt_path} holds a {old['obs_mode']}-mode HSP of task {old['task']!r}; refusing to replace "
                f"it with {'an' if args.obs == 'image' else 'a'} {args.obs}-mode one of {args.task!r}: "
                f"pass --out <another root> to keep both, or --overwrite to replace it")

    # ---- data, split by demo
    data = load_flat(args.data, args.task, args.obs, args.max_demos, args.state_keys)
    n_demos, n_stages = data["n_demos"], len(data["stages"])
    for kind in ("skill", "pose", "termination"):  # a wrong count fails now, not after stage 0's training
        if getattr(args, f"{kind}_steps") is not None:
            stage_value(getattr(args, f"{kind}_steps"), 0, n_stages, f"--{kind}-steps")
    n_val = 0 if hp["val_fraction"] <= 0 or n_demos < 2 else max(1, int(round(hp["val_fraction"] * n_demos)))
    val_demos = np.sort(rng.permutation(n_demos)[:n_val])
    is_val = np.isin(data["demo"], val_demos)
    frame_stack = int(hp["frame_stack"][args.obs])
    print(f"{args.task} ({args.obs}): {n_demos} demos ({n_demos - n_val} train, {n_val} validation), "
          f"{len(data['actions'])} steps, {n_stages} stages, cameras {data['cameras'] or '-'}, device {device}")

    # Grasp stages (the gripper arrives empty), and placements into a symmetric target: one mode
    # per initiation pose, see fold_grasp_symmetry.
    folded, turn_share = {}, [None] * n_stages
    task_cls = common.TASKS[args.task]
    symmetry = [task_cls.pose_symmetry(i, bool(data["init_gripper_open"][:, i].all())) for i in range(n_stages)]
    if args.grasp_symmetry == "fold":
        for i in range(n_stages):
            if symmetry[i] is None:
                continue
            period, about = symmetry[i]
            data["init_pose"][:, i], turn = fold_grasp_symmetry(data["init_pose"][:, i],
                                                                data["init_ref_pose"][:, i], period, about=about)
            folded[data["stages"][i]["name"]] = int((turn != 0).sum())
            turn_share[i] = turn_shares(turn, period)
        print("symmetry folded (initiation poses turned onto the stage's common one): "
              + (", ".join(f"{k} {v}/{n_demos}" for k, v in folded.items()) or "no stage"))

    train_mask, train_demos = ~is_val, ~np.isin(np.arange(n_demos), val_demos)
    normalizer = ObsNormalizer.fit({k: data["obs"][k][train_mask] for k in data["low_dim_keys"]})
    config = {
        "task": args.task, "obs_mode": args.obs, "n_stages": n_stages, "action_dim": 7,
        "stage_names": [s["name"] for s in data["stages"]],
        # longest skill segment per stage in the data: deployment's step budget scales from it
        "max_skill_steps": [int(max(np.bincount(data["demo"][(data["stage"] == i) & (data["phase"] == D.PHASE_SKILL)],
                                                 minlength=1).max(), 1)) for i in range(n_stages)],
        # the gripper commands the demos use (robosuite integrates the command's sign, so -1 opens,
        # +1 closes and 0 holds the fingers where they are): deployment snaps π_θi's gripper output
        # to the nearest of them; None if the data's gripper commands are continuous
        "gripper_values": gripper_values(data["actions"][:, 6]),
        # the gripper command of each stage's connect segments in the data: generation (as MimicGen's
        # interpolation) holds the skill's first command while it approaches, e.g. CoffeePreparation
        # closes the fingers on the way to the drawer handle although the lid skill ended open;
        # deployment connects the same way
        "connect_gripper": [connect_gripper(data, i) for i in range(n_stages)],
        # how the data's connects resolved the arm's redundancy (01 --connect-posture): the skills
        # start from arms posed that way, so deployment connects the same way
        "connect_posture": data["connect_posture"],
        # skill steps the demos keep after T_i(s) first holds: deployment runs each skill this much
        # longer once T fires, so the next connect starts where the data's did
        "post_termination_steps": [post_termination_steps(data, i) for i in range(n_stages)],
        # (period, about) of each stage's initiation-pose symmetry the labels were folded by, or
        # None: when I_θi's pose has no IK solution or path, the agent tries its twins
        "pose_symmetry": [list(symmetry[i]) if symmetry[i] is not None and data["stages"][i]["name"] in folded
                          else None for i in range(n_stages)],
        # per folded stage, the share of demos at each twin of the common pose (turn_shares): the
        # agent only turns a learned pose onto a twin the skill has seen for joint-limit room
        "pose_turn_share": turn_share,
        "obs": {"obs_mode": args.obs, "low_dim_keys": data["low_dim_keys"],
                "low_dim_sizes": {k: int(data["obs"][k].shape[1]) for k in data["low_dim_keys"]},
                "cameras": data["cameras"], "frame_stack": frame_stack, "feature_dim": int(hp["feature_dim"]),
                "shift_pad": int(hp["shift_pad"]), "image_size": IMAGE_SIZE},
        "nets": {"pose": {"hidden": list(hp["hidden"]), "modes": int(hp["pose_modes"])},
                 "skill": skill_net_config(hp),
                 "termination": {"hidden": list(hp["hidden"])}},
        "train": {"preset": args.preset, "seed": args.seed, "data": os.path.abspath(args.data),
                  "n_demos": n_demos, "val_demos": [data["demo_keys"][j] for j in val_demos],
                  "lr": float(hp["lr"]), "lr_schedule": hp["lr_schedule"], "weight_decay": float(hp["weight_decay"]),
                  "batch_size": int(hp["batch_size"]), "eval_every": int(hp["eval_every"]),
                  "termination_after_steps": int(hp["termination_after_steps"]), "steps": {}, "pos_weight": [],
                  "grasp_symmetry": args.grasp_symmetry, "poses_turned": folded},
    }
    models = build_stage_models(config, normalizer)
    if args.data_on_device:
        move_obs_to_device(data, device)
    print("parameters per stage: " + ", ".join(f"{k} {count_params(v):,}" for k, v in models[0].items()))

    # ---- per-stage training
    losses, final = {}, {}
    skill_snapshots = [{} for _ in range(n_stages)]  # stage -> {step: weights}, for the selection below
    if hp["select_trials"] > 0 and hp["select_starts"] == "demos" and n_val == 0:
        raise SystemExit("error: --select-trials needs held-out demos to start its rollouts from; "
                         "use --val-fraction > 0, --select-starts loop or --select-trials 0")
    if hp["select_trials"] > 0 and hp["select_starts"] == "loop":
        with D.open_dataset(args.source, args.task):  # I^Priv's source demos: a bad file fails now, not after training
            pass
    progress_dir = os.path.join(out_dir, "hsp_progress")  # one file per trained network: resume
    if args.fresh:
        shutil.rmtree(progress_dir, ignore_errors=True)
    run_key = progress_key(config, {k: v for k, v in hp.items() if k not in SELECTION_HP}, args.data)
    kind_index = {"pose": 0, "skill": 1, "termination": 2}
    for i in range(n_stages):
        name = f"stage{i}_{data['stages'][i]['name']}"
        rows = stage_rows(data, i, int(hp["termination_after_steps"]))
        t = rows["termination"]
        n_pos = int(data["stage_done"][t[~is_val[t]], i].sum())
        n_neg = int((~is_val[t]).sum()) - n_pos
        if hp["termination_pos_weight"] == "balanced":
            pos_weight = float(np.clip(n_neg / n_pos, 0.1, 10.0)) if n_pos > 0 and n_neg > 0 else 1.0
        else:
            pos_weight = float(hp["termination_pos_weight"])
        if n_pos == 0:
            print(f"[{name}] warning: no positive termination labels in the training demos")
        config["train"]["pos_weight"].append(pos_weight)
        fns = make_loss_fns(data, i, frame_stack, device, pos_weight,
                            seq_len=config["nets"]["skill"].get("rnn_horizon", 0))
        pos = data["init_pose"][train_demos, i, :3]  # pose-net target statistics, training demos only
        models[i]["pose"].set_target_stats(pos.mean(0), np.maximum(pos.std(0), 1e-2))
        losses[name], final[name] = {}, {}
        for kind in ("pose", "skill", "termination"):
            r = rows[kind]
            tr, va = r[~is_val[r]], r[is_val[r]]
            if getattr(args, f"{kind}_steps") is not None:
                steps = stage_value(getattr(args, f"{kind}_steps"), i, n_stages, f"--{kind}-steps")
            elif args.steps is not None:
                steps = args.steps
            elif args.epochs is not None:
                steps = int(math.ceil(args.epochs * len(tr) / hp["batch_size"]))
            else:
                steps = int(hp[f"{kind}_steps"])
            config["train"]["steps"][f"{name}/{kind}"] = steps
            snapshots = skill_snapshots[i] if kind == "skill" and hp["select_trials"] > 0 else None
            path = os.path.join(progress_dir, f"{name}_{kind}.pt")
            key = f"{run_key}/{name}/{kind}/{steps}"
            saved = load_progress(path, key)
            if saved is not None:  # trained by an interrupted run of this configuration
                models[i][kind].load_state_dict(saved["weights"])
                h = json.loads(saved["history"])
                if snapshots is not None:
                    snapshots.update({int(k): v for k, v in saved["snapshots"].items()})
                print(f"[{name} {kind}] resumed from {path}")
            else:
                # each network its own generators: a resumed run draws what an uninterrupted one would
                torch.manual_seed(args.seed * 1_000_003 + 3 * i + kind_index[kind])
                net_rng = np.random.default_rng([args.seed, i, kind_index[kind]])
                if len(va) > VAL_MAX_ROWS:  # a fixed subset keeps evaluations cheap on paper-size data
                    va = np.sort(net_rng.choice(va, VAL_MAX_ROWS, replace=False))
                h = train_net(f"{name} {kind}", kind, models[i][kind], fns[kind], tr, va, steps, hp, net_rng,
                              device, data, i, frame_stack, args.no_tqdm, snapshots=snapshots)
                h["n_train_rows"], h["n_val_rows"] = int(len(tr)), int(len(va))
                atomic_torch_save({"key": key, "weights": models[i][kind].state_dict(), "history": json.dumps(h),
                                   "snapshots": {str(k): v for k, v in (snapshots or {}).items()}}, path)
            losses[name][kind] = h
            kept = h["step"].index(h["best_step"]) if "best_step" in h else -1  # the weights saved
            final[name][kind] = h["val_metrics"][kept] if h["val_metrics"] else None

    # ---- save
    os.makedirs(out_dir, exist_ok=True)
    stages = [{"pose": m["pose"].state_dict(), "skill": m["skill"].state_dict(), "residual": None,
               "termination": m["termination"].state_dict(), "success_prob": None} for m in models]
    save_checkpoint(ckpt_path, args.task, args.obs, config, normalizer.state_dict(), stages)
    if hp["select_trials"] > 0:
        # the agent acts by the stored rules (AgentOptions.skill_action None = the checkpoint's)
        config["skill_selection"], config["skill_action"] = select_skills(
            args, ckpt_path, out_dir, data, val_demos, skill_snapshots, losses, stages, int(hp["select_trials"]),
            hp["select_starts"], hp["select_actions"],
            log_path=os.path.join(progress_dir, "skill_trials.jsonl"),
            key=selection_key(run_key, config, hp, args))
        for sel in config["skill_selection"]:  # report the validation metrics of the weights saved
            h = losses[sel["stage"]]["skill"]
            final[sel["stage"]]["skill"] = h["val_metrics"][h["step"].index(sel["chosen_step"])]
        save_checkpoint(ckpt_path, args.task, args.obs, config, normalizer.state_dict(), stages)
    shutil.rmtree(progress_dir, ignore_errors=True)  # hsp.pt is complete: a rerun trains anew
    write_json(os.path.join(out_dir, "hsp_config.json"), dict(config, args=vars(args)))
    write_json(os.path.join(out_dir, "hsp_losses.json"), {"losses": losses, "final_validation": final})
    plot_losses(losses, os.path.join(out_dir, "hsp_losses.png"))
    summary = {"checkpoint": ckpt_path, "seconds": time.time() - t_start, "final_validation": final,
               "n_demos": n_demos, "n_val_demos": n_val}
    print(f"wrote {ckpt_path} (+ hsp_config.json, hsp_losses.json, hsp_losses.png) in {summary['seconds']:.0f}s")
    for name, per in final.items():
        for kind, m in per.items():
            if m:
                print(f"  {name:28s} {kind:12s} " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()))
    return summary


if __name__ == "__main__":
    try:
        main()
    except (D.DataError, CheckpointError) as e:  # bad input: its message names the fix
        raise SystemExit(f"error: {e}") from None
