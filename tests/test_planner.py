"""Tests of common/planner.py: kinematics, the pybullet mirror, OMPL planning around obstacles,
held objects, failures, and closed-loop OSC execution in MuJoCo."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import robosuite

import common  # noqa: F401  (registers the kit's tasks)
from common import pose as P
from common.env import KitEnv, KitTask, box_geom, make_env, uniform_sampler, xml_object
from common.planner import GOAL_IN_COLLISION, IK_FAILED, RRT_CHECKS_PER_SECOND, START_IN_COLLISION, Planner, PlanResult
from common.scripted import GRIPPER_CLOSED, GRIPPER_OPEN, Demonstrator, top_down

WALL_POS = (-0.1, 0.15, 0.92)
WALL_HALF = (0.2, 0.02, 0.12)  # spans z 0.80..1.04 on the table, between start (y 0) and goal (y 0.3)
CUBE_XY = (0.0, -0.15)
MESH_VERTS = np.array([[-0.04, -0.03, -0.03], [0.05, -0.03, -0.03], [-0.04, 0.03, -0.03], [0.05, 0.03, -0.03],
                       [-0.04, -0.03, 0.03], [-0.04, 0.03, 0.03]])


class TestPlannerWall(KitTask):
    """A table with a fixed wall and one tall free block (not registered in common.env.TASKS)."""

    __test__ = False  # not a pytest test class
    eval_horizon = 1000

    def _make_objects(self):
        geom = box_geom("g", (0.015, 0.015, 0.04), rgba="0.2 0.8 0.2 1", extra='density="200"')
        return {"block": xml_object("block", geom, horizontal_radius=0.03, bottom=-0.04, top=0.04)}

    def _make_placement(self):
        return uniform_sampler("block_sampler", self.objects["block"], (CUBE_XY[0],) * 2, (CUBE_XY[1],) * 2, 0.0,
                               self.table_offset, rng=self.rng)

    def _add_fixtures(self, arena):
        body = ET.Element("body", name="wall", pos=" ".join(map(str, WALL_POS)))
        ET.SubElement(body, "geom", name="wall_geom", type="box", size=" ".join(map(str, WALL_HALF)),
                      rgba="0.8 0.2 0.2 1", group="0")
        arena.worldbody.append(body)
        # a mesh fixture (a wedge given by its vertices), away from the paths, for the mirror test
        ET.SubElement(arena.asset, "mesh", name="wedge_mesh", vertex=" ".join(map(str, MESH_VERTS.ravel())))
        body = ET.Element("body", name="wedge", pos="0.25 -0.3 0.83", euler="0 0 0.6")
        ET.SubElement(body, "geom", name="wedge_geom", type="mesh", mesh="wedge_mesh", rgba="0.2 0.2 0.8 1", group="0")
        arena.worldbody.append(body)

    def _check_success(self):
        return False


def _geoms_of_root(raw, root_body_id):
    m = raw.sim.model._model
    return [g for g in range(m.ngeom) if m.body_rootid[m.geom_bodyid[g]] == root_body_id
            and (m.geom_contype[g] or m.geom_conaffinity[g])]


@pytest.fixture(scope="module")
def wall_env():
    raw = robosuite.make("TestPlannerWall", robots="Panda")
    env = KitEnv(raw, "state", [], 1000)
    yield env
    env.close()


@pytest.fixture(scope="module")
def threading_env():
    env = make_env("Threading_D2", seed=0)
    env.reset(seed=3)
    yield env
    env.close()


def _robot_geoms(raw):
    m = raw.sim.model._model
    root = m.body_rootid[m.body(raw.robots[0].robot_model.root_body).id]
    return _geoms_of_root(raw, root)


def _counting_step(env, geoms_a, geoms_b, counter):
    def step(a):
        out = env.step(a)
        counter[0] += env.raw.contacts_between(geoms_a, geoms_b)
        return out
    return step


# ----------------------------------------------------------------------------------------- tests
def test_fk_matches_mujoco_and_ik_round_trip(threading_env):
    env = threading_env
    raw = env.raw
    pl = Planner(env, seed=0)
    rng = np.random.default_rng(0)
    state = raw.get_flat_state()
    try:
        for _ in range(12):
            q = rng.uniform(pl.q_lo, pl.q_hi)
            raw.sim.data.qpos[pl._qidx] = q
            raw.sim.forward()
            T_mj = raw.eef_pose()
            T = pl.fk(q)
            assert np.linalg.norm(T[:3, 3] - T_mj[:3, 3]) < 1e-3
            assert P.rotation_angle(T[:3, :3], T_mj[:3, :3]) < np.radians(0.5)
            # IK from an unrelated seed reproduces the pose within 2 mm and 2 degrees
            q_ik = pl.ik(T, q_seed=rng.uniform(pl.q_lo, pl.q_hi), check_collision=False)
            assert q_ik is not None
            T2 = pl.fk(q_ik)
            assert np.linalg.norm(T2[:3, 3] - T[:3, 3]) <= 0.002
            assert P.rotation_angle(T2[:3, :3], T[:3, :3]) <= np.radians(2.0)
            assert np.all(q_ik >= pl.q_lo) and np.all(q_ik <= pl.q_hi)
    finally:
        raw.set_flat_state(state)
        pl.close()


def test_mirror_matches_mujoco_geom_poses(threading_env):
    env = threading_env
    raw = env.raw
    m, d = raw.sim.model._model, raw.sim.data._data
    pl = Planner(env)
    pb, cid = pl.pb, pl.cid
    try:
        # every non-robot collision geom is mirrored at its MuJoCo pose, boxes with inflated sizes
        mirrored = set()
        for b, bid in pl.scene.items():
            for li, g in enumerate(pl._geoms_of[bid]):
                mirrored.add(g)
                if m.geom_type[g] == 0:  # plane -> thick box below it
                    continue
                ls = pb.getLinkState(bid, li, computeForwardKinematics=True, physicsClientId=cid)
                assert np.linalg.norm(np.array(ls[4]) - d.geom_xpos[g]) < 1e-5, g
                R = P.quat_to_mat(ls[5])
                assert P.rotation_angle(R, d.geom_xmat[g].reshape(3, 3)) < 1e-4, g
                if m.geom_type[g] == 6:
                    dims = pb.getCollisionShapeData(bid, li, physicsClientId=cid)[0][3]
                    assert np.allclose(np.array(dims) / 2, m.geom_size[g] + pl.margin, atol=1e-6)
        robot = set(_robot_geoms(raw))
        expected = {g for g in range(m.ngeom) if (m.geom_contype[g] or m.geom_conaffinity[g]) and g not in robot}
        assert mirrored == expected
        names = {raw.sim.model.geom_id2name(g) for g in mirrored}
        assert {"table_collision", "needle_handle", "tripod_leg0", "tripod_ring0"} <= names
        # robot links agree with MuJoCo bodies (same base, same joints)
        for li, body in enumerate(["robot0_link1", "robot0_link2", "robot0_link3", "robot0_link4",
                                   "robot0_link5", "robot0_link6", "robot0_link7"]):
            ls = pb.getLinkState(pl.robot, li, computeForwardKinematics=True, physicsClientId=cid)
            assert np.linalg.norm(np.array(ls[4]) - d.xpos[m.body(body).id]) < 1e-3
        # robosuite's gripper geoms (the hand/finger collision model) sit at their MuJoCo poses
        assert pl._tool
        for tb, _, _ in pl._tool:
            for li, g in enumerate(pl._geoms_of[tb]):
                ls = pb.getLinkState(tb, li, computeForwardKinematics=True, physicsClientId=cid)
                assert np.linalg.norm(np.array(ls[4]) - d.geom_xpos[g]) < 1e-3, g
        # moving an object and re-syncing moves its mirror
        state = raw.get_flat_state()
        j = raw.objects["needle"].joints[0]
        qp = raw.sim.data.get_joint_qpos(j).copy()
        qp[:3] += [0.05, 0.02, 0.0]
        raw.sim.data.set_joint_qpos(j, qp)
        raw.sim.forward()
        pl.sync(env)
        g = m.geom("needle_handle").id
        bid = pl.scene[m.geom_bodyid[g]]
        ls = pb.getLinkState(bid, pl._geoms_of[bid].index(g), computeForwardKinematics=True, physicsClientId=cid)
        assert np.linalg.norm(np.array(ls[4]) - d.geom_xpos[g]) < 1e-5
        raw.set_flat_state(state)
    finally:
        pl.close()


def test_mirror_of_mesh_geom(wall_env):
    env = wall_env
    env.reset(seed=0)
    raw = env.raw
    m, d = raw.sim.model._model, raw.sim.data._data
    pl = Planner(env, margin=0.0)
    try:
        g = m.geom("wedge_geom").id
        bid = pl.scene[m.geom_bodyid[g]]
        li = pl._geoms_of[bid].index(g)
        # world vertices of the MuJoCo mesh (mesh_vert is in the geom frame)
        mid = m.geom_dataid[g]
        v = m.mesh_vert[m.mesh_vertadr[mid]:m.mesh_vertadr[mid] + m.mesh_vertnum[mid]]
        w = v @ d.geom_xmat[g].reshape(3, 3).T + d.geom_xpos[g]
        pb, cid = pl.pb, pl.cid
        probe = pb.createMultiBody(0, pb.createCollisionShape(pb.GEOM_SPHERE, radius=1e-4, physicsClientId=cid),
                                   physicsClientId=cid)

        def dist(p):
            pb.resetBasePositionAndOrientation(probe, list(p), [0, 0, 0, 1], physicsClientId=cid)
            pts = pb.getClosestPoints(probe, bid, 0.05, linkIndexB=li, physicsClientId=cid)
            return min(c[8] for c in pts) if pts else 0.05
        c = w.mean(0)
        for p in w:  # every MuJoCo vertex lies on the pybullet hull
            assert abs(dist(p)) < 0.002
            out = p + 0.02 * (p - c) / np.linalg.norm(p - c)  # 2 cm outside, radially
            assert dist(out) > 0.005
        assert dist(c) < 0  # the centre is inside
    finally:
        pl.close()


def test_unreachable_target_fails_cleanly(threading_env):
    env = threading_env
    pl = Planner(env)
    try:
        far = P.make_pose([0.9, 0.0, 1.0], top_down(0.0))
        res = pl.plan(env, far)
        assert not res.success and res.reason == IK_FAILED
        assert not Planner(env, mode="linear").plan(env, far).success
        ex = pl.execute(env, res, GRIPPER_OPEN)
        assert not ex.success and ex.steps == 0
    finally:
        pl.close()


def test_goal_or_start_in_collision(wall_env):
    env = wall_env
    env.reset(seed=0)
    raw = env.raw
    pl = Planner(env, seed=3)
    state = raw.get_flat_state()
    try:
        inside = P.make_pose([-0.1, 0.15, 0.95], top_down(0.0))  # fingers inside the wall
        res = pl.plan(env, inside)
        assert not res.success and res.reason == GOAL_IN_COLLISION
        # put the arm into the wall in MuJoCo: the start is in collision there and in the mirror
        q = pl.ik(inside, check_collision=False)
        raw.sim.data.qpos[pl._qidx] = q
        raw.sim.forward()
        res = pl.plan(env, P.make_pose([-0.1, 0.3, 0.95], top_down(0.0)))
        assert not res.success and res.reason == START_IN_COLLISION
    finally:
        raw.set_flat_state(state)
        pl.close()


def test_plan_around_wall_executes_without_contact(wall_env):
    env = wall_env
    env.reset(seed=0)
    raw = env.raw
    wall = [raw.sim.model.geom_name2id("wall_geom")]
    goal = P.make_pose([-0.1, 0.3, 0.9], top_down(0.0))
    pl = Planner(env, seed=0)
    try:
        res = pl.plan(env, goal, time_budget=2.0)
        assert res.success, res.reason
        # the straight joint-space line collides with the wall in pybullet, the plan does not
        q0, q1 = res.joint_path[0], res.goal_q
        assert any(pl.in_collision(q0 + (q1 - q0) * s) for s in np.linspace(0, 1, 41))
        # so does the straight task-space line (linear mode), through IK of its waypoints
        lin = pl.plan(env, goal, mode="linear")
        qs, hit = pl._q_now, False
        for w in lin.waypoints:
            qs = pl.ik(w, q_seed=qs, check_collision=False, max_solutions=1)
            if qs is not None and pl.in_collision(qs):
                hit = True
                break
        assert hit
        dense = pl._densify(res.joint_path, step=0.01)
        assert all(pl.clearance(q) > 0.0 for q in dense)
        assert res.info["planner"] == "rrtconnect"
        counter = [0]
        ex = pl.execute(env, res, GRIPPER_OPEN, step_fn=_counting_step(env, _robot_geoms(raw), wall, counter))
        assert ex.success, ex
        assert ex.pos_err < 0.005 and ex.rot_err < np.radians(3)
        assert counter[0] == 0
    finally:
        pl.close()


def test_a_seeded_plan_is_the_same_however_slow_the_machine(wall_env, monkeypatch):
    """RRT-Connect's budget is a number of validity checks, not seconds: the same seeded plan
    with every check 10x slower (a loaded machine) finds the same path within the same budget.
    With a wall-clock budget it ran out of time, or found another path."""
    import time as _time
    env = wall_env
    env.reset(seed=0)
    goal = P.make_pose([-0.1, 0.3, 0.9], top_down(0.0))
    pl = Planner(env, seed=0)
    try:
        pl.reseed(5)
        first = pl.plan(env, goal, time_budget=0.1)
        assert first.success and first.info["planner"] == "rrtconnect", first.reason
        assert 0 < first.info["rrt_checks"] <= 0.1 * RRT_CHECKS_PER_SECOND
        validity = pl._validity

        def slow_validity(*a, **kw):
            valid = validity(*a, **kw)

            def check(q):
                t = _time.perf_counter()
                ok = valid(q)
                _time.sleep(9 * (_time.perf_counter() - t) + 2e-4)  # every check ~10x as long
                return ok
            return check
        monkeypatch.setattr(pl, "_validity", slow_validity)
        pl.reseed(5)
        slow = pl.plan(env, goal, time_budget=0.1)
        assert slow.success, slow.reason
        assert slow.info["rrt_time"] > 0.1  # beyond the old wall-clock budget
        assert slow.info["rrt_checks"] == first.info["rrt_checks"]
        np.testing.assert_array_equal(slow.joint_path, first.joint_path)
    finally:
        pl.close()


def test_reseed_makes_plans_independent_of_earlier_plans(wall_env):
    """An evaluation worker runs many rollouts with one planner; `reseed` at every seeded reset
    makes a rollout's plans depend on its seed alone, not on the plans before it."""
    env = wall_env
    env.reset(seed=0)
    goal = P.make_pose([-0.1, 0.3, 0.9], top_down(0.0))
    other = P.make_pose([0.05, 0.25, 0.95], top_down(0.4))
    pl = Planner(env, seed=0)
    try:
        pl.reseed(11)
        first = pl.plan(env, goal, time_budget=2.0)
        assert first.success, first.reason
        for _ in range(2):  # other plans draw from the same streams (RRT-Connect, IK restarts)
            pl.plan(env, other, time_budget=2.0)
        unseeded = pl.plan(env, goal, time_budget=2.0)
        pl.reseed(11)
        again = pl.plan(env, goal, time_budget=2.0)
        assert again.success
        np.testing.assert_array_equal(again.joint_path, first.joint_path)
        # without the reseed the same query draws other random numbers: another path
        assert unseeded.joint_path.shape != first.joint_path.shape or \
            not np.array_equal(unseeded.joint_path, first.joint_path)
    finally:
        pl.close()


