"""Every paper constant and every preset size, in one place.

`--preset paper` uses the paper's values (cited beside each); `--preset quick` shrinks run sizes
so that the whole pipeline finishes on a 2-core CPU. Algorithmic thresholds are identical in both
presets: the quick preset changes how much, never how.
"""
from __future__ import annotations

import copy

# ---------------------------------------------------------------- algorithmic constants (both presets)
CONTROL_FREQ = 20  # Hz, App. B / robosuite OSC default
REPLAN_THRESHOLD = 0.05  # ε_pose: max(Euclidean, rotational) difference, App. C-C, Sec. IV-A
TERMINATION_REJECTION = 0.4  # ε_term: reject terminations with p_i < 0.4, App. C-C
DATAGEN_ACTION_NOISE = 0.05  # MimicGen default, Gaussian σ on the normalized pose action
DATAGEN_INTERPOLATION_STEPS = 5  # MimicGen num_interpolation_steps
E2E_ACTION_NOISE = 0.01  # σ for stitched end-to-end rollouts, App. C-G
POSE_NOISE_SIGMAS = (0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3)  # Fig. 3
IMAGE_SIZE = 84  # App. B-A
IMAGE_CROP = 76  # robomimic random crop used by MimicGen image policies
EVAL_SEED_BASE = 2_000_000  # evaluation rollout k uses EVAL_SEED_BASE + seed * 100003 + k: never a generation seed


def eval_seed(seed: int, k: int) -> int:
    """Env seed of evaluation rollout k of a run with --seed `seed` (06_evaluate.py, bench/)."""
    return EVAL_SEED_BASE + seed * 100003 + k


# 02's in-loop selection episodes: neither generation (1,000,000 + 100,003 x seed + ...) nor
# evaluation seeds for --seed below 70
SELECT_SEED_BASE = 9_000_000


def select_seed(seed: int, k: int) -> int:
    """Env seed of episode k of 02_train_hsp.py --select-starts loop, trained with --seed `seed`."""
    return SELECT_SEED_BASE + seed * 100003 + k


# DrQ-v2 hyper-parameters, Tab. V of the paper plus those it inherits from Yarats et al. 2021.
DRQV2 = dict(
    lr=1e-4, gamma=0.99, batch_size=256, nstep=3, action_repeat=1, num_seed_frames=4000,
    feature_dim=50, hidden_dim=1024, num_train_frames=2_000_000, residual_penalty=5.0,  # α
    critic_target_tau=0.01, stddev_clip=0.3, stddev_schedule="linear(1.0,0.1,500000)",
    frame_stack=3, shift_pad=4, update_every_steps=2,
)

# Behaviour cloning of the Hybrid Skill Policy (02_train_hsp.py), robomimic BC-GMM defaults:
# MLP 1024x1024, 5 Gaussian modes, min std 1e-4, Adam lr 1e-4, batch 100; MimicGen trains its
# policies for ~200k gradient steps. Image encoder: DrQ-v2 trunk (feature 50, shift pad 4, 3 frames).
HSP = dict(
    hidden=[1024, 1024], gmm_modes=5, gmm_min_std=1e-4, lr=1e-4, lr_schedule="constant", weight_decay=0.0,
    batch_size=100,
    # Skill network per obs mode: "rnn" = robomimic BC-RNN-GMM, the policy MimicGen trains on
    # generated data (LSTM 400 x 2 over sequences of 10 steps, no MLP after it, LSTM state reset
    # every 10 steps at deployment); "mlp" = BC-GMM on `hidden` with a frame-stacked history.
    # State: rnn (NutAssembly HSP-Priv 66 -> 74 % over the MLP, same data and rollouts, README).
    # Image: the DrQ-v2 trunk over a 3-frame stack with the MLP head, as issue 6 specifies (a
    # sequence of 10 steps costs 10x the conv passes per sample, beyond a CPU).
    skill_net=dict(state="rnn", image="mlp"), rnn_hidden=400, rnn_layers=2, rnn_horizon=10, rnn_mlp=[],
    # Initiation pose hypotheses (nets.PoseNet). 1 = plain regression, which measured better than
    # winner-takes-all over 5 on Threading (HSP 16 % with 5, see README); kept as an option.
    pose_modes=1,
    skill_steps=200_000, pose_steps=100_000, termination_steps=100_000,
    frame_stack=dict(state=1, image=DRQV2["frame_stack"]), feature_dim=DRQV2["feature_dim"],
    shift_pad=DRQV2["shift_pad"],
    val_fraction=0.1,  # demos held out for validation losses
    # Skill snapshots chosen by rollouts (02 select_skills): trials per snapshot; 0 keeps each
    # skill's best validation evaluation. Trials start where HSP-Priv episodes with the skills
    # chosen for earlier stages bring the skill ("loop": the states deployment gives it;
    # CoffeePreparation's Table I rows +11 to +14 points over "demos", README), or where held-out
    # demos' skills began ("demos": cheaper, but from kept generation attempts only).
    select_trials=50, select_starts="loop",
    # ... and each snapshot acts by each of these rules (AgentOptions.skill_action), on the same
    # trials: the (snapshot, rule) with the most successes is kept and stored in the checkpoint,
    # which the agent then acts by. On CoffeePreparation's mug-and-lid skill the deterministic mode
    # of a later snapshot beat the component draw of the one chosen without it, 73 vs 56 of the same
    # 89 in-loop starts (README).
    select_actions=("component", "mode"),
    eval_every=5_000,  # steps between validation evaluations
    termination_after_steps=10,  # steps after a stage ends still used to train T_θi (positives)
    termination_pos_weight="balanced",  # BCE positive-class weight: "balanced" (#neg/#pos) or a float
)

