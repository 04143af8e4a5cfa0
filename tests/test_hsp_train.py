"""02_train_hsp.py and common/nets.py: a tiny state-mode training run end to end, the checkpoint
format and its checks, overfitting a fixed batch, GMM/pose/termination head properties, and a
forward/backward pass of the DrQ-v2 image encoder."""
import os

import numpy as np
import pytest
import torch

from common import pose as P
from common.hsp_checkpoint import CheckpointError, load_checkpoint, load_hsp_models, save_checkpoint
from common.nets import (IMAGE_FEATURES, DrQv2Encoder, GMMPolicy, ObsHistory, ObsNormalizer, RandomShift,
                         PoseNet, build_stage_models, history_rows, rot6d_to_matrix)

from conftest import HSP_TASK as TASK
from conftest import load_script

torch.set_num_threads(1)
train = load_script("train_hsp", "02_train_hsp.py")


def test_checkpoint_format_and_outputs(trained):
    out, summary = trained
    d = os.path.join(out, TASK)
    for f in ("hsp.pt", "hsp_config.json", "hsp_losses.json", "hsp_losses.png"):
        assert os.path.getsize(os.path.join(d, f)) > 0, f
    ck = torch.load(os.path.join(d, "hsp.pt"), weights_only=True)
    assert ck["format"] == "reinforcegen-kit/1" and ck["task"] == TASK and ck["obs_mode"] == "state"
    assert set(ck["obs_normalizer"]) == {"proprio", "object", "object_rel"}
    assert all(isinstance(v, torch.Tensor) for s in ck["obs_normalizer"].values() for v in s.values())
    assert len(ck["stages"]) == ck["config"]["n_stages"] == 2
    for s in ck["stages"]:
        assert set(s) == {"pose", "skill", "residual", "termination", "success_prob"}
        assert s["residual"] is None and s["success_prob"] is None
    assert summary["n_val_demos"] == 1
    # validation losses were logged
    import json
    losses = json.load(open(os.path.join(d, "hsp_losses.json")))["losses"]
    h = losses["stage0_grasp_needle"]["skill"]
    assert h["step"] == [10, 20] and all(v is not None for v in h["val"])
    # cosine schedule: half the rate at mid-run, zero at the end (the quick preset's lr is 1e-3)
    assert h["lr"] == pytest.approx([0.5e-3, 0.0], abs=1e-9)
    cfg = json.load(open(os.path.join(d, "hsp_config.json")))
    assert cfg["train"]["lr_schedule"] == "cosine"


def test_loaded_models_give_valid_outputs(trained, dataset):
    out, _ = trained
    ck, models = load_hsp_models(os.path.join(out, TASK, "hsp.pt"), TASK, "state")
    data = train.load_flat(dataset, TASK, "state")
    rows = np.arange(0, len(data["actions"]), 7)
    obs = train.get_obs(data, rows, ck["config"]["obs"]["frame_stack"], "cpu")
    with torch.no_grad():
        for m in models:
            a1, a2 = m["skill"].mode(obs), m["skill"].mode(obs)
            assert a1.shape == (len(rows), 7) and torch.equal(a1, a2)  # deterministic, repeatable
            assert a1.abs().max() <= 1.0
            s = m["skill"].sample(obs)
            assert s.shape == a1.shape and s.abs().max() <= 1.0
            T = m["pose"].matrix(obs).double()
            R = T[:, :3, :3]
            assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand_as(R), atol=1e-5)
            assert torch.allclose(torch.det(R), torch.ones(len(R), dtype=R.dtype), atol=1e-5)
            p7 = m["pose"].pose7(obs)
            assert p7.shape == (len(rows), 7) and np.allclose(np.linalg.norm(p7[:, 3:], axis=1), 1.0)
            p = m["termination"].prob(obs)
            assert p.shape == (len(rows),) and ((p >= 0) & (p <= 1)).all()