def test_carry_held_object_around_wall(wall_env):
    env = wall_env
    raw = env.raw
    rng = np.random.default_rng(0)
    d = Demonstrator(env, rng, record=False).start(seed=1)
    block = raw.object_pose("block")
    R = top_down(0.0)
    d.move(P.make_pose(block[:3, 3] + [0, 0, 0.10], R), GRIPPER_OPEN, max_steps=100)
    d.move(P.make_pose(block[:3, 3] + [0, 0, 0.025], R), speed=0.5, max_steps=60)
    d.actuate(GRIPPER_CLOSED, steps=12)
    d.move(P.make_pose(block[:3, 3] + [0, 0, 0.08], R), speed=0.5, max_steps=60)
    assert not d.failed and raw.is_grasped("block")

    wall = [raw.sim.model.geom_name2id("wall_geom")]
    block_geoms = _geoms_of_root(raw, raw.obj_body_id["block"])
    goal = P.make_pose([-0.1, 0.3, 0.95], R)
    pl = Planner(env, seed=1)
    try:
        res = pl.plan(env, goal, held="block", time_budget=2.0)
        assert res.success, res.reason
        # the block stays attached until the next plan: the whole dense path keeps it off the scene
        assert min(pl.clearance(q) for q in pl._densify(res.joint_path, 0.01)) > 0.0
        c_robot, c_block = [0], [0]
        step_a = _counting_step(env, _robot_geoms(raw), wall, c_robot)

        def step(a):
            out = step_a(a)
            c_block[0] += raw.contacts_between(block_geoms, wall)
            return out
        ex = pl.execute(env, res, GRIPPER_CLOSED, step_fn=step)
        assert ex.success, ex
        assert c_robot[0] == 0 and c_block[0] == 0
        assert raw.is_grasped("block")
    finally:
        pl.close()