# Deployment (Algorithm 1, common/hsp.py)
SKILL_BUDGET_FACTOR = 2.0  # a skill may run this many times its longest training segment before failing
TERMINATION_THRESHOLD = 0.5  # learned T_θi fires when P(done) > 0.5 (the BCE classifier's decision point)

# Paper results (success %, 500 rollouts), for tables printed beside ours. Table I:
PAPER_TABLE1 = {
    "HSP-Priv": {"NutAssembly_D2": 86.20, "Threading_D2": 54.27, "ThreePieceAssembly_D2": 70.77,
                 "Coffee_D2": 88.12, "CoffeePreparation_D2": 65.60},
    "HSP-Priv + Skill-FT": {"NutAssembly_D2": 87.20, "Threading_D2": 89.40, "ThreePieceAssembly_D2": 82.24,
                            "Coffee_D2": 97.03, "CoffeePreparation_D2": 77.80},
    "HSP": {"NutAssembly_D2": 40.52, "Threading_D2": 50.20, "ThreePieceAssembly_D2": 41.52,
            "Coffee_D2": 55.38, "CoffeePreparation_D2": 35.80},
    "HSP+Replan": {"NutAssembly_D2": 78.40, "Threading_D2": 49.80, "ThreePieceAssembly_D2": 65.80,
                   "Coffee_D2": 80.20, "CoffeePreparation_D2": 60.20},
    "ReinforceGen": {"NutAssembly_D2": 85.80, "Threading_D2": 82.20, "ThreePieceAssembly_D2": 80.40,
                     "Coffee_D2": 93.81, "CoffeePreparation_D2": 80.80},
}

# ---------------------------------------------------------------- run sizes per preset
PRESETS = {
    "paper": dict(
        num_source=10,  # Sec. V
        num_generated=1000,  # Sec. V
        eval_rollouts=500,  # Tab. I
        e2e_trajectories=3000,  # App. C-G
        drqv2=DRQV2,
        hsp=HSP,
    ),
    "quick": dict(
        num_source=10,
        num_generated=50,
        eval_rollouts=20,
        e2e_trajectories=50,
        drqv2=dict(DRQV2, batch_size=64, num_seed_frames=500, hidden_dim=256, num_train_frames=5_000),
        # smaller nets and far fewer steps; lr 1e-3 so that a few hundred steps learn something
        hsp=dict(HSP, hidden=[256, 256], rnn_hidden=128, lr=1e-3, batch_size=64, skill_steps=2000, pose_steps=1000,
                 termination_steps=1000, eval_every=200, select_trials=0),
    ),
}


def get_preset(name: str) -> dict:
    """A deep copy of preset `name`, so callers may override fields freely."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
