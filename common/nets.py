"""Networks of the Hybrid Skill Policy (Sec. III-C) and their building blocks.

- `DrQv2Encoder`: the DrQ-v2 conv trunk (Yarats et al. 2021): 4 conv layers of 32 channels, 3x3,
  the first with stride 2, ReLU; an 84x84 input gives 32·35·35 = 39200 features. The frames of a
  short history are stacked along channels, as in DrQ-v2.
- `RandomShift`: DrQ-v2's augmentation: replicate-pad by 4 pixels, then a random crop back to the
  input size (implemented with grid_sample, one shift per sample, shared by the stacked frames).
- `ObsEncoder`: observation dict -> feature vector. State mode: MLP input is the normalized
  proprio + object vectors of every frame of the history, concatenated. Image mode: one DrQ-v2
  trunk per camera, their features projected to `feature_dim` (Linear + LayerNorm + tanh, the
  DrQ-v2 actor/critic trunk), concatenated with the normalized proprio history.
- Heads: `PoseNet` (I_θi, position + 6-D rotation), `GMMPolicy` (π_θi, robomimic BC-GMM head with a
  deterministic `mode()` action; with an LSTM before the head it is robomimic's BC-RNN-GMM),
  `TerminationNet` (T_θi, one logit).

Every network takes the *raw* observation dict (images uint8 HWC, proprio/object float) with an
optional history axis: `obs[key]` is (B, F, ...) for a history of F frames, or (B, ...) when the
history length is 1. Each encoder holds the observation normalizer as buffers, so a network
loaded from its state_dict is self-contained; the checkpoint also stores the normalizer at top
level (`obs_normalizer`, DESIGN.md) for scripts that need it alone.

The per-stage networks are rebuilt from the checkpoint's JSON-able config by `build_stage_models`;
checkpoint I/O (atomic save, task/obs-mode check on load) lives in `common/hsp_checkpoint.py`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributions as Dist
import torch.nn as nn
import torch.nn.functional as F

IMAGE_FEATURES = 32 * 35 * 35  # DrQ-v2 trunk output for an 84x84 input


# ------------------------------------------------------------------------------------------ normalizer
class ObsNormalizer:
    """Per-key mean/std of low-dimensional observations (images are scaled to [-0.5, 0.5] instead).

    Stored as plain tensors: `state_dict()` -> {key: {"mean": tensor, "std": tensor}}.
    """

    def __init__(self, stats: dict[str, dict[str, torch.Tensor]]):
        self.stats = {k: {"mean": torch.as_tensor(v["mean"], dtype=torch.float32),
                          "std": torch.as_tensor(v["std"], dtype=torch.float32)} for k, v in stats.items()}

    @classmethod
    def fit(cls, arrays: dict[str, np.ndarray], min_std: float = 1e-3) -> "ObsNormalizer":
        """Fit on (N, D) arrays; std is floored at `min_std` so constant features stay finite."""
        stats = {}
        for k, x in arrays.items():
            x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
            stats[k] = {"mean": torch.tensor(x.mean(0), dtype=torch.float32),
                        "std": torch.tensor(np.maximum(x.std(0), min_std), dtype=torch.float32)}
        return cls(stats)

    def state_dict(self) -> dict:
        return {k: {"mean": v["mean"].clone(), "std": v["std"].clone()} for k, v in self.stats.items()}

    @classmethod
    def from_state_dict(cls, sd: dict) -> "ObsNormalizer":
        return cls(sd)

    def normalize(self, key: str, x):
        s = self.stats[key]
        if isinstance(x, np.ndarray):
            return (x - s["mean"].numpy()) / s["std"].numpy()
        return (x - s["mean"].to(x.device)) / s["std"].to(x.device)


# ------------------------------------------------------------------------------------------ blocks
def mlp(in_dim: int, hidden: list[int], out_dim: int | None, activation=nn.ReLU) -> nn.Sequential:
    layers, d = [], in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), activation()]
        d = h
    if out_dim is not None:
        layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class RandomShift(nn.Module):
    """DrQ-v2 random-shift augmentation (replicate pad `pad`, random crop back); identity in eval."""

    def __init__(self, pad: int = 4):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.pad <= 0:
            return x
        n, c, h, w = x.shape
        assert h == w, "RandomShift expects square images"
        x = F.pad(x, (self.pad,) * 4, mode="replicate")
        eps = 1.0 / (h + 2 * self.pad)
        arange = torch.linspace(-1.0 + eps, 1.0 - eps, h + 2 * self.pad, device=x.device, dtype=x.dtype)[:h]
        arange = arange.unsqueeze(0).repeat(h, 1).unsqueeze(2)
        base_grid = torch.cat([arange, arange.transpose(1, 0)], dim=2).unsqueeze(0).repeat(n, 1, 1, 1)
        shift = torch.randint(0, 2 * self.pad + 1, size=(n, 1, 1, 2), device=x.device, dtype=x.dtype)
        shift *= 2.0 / (h + 2 * self.pad)
        return F.grid_sample(x, base_grid + shift, padding_mode="zeros", align_corners=False)


class DrQv2Encoder(nn.Module):
    """DrQ-v2 conv trunk: (B, C, 84, 84) uint8-range floats -> (B, 32·35·35)."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.convnet = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, stride=2), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=1), nn.ReLU(),
        )
        self.apply(_drqv2_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / 255.0 - 0.5
        return self.convnet(x).flatten(1)


def _drqv2_init(m):
    if isinstance(m, nn.Linear):
        nn.init.orthogonal_(m.weight.data)
        if m.bias is not None:
            m.bias.data.fill_(0.0)
    elif isinstance(m, nn.Conv2d):
        nn.init.orthogonal_(m.weight.data, nn.init.calculate_gain("relu"))
        if m.bias is not None:
            m.bias.data.fill_(0.0)


def _with_history(x: torch.Tensor, base_ndim: int) -> torch.Tensor:
    """(B, ...) -> (B, 1, ...) when the history axis is absent."""
    return x.unsqueeze(1) if x.ndim == base_ndim else x


class ObsEncoder(nn.Module):
    """Raw observation dict -> feature vector of size `out_dim` (see the module docstring).

    cfg keys: obs_mode, low_dim_keys (list), low_dim_sizes (dict key -> D), cameras (list),
    frame_stack, feature_dim, shift_pad, image_size.
    """

    def __init__(self, cfg: dict):
        super().__init__()
        self.obs_mode = cfg["obs_mode"]
        self.low_dim_keys = list(cfg["low_dim_keys"])
        self.low_dim_sizes = {k: int(cfg["low_dim_sizes"][k]) for k in self.low_dim_keys}
        self.cameras = list(cfg.get("cameras") or []) if self.obs_mode == "image" else []
        self.frame_stack = int(cfg["frame_stack"])
        for k in self.low_dim_keys:  # normalizer as buffers: the state_dict is self-contained
            self.register_buffer(f"mean_{k}", torch.zeros(self.low_dim_sizes[k]))
            self.register_buffer(f"std_{k}", torch.ones(self.low_dim_sizes[k]))
        low_dim = self.frame_stack * sum(self.low_dim_sizes.values())
        if self.obs_mode == "image":
            if not self.cameras:
                raise ValueError("image mode needs at least one camera in the config")
            self.aug = RandomShift(int(cfg.get("shift_pad", 4)))
            self.convs = nn.ModuleDict({c: DrQv2Encoder(3 * self.frame_stack) for c in self.cameras})
            fd = int(cfg["feature_dim"])
            self.trunk = nn.Sequential(nn.Linear(len(self.cameras) * IMAGE_FEATURES, fd), nn.LayerNorm(fd), nn.Tanh())
            self.out_dim = fd + low_dim
        else:
            self.out_dim = low_dim

    def set_normalizer(self, normalizer: ObsNormalizer):
        for k in self.low_dim_keys:
            getattr(self, f"mean_{k}").copy_(normalizer.stats[k]["mean"])
            getattr(self, f"std_{k}").copy_(normalizer.stats[k]["std"])

    def forward(self, obs: dict) -> torch.Tensor:
        parts = []
        if self.obs_mode == "image":
            feats = []
            for c in self.cameras:
                x = _with_history(obs[f"{c}_image"], 4)  # (B, F, H, W, 3)
                b, f, h, w, ch = x.shape
                if f != self.frame_stack:
                    raise ValueError(f"{c}_image has a history of {f} frames, the network expects {self.frame_stack}")
                x = x.permute(0, 1, 4, 2, 3).reshape(b, f * ch, h, w).float()
                feats.append(self.convs[c](self.aug(x)))
            parts.append(self.trunk(torch.cat(feats, dim=1)))
        for k in self.low_dim_keys:
            x = _with_history(obs[k], 2).float()  # (B, F, D)
            if x.shape[1] != self.frame_stack:
                raise ValueError(f"{k} has a history of {x.shape[1]} frames, the network expects {self.frame_stack}")
            x = (x - getattr(self, f"mean_{k}")) / getattr(self, f"std_{k}")
            parts.append(x.flatten(1))
        return torch.cat(parts, dim=1)


# ------------------------------------------------------------------------------------------ heads
class GMMPolicy(nn.Module):
    """π_θi: robomimic BC-GMM policy. Means are tanh-squashed into [-1, 1] (robomimic's default
    `use_tanh=False` path); std = softplus + min_std; mixture over `num_modes` diagonal Gaussians.

    With `rnn_hidden` > 0 in the config it is robomimic's BC-RNN-GMM, the policy MimicGen trains on
    generated data: the encoded observation of each time step goes through an LSTM (`rnn_layers`
    layers) before the MLP (robomimic: none) and the GMM head. Training feeds sequences of
    `rnn_horizon` steps, each from a zero LSTM state: `obs[key]` is then (B, T, ...) with the
    per-step history axis after T, and the outputs are per step, (B*T, ...). At deployment
    `start_rollout()` switches to one step per call with the LSTM state carried between calls and
    reset every `rnn_horizon` steps, as robomimic's RolloutPolicy does (so every state the policy
    acts from is one that training saw: at most rnn_horizon - 1 steps after a zero state).

    `loss(obs, actions)` = mean negative log-likelihood. Three ways to act:
    - `mode(obs)`: mean of the most probable component; deterministic (a base action for residual RL).
    - `component_mean(obs, u)`: robomimic's evaluation action (`low_noise_eval`): draw the component
      from the mixture weights (by the uniform numbers `u`, so the caller's seeded generator decides),
      take its mean. Needed where the demos' decision is a matter of timing, e.g. when to close the
      gripper at a grasp: the arm waits there for a few open-gripper steps in every demo, so "stay
      open" keeps the larger weight and `mode` never closes (measured on NutAssembly, README).
    - `sample(obs)`: draws from the full mixture, clipped to [-1, 1].
    """

    def __init__(self, cfg: dict):
        super().__init__()
        self.encoder = ObsEncoder(cfg)
        self.action_dim = int(cfg["action_dim"])
        self.num_modes = int(cfg["gmm_modes"])
        self.min_std = float(cfg["gmm_min_std"])
        self.rnn_hidden = int(cfg.get("rnn_hidden") or 0)
        self.rnn_horizon = int(cfg.get("rnn_horizon") or 1)
        body_in = self.encoder.out_dim
        if self.rnn_hidden:
            self.rnn = nn.LSTM(body_in, self.rnn_hidden, int(cfg.get("rnn_layers") or 2), batch_first=True)
            body_in = self.rnn_hidden
        self.body = mlp(body_in, cfg["hidden"], None)
        d = cfg["hidden"][-1] if cfg["hidden"] else body_in
        self.mean = nn.Linear(d, self.num_modes * self.action_dim)
        self.scale = nn.Linear(d, self.num_modes * self.action_dim)
        self.logits = nn.Linear(d, self.num_modes)
        self._rollout = None  # {"state": LSTM (h, c) or None, "t": steps taken} between start/end_rollout

    @property
    def recurrent(self) -> bool:
        return self.rnn_hidden > 0

    def start_rollout(self):
        """A new episode of deployment: each later call is one time step (recurrent policies only)."""
        self._rollout = {"state": None, "t": 0} if self.recurrent else None

    def end_rollout(self):
        self._rollout = None

    def features(self, obs: dict) -> torch.Tensor:
        if not self.recurrent:
            return self.body(self.encoder(obs))
        if self._rollout is None:  # training / validation: (B, T, ...) sequences from a zero state
            b, t = next(iter(obs.values())).shape[:2]
            x = self.encoder({k: v.reshape(b * t, *v.shape[2:]) for k, v in obs.items()}).view(b, t, -1)
            h, _ = self.rnn(x)
            return self.body(h.reshape(b * t, -1))
        r = self._rollout
        if r["t"] % self.rnn_horizon == 0:  # robomimic RolloutPolicy: fresh state every horizon steps
            r["state"] = None
        h, r["state"] = self.rnn(self.encoder(obs)[:, None], r["state"])
        r["t"] += 1
        return self.body(h[:, 0])

    def params(self, obs: dict):
        h = self.features(obs)
        m, a = self.num_modes, self.action_dim
        means = torch.tanh(self.mean(h).view(-1, m, a))
        stds = F.softplus(self.scale(h).view(-1, m, a)) + self.min_std
        return means, stds, self.logits(h)

    def dist(self, obs: dict) -> Dist.Distribution:
        means, stds, logits = self.params(obs)
        comp = Dist.Independent(Dist.Normal(means, stds), 1)
        return Dist.MixtureSameFamily(Dist.Categorical(logits=logits), comp)

    def loss(self, obs: dict, actions: torch.Tensor) -> torch.Tensor:
        """Actions (B, 7), or (B, T, 7) for a recurrent policy's sequences."""
        return -self.dist(obs).log_prob(actions.reshape(-1, self.action_dim)).mean()

    def mode(self, obs: dict) -> torch.Tensor:
        means, _, logits = self.params(obs)
        k = logits.argmax(dim=-1)
        return means[torch.arange(len(k), device=means.device), k]

    forward = mode

    def component_mean(self, obs: dict, u) -> torch.Tensor:
        """Mean of the component chosen by inverse-CDF of the mixture weights at u in [0, 1) (one per row)."""
        means, _, logits = self.params(obs)
        cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)
        u = torch.as_tensor(u, dtype=cdf.dtype, device=cdf.device).reshape(-1, 1)
        k = (cdf <= u).sum(dim=-1).clamp(max=self.num_modes - 1)
        return means[torch.arange(len(k), device=means.device), k]

    def sample(self, obs: dict) -> torch.Tensor:
        return self.dist(obs).sample().clamp(-1.0, 1.0)