def test_replan_reuses_world(threading_env):
    env = threading_env
    raw = env.raw
    env.reset(seed=5)
    pl = Planner(env, seed=2)
    try:
        needle = raw.object_pose("needle")
        t1 = P.make_pose(needle[:3, 3] + [0, 0, 0.08], top_down(0.3))
        r1 = pl.plan(env, t1)
        assert r1.success
        f = pl.follow(r1, GRIPPER_OPEN)
        for _ in range(5):
            a = f.step(env)
            assert a is not None and a.shape == (7,)
            env.step(a)
        t2 = P.make_pose(needle[:3, 3] + [0.03, 0, 0.09], top_down(0.5))
        r2 = pl.replan(env, t2)
        assert r2.success and r2.plan_time < 1.0
        assert np.linalg.norm(r2.waypoints[0][:3, 3] - raw.eef_pose()[:3, 3]) < 0.005
        ex = pl.execute(env, r2, GRIPPER_OPEN)
        assert ex.success and ex.pos_err < 0.005
    finally:
        pl.close()


def _closed_gripper_beside_wall(env):
    """Reset the wall scene and close the fingers: (raw env, wall geom ids, robot geom ids, demonstrator)."""
    env.reset(seed=0)
    raw = env.raw
    d = Demonstrator(env, np.random.default_rng(0), record=False)
    d.actuate(GRIPPER_CLOSED, steps=10)
    return raw, [raw.sim.model.geom_name2id("wall_geom")], _robot_geoms(raw), d


