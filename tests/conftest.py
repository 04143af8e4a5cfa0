import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import importlib.util  # noqa: E402

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HSP_TASK = "Threading_D2"


def load_script(name: str, file: str):
    """Import a numbered phase script (its file name is not a module name)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, file))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """A tiny generated Threading file (2 source demos, 2 generated with linear connect segments: fast).
    Returns the generated file's path; source.hdf5 lies beside it."""
    out = tmp_path_factory.mktemp("hsp_data")
    load_script("generate", "01_generate.py").main([
        "--task", HSP_TASK, "--num-source", "2", "--num-demos", "2", "--out", str(out), "--seed", "0",
        "--max-attempts", "40", "--planner", "linear"])
    return os.path.join(out, HSP_TASK, "generated.hdf5")


@pytest.fixture(scope="session")
def trained(dataset, tmp_path_factory):
    """A state-mode HSP checkpoint trained for 20 steps on `dataset`: (runs root, summary)."""
    out = tmp_path_factory.mktemp("hsp_runs")
    summary = load_script("train_hsp", "02_train_hsp.py").main([
        "--task", HSP_TASK, "--obs", "state", "--data", dataset, "--out", str(out), "--steps", "20",
        "--eval-every", "10", "--batch-size", "16", "--hidden", "32", "32", "--lr-schedule", "cosine",
        "--no-tqdm"])
    return out, summary