def rot6d_to_matrix(r6: torch.Tensor) -> torch.Tensor:
    """Gram-Schmidt of the 6-D representation (Zhou et al. 2019) -> (..., 3, 3), columns x, y, z.
    Matches common.pose.mat_from_rot6d (first two columns of R)."""
    a, b = r6[..., :3], r6[..., 3:6]
    x = F.normalize(a, dim=-1, eps=1e-6)
    b = b - (x * b).sum(-1, keepdim=True) * x
    y = F.normalize(b, dim=-1, eps=1e-6)
    z = torch.cross(x, y, dim=-1)
    return torch.stack([x, y, z], dim=-1)


def matrix_to_rot6d(R: torch.Tensor) -> torch.Tensor:
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


class PoseNet(nn.Module):
    """I_θi: observation -> initiation pose: world position (3) + 6-D rotation (common.pose.rot6d).

    Generated data is multimodal in the initiation pose: each attempt replays a randomly chosen
    source demo, and the 10 sources grasp at different relative poses, so one object pose maps to
    up to 10 valid targets. A single regression head averages them into a pose that matches none
    (measured on Threading: 17 deg mean error on the grasp). With `pose_modes` K > 1 the head
    predicts K hypotheses and K logits, trained winner-takes-all (relaxed: the best hypothesis
    gets weight 1 - WTA_EPS, all share WTA_EPS) with cross-entropy teaching the logits which
    hypothesis wins; the prediction is the hypothesis with the highest logit. K = 1 is plain
    regression.

    The position is predicted in normalized units (target mean/std stored as buffers `pos_mean`,
    `pos_std`). `forward` returns (position (B, 3), rot6d (B, 6)); `matrix(obs)` the (B, 4, 4) pose
    with a valid rotation; `pose7(obs)` numpy (B, 7) pos + quat xyzw, the kit's pose convention.
    """
    WTA_EPS = 0.05

    def __init__(self, cfg: dict):
        super().__init__()
        self.encoder = ObsEncoder(cfg)
        self.modes = int(cfg.get("modes", 1))
        self.net = mlp(self.encoder.out_dim, cfg["hidden"], 9 * self.modes + (self.modes if self.modes > 1 else 0))
        self.register_buffer("pos_mean", torch.zeros(3))
        self.register_buffer("pos_std", torch.ones(3))

    def set_target_stats(self, mean, std):
        self.pos_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.pos_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def _hypotheses(self, obs: dict):
        """(B, K, 9) normalized position + rot6d per hypothesis, (B, K) logits (zeros when K = 1)."""
        out = self.net(self.encoder(obs))
        k = self.modes
        hyp = out[:, :9 * k].view(-1, k, 9)
        logits = out[:, 9 * k:] if k > 1 else out.new_zeros(len(out), 1)
        return hyp, logits

    def forward(self, obs: dict):
        hyp, logits = self._hypotheses(obs)
        best = hyp[torch.arange(len(hyp), device=hyp.device), logits.argmax(dim=1)]
        return best[:, :3] * self.pos_std + self.pos_mean, best[:, 3:9]

    def loss(self, obs: dict, pos: torch.Tensor, R: torch.Tensor):
        """(total, position MSE in normalized units, rotation-matrix MSE) of the winning hypothesis.
        R: (B, 3, 3) target."""
        hyp, logits = self._hypotheses(obs)
        b, k = hyp.shape[:2]
        tgt = ((pos - self.pos_mean) / self.pos_std)[:, None]
        l_pos = ((hyp[..., :3] - tgt) ** 2).mean(-1)  # (B, K)
        l_rot = ((rot6d_to_matrix(hyp[..., 3:9].reshape(-1, 6)).view(b, k, 3, 3) - R[:, None]) ** 2).mean((-1, -2))
        per = l_pos + l_rot
        win = per.argmin(dim=1)
        idx = torch.arange(b, device=hyp.device)
        total = (1 - self.WTA_EPS) * per[idx, win].mean() + self.WTA_EPS * per.mean() if k > 1 else per.mean()
        if k > 1:
            total = total + F.cross_entropy(logits, win)
        return total, l_pos[idx, win].mean(), l_rot[idx, win].mean()

    def matrix(self, obs: dict) -> torch.Tensor:
        pos, r6 = self(obs)
        T = torch.eye(4, device=pos.device, dtype=pos.dtype).repeat(len(pos), 1, 1)
        T[:, :3, :3] = rot6d_to_matrix(r6)
        T[:, :3, 3] = pos
        return T

    @torch.no_grad()
    def pose7(self, obs: dict) -> np.ndarray:
        from . import pose as P
        T = self.matrix(obs).cpu().double().numpy()
        return np.stack([P.mat_to_pose7(t) for t in T])