def test_start_in_contact_retreats_then_plans_clear(wall_env):
    """A start pressing the closed fingers onto the wall's top (as after a contact-rich skill, or a
    reset beside a fixture): the plan begins with a short straight retreat tracked with the fingers
    held, then opens them (the planner models the opening) and keeps clear of the wall."""
    env = wall_env
    raw, wall, robot, d = _closed_gripper_beside_wall(env)
    R = top_down(np.pi / 2)  # fingers close across the wall (along world y)
    top = WALL_POS[2] + WALL_HALF[2]
    d.move(P.make_pose([-0.1, 0.15, top + 0.03], R), max_steps=100)
    d.move(P.make_pose([-0.1, 0.15, top + 0.004], R), speed=0.3, max_steps=60, pos_tol=0.002)
    d.hold(3)
    assert raw.contacts_between(robot, wall) > 0  # the precondition: touching the wall
    pl = Planner(env, seed=0)
    try:
        res = pl.plan(env, P.make_pose([0.0, -0.05, 1.0], top_down(0.3)), gripper=GRIPPER_OPEN)
        assert res.success, res.reason
        assert res.retreat_end is not None and res.info["relaxed_pairs"] == 0
        # the rest of the path keeps the full clearance, with the fingers open or opening
        dense = pl._densify(res.joint_path[1:], step=0.01)
        assert all(pl.clearance(q) > 0.0 for q in dense)
        per_step, grip = [], []

        def step(a):
            grip.append(a[6])
            out = env.step(a)
            per_step.append(raw.contacts_between(robot, wall))
            return out
        ex = pl.execute(env, res, GRIPPER_OPEN, step_fn=step)
        assert ex.success, ex
        assert sum(per_step[1:]) == 0, per_step[:10]  # at most the start's contact, one step long
        assert grip[0] == 0.0 and grip[-1] == GRIPPER_OPEN  # fingers held while retreating
        assert env.gripper_qpos()[0] > 0.035  # and open at the end
    finally:
        pl.close()


