import json

import h5py
import numpy as np
import pytest

from common import data as D


def fake_demo(T=12, n_stages=2, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "actions": rng.uniform(-1, 1, (T, 7)).astype(np.float32),
        "states": rng.normal(size=(T, 20)),
        "stage": np.repeat(np.arange(n_stages), T // n_stages),
        "phase": np.tile([0, 1], T // 2),
        "stage_done": np.zeros((T, n_stages), bool),
        "init_pose": rng.normal(size=(n_stages, 7)),
        "skill_bounds": np.array([[1, 5], [7, 12]]),
        "obs": {"proprio": rng.normal(size=(T, 15)).astype(np.float32),
                "agentview_image": rng.integers(0, 255, (T, 8, 8, 3), dtype=np.uint8)},
        "datagen_info": {"eef_pose": np.tile(np.eye(4), (T, 1, 1)),
                         "gripper_action": np.ones((T, 1), np.float32),
                         "object_poses": {"obj": np.tile(np.eye(4), (T, 1, 1))}},
        "attrs": {"seed": seed, "model_file": "<mujoco/>"},
    }


STAGES = [{"name": "a", "reference_object": "obj"}, {"name": "b", "reference_object": "obj"}]


def test_round_trip(tmp_path):
    path = str(tmp_path / "x.hdf5")
    demos = [fake_demo(seed=s) for s in range(3)]
    with D.DemoWriter(path, "TaskA", {"obs_mode": "state"}, STAGES) as w:
        for d in demos:
            w.append(d)
    loaded, attrs = D.load_all(path, task="TaskA")
    assert attrs["total"] == 36 and json.loads(attrs["stages"]) == STAGES
    assert json.loads(attrs["env_args"])["env_name"] == "TaskA"
    for a, b in zip(demos, loaded):
        np.testing.assert_array_equal(a["actions"], b["actions"])
        np.testing.assert_array_equal(a["obs"]["agentview_image"], b["obs"]["agentview_image"])
        np.testing.assert_array_equal(a["datagen_info"]["object_poses"]["obj"], b["datagen_info"]["object_poses"]["obj"])
        assert b["attrs"]["seed"] == a["attrs"]["seed"]


def test_resume_appends_and_drops_partial_demo(tmp_path):
    path = str(tmp_path / "x.hdf5")
    with D.DemoWriter(path, "TaskA", {}, STAGES) as w:
        w.append(fake_demo())
    with h5py.File(path, "a") as f:  # simulate a crash in the middle of writing demo 1
        f["data"].create_group("_partial_1").create_dataset("actions", data=np.zeros((3, 7)))
    with D.DemoWriter(path, "TaskA", {}, STAGES) as w:
        assert w.num_demos == 1 and w.next_index() == 1
        w.append(fake_demo(seed=5))
    with h5py.File(path, "r") as f:
        assert D.demo_keys(f) == ["demo_0", "demo_1"] and "_partial_1" not in f["data"]


def test_writer_refuses_other_task(tmp_path):
    path = str(tmp_path / "x.hdf5")
    D.DemoWriter(path, "TaskA", {}, STAGES).close()
    with pytest.raises(D.DataError, match="TaskA"):
        D.DemoWriter(path, "TaskB", {}, STAGES)


def test_missing_keys_are_named(tmp_path):
    path = str(tmp_path / "x.hdf5")
    with D.DemoWriter(path, "TaskA", {}, STAGES) as w:
        d = fake_demo()
        del d["stage_done"]
        w.append(d)
    with pytest.raises(D.DataError, match="stage_done"):
        D.open_dataset(path)


def test_wrong_task_and_bad_files(tmp_path):
    path = str(tmp_path / "x.hdf5")
    with D.DemoWriter(path, "TaskA", {}, STAGES) as w:
        w.append(fake_demo())
    with pytest.raises(D.DataError, match="TaskA"):
        D.open_dataset(path, task="TaskB")
    with pytest.raises(D.DataError, match="does not exist"):
        D.open_dataset(str(tmp_path / "nope.hdf5"))
    junk = tmp_path / "junk.hdf5"
    junk.write_text("not hdf5")
    with pytest.raises(D.DataError, match="not a readable HDF5"):
        D.open_dataset(str(junk))
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f.create_group("data")
    with pytest.raises(D.DataError, match="lacks the attribute"):
        D.open_dataset(str(tmp_path / "empty.hdf5"))