def test_proprio_without_joints_is_derived_on_load_and_never_stored(dataset):
    import h5py
    with h5py.File(dataset, "r") as f:
        first = f["data"][sorted(f["data"])[0]]
        assert "proprio_without_joints" not in first["obs"]  # a slice of proprio: not written
    full = train.load_flat(dataset, TASK, "state")
    data = train.load_flat(dataset, TASK, "state", state_keys=("proprio_without_joints", "object", "object_rel"))
    assert data["low_dim_keys"] == ["proprio_without_joints", "object", "object_rel"]
    assert set(data["obs"]) == {"proprio_without_joints", "object", "object_rel"}
    np.testing.assert_array_equal(data["obs"]["proprio_without_joints"], full["obs"]["proprio"][:, :8])
    np.testing.assert_array_equal(data["obs"]["object_rel"], full["obs"]["object_rel"])


def test_wrong_task_or_obs_mode_is_a_clear_error(trained, dataset):
    out, _ = trained
    path = os.path.join(out, TASK, "hsp.pt")
    with pytest.raises(ValueError, match=r"task 'Threading_D2', not 'Coffee_D2'.*--task Threading_D2"):
        load_checkpoint(path, "Coffee_D2", "state")
    with pytest.raises(CheckpointError, match=r"--obs state, not --obs image.*pass --obs state"):
        load_checkpoint(path, TASK, "image")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(os.path.join(out, "nope.pt"), TASK, "state")
    # 02 refuses to replace a state-mode checkpoint with an image-mode one
    with pytest.raises(CheckpointError, match="refusing to replace"):
        train.main(["--task", TASK, "--obs", "image", "--data", dataset, "--out", str(out), "--steps", "1"])
    # image mode without images in the file is a clear data error
    with pytest.raises(ValueError, match="--images"):
        train.load_flat(dataset, TASK, "image")


def test_save_is_atomic_and_roundtrips(trained, tmp_path):
    out, _ = trained
    ck = load_checkpoint(os.path.join(out, TASK, "hsp.pt"), TASK, "state")
    ck["stages"][0]["residual"] = {"w": torch.ones(2)}  # a later phase adds its part
    p = save_checkpoint(str(tmp_path / "x" / "agent.pt"), ck)
    assert os.listdir(tmp_path / "x") == ["agent.pt"]
    again = load_checkpoint(p, TASK, "state")
    assert torch.equal(again["stages"][0]["residual"]["w"], torch.ones(2))


def test_losses_decrease_on_a_fixed_batch(dataset):
    torch.manual_seed(0)
    data = train.load_flat(dataset, TASK, "state")
    norm = ObsNormalizer.fit({k: data["obs"][k] for k in data["low_dim_keys"]})
    config = {"n_stages": 1, "action_dim": 7,
              "obs": {"obs_mode": "state", "low_dim_keys": data["low_dim_keys"],
                      "low_dim_sizes": {k: data["obs"][k].shape[1] for k in data["low_dim_keys"]},
                      "cameras": [], "frame_stack": 2, "feature_dim": 50, "shift_pad": 4},
              "nets": {"pose": {"hidden": [64, 64]}, "skill": {"hidden": [64, 64], "gmm_modes": 5, "gmm_min_std": 1e-4},
                       "termination": {"hidden": [64, 64]}}}
    (m,) = build_stage_models(config, norm)
    rows = train.stage_rows(data, 1, 10)
    fns = train.make_loss_fns(data, 1, 2, "cpu", pos_weight=1.0)
    pos = data["init_pose"][:, 1, :3]
    m["pose"].set_target_stats(pos.mean(0), np.maximum(pos.std(0), 1e-2))
    for kind in ("pose", "skill", "termination"):
        batch = np.random.default_rng(0).choice(rows[kind], 32)
        opt = torch.optim.Adam(m[kind].parameters(), lr=1e-3)
        first = fns[kind](m[kind], batch)[0].item()
        for _ in range(150):
            loss = fns[kind](m[kind], batch)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
        last = fns[kind](m[kind], batch)[0].item()
        if kind == "skill":  # NLL: unbounded below
            assert last < first - 5.0, (kind, first, last)
        else:
            assert last < 0.1 * first, (kind, first, last)