def test_plan_models_the_fingers_opening(wall_env):
    """Closed fingers 6 mm beside the wall, clear of it; opened, one would be inside it. A plan that
    is told the gripper command (open) keeps the opening fingers off the wall; one that checks the
    fingers as they are lets them open into it while the arm moves off."""
    env = wall_env
    raw, wall, robot, d = _closed_gripper_beside_wall(env)
    R = top_down(0.0)  # fingers close along world y, across the wall's face
    d.move(P.make_pose([-0.1, 0.097, 1.1], R), max_steps=100)
    d.move(P.make_pose([-0.1, 0.097, 1.02], R), max_steps=100, pos_tol=0.002)  # fingertips below the top
    d.hold(3)
    assert not d.failed and raw.contacts_between(robot, wall) == 0
    state, cmd = raw.get_flat_state(), raw.robots[0].gripper["right"].current_action.copy()
    goal = P.make_pose([0.15, 0.065, 1.02], R)  # along the wall
    pl = Planner(env, seed=0)
    try:
        contacts = {}
        for told in (None, GRIPPER_OPEN):
            raw.set_flat_state(state)
            raw.robots[0].gripper["right"].current_action = cmd.copy()
            res = pl.plan(env, goal, gripper=told)
            assert res.success, res.reason
            counter = [0]
            ex = pl.execute(env, res, GRIPPER_OPEN, step_fn=_counting_step(env, robot, wall, counter))
            assert ex.success, ex
            contacts[told] = counter[0]
        assert contacts[GRIPPER_OPEN] == 0
        assert contacts[None] > 0
    finally:
        pl.close()



