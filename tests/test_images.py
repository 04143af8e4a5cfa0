"""Image observations end to end: 01's --images-from renders a state-mode file's demos from their
stored states, 02 trains an image-mode HSP on it, and Algorithm 1 runs on camera observations."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from common import data as D
from common.env import default_cameras, make_env
from common.hsp import AgentOptions, HSPAgent
from common.hsp_checkpoint import load_hsp_models
from common.planner import Planner
from conftest import HSP_TASK as TASK
from conftest import ROOT, load_script

torch.set_num_threads(1)
generate = load_script("generate", "01_generate.py")


@pytest.fixture(scope="module")
def rendered(dataset, tmp_path_factory):
    """The command line with two workers, in a fresh process: the workers are forked, and a fork of
    a process that already rendered (this test session's earlier tests) inherits Mesa's locks."""
    out = tmp_path_factory.mktemp("rendered")
    subprocess.run([sys.executable, "01_generate.py", "--task", TASK, "--images-from", dataset,
                    "--num-demos", "2", "--workers", "2", "--out", str(out)], cwd=ROOT, check=True, timeout=600,
                   stdout=subprocess.DEVNULL)
    with open(os.path.join(out, TASK, "generated_images_summary.json")) as f:
        summary = json.load(f)
    return summary["path"], summary


def test_images_from_renders_stored_states_and_keeps_everything_else(rendered, dataset):
    path, summary = rendered
    assert summary["num_demos"] == 2 and summary["cameras"] == default_cameras(TASK)
    originals, _ = D.load_all(dataset, task=TASK)
    rendered_demos, _ = D.load_all(path, task=TASK)
    env = make_env(TASK, obs_mode="image")
    for orig, new in zip(originals, rendered_demos):
        for k in ("actions", "states", "stage", "phase", "stage_done", "init_pose"):
            np.testing.assert_array_equal(orig[k], new[k])
        assert int(orig["attrs"]["seed"]) == int(new["attrs"]["seed"])
        np.testing.assert_array_equal(orig["obs"]["proprio"], new["obs"]["proprio"])
        T = len(orig["actions"])
        for cam in default_cameras(TASK):
            imgs = new["obs"][f"{cam}_image"]
            assert imgs.shape == (T, 84, 84, 3) and imgs.dtype == np.uint8
        # each frame is the render of its own row's state (not a neighbour's, not a blank)
        t = T // 2
        obs = env.reset_to(orig["states"][t])
        np.testing.assert_array_equal(new["obs"]["agentview_image"][t], obs["agentview_image"])
        assert not np.array_equal(new["obs"]["robot0_eye_in_hand_image"][t], new["obs"]["robot0_eye_in_hand_image"][0])
    env.close()
    assert not os.path.exists(D.parts_dir(path))


def test_images_from_refuses_a_file_that_already_has_images(rendered, tmp_path):
    path, _ = rendered
    with pytest.raises(D.DataError, match="already has camera observations"):
        generate.main(["--task", TASK, "--images-from", path, "--out", str(tmp_path)])
    with pytest.raises(D.DataError, match="holds demos of task 'Threading_D2'"):
        generate.main(["--task", "Coffee_D2", "--images-from", path, "--out", str(tmp_path)])


def test_image_hsp_trains_and_runs_algorithm_1_on_cameras(rendered, dataset, tmp_path):
    path, _ = rendered
    summary = load_script("train_hsp", "02_train_hsp.py").main([
        "--task", TASK, "--obs", "image", "--data", path, "--out", str(tmp_path), "--steps", "2",
        "--eval-every", "2", "--batch-size", "4", "--hidden", "32", "32", "--no-tqdm", "--val-fraction", "0"])
    ckpt = os.path.join(tmp_path, TASK, "hsp.pt")
    ck, models = load_hsp_models(ckpt, TASK, "image")
    assert ck["config"]["obs"]["cameras"] == default_cameras(TASK) and ck["config"]["obs"]["frame_stack"] == 3
    env = make_env(TASK, obs_mode="image", horizon=40)
    planner = Planner(env, seed=0)
    try:
        agent = HSPAgent(env, models, ck["config"], planner,
                         AgentOptions(pose="learned", replan=True, termination="learned"))
        result = agent.run_episode(seed=5)
        # 40 steps cannot finish Threading: the episode ends at the horizon (or a planner failure)
        # having stepped the env on camera observations, three frames deep
        assert not result.success and 0 < result.steps <= 40 and result.failure
        assert len(agent.history.frames) == 3
        assert agent.history.frames[-1]["agentview_image"].shape == (84, 84, 3)
    finally:
        planner.close()
        env.close()
    assert summary["n_demos"] == 2
