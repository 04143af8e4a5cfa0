"""SE(3) helpers, the paper's pose metrics and pose noise.

Conventions used everywhere in the kit:
- quaternions are (x, y, z, w), scalar last, as in robosuite's transform utils and scipy;
- a "pose7" is position (3) + quaternion (4); a "pose6" is position (3) + axis-angle (3);
- a 4x4 homogeneous matrix T_W^A maps points of frame A into the world frame W.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def quat_normalize(q):
    q = np.asarray(q, dtype=np.float64)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def quat_to_mat(q):
    return Rotation.from_quat(np.asarray(q, dtype=np.float64)).as_matrix()


def mat_to_quat(R):
    return Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_quat()


def axisangle_to_mat(aa):
    return Rotation.from_rotvec(np.asarray(aa, dtype=np.float64)).as_matrix()


def mat_to_axisangle(R):
    return Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_rotvec()


def quat_to_axisangle(q):
    return Rotation.from_quat(np.asarray(q, dtype=np.float64)).as_rotvec()


def make_pose(pos, R) -> np.ndarray:
    """4x4 matrix from a position and a 3x3 rotation matrix."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = pos
    return T


def pose7_to_mat(p7) -> np.ndarray:
    p7 = np.asarray(p7, dtype=np.float64)
    return make_pose(p7[:3], quat_to_mat(p7[3:7]))


def mat_to_pose7(T) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    return np.concatenate([T[:3, 3], mat_to_quat(T[:3, :3])])


def pose6_to_mat(p6) -> np.ndarray:
    p6 = np.asarray(p6, dtype=np.float64)
    return make_pose(p6[:3], axisangle_to_mat(p6[3:6]))


def mat_to_pose6(T) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    return np.concatenate([T[:3, 3], mat_to_axisangle(T[:3, :3])])


def pose_inv(T) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    Ti = np.eye(4)
    Ti[:3, :3] = T[:3, :3].T
    Ti[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return Ti


def transform_to_new_frame(T_W_A, T_W_R, T_W_R_new) -> np.ndarray:
    """Object-centric transform of Sec. III-B: keep pose A fixed relative to reference R.

    T_W^A' = T_W^R' (T_W^R)^-1 T_W^A. Accepts a single 4x4 or a stack (N, 4, 4) for T_W_A.
    """
    return T_W_R_new @ pose_inv(T_W_R) @ np.asarray(T_W_A, dtype=np.float64)


def rotation_angle(R1, R2) -> float:
    """Geodesic angle in [0, π] between two rotation matrices."""
    R = np.asarray(R1).T @ np.asarray(R2)
    return float(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)))


def quat_angle_term(q1, q2) -> float:
    """d_rot of App. E-B: (1/π)·min(acos(q1·q2), acos(−q1·q2)), in [0, 0.5].

    Taking the min over ±q makes the metric blind to the quaternion double cover (q and −q are the
    same rotation). Note acos of the dot product is half the geodesic angle.
    """
    d = float(np.dot(quat_normalize(q1), quat_normalize(q2)))
    d = np.clip(d, -1.0, 1.0)
    return float(min(np.arccos(d), np.arccos(-d)) / np.pi)


def pose_distance(p1, p2) -> float:
    """Pose distance of App. E-B: d_pos + d_rot for two pose7 (pos + quat xyzw)."""
    p1, p2 = np.asarray(p1, dtype=np.float64), np.asarray(p2, dtype=np.float64)
    return float(np.linalg.norm(p1[:3] - p2[:3]) + quat_angle_term(p1[3:7], p2[3:7]))


def replan_distance(p1, p2) -> float:
    """Replanning distance of Sec. IV-A / App. C-C: max of the Euclidean and rotational difference.

    The rotational difference uses the same double-cover-safe term as App. E-B so the two metrics
    agree on units; replanning triggers when this exceeds REPLAN_THRESHOLD (0.05).
    """
    p1, p2 = np.asarray(p1, dtype=np.float64), np.asarray(p2, dtype=np.float64)
    return float(max(np.linalg.norm(p1[:3] - p2[:3]), quat_angle_term(p1[3:7], p2[3:7])))


def add_pose_noise(pose7, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Pose noise of App. E-A: P + N(0, σ²I₆) on position and axis-angle rotation.

    The rotational noise is applied as a perturbation rotation composed on the left (world frame),
    so σ is in metres for position and radians for rotation.
    """
    pose7 = np.asarray(pose7, dtype=np.float64)
    if sigma <= 0:
        return pose7.copy()
    return apply_pose_offset(pose7, rng.normal(0.0, sigma, size=6))


def apply_pose_offset(pose7, eps) -> np.ndarray:
    """pose7 moved by a 6-D offset eps (position in m, world-frame axis-angle in rad), as
    add_pose_noise does; lets a caller draw one noise sample and apply it to several predictions."""
    pose7, eps = np.asarray(pose7, dtype=np.float64), np.asarray(eps, dtype=np.float64)
    R = axisangle_to_mat(eps[3:]) @ quat_to_mat(pose7[3:7])
    return np.concatenate([pose7[:3] + eps[:3], mat_to_quat(R)])


def symmetry_turns(period: float) -> np.ndarray:
    """The distinct turns of a symmetry of `period` rad: k·2π/n for k = 0..n-1, n = round(2π/period)
    (π: [0, π]; π/2: [0, π/2, π, 3π/2]). The label fold and the agent's twin fallback share them."""
    n = max(1, int(round(2 * np.pi / period)))
    return np.arange(n) * 2 * np.pi / n


def symmetry_twin(T, angle: float, about: str = "grip", T_ref=None) -> np.ndarray:
    """Pose T (4x4) turned by `angle` about a symmetry axis of the grasp or placement.

    about="grip": about the gripper's own approach axis through the grip site (T Rz): an empty
    parallel-jaw gripper grasps the same way turned by π, a square knob every π/2.
    about="reference": about the vertical axis through the reference object's origin
    (T_ref Rz T_ref^-1 T), which moves the position with it: a square hole takes a square plate
    every π/2. Used by 02_train_hsp.py to fold labels and by the agent to try a pose's twins.
    """
    Rz = make_pose(np.zeros(3), axisangle_to_mat([0.0, 0.0, angle]))
    T = np.asarray(T, dtype=np.float64)
    if about == "grip":
        return T @ Rz
    if about == "reference":
        if T_ref is None:
            raise ValueError("about='reference' needs the reference object's pose T_ref")
        return np.asarray(T_ref, dtype=np.float64) @ Rz @ pose_inv(T_ref) @ T
    raise ValueError(f"about = {about!r}; choose 'grip' or 'reference'")


def rot6d_from_mat(R) -> np.ndarray:
    """Continuous 6-D rotation representation (first two columns), Zhou et al. 2019."""
    R = np.asarray(R)
    return np.concatenate([R[..., :, 0], R[..., :, 1]], axis=-1)


def mat_from_rot6d(r6) -> np.ndarray:
    """Gram-Schmidt inverse of rot6d_from_mat; works on batches (..., 6)."""
    r6 = np.asarray(r6, dtype=np.float64)
    a, b = r6[..., :3], r6[..., 3:6]
    x = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b - np.sum(x * b, axis=-1, keepdims=True) * x
    y = b / np.linalg.norm(b, axis=-1, keepdims=True)
    z = np.cross(x, y)
    return np.stack([x, y, z], axis=-1)