def test_connect_fallback_is_opt_in(wall_env):
    """Demonstrator.connect fails the demo on a failed plan unless fallback=True: then it plans
    again with a larger budget, and if that fails too, servos straight to the target."""
    env = wall_env
    goal = P.make_pose([0.0, -0.1, 1.0], top_down(0.3))
    pl = env._kit_planner = Planner(env, seed=0)
    plan, budgets = pl.plan, []

    def failing(n):  # the first n plans fail
        def f(*a, **kw):
            budgets.append(kw.get("time_budget"))
            return PlanResult(False, "no_path") if len(budgets) <= n else plan(*a, **kw)
        return f
    try:
        for fallback, n, used in ((False, 1, None), (True, 1, {"retry": 1}), (True, 2, {"retry": 1, "servo": 1})):
            budgets.clear()
            pl.plan = failing(n)
            d = Demonstrator(env, np.random.default_rng(0), record=False).start(seed=0)
            ok = d.connect(goal, GRIPPER_OPEN, fallback=fallback, retry_budget=2.0)
            if not fallback:
                assert not ok and d.failed == "stage 0: plan no_path" and budgets == [None]
                continue
            assert ok and d.failed is None, d.failed
            assert budgets == [None, 2.0] and getattr(d, "connect_fallbacks", None) == used
            assert np.linalg.norm(env.eef_pose()[:3, 3] - goal[:3, 3]) < 0.006
    finally:
        pl.close()
        del env._kit_planner