class TerminationNet(nn.Module):
    """T_θi: observation -> logit of P(stage i done); trained with binary cross-entropy (Eq. 3)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.encoder = ObsEncoder(cfg)
        self.net = mlp(self.encoder.out_dim, cfg["hidden"], 1)

    def forward(self, obs: dict) -> torch.Tensor:
        return self.net(self.encoder(obs)).squeeze(-1)

    def prob(self, obs: dict) -> torch.Tensor:
        return torch.sigmoid(self(obs))

    def loss(self, obs: dict, done: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
        pw = None if pos_weight is None else torch.tensor(pos_weight, device=done.device)
        return F.binary_cross_entropy_with_logits(self(obs), done.float(), pos_weight=pw)


# ------------------------------------------------------------------------------------------ training batches
def history_rows(rows: np.ndarray, ep_start: np.ndarray, frame_stack: int) -> np.ndarray:
    """(B,) rows -> (B, F) rows of the last F steps, oldest first, repeating the episode's first step."""
    offs = np.arange(frame_stack - 1, -1, -1)
    return np.maximum(rows[:, None] - offs[None, :], ep_start[rows][:, None])


def get_obs(data: dict, rows: np.ndarray, frame_stack: int, device) -> dict:
    """{key: (*rows.shape, F, ...)}: each row's observation with its history of F frames.

    `data["obs"]` holds numpy arrays (each batch is gathered on the host and copied to `device`)
    or tensors already on `device` (02_train_hsp.py --data-on-device: indexed there)."""
    h = history_rows(rows.reshape(-1), data["ep_start"], frame_stack).reshape(*rows.shape, frame_stack)
    if torch.is_tensor(next(iter(data["obs"].values()))):
        idx = torch.from_numpy(h).to(device)
        return {k: v[idx] for k, v in data["obs"].items()}
    return {k: torch.from_numpy(v[h]).to(device, non_blocking=True) for k, v in data["obs"].items()}


