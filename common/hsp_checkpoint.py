"""The kit's agent checkpoint (DESIGN.md, ".pt files"): atomic save, checked load.

    {"format": "reinforcegen-kit/1", "task", "obs_mode", "config", "obs_normalizer",
     "stages": [{"pose", "skill", "residual", "termination", "success_prob"}, ...]}

Everything in it is a tensor or a plain Python container, so `torch.load(path, weights_only=True)`
reads it. Later phases (03-05) load, add their parts to the stage dicts, and save again.
"""
from __future__ import annotations

import os

import torch

FORMAT = "reinforcegen-kit/1"
STAGE_KEYS = ("pose", "skill", "residual", "termination", "success_prob")


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or of another task / obs mode; the message says the fix."""


def _cpu(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: _cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_cpu(v) for v in x]
    return x


def make_checkpoint(task: str, obs_mode: str, config: dict, obs_normalizer: dict, stages: list[dict],
                    **extra) -> dict:
    for i, s in enumerate(stages):
        unknown = set(s) - set(STAGE_KEYS)
        if unknown:
            raise ValueError(f"stage {i} has unknown parts {sorted(unknown)}; allowed: {STAGE_KEYS}")
    ck = {"format": FORMAT, "task": task, "obs_mode": obs_mode, "config": config,
          "obs_normalizer": obs_normalizer,
          "stages": [{k: s.get(k) for k in STAGE_KEYS} for s in stages]}
    ck.update(extra)
    return _cpu(ck)


def save_checkpoint(path: str, task: str | dict, obs_mode: str | None = None, config: dict | None = None,
                    obs_normalizer: dict | None = None, stages: list[dict] | None = None, **extra) -> str:
    """Write a checkpoint atomically (temporary file in the same folder, then rename).

    Either `save_checkpoint(path, ckpt_dict)` with a full dict (e.g. one returned by
    `load_checkpoint` and extended), or the parts as arguments.
    """
    ck = task if isinstance(task, dict) else make_checkpoint(task, obs_mode, config, obs_normalizer, stages, **extra)
    return atomic_torch_save(_cpu(ck), path)


def atomic_torch_save(obj, path: str) -> str:
    """torch.save to a temporary file in the same folder, then rename: a crash leaves the old file."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_checkpoint(path: str, task: str | None = None, obs_mode: str | None = None,
                    map_location="cpu") -> dict:
    """Load with weights_only=True and check it belongs to `task` and `obs_mode` (when given)."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path} does not exist; train it first with "
                              f"`python 02_train_hsp.py --task {task or '<task>'}"
                              f"{' --obs ' + obs_mode if obs_mode else ''}`")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 (corrupt file, pickle of foreign objects, ...)
        raise CheckpointError(f"{path} is not a readable kit checkpoint ({type(e).__name__}: {e}); "
                              f"retrain it with 02_train_hsp.py") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        fmt = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise CheckpointError(f"{path} has format {fmt!r}, expected {FORMAT!r}; retrain it with 02_train_hsp.py")
    if task is not None and ck["task"] != task:
        raise CheckpointError(
            f"{path} was trained for task {ck['task']!r}, not {task!r}: pass --task {ck['task']} to use it, "
            f"or train one for {task} with `python 02_train_hsp.py --task {task} --obs {obs_mode or ck['obs_mode']}` "
            f"(runs go to runs/<task>/)")
    if obs_mode is not None and ck["obs_mode"] != obs_mode:
        raise CheckpointError(
            f"{path} was trained with --obs {ck['obs_mode']}, not --obs {obs_mode}: pass --obs {ck['obs_mode']} "
            f"to use it, or train an {obs_mode}-mode one with "
            f"`python 02_train_hsp.py --task {ck['task']} --obs {obs_mode}` (use another --out to keep both)")
    return ck


def load_hsp_models(path: str, task: str | None = None, obs_mode: str | None = None, device="cpu"):
    """(checkpoint dict, per-stage networks in eval mode on `device`) for later scripts."""
    from .nets import build_stage_models, load_stage_weights
    ck = load_checkpoint(path, task, obs_mode)
    models = load_stage_weights(build_stage_models(ck["config"], ck["obs_normalizer"]), ck["stages"])
    for m in models:
        for net in m.values():
            net.to(device).eval()
    return ck, models
