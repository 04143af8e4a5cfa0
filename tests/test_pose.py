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


def test_symmetry_twins_turn_about_the_grip_axis_or_the_reference_axis():
    rng = np.random.default_rng(0)
    T = P.make_pose(rng.normal(size=3), P.axisangle_to_mat(rng.normal(size=3)))
    ref = P.make_pose(rng.normal(size=3), P.axisangle_to_mat([0.0, 0.0, 0.7]))
    grip = P.symmetry_twin(T, np.pi)
    assert np.allclose(grip[:3, 3], T[:3, 3])  # about the grip site: the position stays
    assert np.allclose(grip[:3, 2], T[:3, 2]) and np.allclose(grip[:3, 0], -T[:3, 0])  # same approach, jaw flipped
    quarter = P.symmetry_twin(T, np.pi / 2, "reference", ref)
    rel, rel_q = P.pose_inv(ref) @ T, P.pose_inv(ref) @ quarter
    assert np.allclose(rel_q, P.make_pose([0, 0, 0], P.axisangle_to_mat([0, 0, np.pi / 2])) @ rel)
    assert np.isclose(np.linalg.norm(rel_q[:2, 3]), np.linalg.norm(rel[:2, 3]))  # same distance from the axis
    back = T
    for _ in range(4):
        back = P.symmetry_twin(back, np.pi / 2, "reference", ref)
    assert np.allclose(back, T)
    with pytest.raises(ValueError, match="T_ref"):
        P.symmetry_twin(T, np.pi, "reference")
    np.testing.assert_allclose(P.symmetry_turns(np.pi), [0.0, np.pi])
    np.testing.assert_allclose(P.symmetry_turns(np.pi / 2), [0.0, np.pi / 2, np.pi, 1.5 * np.pi])