def test_history_rows_stop_at_episode_start():
    ep_start = np.array([0, 0, 0, 3, 3, 3])
    h = history_rows(np.array([0, 2, 3, 5]), ep_start, 3)
    np.testing.assert_array_equal(h, [[0, 0, 0], [0, 1, 2], [3, 3, 3], [3, 4, 5]])


def test_post_termination_steps_is_the_median_tail_of_the_skill_segments():
    from common import data as D
    C, S = D.PHASE_CONNECT, D.PHASE_SKILL
    # three demos of one stage: 2 connect rows, then skill segments of 6, 5 and 7 rows whose stage
    # check first holds at the skill's 3rd, 4th and 2nd row (tails of 3, 1 and 5 steps after it)
    demo, phase, done = [], [], []
    for d, (n, first) in enumerate([(6, 2), (5, 3), (7, 1)]):
        demo += [d] * (2 + n)
        phase += [C, C] + [S] * n
        done += [False, False] + [k >= first for k in range(n)]
    data = {"demo": np.array(demo), "phase": np.array(phase), "stage": np.zeros(len(demo), dtype=int),
            "stage_done": np.array(done)[:, None]}
    assert train.post_termination_steps(data, 0) == 3
    data["stage_done"][:] = False  # the check never holds: nothing to finish
    assert train.post_termination_steps(data, 0) == 0


def test_obs_history_matches_training_histories(dataset):
    data = train.load_flat(dataset, TASK, "state")
    rows = np.arange(0, 5)  # the first steps of demo 0: histories repeat its first step
    want = train.get_obs(data, rows, 3, "cpu")
    hist = ObsHistory(3, ["proprio", "object"])
    for t in rows:
        obs = {k: data["obs"][k][t] for k in ("proprio", "object")}
        b = (hist.reset(obs) if t == 0 else hist.push(obs)).batch()
        for k in b:
            assert torch.equal(b[k][0], want[k][t])


def test_rot6d_matches_common_pose():
    R = P.quat_to_mat(P.quat_normalize(np.random.default_rng(0).normal(size=(8, 4))))
    r6 = P.rot6d_from_mat(R) + 0.01 * np.random.default_rng(1).normal(size=(8, 6))
    np.testing.assert_allclose(rot6d_to_matrix(torch.tensor(r6)).numpy(), P.mat_from_rot6d(r6), atol=1e-9)


def test_image_encoder_forward_backward():
    torch.manual_seed(0)
    enc = DrQv2Encoder(3 * 3)
    x = torch.randint(0, 256, (2, 9, 84, 84)).float()
    assert enc(x).shape == (2, IMAGE_FEATURES) == (2, 32 * 35 * 35)
    aug = RandomShift(4)
    assert aug(x).shape == x.shape and not torch.equal(aug(x), x)
    aug.eval()
    assert torch.equal(aug(x), x)
    cfg = {"obs_mode": "image", "low_dim_keys": ["proprio"], "low_dim_sizes": {"proprio": 15},
           "cameras": ["agentview", "robot0_eye_in_hand"], "frame_stack": 3, "feature_dim": 50, "shift_pad": 4,
           "hidden": [32], "gmm_modes": 5, "gmm_min_std": 1e-4, "action_dim": 7}
    pi = GMMPolicy(cfg)
    obs = {"proprio": torch.randn(2, 3, 15),
           "agentview_image": torch.randint(0, 256, (2, 3, 84, 84, 3), dtype=torch.uint8),
           "robot0_eye_in_hand_image": torch.randint(0, 256, (2, 3, 84, 84, 3), dtype=torch.uint8)}
    loss = pi.loss(obs, torch.rand(2, 7) * 2 - 1)
    loss.backward()
    assert torch.isfinite(loss)
    assert pi.encoder.convs["agentview"].convnet[0].weight.grad.abs().sum() > 0
    pi.eval()
    with torch.no_grad():
        a = pi.mode(obs)
        assert a.shape == (2, 7) and a.abs().max() <= 1 and torch.equal(a, pi.mode(obs))