# ------------------------------------------------------------------------------------------ deployment
class ObsHistory:
    """The last `frame_stack` observations of an episode, for querying the networks step by step.

    Matches training (history_rows): at the start of an episode the first observation
    is repeated. `reset(obs)` then `push(obs)` each step; `batch(device)` gives {key: (1, F, ...)}.
    """

    def __init__(self, frame_stack: int, keys: list[str] | None = None):
        self.frame_stack, self.keys, self.frames = int(frame_stack), keys, []

    def reset(self, obs: dict) -> "ObsHistory":
        self.frames = [self._pick(obs)] * self.frame_stack
        return self

    def push(self, obs: dict) -> "ObsHistory":
        if not self.frames:
            return self.reset(obs)
        self.frames = (self.frames + [self._pick(obs)])[-self.frame_stack:]
        return self

    def _pick(self, obs: dict) -> dict:
        return {k: np.asarray(obs[k]) for k in (self.keys or obs)}

    def batch(self, device="cpu") -> dict:
        return {k: torch.from_numpy(np.stack([f[k] for f in self.frames])[None]).to(device) for k in self.frames[0]}


def obs_keys(config: dict) -> list[str]:
    """The observation keys the networks of a checkpoint config read."""
    o = config["obs"]
    return list(o["low_dim_keys"]) + [f"{c}_image" for c in (o.get("cameras") or [])]


