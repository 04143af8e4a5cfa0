"""01_generate.py end to end: source demos, generation, labels, replay, resume, determinism."""
import os
import shutil

import numpy as np
import pytest

from common import data as D
from common.env import make_env
from conftest import load_script

generate = load_script("generate", "01_generate.py")

TASKS = ["Threading_D2", "Coffee_D2"]


def run(task, out, num_demos, seed=0):
    return generate.main(["--task", task, "--num-source", "3", "--num-demos", str(num_demos), "--out", str(out),
                          "--seed", str(seed), "--max-attempts", "60"])


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    cache = {}

    def get(task):
        if task not in cache:
            out = tmp_path_factory.mktemp(task)
            summary = run(task, out, 3)
            cache[task] = (out, summary)
        return cache[task]
    return get


@pytest.mark.parametrize("task", TASKS)
def test_generated_demos_replay_to_success_with_consistent_labels(task, generated):
    out, summary = generated(task)
    gen = summary["generation"]
    assert gen["num_demos"] == 3 and gen["complete"]
    demos, attrs = D.load_all(os.path.join(out, task, "generated.hdf5"), task=task)
    assert len(demos) == 3 and attrs["total"] == sum(len(d["actions"]) for d in demos)
    env = make_env(task, obs_mode="state")
    n = len(env.stages)
    for d in demos:
        stage, phase, done = d["stage"], d["phase"], d["stage_done"]
        assert np.all(np.diff(stage) >= 0) and set(stage) == set(range(n))
        for i in range(n):
            ph = phase[stage == i]
            assert ph[0] == D.PHASE_CONNECT and ph[-1] == D.PHASE_SKILL and np.all(np.diff(ph) >= 0)
            first = np.flatnonzero(done[:, i])[0]
            assert stage[first] == i and phase[first] == D.PHASE_SKILL, f"T_{i} fired outside its skill"
            a, b = d["skill_bounds"][i]
            assert stage[a] == i and phase[a] == D.PHASE_SKILL and a <= first < b + 1
        assert np.all(np.abs(d["actions"]) <= 1.0)
        # replaying the states reproduces the recorded object poses and ends in success
        for t in range(0, len(d["states"]), 25):
            env.reset_to(d["states"][t])
            for name, T in env.object_poses().items():
                np.testing.assert_allclose(T, d["datagen_info"]["object_poses"][name][t], atol=1e-6)
        env.reset_to(d["states"][-1])
        assert env.success()
        # the initiation pose is the end-effector pose at the first skill step
        for i in range(n):
            np.testing.assert_allclose(d["init_pose"][i][:3], d["datagen_info"]["eef_pose"][d["skill_bounds"][i][0]][:3, 3],
                                       atol=1e-6)


def test_resume_reaches_target_without_duplicates(generated, tmp_path):
    task = "Threading_D2"
    out, _ = generated(task)
    copy = tmp_path / "resume"
    shutil.copytree(out, copy)
    before, _ = D.load_all(os.path.join(copy, task, "generated.hdf5"), task=task)
    summary = run(task, copy, 4)
    assert summary["generation"]["num_demos"] == 4
    after, _ = D.load_all(os.path.join(copy, task, "generated.hdf5"), task=task)
    seeds = [int(d["attrs"]["seed"]) for d in after]
    assert len(set(seeds)) == 4
    for a, b in zip(before, after):  # the first demos are kept as they were
        np.testing.assert_array_equal(a["actions"], b["actions"])


def test_same_seed_gives_identical_demos(generated, tmp_path):
    task = "Threading_D2"
    out, _ = generated(task)
    again = tmp_path / "again"
    os.makedirs(again / task)
    shutil.copy(out / task / "source.hdf5", again / task / "source.hdf5")  # reuse the source demos
    run(task, again, 2)
    first, _ = D.load_all(os.path.join(out, task, "generated.hdf5"), task=task)
    second, _ = D.load_all(os.path.join(again, task, "generated.hdf5"), task=task)
    for a, b in zip(first[:2], second):
        assert int(a["attrs"]["seed"]) == int(b["attrs"]["seed"])
        np.testing.assert_array_equal(a["actions"], b["actions"])
        np.testing.assert_array_equal(a["states"], b["states"])


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="valid tasks are"):
        generate.main(["--task", "NoSuchTask"])
    bad = tmp_path / "bad.hdf5"
    bad.write_text("garbage")
    with pytest.raises(D.DataError, match="not a readable HDF5"):
        generate.main(["--task", "Threading_D2", "--source", str(bad), "--out", str(tmp_path), "--num-demos", "0"])
    with pytest.raises(D.DataError, match="does not exist"):
        generate.main(["--task", "Threading_D2", "--source", str(tmp_path / "none.hdf5"), "--out", str(tmp_path)])


