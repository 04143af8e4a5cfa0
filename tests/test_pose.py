import numpy as np
import pytest

from common import pose as P


def test_identity_has_zero_distance():
    p = np.array([0.1, -0.2, 0.9, 0, 0, 0, 1.0])
    assert P.pose_distance(p, p) == pytest.approx(0.0, abs=1e-9)
    assert P.replan_distance(p, p) == pytest.approx(0.0, abs=1e-9)


def test_q_and_minus_q_are_the_same_rotation():
    q = P.mat_to_quat(P.axisangle_to_mat([0.3, -0.2, 0.5]))
    p1 = np.concatenate([[0, 0, 0], q])
    p2 = np.concatenate([[0, 0, 0], -q])
    assert P.pose_distance(p1, p2) == pytest.approx(0.0, abs=1e-7)


def test_rotation_of_pi_gives_half():
    # acos(q1.q2) = θ/2 = π/2 for a rotation of π: d_rot = (1/π)(π/2) = 0.5, the metric's maximum
    q_pi = P.mat_to_quat(P.axisangle_to_mat([np.pi, 0, 0]))
    p1 = np.array([0, 0, 0, 0, 0, 0, 1.0])
    p2 = np.concatenate([[0, 0, 0], q_pi])
    assert P.pose_distance(p1, p2) == pytest.approx(0.5, abs=1e-7)


def test_known_values():
    theta = 0.6
    p1 = np.array([0, 0, 0, 0, 0, 0, 1.0])
    p2 = np.concatenate([[0.03, 0.04, 0.0], P.mat_to_quat(P.axisangle_to_mat([0, 0, theta]))])
    d_rot = theta / 2 / np.pi
    assert P.pose_distance(p1, p2) == pytest.approx(0.05 + d_rot, abs=1e-7)
    assert P.replan_distance(p1, p2) == pytest.approx(max(0.05, d_rot), abs=1e-7)


def test_object_centric_transform_preserves_relative_pose():
    rng = np.random.default_rng(0)
    def rand_pose():
        return P.make_pose(rng.normal(size=3), P.axisangle_to_mat(rng.normal(size=3)))
    T_A, T_R, T_R2 = rand_pose(), rand_pose(), rand_pose()
    T_A2 = P.transform_to_new_frame(T_A, T_R, T_R2)
    np.testing.assert_allclose(P.pose_inv(T_R2) @ T_A2, P.pose_inv(T_R) @ T_A, atol=1e-9)
    stack = P.transform_to_new_frame(np.stack([T_A, T_A]), T_R, T_R2)
    np.testing.assert_allclose(stack[1], T_A2, atol=1e-9)


def test_conversions_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(10):
        T = P.make_pose(rng.normal(size=3), P.axisangle_to_mat(rng.uniform(-2, 2, 3)))
        np.testing.assert_allclose(P.pose7_to_mat(P.mat_to_pose7(T)), T, atol=1e-9)
        np.testing.assert_allclose(P.pose6_to_mat(P.mat_to_pose6(T)), T, atol=1e-9)
        np.testing.assert_allclose(P.mat_from_rot6d(P.rot6d_from_mat(T[:3, :3])), T[:3, :3], atol=1e-9)
        np.testing.assert_allclose(P.pose_inv(T) @ T, np.eye(4), atol=1e-9)


def test_pose_noise_statistics():
    rng = np.random.default_rng(2)
    p = np.array([0.1, 0.2, 0.3, 0, 0, 0, 1.0])
    noisy = np.stack([P.add_pose_noise(p, 0.05, rng) for _ in range(4000)])
    assert np.std(noisy[:, :3] - p[:3]) == pytest.approx(0.05, rel=0.05)
    rot = np.stack([P.quat_to_axisangle(q) for q in noisy[:, 3:]])
    assert np.std(rot) == pytest.approx(0.05, rel=0.05)
    np.testing.assert_allclose(P.add_pose_noise(p, 0.0, rng), p)
