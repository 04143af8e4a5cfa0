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

# DrQ-v2 hyper-parameters, Tab. V of the paper plus those it inherits from Yarats et al. 2021.
DRQV2 = dict(
    lr=1e-4, gamma=0.99, batch_size=256, nstep=3, action_repeat=1, num_seed_frames=4000,
    feature_dim=50, hidden_dim=1024, num_train_frames=2_000_000, residual_penalty=5.0,  # α
    critic_target_tau=0.01, stddev_clip=0.3, stddev_schedule="linear(1.0,0.1,500000)",
    frame_stack=3, shift_pad=4, update_every_steps=2,
)

# ---------------------------------------------------------------- run sizes per preset
PRESETS = {
    "paper": dict(
        num_source=10,  # Sec. V
        num_generated=1000,  # Sec. V
        eval_rollouts=500,  # Tab. I
        e2e_trajectories=3000,  # App. C-G
        drqv2=DRQV2,
    ),
    "quick": dict(
        num_source=10,
        num_generated=50,
        eval_rollouts=20,
        e2e_trajectories=50,
        drqv2=dict(DRQV2, batch_size=64, num_seed_frames=500, hidden_dim=256, num_train_frames=5_000),
    ),
}


def get_preset(name: str) -> dict:
    """A deep copy of preset `name`, so callers may override fields freely."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