def test_follower_stops_when_the_hand_is_blocked(threading_env):
    """A path whose last waypoint lies under the table top: the hand stops on the table, and the
    follower ends with STALLED soon after, instead of pushing until its step limit (the
    ThreePiece connects that ran 200+ steps into joint 7's limit)."""
    from common.planner import STALLED, PathFollower
    env = threading_env
    env.reset(seed=3)
    eef = env.eef_pose()
    table_z = env.raw.table_offset[2]
    goal = P.make_pose([eef[0, 3], eef[1, 3], table_z - 0.05], eef[:3, :3])
    wps = np.stack([P.make_pose(eef[:3, 3] + f * (goal[:3, 3] - eef[:3, 3]), eef[:3, :3])
                    for f in np.linspace(0.0, 1.0, 20)])
    plan = PlanResult(True, target=goal, waypoints=wps, mode="linear")
    f = PathFollower(plan, GRIPPER_OPEN, max_steps=400)
    while (a := f.step(env)) is not None:
        env.step(a)
    assert f.result.reason == STALLED and not f.result.success
    assert f.result.steps < 200  # well before max_steps
    assert f.result.pos_err > 0.03  # it really was blocked, not converging slowly
    assert env.eef_pose()[2, 3] > table_z  # the table held the hand
    # a reachable path still ends in success, stall detection notwithstanding
    env.reset(seed=3)
    eef = env.eef_pose()
    up = P.make_pose(eef[:3, 3] + [0.05, 0.05, 0.05], eef[:3, :3])
    plan = PlanResult(True, target=up, waypoints=np.stack([eef, up]), mode="linear")
    pl = Planner(env, mode="linear")
    try:
        ex = pl.execute(env, plan, GRIPPER_OPEN)
    finally:
        pl.close()
    assert ex.success, ex


def test_stalled_connect_recovers_by_pulling_the_arm_posture_to_the_plan_goal():
    """An HSP-Priv NutAssembly grasp pose whose goal configuration has joint 7 at 2.85 (limit 2.9):
    tracking it with OSC alone turns joint 7 into its limit and stalls 2.5 cm short (a quarter of
    the HSP-Priv rollouts did this). Once stalled, the follower moves the OSC's nullspace posture
    target to the plan's goal configuration and reaches the pose; the posture is restored after.
    With posture "path" it does not stall at all."""
    from dataclasses import replace

    from common.planner import STALLED, PathFollower
    env = make_env("NutAssembly_D2", seed=0)
    planner = Planner(env, seed=0)
    try:
        env.reset(seed=4)
        plan = planner.plan(env, planner.fk(np.array([0.71, 0.58, -0.3, -2.28, 0.52, 2.8, 2.85])))
        assert plan.success and plan.goal_q[6] > 2.6

        def track(p):
            f = PathFollower(p, GRIPPER_OPEN)
            while (a := f.step(env)) is not None:
                env.step(a)
            return f

        without = track(replace(plan, goal_q=None))  # no goal configuration: no recovery possible
        q7 = env.raw.sim.data.qpos[env.raw.robots[0]._ref_joint_pos_indexes][6]
        assert without.result.reason == STALLED and without.result.pos_err > 0.01 and q7 > 2.85
        env.reset(seed=4)
        controller = env.raw.robots[0].composite_controller.part_controllers["right"]
        default = controller.initial_joint.copy()
        f = track(plan)
        assert f.posture_recovery and f.result.success and f.result.pos_err < 0.005, f.result
        np.testing.assert_array_equal(controller.initial_joint, default)
        # posture "path": the posture target follows the planned joint path from the first step, so
        # the arm never turns into the limit: no stall, and the pose in fewer steps (41 vs 80 here)
        env.reset(seed=4)
        controller = env.raw.robots[0].composite_controller.part_controllers["right"]  # a new one per reset
        seen = []
        g = PathFollower(plan, GRIPPER_OPEN, posture="path")
        while (a := g.step(env)) is not None:
            seen.append(controller.initial_joint.copy())
            env.step(a)
        assert g.result.success and not g.posture_recovery and g.result.steps < f.result.steps - 20, g.result
        assert any(np.allclose(q, plan.waypoint_q[-1]) for q in seen)  # it pulled toward the plan's end
        np.testing.assert_array_equal(controller.initial_joint, default)  # and let go of it after
    finally:
        planner.close()
        env.close()