def test_gmm_component_action_closes_where_the_mode_never_does():
    """The grasp-timing ambiguity measured on NutAssembly: at the same resting observation the demos
    keep the gripper open 70 % of the time and close it 30 %. The most probable component (`mode`)
    stays open forever; robomimic's low-noise action (`component_mean`) closes at about the demos'
    rate, and is a function of its uniform numbers (so a seeded generator makes it repeatable)."""
    torch.manual_seed(0)
    cfg = {"obs_mode": "state", "low_dim_keys": ["proprio"], "low_dim_sizes": {"proprio": 4}, "frame_stack": 1,
           "hidden": [32], "gmm_modes": 2, "gmm_min_std": 1e-4, "action_dim": 2}
    pi = GMMPolicy(cfg)
    obs = {"proprio": torch.zeros(256, 4)}
    grip = torch.where(torch.arange(256) < 0.7 * 256, -0.9, 0.9)  # inside tanh's range: fits in few steps
    actions = torch.stack([torch.zeros(256), grip], dim=1)
    opt = torch.optim.Adam(pi.parameters(), lr=1e-2)
    for _ in range(400):
        opt.zero_grad()
        pi.loss(obs, actions).backward()
        opt.step()
    one = {"proprio": torch.zeros(2000, 4)}
    with torch.no_grad():
        assert (pi.mode(one)[:, 1] < 0).all()
        u = np.random.default_rng(0).random(2000)
        a = pi.component_mean(one, u)
        closes = float((a[:, 1] > 0).float().mean())
        assert 0.25 < closes < 0.35, closes
        assert torch.equal(a, pi.component_mean(one, u))
        assert (a.abs() <= 1).all()


def _yaw_about(ref_T, pose7):
    rel = np.linalg.inv(ref_T) @ P.pose7_to_mat(pose7)
    return np.degrees(np.arctan2(rel[1, 0], rel[0, 0]))


def test_grasp_symmetry_fold_keeps_one_grasp_mode_and_leaves_unimodal_labels_alone():
    """Top-down grasps of objects at random yaws: 70 % of the demos grasp at -90° about the object,
    30 % at +90° (the half-turn twin). Folding turns exactly the 30 % onto the common grasp and keeps
    every position; labels spread ±40° around one grasp are not touched."""
    from common.scripted import top_down
    rng = np.random.default_rng(0)
    n = 200
    ref = np.stack([P.make_pose(rng.uniform(-0.2, 0.2, 3), P.axisangle_to_mat([0, 0, rng.uniform(-np.pi, np.pi)]))
                    for _ in range(n)])
    twin = rng.random(n) < 0.3
    rel_yaw = np.where(twin, np.pi / 2, -np.pi / 2) + rng.normal(0, 0.05, n)
    def labels(yaws):
        out = []
        for T, y in zip(ref, yaws):
            R = T[:3, :3] @ top_down(0.0) @ P.axisangle_to_mat([0, 0, -y])  # gripper yaw y about the object
            out.append(P.mat_to_pose7(P.make_pose(T[:3, 3] + [0.01, 0, 0.05], R)))
        return np.stack(out)
    init = labels(rel_yaw)
    folded, turn = train.fold_grasp_symmetry(init, ref)
    assert np.array_equal(turn != 0, twin) and np.allclose(turn[twin], np.pi)
    assert train.turn_shares(turn, np.pi) == [pytest.approx(1 - twin.mean()), pytest.approx(twin.mean())]
    assert np.allclose(folded[:, :3], init[:, :3])
    yaws = np.array([_yaw_about(T, p) for T, p in zip(ref, folded)])
    common_yaw = np.median(yaws)
    assert np.all(np.abs((yaws - common_yaw + 180) % 360 - 180) < 20)
    # the untouched ones are bit-identical
    assert np.array_equal(folded[~twin], init[~twin])
    # one mode, spread ±40°: nothing to fold
    spread = labels(-np.pi / 2 + rng.uniform(-0.7, 0.7, n))
    _, turn = train.fold_grasp_symmetry(spread, ref)
    assert not turn.any() and train.turn_shares(turn, np.pi) == [1.0, 0.0]
    # a square knob (ThreePiece's piece 2) is grasped from any side: with period π/2 the two
    # quarter-turned modes fold onto the most common one; the half-turn fold cannot merge them
    # (each is 90° from the common grasp, and so is its half-turn twin).
    side = rng.choice([0, 1, 3], size=n, p=[0.5, 0.3, 0.2])
    knob = labels(side * np.pi / 2 + rng.normal(0, 0.05, n))
    for period, n_modes in ((np.pi / 2, 1), (np.pi, 3)):
        folded, turn = train.fold_grasp_symmetry(knob, ref, period)
        yaws = np.array([_yaw_about(T, p) for T, p in zip(ref, folded)])
        assert len(np.unique(np.round(yaws / 90.0).astype(int) % 4)) == n_modes, period
        if n_modes == 1:
            assert np.array_equal(turn != 0, side != 0)
            # twin j of the common (side 0) grasp is the gripper turned by j quarter turns, where
            # the demos of side -j grasp: the data holds 50 / 20 / 0 / 30 % at twins 0 / 1 / 2 / 3
            share = train.turn_shares(turn, period)
            assert share == [pytest.approx(np.mean(side == (-j) % 4)) for j in range(4)]