def test_two_workers_write_disjoint_shards_merged_in_one_file(generated, tmp_path):
    task = "Threading_D2"
    out, _ = generated(task)
    two = tmp_path / "two"
    os.makedirs(two / task)
    shutil.copy(out / task / "source.hdf5", two / task / "source.hdf5")
    # straight-line connects: this test is about shards and the merge, not planning (OMPL's are tested above)
    summary = generate.main(["--task", task, "--num-demos", "2", "--workers", "2", "--out", str(two),
                             "--max-attempts", "60", "--planner", "linear"])
    demos, _ = D.load_all(os.path.join(two, task, "generated.hdf5"), task=task)
    assert summary["generation"]["num_demos"] == 2
    assert sorted(int(d["attrs"]["worker"]) for d in demos) == [0, 1]
    assert len({int(d["attrs"]["seed"]) for d in demos}) == 2
    assert not os.path.exists(D.parts_dir(os.path.join(two, task, "generated.hdf5")))


def test_commanded_replay_reproduces_a_source_skill_on_its_own_seed(dataset):
    """--replay commanded re-issues the source's own commands: on the source demo's seed (identity
    transform) the skill's end-effector path matches the recording to a millimetre, where stepping
    toward each next recorded pose (achieved) lags behind it."""
    from common.planner import Planner
    task = "Threading_D2"
    source = os.path.join(os.path.dirname(dataset), "source.hdf5")
    demos, _ = D.load_all(source, task=task)
    env = make_env(task, obs_mode="state")
    planner = Planner(env, mode="linear", seed=0)
    sources = D.SourceSegments(demos, env.stages)

    class Only(D.SourceSegments):  # always the first source demo
        def __init__(self, s):
            self.__dict__.update(s.__dict__)

        def choose(self, *a, **k):
            return 0
    errors = {}
    try:
        for mode in ("commanded", "achieved"):
            args = generate.parse_args(["--task", task, "--replay", mode, "--action-noise", "0"])
            d, reason = generate.generate_attempt(env, planner, Only(sources), int(demos[0]["attrs"]["seed"]), args)
            rows = d.rec.rows
            skill = [t for t, (s, p) in enumerate(zip(rows["stage"], rows["phase"])) if s == 0 and p == D.PHASE_SKILL]
            seg = sources.segments[0][0]["eef"]
            n = min(len(skill), len(seg))
            errors[mode] = max(np.linalg.norm(rows["eef_pose"][skill[k]][:3, 3] - seg[k][:3, 3]) for k in range(n))
            if mode == "commanded":
                assert reason is None, reason
    finally:
        planner.close()
        env.close()
    assert errors["commanded"] < 0.005  # the connect segment ends within the planner's ~3 mm reach error
    assert errors["achieved"] > 2 * errors["commanded"]


def test_connect_posture_is_recorded_for_training_and_a_resume_must_keep_it(dataset, tmp_path):
    """--connect-posture goes into every demo and the file; 02 carries the file's into the
    checkpoint config (deployment connects the same way); resuming a file made with another
    posture is refused with the fix."""
    import h5py
    task = "Threading_D2"
    os.makedirs(tmp_path / task)
    shutil.copy(os.path.join(os.path.dirname(dataset), "source.hdf5"), tmp_path / task / "source.hdf5")
    common = ["--task", task, "--out", str(tmp_path), "--planner", "linear", "--max-attempts", "30"]
    generate.main(common + ["--num-demos", "1", "--connect-posture", "path"])
    path = os.path.join(tmp_path, task, "generated.hdf5")
    with h5py.File(path, "r") as f:
        assert f["data"].attrs["connect_posture"] == "path"
        assert f["data"]["demo_0"].attrs["connect_posture"] == "path"
    train = load_script("train_hsp", "02_train_hsp.py")
    assert train.load_flat(path, task, "state")["connect_posture"] == "path"
    assert train.load_flat(dataset, task, "state")["connect_posture"] == "reset"  # the default
    with pytest.raises(SystemExit, match="--connect-posture path"):
        generate.main(common + ["--num-demos", "2", "--connect-posture", "reset"])
