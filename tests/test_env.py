import numpy as np
import robosuite

import common
from common import pose as P
from common.env import make_env, object_in_eef_frame
from common.scripted import pose_action


def test_state_observations_and_proprio_layout():
    env = make_env("Threading_D2", obs_mode="state")
    obs = env.reset(seed=3)
    assert obs["proprio"].shape == (15,) and obs["object"].shape == (7 * len(env.object_names),)  # no joints
    eef = env.eef_pose()
    np.testing.assert_allclose(obs["proprio"][:3], eef[:3, 3], atol=1e-5)
    np.testing.assert_allclose(P.axisangle_to_mat(obs["proprio"][3:6]), eef[:3, :3], atol=1e-4)
    needle = env.object_poses()["needle"]
    np.testing.assert_allclose(obs["object"][:3], needle[:3, 3], atol=1e-5)
    assert env.action_dim == 7
    # object_rel: each object's pose in the end-effector frame, 9 numbers (pos + 6-D rotation) each
    rel = P.pose_inv(eef) @ needle
    np.testing.assert_allclose(obs["object_rel"][:3], rel[:3, 3], atol=1e-4)
    np.testing.assert_allclose(P.mat_from_rot6d(obs["object_rel"][3:9]), rel[:3, :3], atol=1e-4)
    assert obs["object_rel"].shape == (9 * len(env.object_names),)
    # the batched form (used on whole data files) gives the same rows
    batch = object_in_eef_frame(np.stack([obs["proprio"]] * 2), np.stack([obs["object"]] * 2), len(env.object_names))
    np.testing.assert_allclose(batch[1], obs["object_rel"], atol=1e-6)
    # proprio_without_joints: robomimic's low-dim robot keys (eef pose, fingers), no joint positions
    np.testing.assert_array_equal(obs["proprio_without_joints"], obs["proprio"][:8])
    q = env.raw.sim.data.qpos[env.raw.robots[0]._ref_joint_pos_indexes]
    np.testing.assert_allclose(obs["proprio"][8:], q, atol=1e-6)  # what it leaves out


def test_osc_delta_actions_move_the_end_effector_as_commanded():
    env = make_env("Threading_D2", obs_mode="state")
    env.reset(seed=0)
    start = env.eef_pose()
    target = start.copy()
    target[:3, 3] += [0.05, -0.04, 0.03]
    target[:3, :3] = P.axisangle_to_mat([0, 0, 0.4]) @ start[:3, :3]
    for _ in range(40):
        env.step(pose_action(env.eef_pose(), target, -1.0))
    end = env.eef_pose()
    assert np.linalg.norm(end[:3, 3] - target[:3, 3]) < 0.003
    assert P.rotation_angle(end[:3, :3], target[:3, :3]) < 0.02


def test_fast_substep_control_matches_robosuites_controller_state_for_state():
    """common/osc.py recomputes the OSC torques between policy steps; whole rollouts (a grasp and
    lift with contacts, a reset that rebuilds the controllers, a changed nullspace posture) must
    reproduce robosuite's own controller bit for bit."""
    from common.planner import set_arm_posture

    def rollout(fast):
        env = make_env("Coffee_D2", seed=5, fast_control=fast)
        states = []
        for episode in range(2):
            env.reset(seed=5 + episode)
            pod = env.object_poses()["pod"]
            above = pod.copy()
            above[:3, :3] = env.eef_pose()[:3, :3]
            above[2, 3] += 0.10
            grasp = above.copy()
            grasp[2, 3] -= 0.09
            if episode == 1:
                q = env.raw.robots[0].composite_controller.part_controllers["right"].initial_joint
                set_arm_posture(env, np.asarray(q) + 0.2)
            for target, gripper, steps in ((above, -1, 15), (grasp, -1, 15), (grasp, 1, 8), (above, 1, 10)):
                for _ in range(steps):
                    env.step(pose_action(env.eef_pose(), target, gripper))
                    states.append(env.get_state())
        return env, np.array(states)

    fast_env, fast = rollout(True)
    slow_env, slow = rollout(False)
    assert fast_env.raw._fast_substep, "the kit's Panda OSC configuration should take the fast path"
    assert not slow_env.raw._fast_substep
    assert np.ptp(fast[:, :7], axis=0).max() > 0.05  # the arm moved
    np.testing.assert_array_equal(fast, slow)


def test_image_mode_renders_all_cameras():
    env = make_env("Threading_D2", obs_mode="image")
    obs = env.reset(seed=0)
    assert set(env.cameras) == {"agentview", "robot0_eye_in_hand", "sideview"}
    for cam in env.cameras:
        img = obs[f"{cam}_image"]
        assert img.shape == (84, 84, 3) and img.dtype == np.uint8
        assert img.std() > 5, f"{cam} image is blank"
    obs2, *_ = env.step(np.zeros(7))
    assert obs2["agentview_image"].shape == (84, 84, 3) and "object" not in obs2


def test_robosuite_make_works_after_import():
    raw = robosuite.make("Threading_D2", robots="Panda", has_renderer=False, has_offscreen_renderer=False,
                         use_camera_obs=False)
    obs = raw.reset()
    assert "needle_pos" in obs and "tripod_quat" in obs
    assert set(common.TASKS) >= {"Threading_D2"}


def test_articulated_joints_are_part_of_the_state():
    env = make_env("Coffee_D2", obs_mode="state")
    obs = env.reset(seed=0)
    assert obs["object"].shape == (7 * len(env.object_names) + 1,)  # + the lid hinge
    assert abs(obs["object"][-1] - np.deg2rad(120)) < 0.05  # the lid starts open


def test_a_restored_state_steps_the_same_whatever_ran_before():
    # MuJoCo warm-starts its solver from the last step: reset_to must not let that leak in, or a
    # skill trial (02's snapshot selection) depends on the trial its worker ran before it.
    env = make_env("CoffeePreparation_D2", obs_mode="state")  # many resting contacts
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    moves = rng.uniform(-1, 1, (12, 7))
    for a in moves[:4]:  # mug, machine, drawer and pod resting: the solver is busy
        env.step(a)
    state = env.get_state()

    def roll_after(other):
        for a in other:
            env.step(a)
        env.reset_to(state, moves[:4, 6])  # the gripper's commands so far: see KitEnv.reset_to
        for a in moves[4:]:
            env.step(a)
        return env.get_state()

    first = roll_after(rng.uniform(-1, 1, (5, 7)))
    second = roll_after(rng.uniform(-1, 1, (9, 7)))
    assert np.array_equal(first, second)