def test_placement_fold_turns_the_pose_about_the_target_and_keeps_it_over_the_hole():
    """ThreePiece's first insertion: the hole repeats every 90°, and the labels (eef above the hole,
    offset 1 cm from its axis) sit at 0°/90°/180° about the base. Folding about the reference turns
    the minority onto 90°: orientation *and* position turn about the base's vertical axis, so every
    folded pose is the common pose in the base's frame, up to the label noise."""
    from common.scripted import top_down
    rng = np.random.default_rng(1)
    n = 300
    ref = np.stack([P.make_pose([rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2), 0.82],
                                P.axisangle_to_mat([0, 0, rng.uniform(-np.pi / 4, np.pi / 4)])) for _ in range(n)])
    side = rng.choice([0, 1, 2], size=n, p=[0.1, 0.7, 0.2])
    offset = np.array([0.01, 0.0, 0.14])  # in the hole's frame, for the common (90°) placement
    init = []
    for T, k in zip(ref, side):
        Rz = P.axisangle_to_mat([0, 0, k * np.pi / 2 + rng.normal(0, 0.02)])
        rel = P.make_pose(Rz @ P.axisangle_to_mat([0, 0, -np.pi / 2]) @ offset, Rz @ top_down(0.0))
        init.append(P.mat_to_pose7(T @ rel))
    init = np.stack(init)
    folded, turn = train.fold_grasp_symmetry(init, ref, np.pi / 2, about="reference")
    assert np.array_equal(turn != 0, side != 1)
    rel = np.stack([np.linalg.inv(T) @ P.pose7_to_mat(p) for T, p in zip(ref, folded)])
    assert np.allclose(rel[:, :3, 3], offset, atol=1e-3)  # all on the common side
    yaws = np.degrees(np.arctan2(rel[:, 1, 0], rel[:, 0, 0]))
    assert np.all(np.abs((yaws - yaws[0] + 180) % 360 - 180) < 5)
    # the grip fold would keep positions, so it cannot put the turned labels over the same point
    g, _ = train.fold_grasp_symmetry(init, ref, np.pi / 2, about="grip")
    grel = np.stack([np.linalg.inv(T) @ P.pose7_to_mat(p) for T, p in zip(ref, g)])
    assert (np.linalg.norm(grel[side != 1][:, :2, 3] - offset[:2], axis=1) > 0.009).all()
    with pytest.raises(ValueError, match="about"):
        train.fold_grasp_symmetry(init, ref, np.pi / 2, about="nowhere")


