"""A fast path for robosuite's OSC arm control between policy steps, with the same arithmetic.

robosuite runs the arm controller at every physics substep: 25 substeps per 20 Hz env step. On a
2-core CPU the Python plumbing around the controller (site-name lookups, property chains, array
copies, action-limit checks) takes ~1.3 ms per substep, two thirds of an env step, while the OSC
math itself (Khatib 1987: Jacobians, mass matrix, task-space inertia, nullspace posture torque) is a
small part of that. `FastArmSubstep` recomputes exactly that math on the substeps where no new
action arrives, with indices and buffers set up once, calling the same numba kernels as robosuite
(`opspace_matrices`, `orientation_error`, `nullspace_torques`) in the same order, so the torques are
bit-identical (tests/test_env.py checks whole rollouts state for state). Policy steps (new goal,
proprioception buffers) still go through robosuite's own `robot.control`.

It covers the configuration the kit builds: one fixed-base arm, OSC_POSE with fixed impedance and
base-frame delta input, no interpolators, a gripper controller without interpolation (its command
is constant between policy steps, so its actuator input is left as the policy step wrote it),
`lite_physics`. `FastArmSubstep.supports(env)` says whether an env qualifies; `KitTask` falls back
to robosuite's path otherwise, or when built with `fast_control=False`.
"""
from __future__ import annotations

import mujoco
import numpy as np
from robosuite.controllers.parts.arm.osc import OperationalSpaceController
from robosuite.utils.control_utils import nullspace_torques, opspace_matrices, orientation_error


