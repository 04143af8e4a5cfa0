"""Time one BC gradient step of the skill policy, MLP (BC-GMM) against LSTM (BC-RNN-GMM), on this
machine, at the sizes 02_train_hsp.py uses. Prints ms per step and the parameter count.

    python bench/bench_bc_step.py                 # NutAssembly's state sizes, 1 thread
    python bench/bench_bc_step.py --threads 2 --steps 50
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.nets import GMMPolicy, count_params  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--obs-dim", type=int, default=15 + 28 + 36,
                   help="state input size (default: NutAssembly's proprio + object + object_rel)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = {"obs_mode": "state", "low_dim_keys": ["x"], "low_dim_sizes": {"x": args.obs_dim}, "frame_stack": 1,
            "action_dim": 7, "gmm_modes": 5, "gmm_min_std": 1e-4}
    cases = [("mlp 512x512", dict(hidden=[512, 512]), 64, 1),
             ("mlp 1024x1024 (robomimic)", dict(hidden=[1024, 1024]), 100, 1),
             ("rnn 200x2, T=10", dict(hidden=[], rnn_hidden=200, rnn_layers=2, rnn_horizon=10), 64, 10),
             ("rnn 400x2, T=10 (robomimic)", dict(hidden=[], rnn_hidden=400, rnn_layers=2, rnn_horizon=10), 100, 10)]
    print(f"{'skill net':30s} {'batch':>5s} {'params':>10s} {'ms/step':>8s}")
    for name, cfg, batch, t in cases:
        torch.manual_seed(0)
        pi = GMMPolicy(dict(base, **cfg))
        seq = (batch, t) if t > 1 else (batch,)  # a BC-RNN trains on (B, T) sequences
        obs = {"x": torch.randn(*seq, 1, args.obs_dim)}
        act = torch.rand(*seq, 7) * 2 - 1
        opt = torch.optim.Adam(pi.parameters(), lr=1e-3)
        for k in range(args.steps + 3):  # 3 warm-up steps
            if k == 3:
                t0 = time.perf_counter()
            loss = pi.loss(obs, act)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ms = 1000 * (time.perf_counter() - t0) / args.steps
        print(f"{name:30s} {batch:5d} {count_params(pi):10,d} {ms:8.1f}")


if __name__ == "__main__":
    main()