def test_multi_hypothesis_pose_head_picks_a_mode_where_regression_averages():
    """Two equally likely initiation poses for the same observation (two source demos grasping
    from opposite sides): plain regression (K=1) lands between them, the winner-takes-all head
    (K=3) predicts one of them."""
    torch.manual_seed(0)
    cfg = {"obs_mode": "state", "low_dim_keys": ["proprio"], "low_dim_sizes": {"proprio": 4}, "frame_stack": 1,
           "hidden": [64, 64]}
    n = 256
    obs = {"proprio": torch.randn(n // 2, 4).repeat(2, 1)}  # every observation twice ...
    side = torch.cat([torch.ones(n // 2), -torch.ones(n // 2)])  # ... once per source demo (+-1)
    pos = torch.stack([0.1 * side, torch.zeros(n), torch.zeros(n)], dim=1)
    yaw = side * (np.pi / 2)
    R = torch.zeros(n, 3, 3)
    R[:, 0, 0], R[:, 0, 1], R[:, 1, 0], R[:, 1, 1], R[:, 2, 2] = yaw.cos(), -yaw.sin(), yaw.sin(), yaw.cos(), 1
    errors = {}
    for k in (1, 3):
        net = PoseNet(dict(cfg, modes=k))
        net.set_target_stats(np.zeros(3), np.full(3, 0.1))
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(400):
            loss, _, _ = net.loss(obs, pos, R)
            opt.zero_grad()
            loss.backward()
            opt.step()
        p, _ = net(obs)
        errors[k] = torch.minimum((p - pos[:1].abs()).norm(dim=1), (p + pos[:1].abs()).norm(dim=1)).mean().item()
    assert errors[1] > 0.07  # the average of +-10 cm is ~0, 10 cm from both
    assert errors[3] < 0.02  # within 2 cm of one of the two true poses


def test_an_interrupted_run_resumes_at_the_network_it_stopped_at(dataset, tmp_path, monkeypatch):
    def args(out, steps="6"):
        return ["--task", TASK, "--obs", "state", "--data", dataset, "--out", str(tmp_path / out), "--steps", steps,
                "--eval-every", "3", "--batch-size", "8", "--hidden", "16", "16", "--no-tqdm"]

    train.main(args("whole"))  # uninterrupted reference
    real, calls = train.train_net, []

    def interrupted_at_the_fourth(*a, **k):
        calls.append(a[0])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train, "train_net", interrupted_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        train.main(args("resumed"))
    progress = tmp_path / "resumed" / TASK / "hsp_progress"
    assert len(os.listdir(progress)) == 3 and not (tmp_path / "resumed" / TASK / "hsp.pt").exists()
    first_three = calls[:3]

    calls.clear()
    monkeypatch.setattr(train, "train_net", lambda *a, **k: (calls.append(a[0]), real(*a, **k))[1])
    train.main(args("resumed"))
    n_nets = 3 * len(load_checkpoint(str(tmp_path / "whole" / TASK / "hsp.pt"))["stages"])
    assert len(calls) == n_nets - 3 and not set(first_three) & set(calls)  # the saved three were not retrained
    whole = load_checkpoint(str(tmp_path / "whole" / TASK / "hsp.pt"))["stages"]
    resumed = load_checkpoint(str(tmp_path / "resumed" / TASK / "hsp.pt"))["stages"]
    for a, b in zip(whole, resumed):  # a resumed run equals an uninterrupted one
        for kind in ("pose", "skill", "termination"):
            assert all(torch.equal(a[kind][k], b[kind][k]) for k in a[kind]), kind
    assert not progress.exists()  # removed once hsp.pt is complete

    # networks saved under another configuration (here: other step counts) are retrained
    monkeypatch.setattr(train, "train_net", interrupted_at_the_fourth)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        train.main(args("changed"))
    monkeypatch.setattr(train, "train_net", lambda *a, **k: (calls.append(a[0]), real(*a, **k))[1])
    calls.clear()
    train.main(args("changed", steps="5"))
    assert len(calls) == n_nets


def test_skill_steps_take_one_value_per_stage(dataset, tmp_path):
    import json
    common = ["--task", TASK, "--obs", "state", "--data", dataset, "--out", str(tmp_path), "--steps", "4",
              "--eval-every", "3", "--batch-size", "8", "--hidden", "16", "16", "--no-tqdm"]
    train.main(common + ["--skill-steps", "3", "9"])
    d = os.path.join(tmp_path, TASK)
    cfg = json.load(open(os.path.join(d, "hsp_config.json")))
    stages = cfg["stage_names"]
    assert [cfg["train"]["steps"][f"stage{i}_{n}/skill"] for i, n in enumerate(stages)] == [3, 9]
    assert [cfg["train"]["steps"][f"stage{i}_{n}/pose"] for i, n in enumerate(stages)] == [4, 4]
    losses = json.load(open(os.path.join(d, "hsp_losses.json")))["losses"]
    assert [losses[f"stage{i}_{n}"]["skill"]["step"] for i, n in enumerate(stages)] == [[3], [3, 6, 9]]
    with pytest.raises(SystemExit, match="one value or one per stage"):  # before any training
        train.main(common + ["--skill-steps", "3", "9", "9", "--overwrite"])


def test_bench_image_step_matches_the_presets_and_trains_each_network():
    """bench/bench_image_step.py (run on GPU machines that have torch alone) keeps its own copy of
    the paper step counts and Threading's image sizes: they must agree with the kit's, and each of
    its timed steps must be a real training step (the weights move)."""
    import common
    from common.env import default_cameras
    from common.presets import HSP

    bench = load_script("bench_image_step", os.path.join("bench", "bench_image_step.py"))
    assert bench.PAPER_STEPS == {k: HSP[f"{k}_steps"] for k in ("skill", "pose", "termination")}
    assert bench.THREADING["cameras"] == default_cameras("Threading_D2")
    assert bench.THREADING["stages"] == len(common.TASKS["Threading_D2"].stages)
    cfg = bench.config(["agentview"], 15, [16])
    assert (cfg["obs"]["frame_stack"], cfg["obs"]["feature_dim"], cfg["obs"]["shift_pad"]) == (
        HSP["frame_stack"]["image"], HSP["feature_dim"], HSP["shift_pad"])
    rng = np.random.default_rng(0)
    data = {"ep_start": np.zeros(12, dtype=np.int64),
            "obs": {"agentview_image": rng.integers(0, 256, (12, 84, 84, 3), dtype=np.uint8),
                    "proprio": rng.standard_normal((12, 15)).astype(np.float32)}}
    models = bench.nets.build_stage_models(cfg)[0]
    for kind, net in models.items():
        before = [p.detach().clone() for p in net.parameters()]
        ms = bench.time_training(kind, net, data, 2, 1, torch.device("cpu"), 3, rng)
        assert np.isfinite(ms) and ms > 0
        assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters())), kind


def test_data_on_device_trains_exactly_as_host_batches(dataset, tmp_path):
    """--data-on-device only changes where batches are drawn from: the same seed gives the same
    batches (including histories) and the same weights."""
    data = train.load_flat(dataset, TASK, "state")
    rows = np.array([[0, 1, 7], [3, 2, 9]])
    host = train.get_obs(data, rows, 3, "cpu")
    train.move_obs_to_device(data, "cpu")
    assert all(torch.is_tensor(v) for v in data["obs"].values())
    moved = train.get_obs(data, rows, 3, "cpu")
    assert set(moved) == set(host) and all(torch.equal(moved[k], host[k]) for k in host)
    weights = []
    for flag in ([], ["--data-on-device"]):
        out = tmp_path / ("dev" if flag else "host")
        train.main(["--task", TASK, "--obs", "state", "--data", dataset, "--out", str(out), "--steps", "6",
                    "--eval-every", "3", "--batch-size", "8", "--hidden", "16", "--no-tqdm", "--threads", "1"] + flag)
        weights.append(torch.load(out / TASK / "hsp.pt", weights_only=True)["stages"])
    for a, b in zip(*weights):
        for kind in ("pose", "skill", "termination"):
            assert all(torch.equal(a[kind][k], b[kind][k]) for k in a[kind]), kind