class FastArmSubstep:
    """Writes the OSC arm torques of one non-policy substep into `sim.data.ctrl`."""

    def __init__(self, env):
        robot = env.robots[0]
        self.arm = robot.arms[0]
        self.osc = robot.part_controllers[self.arm]
        self.model, self.data = env.sim.model._model, env.sim.data._data
        osc = self.osc
        self.ref_site = env.sim.model.site_name2id(osc.ref_name)
        self.center_site = env.sim.model.site_name2id(f"{osc.naming_prefix}{osc.part_name}_center")
        actuators = np.asarray(robot._ref_actuators_indexes_dict[self.arm])
        self.ctrl_low = env.sim.model.actuator_ctrlrange[actuators, 0].copy()
        self.ctrl_high = env.sim.model.actuator_ctrlrange[actuators, 1].copy()
        nv = self.model.nv
        self.jacp, self.jacr = np.zeros((3, nv)), np.zeros((3, nv))
        self.center_jacp, self.center_jacr = np.zeros((3, nv)), np.zeros((3, nv))
        self.full_mass = np.zeros((nv, nv))
        # views into MjData, looked up once (each attribute access builds a new array view)
        d = self.data
        self.site_xpos, self.site_xmat, self.qpos, self.qvel = d.site_xpos, d.site_xmat, d.qpos, d.qvel
        self.qM, self.qfrc_bias, self.ctrl = d.qM, d.qfrc_bias, d.ctrl
        # the arm's joints and actuators are contiguous in the Panda model: slices select the same
        # elements as robosuite's index lists, without fancy-indexing copies
        self.qpos_sel = _as_slice(osc.qpos_index)
        self.qvel_sel = _as_slice(osc.qvel_index)
        self.act_sel = _as_slice(actuators)

    def bound_to(self, env) -> bool:
        return env.robots[0].part_controllers.get(self.arm) is self.osc and env.sim.data._data is self.data

    @staticmethod
    def supports(env) -> bool:
        if len(env.robots) != 1 or not env.lite_physics:
            return False
        robot = env.robots[0]
        if len(robot.arms) != 1 or getattr(robot, "is_mobile", False):
            return False
        enabled = [p for p, on in robot._enabled_parts.items() if on and p in robot.part_controllers]
        osc = robot.part_controllers.get(robot.arms[0])
        if not isinstance(osc, OperationalSpaceController) or osc.num_ref_sites != 1:
            return False
        if osc.interpolator_pos is not None or osc.interpolator_ori is not None:
            return False
        if osc.input_ref_frame != "base" or osc.impedance_mode != "fixed":
            return False
        for part in enabled:
            if part == robot.arms[0]:
                continue
            if part != robot.get_gripper_name(robot.arms[0]) or getattr(robot.part_controllers[part], "interpolator", None) is not None:
                return False  # anything but a plain gripper changes its command between policy steps
        return True

    def __call__(self):
        osc, m, d = self.osc, self.model, self.data
        qv, site_xpos, site_xmat, qvel = self.qvel_sel, self.site_xpos, self.site_xmat, self.qvel
        # composite_controller.update_state(): the controller's origin is the arm's base site
        origin_pos = site_xpos[self.center_site].copy()
        origin_ori = site_xmat[self.center_site].reshape([3, 3]).copy()
        osc.origin_pos, osc.origin_ori = origin_pos, origin_ori

        # Controller.update(): end-effector pose, velocity, Jacobians, joint state, mass matrix
        mujoco.mj_jacSite(m, d, self.jacp, self.jacr, self.ref_site)
        osc.ref_pos[:] = site_xpos[self.ref_site]
        osc.ref_ori_mat[:, :] = site_xmat[self.ref_site].reshape([3, 3])
        osc.ref_pos_vel[:] = np.dot(self.jacp, qvel)
        osc.ref_ori_vel[:] = np.dot(self.jacr, qvel)
        osc.J_pos[:, :] = self.jacp[:, qv]
        osc.J_ori[:, :] = self.jacr[:, qv]
        osc.J_full[:3] = osc.J_pos
        osc.J_full[3:] = osc.J_ori
        osc.joint_pos = self.qpos[self.qpos_sel].copy()
        osc.joint_vel = qvel[qv].copy()
        mujoco.mj_fullM(m, self.full_mass, self.qM)
        # Fortran order, as robosuite's fancy indexing leaves it: the numba kernels below are
        # compiled per memory layout, and the same layout gives the same rounding
        osc.mass_matrix = self.full_mass[qv, qv].copy(order="F")

        # OperationalSpaceController.run_controller(), no interpolators, base-frame goal
        desired_world_pos = origin_pos + np.dot(origin_ori, osc.goal_pos)
        ori_error = orientation_error(np.dot(origin_ori, osc.goal_ori), osc.ref_ori_mat)
        mujoco.mj_jacSite(m, d, self.center_jacp, self.center_jacr, self.center_site)
        kp, kd = osc.kp, osc.kd
        vel_pos_error = -(osc.ref_pos_vel - np.dot(self.center_jacp, qvel))
        desired_force = (desired_world_pos - osc.ref_pos) * kp[0:3] + vel_pos_error * kd[0:3]
        vel_ori_error = -(osc.ref_ori_vel - np.dot(self.center_jacr, qvel))
        desired_torque = ori_error * kp[3:6] + vel_ori_error * kd[3:6]
        lambda_full, lambda_pos, lambda_ori, nullspace_matrix = opspace_matrices(
            osc.mass_matrix, osc.J_full, osc.J_pos, osc.J_ori)
        if osc.uncoupling:
            decoupled_wrench = np.concatenate([np.dot(lambda_pos, desired_force), np.dot(lambda_ori, desired_torque)])
        else:
            decoupled_wrench = np.dot(lambda_full, np.concatenate([desired_force, desired_torque]))
        torques = np.dot(osc.J_full.T, decoupled_wrench) + self.qfrc_bias[qv]
        torques += nullspace_torques(osc.mass_matrix, nullspace_matrix, osc.initial_joint, osc.joint_pos,
                                     osc.joint_vel)
        osc.torques = torques
        osc.new_update = True  # as Controller.run_controller(): the next update() recomputes

        # FixedBaseRobot.control(): clip to the actuators' range and apply
        self.ctrl[self.act_sel] = np.minimum(np.maximum(torques, self.ctrl_low), self.ctrl_high)


def _as_slice(index):
    """A slice selecting the same elements as the index list when it is contiguous, else the list."""
    index = np.asarray(index)
    if len(index) and np.array_equal(index, np.arange(index[0], index[0] + len(index))):
        return slice(int(index[0]), int(index[0]) + len(index))
    return index
