"""Time the image-mode HSP networks of 02_train_hsp.py (--obs image) on this machine: one training
step of each network kind (skill BC-GMM, initiation pose, termination) as 02's loop runs it, and one
deployment forward pass as 06's rollouts run it. Prints ms per step and the wall-clock the
`--preset paper` step counts would take here (skill 200k, pose 100k, termination 100k per stage).

Each training step is 02's: sample rows of a uint8 image buffer with their 3-frame history on the
host and copy them to the device (02's `get_obs`, common/nets.py), DrQ-v2 random shift + conv trunk
per camera, the head's loss, backward, Adam, and `loss.item()` (02 logs the loss every step, a
device sync). The buffer holds random pixels: the arithmetic is the same as on rendered frames.
`--images-on-device` keeps the buffer on the device instead and indexes it there (02's
--data-on-device), to show how much the host copy costs.

Only torch and numpy are needed (common/nets.py is loaded by path, not through the `common`
package, which registers the tasks with robosuite), so this runs on a GPU machine that has torch
alone:

    python bench/bench_image_step.py                              # this CPU, 2 threads
    python bench/bench_image_step.py --device cuda --steps 200    # a GPU
"""
import argparse
import importlib.util
import os
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("kit_nets", os.path.join(HERE, "..", "common", "nets.py"))
nets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nets)

# The paper preset's step counts per stage (common/presets.py HSP); kept here as numbers so that
# this file needs no robosuite. test_bench_image_step_matches_the_presets_and_trains_each_network checks they agree.
PAPER_STEPS = {"skill": 200_000, "pose": 100_000, "termination": 100_000}
# Threading_D2, the task of issue 6's image measurement: 3 cameras, 15-D proprio, 2 stages.
THREADING = dict(cameras=["agentview", "robot0_eye_in_hand", "sideview"], proprio=15, stages=2)


def config(cameras, proprio_dim, hidden, frame_stack=3, feature_dim=50, shift_pad=4, gmm_modes=5):
    """The checkpoint config 02_train_hsp.py writes for --obs image (nets.build_stage_models input)."""
    return {"n_stages": 1, "action_dim": 7,
            "obs": {"obs_mode": "image", "low_dim_keys": ["proprio"], "low_dim_sizes": {"proprio": proprio_dim},
                    "cameras": list(cameras), "frame_stack": frame_stack, "feature_dim": feature_dim,
                    "shift_pad": shift_pad, "image_size": 84},
            "nets": {"pose": {"hidden": list(hidden), "modes": 1},
                     "skill": {"hidden": list(hidden), "gmm_modes": gmm_modes, "gmm_min_std": 1e-4},
                     "termination": {"hidden": list(hidden)}}}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_training(kind, net, data, batch, steps, device, frame_stack, rng):
    """ms per training step of `net` (02_train_hsp.train_net with its loss for `kind`) on batches of
    `data` ({"ep_start", "obs"}) drawn by 02's own `get_obs`."""
    n_rows = len(data["ep_start"])
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    net.to(device).train()

    # targets as 02 holds them: CPU tensors indexed per batch and copied to the device each step
    actions = torch.rand(n_rows, 7) * 2 - 1
    positions, rotations = torch.randn(n_rows, 3), torch.linalg.qr(torch.randn(n_rows, 3, 3))[0]
    done = (torch.rand(n_rows) < 0.2).float()

    def loss_of(obs, rows):
        t = torch.from_numpy(rows)
        if kind == "skill":
            return net.loss(obs, actions[t].to(device))
        if kind == "pose":
            return net.loss(obs, positions[t].to(device), rotations[t].to(device))[0]
        return net.loss(obs, done[t].to(device), 4.0)

    for k in range(steps + 5):  # 5 warm-up steps (cuDNN autotuning, allocator)
        if k == 5:
            sync(device)
            t0 = time.perf_counter()
        rows = rng.integers(frame_stack, n_rows, size=batch)
        loss = loss_of(nets.get_obs(data, rows, frame_stack, device), rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
    sync(device)
    return 1000 * (time.perf_counter() - t0) / steps


@torch.no_grad()
def time_deployment(models, cameras, proprio_dim, frame_stack, device, steps):
    """ms per agent step of 06's rollouts: skill action + termination probability on one
    observation history (the pose net is queried only during connects)."""
    obs = {f"{c}_image": torch.randint(0, 256, (1, frame_stack, 84, 84, 3), dtype=torch.uint8) for c in cameras}
    obs["proprio"] = torch.randn(1, frame_stack, proprio_dim)
    for m in models.values():
        m.to(device).eval()
    for k in range(steps + 5):
        if k == 5:
            sync(device)
            t0 = time.perf_counter()
        o = {key: v.to(device) for key, v in obs.items()}
        models["skill"].mode(o).cpu()
        models["termination"].prob(o).cpu()
    sync(device)
    return 1000 * (time.perf_counter() - t0) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per case, after 5 warm-up steps")
    p.add_argument("--buffer-frames", type=int, default=2000,
                   help="frames in the random image buffer the batches are drawn from")
    p.add_argument("--images-on-device", action="store_true", help="keep the image buffer on the device")
    p.add_argument("--cases", nargs="+", default=["paper", "cpu-run"],
                   help="paper: MLP 1024x1024, batch 100 (--preset paper); cpu-run: MLP 512x512, batch 32 "
                        "(the README's image run on this CPU)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(args.seed)
    cams, dim, n_stages = THREADING["cameras"], THREADING["proprio"], THREADING["stages"]
    frame_stack = 3
    buffer = {f"{c}_image": rng.integers(0, 256, (args.buffer_frames, 84, 84, 3), dtype=np.uint8) for c in cams}
    buffer["proprio"] = rng.standard_normal((args.buffer_frames, dim)).astype(np.float32)
    if args.images_on_device:
        buffer = {k: torch.from_numpy(v).to(device) for k, v in buffer.items()}
    # one long episode: every batch row has a history of real frames
    data = {"ep_start": np.zeros(args.buffer_frames, dtype=np.int64), "obs": buffer}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} threads"
    print(f"device: {name}; torch {torch.__version__}; Threading image sizes: {len(cams)} cameras 84x84, "
          f"{frame_stack}-frame history, proprio {dim}; image buffer on {'device' if args.images_on_device else 'host'}")
    cases = {"paper": ([1024, 1024], 100), "cpu-run": ([512, 512], 32)}
    print(f"{'case':8s} {'net':12s} {'batch':>5s} {'params':>11s} {'ms/step':>8s} {'paper steps':>11s} {'hours':>7s}")
    for case in args.cases:
        hidden, batch = cases[case]
        torch.manual_seed(args.seed)
        models = nets.build_stage_models(config(cams, dim, hidden))[0]
        total_h = 0.0
        for kind in ("skill", "pose", "termination"):
            ms = time_training(kind, models[kind], data, batch, args.steps, device, frame_stack, rng)
            hours = ms * PAPER_STEPS[kind] * n_stages / 3.6e6
            total_h += hours
            print(f"{case:8s} {kind:12s} {batch:5d} {nets.count_params(models[kind]):11,d} {ms:8.1f} "
                  f"{PAPER_STEPS[kind] * n_stages:11,d} {hours:7.2f}")
        ms = time_deployment(models, cams, dim, frame_stack, device, max(args.steps, 20))
        print(f"{case:8s} {'deploy step':12s} {1:5d} {'':>11s} {ms:8.1f}   (skill mode + termination prob, one env step)")
        print(f"{case:8s} paper step counts, {n_stages} stages, all three networks: {total_h:.2f} h of training here")


if __name__ == "__main__":
    main()
