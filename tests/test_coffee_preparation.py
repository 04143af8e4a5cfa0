"""CoffeePreparation_D2: reset state, D2 ranges and the task-specific checks (drawer, mug, success)."""
from types import SimpleNamespace

import numpy as np
import pytest

import common
from common import pose as P
from common.tasks import coffee_preparation as CP

DEG = np.pi / 180


@pytest.fixture(scope="module")
def env():
    e = common.make_env("CoffeePreparation_D2")
    yield e
    e.close()


def _free_qpos_adr(raw, name):
    m = raw.sim.model
    return int(m.jnt_qposadr[m.joint_name2id(raw.objects[name].joints[0])])


def _set_free(raw, name, pos, R):
    adr = _free_qpos_adr(raw, name)
    raw.sim.data.qpos[adr:adr + 3] = pos
    raw.sim.data.qpos[adr + 3:adr + 7] = np.roll(P.mat_to_quat(R), 1)  # wxyz
    raw.sim.forward()


def test_reset_state_and_d2_ranges(env):
    raw = env.raw
    for seed in range(5):
        env.reset(seed=seed)
        M, mug = raw.object_pose("machine"), raw.object_pose("mug")
        m_yaw = np.arctan2(M[1, 0], M[0, 0])
        assert -0.22 <= M[0, 3] <= -0.15 and -0.30 <= M[1, 3] <= -0.22
        assert -45 * DEG - 1e-6 <= m_yaw <= 10 * DEG + 1e-6
        assert -0.15 <= mug[0, 3] <= 0.12 and 0.08 <= mug[1, 3] <= 0.22
        assert raw.lid_angle() == pytest.approx(0.0, abs=1e-6)
        assert raw.drawer_slide() == pytest.approx(0.0, abs=1e-6)
        # the pod rests inside the (closed) drawer, in the cabinet's footprint
        C = raw.object_pose("drawer")
        pod_local = P.pose_inv(C) @ np.append(raw.pod_pos(), 1.0)
        assert abs(pod_local[0]) < 0.1 and -0.2 < pod_local[1] < 0.1
        assert raw.mug_upright() and not raw.mug_on_plate() and not raw.drawer_open()
        assert not raw.stage_done().any() and not env.success()


def test_drawer_open_check_flips_past_signal(env):
    raw = env.raw
    env.reset(seed=0)
    adr = raw.drawer_qpos_addr
    for slide, expected in ((0.0, False), (-0.15, False), (-0.185, False), (-0.195, True), (-0.21, True)):
        raw.sim.data.qpos[adr] = slide
        raw.sim.forward()
        assert raw.drawer_open() is expected, slide
    # the handle moves with the drawer along world +y (the cabinet's front faces +y)
    raw.sim.data.qpos[adr] = 0.0
    raw.sim.forward()
    h0 = raw.drawer_handle()
    raw.sim.data.qpos[adr] = -0.1
    raw.sim.forward()
    assert np.allclose(raw.drawer_handle() - h0, [0, 0.1, 0], atol=1e-6)


def test_mug_upright_false_when_tilted(env):
    raw = env.raw
    env.reset(seed=1)
    mug = raw.object_pose("mug")
    _set_free(raw, "mug", mug[:3, 3], P.axisangle_to_mat([0, 0, 0.7]))
    assert raw.mug_upright()
    _set_free(raw, "mug", mug[:3, 3], P.axisangle_to_mat([0, 0, 0.7]) @ P.axisangle_to_mat([1.5 * DEG, 0, 0]))
    assert raw.mug_upright()  # within the 1e-3 tolerance (~2.6°)
    _set_free(raw, "mug", mug[:3, 3], P.axisangle_to_mat([0, 4 * DEG, 0]))
    assert not raw.mug_upright()
    assert not raw.mug_grasped()  # on the table, untouched


def _staged_success(env, lid):
    """Mug upright on the base plate, pod seated in the holder, lid at `lid`; a few idle steps."""
    raw = env.raw
    env.reset(seed=2)
    M = raw.object_pose("machine")
    mach = lambda local: (M @ np.append(local, 1.0))[:3]  # noqa: E731
    _set_free(raw, "mug", mach([0.0, CP.MUG_PLATE_LOCAL_Y, CP.PLATE_TOP_LOCAL + CP.MUG_HALF_H + 0.001]),
              M[:3, :3] @ P.axisangle_to_mat([0, 0, np.pi]))
    _set_free(raw, "pod", raw.holder_center() + [0, 0, 0.0075], np.eye(3))
    raw.set_lid_angle(lid)
    raw.sim.forward()
    for _ in range(10):
        env.step(np.zeros(7))


def test_success_needs_closed_lid(env):
    raw = env.raw
    _staged_success(env, 0.0)
    assert raw.mug_placed() and raw.pod_in_holder() and raw.lid_closed()
    assert env.success()
    _staged_success(env, 110 * DEG)  # past vertical: stays open
    assert raw.mug_placed() and not raw.lid_closed()
    assert not env.success()


def test_mug_placed_lid_open_signal(env):
    raw = env.raw
    _staged_success(env, 0.0)
    assert raw.mug_placed() and not raw.mug_placed_lid_open()
    raw.set_lid_angle(2.09)
    raw.sim.forward()
    assert raw.mug_placed_lid_open()


# ------------------------------------------------------------------ scripted demo: wrist geometry
def test_demo_wrist_link_poses_match_the_sim(env):
    """The demo places links 6 and 7 from a grip-site pose and joint 7 (to keep the wrist off the
    lid's edge while the mug slides in); at the arm's own pose that reproduces the sim's links."""
    raw = env.raw
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(3):
        for _ in range(5):
            env.step(np.r_[rng.uniform(-0.5, 0.5, 6), -1.0])
        q7 = raw.sim.data.qpos[raw.robots[0]._ref_joint_pos_indexes][6]
        poses = CP._wrist_link_poses(raw, raw.eef_pose(), q7)
        assert len(poses) == 2
        for b, X in poses.items():
            np.testing.assert_allclose(X[:3, 3], raw.sim.data.body_xpos[b], atol=1e-6)
            np.testing.assert_allclose(X[:3, :3], raw.sim.data.body_xmat[b].reshape(3, 3), atol=1e-6)


def test_demo_wrist_clearance_sees_the_closed_lid(env):
    raw = env.raw
    env.reset(seed=3)
    d = SimpleNamespace(env=env)
    q7 = raw.sim.data.qpos[raw.robots[0]._ref_joint_pos_indexes][6]
    assert CP._arm_clearance(d, [raw.eef_pose()], [q7]) == pytest.approx(0.05)  # home: far from the machine
    M, R = raw.object_pose("machine"), raw.eef_pose()[:3, :3]
    lid = (M @ np.append(CP.LID_LOCAL, 1.0))[:3]
    # link 7 spans 9.7-15 cm above the grip site: 10 cm below the lid's centre it cuts through the
    # lid, 15 cm higher it is clear of the whole machine
    assert CP._arm_clearance(d, [P.make_pose(lid - [0, 0, 0.10], R)], [q7]) < 0.0
    assert CP._arm_clearance(d, [P.make_pose(lid + [0, 0, 0.05], R)], [q7]) > 0.01