# ------------------------------------------------------------------------------------------ rebuild
def net_config(config: dict, which: str) -> dict:
    """The ObsEncoder/head config of one network kind ("pose" | "skill" | "termination")."""
    c = dict(config["obs"])
    c.update(config["nets"][which])
    c["action_dim"] = config.get("action_dim", 7)
    return c


def build_stage_models(config: dict, obs_normalizer: ObsNormalizer | dict | None = None) -> list[dict]:
    """Fresh per-stage networks [{"pose": PoseNet, "skill": GMMPolicy, "termination": TerminationNet}]
    from a checkpoint's config; load weights with `load_stage_weights` (or load_state_dict)."""
    if isinstance(obs_normalizer, dict):
        obs_normalizer = ObsNormalizer.from_state_dict(obs_normalizer)
    models = []
    for _ in range(int(config["n_stages"])):
        m = {"pose": PoseNet(net_config(config, "pose")),
             "skill": GMMPolicy(net_config(config, "skill")),
             "termination": TerminationNet(net_config(config, "termination"))}
        if obs_normalizer is not None:
            for net in m.values():
                net.encoder.set_normalizer(obs_normalizer)
        models.append(m)
    return models


def load_stage_weights(models: list[dict], stages: list[dict]) -> list[dict]:
    """Load a checkpoint's `stages` state_dicts into `build_stage_models` output (in place)."""
    if len(models) != len(stages):
        raise ValueError(f"checkpoint has {len(stages)} stages but the config builds {len(models)}")
    for m, s in zip(models, stages):
        for k in ("pose", "skill", "termination"):
            m[k].load_state_dict(s[k])
    return models


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
