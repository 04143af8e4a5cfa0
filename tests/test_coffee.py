"""Coffee_D2: scene facts of TASKS.md §3 at reset, the shared MJCF helpers, and the scripted demo."""
import numpy as np
import pytest

import common
from common.tasks import coffee as C

DEG = np.pi / 180


@pytest.fixture(scope="module")
def env():
    e = common.make_env("Coffee_D2")
    yield e
    e.close()


def test_shared_helpers_are_stable():
    assert "lid_hinge" in C.machine_body_xml(True) and "lid_hinge" in C.machine_body_xml(False)
    assert "cup" in C.machine_body_xml(True) and "cup" not in C.machine_body_xml(False)
    assert C.pod_body_xml().count("cylinder") == 4
    assert np.allclose(C.MACHINE_HALF_SIZE, [0.0865, 0.1505, 0.1105])
    assert np.allclose(C.HOLDER_LOCAL, [0.0, 0.1061, 0.0635])
    assert C.POD_RADIUS == pytest.approx(0.0243) and C.POD_HALF_HEIGHT == pytest.approx(0.0231)


def test_reset_in_d2_ranges_without_interpenetration(env):
    raw = env.raw
    m = raw.sim.model
    table = {m.geom_name2id("table_collision")}
    for seed in range(10):
        env.reset(seed=seed)
        T = raw.object_pose("machine")
        yaw = np.arctan2(T[1, 0], T[0, 0]) % (2 * np.pi)
        assert -0.05 <= T[0, 3] <= 0.05 and 0.1 <= T[1, 3] <= 0.2
        assert 120 * DEG - 1e-6 <= yaw <= 210 * DEG + 1e-6
        assert T[2, 3] == pytest.approx(0.8 + 0.1105, abs=1e-3) and T[2, 2] == pytest.approx(1.0)
        pod = raw.object_pose("pod")
        assert -0.2 <= pod[0, 3] <= 0.05 and -0.30 <= pod[1, 3] <= -0.17
        assert pod[2, 3] == pytest.approx(0.8 + 0.0231, abs=1e-3)
        assert raw.lid_angle() == pytest.approx(120 * DEG, abs=1e-3)
        assert not raw.stage_done().any() and not env.success()
        for i in range(raw.sim.data.ncon):  # only contacts with the table
            c = raw.sim.data.contact[i]
            assert c.geom1 in table or c.geom2 in table, (m.geom_id2name(c.geom1), m.geom_id2name(c.geom2))


def test_success_check_geometry(env):
    """A pod set into the holder with the lid closed is a success; lid open or pod outside is not."""
    raw = env.raw
    env.reset(seed=0)
    holder = raw.holder_center()
    adr = raw.sim.model.jnt_qposadr[raw.sim.model.joint_name2id(raw.objects["pod"].joints[0])]
    raw.sim.data.qpos[adr:adr + 3] = holder + [0, 0, 0.0075]
    raw.set_lid_angle(0.0)
    raw.sim.forward()
    for _ in range(10):
        env.step(np.zeros(7))
    assert raw.pod_in_holder() and raw.pod_under_lid() and env.success()
    raw.set_lid_angle(30 * DEG)
    raw.sim.forward()
    assert not env.success()


@pytest.mark.parametrize("seed", [0, 1])  # machine yaws 204° and 122°: either side of 180°
def test_scripted_demo_succeeds(env, seed):
    d = C.scripted_demo(env, seed, np.random.default_rng(seed), record=True)
    assert d.failed is None and env.success()
    rec = d.rec
    stages = np.asarray(rec.rows["stage"])
    assert set(stages.tolist()) == {0, 1} and len(rec) <= env.raw.eval_horizon
    assert np.asarray(rec.rows["stage_done"])[:, 0].any()
    # The insertion starts at one gripper yaw in the machine's frame, whichever way the machine
    # turns: source demos half a turn apart would teach generated data two initiation poses.
    start = rec.skill_bounds[1, 0]
    eef, machine = rec.rows["eef_pose"][start], rec.object_poses["machine"][start]
    closing_axis_yaw = C._yaw_of(np.linalg.inv(machine) @ eef)  # fingers close along the grip x axis
    assert abs(np.rad2deg(closing_axis_yaw)) < 10.0, np.rad2deg(closing_axis_yaw)
