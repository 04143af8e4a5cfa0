"""common/hsp.py (Algorithm 1) and 06_evaluate.py: the privileged teacher, replanning on pose jumps,
every Table I variant running an episode, a privileged agent with the generator's own skill replay
succeeding, checkpoint checks, Wilson intervals, resumable evaluation and the pose-noise experiment."""
import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from common import data as D
from common import pose as P
from common.env import make_env
from common.hsp import VARIANTS, AgentOptions, HSPAgent, summarize, variant_options, wilson_interval
from common.hsp_checkpoint import CheckpointError, load_hsp_models
from common.planner import Planner
from common.scripted import pose_action
from conftest import HSP_TASK as TASK
from conftest import load_script

torch.set_num_threads(1)
evaluate = load_script("evaluate", "06_evaluate.py")


@pytest.fixture(scope="module")
def setup(trained, dataset):
    out, _ = trained
    ck, models = load_hsp_models(os.path.join(out, TASK, "hsp.pt"), TASK, "state")
    env = make_env(TASK, obs_mode="state")
    planner = Planner(env, seed=0)
    demos, _ = D.load_all(os.path.join(os.path.dirname(dataset), "source.hdf5"), task=TASK)
    sources = D.SourceSegments(demos, env.stages)
    yield env, ck, models, planner, sources
    planner.close()
    env.close()


def agent_for(setup, **options):
    env, ck, models, planner, sources = setup
    return HSPAgent(env, models, ck["config"], planner, AgentOptions(**options), sources)


def test_privileged_pose_is_the_transformed_source_pose(setup):
    env, *_, sources = setup
    agent = agent_for(setup, pose="privileged")
    agent.begin_episode(seed=123)
    for i, stage in enumerate(env.stages):
        seg = sources.segments[i][agent.source_index]
        now = env.raw.object_pose(stage.reference_object)
        expected = now @ P.pose_inv(seg["ref"]) @ seg["eef"][0]  # source pose carried to the object's pose now
        got = P.pose7_to_mat(agent.predict_pose(i))
        assert np.allclose(got, expected, atol=1e-6)
        # the reset moved the object, so the teacher's pose is not the source pose itself
        assert np.linalg.norm(got[:3, 3] - seg["eef"][0][:3, 3]) > 1e-3


def test_teacher_chooses_its_source_demo_as_generation_did(setup, monkeypatch):
    """source_select "task" follows the task's datagen_select: random (Threading), or one of the 3
    sources nearest in the first reference object's pose where the task generated that way."""
    import copy
    env, ck, models, planner, sources = setup
    # six sources whose reference poses lie 0, 0.3, ..., 1.5 m away along x: the nearest three are 0-2
    six = copy.copy(sources)
    six.segments = list(sources.segments)
    base = sources.segments[0][0]
    six.segments[0] = []
    for k in range(6):
        seg = dict(base, ref=base["ref"].copy())
        seg["ref"][0, 3] = env.raw.table_offset[0] + 0.3 * k
        six.segments[0].append(seg)
    picks = {}
    for select in ("random", "nearest"):
        monkeypatch.setattr(type(env.raw), "datagen_select", select)
        picks[select] = set()
        for seed in range(12):
            agent = HSPAgent(env, models, ck["config"], planner, AgentOptions(pose="privileged"), six)
            assert agent.options.source_select == "task"
            agent.begin_episode(seed=seed)
            picks[select].add(agent.source_index)
    assert picks["nearest"] <= {0, 1, 2} and len(picks["nearest"]) >= 2
    assert len(picks["random"] - {0, 1, 2}) >= 1


def test_wrist_teacher_chooses_per_stage_the_sources_that_turn_the_gripper_least(setup):
    """source_select "wrist": at every stage, one of the 3 sources whose initiation pose (carried to
    the reference object now) is the smallest gripper turn from the current end-effector pose;
    sources half a turn away (Coffee's pod insertion at the other gripper yaw) are never taken."""
    import copy
    env, ck, models, planner, sources = setup
    six = copy.copy(sources)
    six.segments = list(sources.segments)
    base = sources.segments[1][0]
    yaws = np.radians([0, 180, 20, 170, 40, 150])  # turns of the source pose about the gripper's own z axis
    six.segments[1] = []
    for yaw in yaws:
        eef = base["eef"].copy()
        turn = np.eye(4)
        turn[:3, :3] = P.axisangle_to_mat(np.array([0.0, 0.0, yaw]))
        eef[0] = eef[0] @ turn  # the gripper turned about its own z (approach) axis
        six.segments[1].append(dict(base, eef=eef))
    picks = set()
    for seed in range(10):
        agent = HSPAgent(env, models, ck["config"], planner, AgentOptions(pose="privileged", source_select="wrist"), six)
        agent.begin_episode(seed=seed)
        ref_now = env.raw.object_pose(env.stages[1].reference_object)
        turned = [P.rotation_angle(P.transform_to_new_frame(s["eef"][0], s["ref"], ref_now)[:3, :3],
                                   env.raw.eef_pose()[:3, :3]) for s in six.segments[1]]
        agent.begin_stage(1)
        nearest3 = set(np.argsort(turned)[:3].tolist())
        assert agent.source_index in nearest3
        picks.add(agent.source_index)
    # the three yaws near each other win together, the three half a turn away never
    assert nearest3 in ({0, 2, 4}, {1, 3, 5})
    assert len(picks) >= 2
    with pytest.raises(ValueError, match="eef_now"):
        six.choose(1, np.eye(4), "wrist", np.random.default_rng(0))


def test_gripper_conventions_of_the_data_are_kept_at_deployment(setup, dataset):
    """The checkpoint records the data's gripper commands and each stage's connect-phase command;
    the agent snaps π_θi's gripper output to those commands (robosuite moves the fingers by the
    command's sign: a regressed 0.3 for "hold" would close them) and approaches with the data's
    connect command (CoffeePreparation closes the fingers on the way to the drawer handle)."""
    env, ck, models, planner, sources = setup
    cfg = ck["config"]
    demos, _ = D.load_all(dataset, task=TASK)
    for i in range(len(env.stages)):
        cmds = np.concatenate([d["actions"][(d["stage"] == i) & (d["phase"] == D.PHASE_CONNECT), 6] for d in demos])
        vals, counts = np.unique(cmds, return_counts=True)
        assert cfg["connect_gripper"][i] == float(vals[counts.argmax()])
    assert cfg["connect_gripper"] == [-1.0, 1.0]  # Threading: approach the needle open, the tripod holding it
    assert set(cfg["gripper_values"]) >= {-1.0, 1.0}

    def action_with_gripper(values):
        agent = HSPAgent(env, models, dict(cfg, gripper_values=values), planner, AgentOptions(),
                         skill_fn=lambda ag, i: np.r_[np.zeros(6), 0.3])
        agent.begin_episode(seed=3)
        return agent.skill_action(0)[6]
    assert action_with_gripper([-1.0, 0.0, 1.0]) == 0.0
    assert action_with_gripper([-1.0, 1.0]) == 1.0
    assert action_with_gripper(None) == pytest.approx(0.3)

    def fingers_after_connect(command):
        agent = HSPAgent(env, models, dict(cfg, connect_gripper=[command, 1.0]), planner,
                         AgentOptions(pose="privileged"), sources)
        agent.begin_episode(seed=3)
        agent.begin_stage(0)
        assert agent._connect(0)
        return float(env.proprio()[6] - env.proprio()[7])  # finger opening
    assert fingers_after_connect(-1.0) > 0.07 > 0.01 > fingers_after_connect(1.0)


def _connect_with_jump(setup, jump: float, monkeypatch) -> int:
    """Run stage 0's connect phase with a predictor that moves its pose by `jump` metres after 3
    steps; returns the number of replans."""
    agent = agent_for(setup, pose="learned", replan=True)
    agent.begin_episode(seed=7)
    agent.begin_stage(0)
    start = agent.env.raw.eef_pose()
    base = P.mat_to_pose7(start @ P.make_pose([0.0, 0.0, -0.08], np.eye(3)))
    calls = {"n": 0}

    def fake_pose(i):
        calls["n"] += 1
        p = base.copy()
        if calls["n"] > 3:
            p[0] += jump
        return p

    monkeypatch.setattr(agent, "learned_pose", fake_pose)
    assert agent._connect(0)
    assert calls["n"] > 4, "the prediction was not queried at every connect step"
    return agent.result.replans


def test_replanning_triggers_above_threshold_only(setup, monkeypatch):
    assert _connect_with_jump(setup, 0.04, monkeypatch) == 0  # below ε = 0.05: keep the plan
    assert _connect_with_jump(setup, 0.07, monkeypatch) == 1  # above: replan once, then stable


def test_no_replanning_without_the_option(setup, monkeypatch):
    agent = agent_for(setup, pose="learned", replan=False)
    agent.begin_episode(seed=7)
    agent.begin_stage(0)
    calls = {"n": 0}
    start = agent.env.raw.eef_pose()

    def fake_pose(i):
        calls["n"] += 1
        return P.mat_to_pose7(start @ P.make_pose([0.0, 0.0, -0.05 - 0.1 * calls["n"]], np.eye(3)))

    monkeypatch.setattr(agent, "learned_pose", fake_pose)
    agent._connect(0)
    assert calls["n"] == 1 and agent.result.replans == 0  # HSP: one prediction per stage


def test_unreachable_learned_grasp_pose_falls_back_to_its_symmetry_twin(setup, monkeypatch):
    """Threading's needle grasp (stage 0) was folded by the gripper's half-turn: when I_θ0's pose
    has no plan, the agent plans to the pose turned by π about the approach axis, reaches it, and
    keeps that turn for the stage's later predictions (replanning); the next stage starts unturned."""
    env, ck, *_ = setup
    assert ck["config"]["pose_symmetry"][0] == [pytest.approx(np.pi), "grip"]
    assert len(ck["config"]["pose_turn_share"][0]) == 2 and sum(ck["config"]["pose_turn_share"][0]) == pytest.approx(1.0)
    agent = agent_for(setup, pose="learned", replan=True)
    agent.begin_episode(seed=7)
    agent.begin_stage(0)
    start = agent.env.raw.eef_pose()
    base = P.mat_to_pose7(start @ P.make_pose([0.0, 0.0, -0.08], np.eye(3)))
    monkeypatch.setattr(agent, "learned_pose", lambda i: base.copy())
    real_plan, goals = agent.planner.plan, []

    def plan_refusing_the_base_yaw(env_, goal, **kw):  # the base pose is "beyond the wrist"
        goals.append(goal)
        if goal[:3, 0] @ start[:3, 0] > 0:
            return type("Failed", (), {"success": False, "reason": "no IK solution"})()
        return real_plan(env_, goal, **kw)

    monkeypatch.setattr(agent.planner, "plan", plan_refusing_the_base_yaw)
    assert agent._connect(0)
    twin = P.symmetry_twin(P.pose7_to_mat(base), np.pi)
    assert len(goals) == 2 and np.allclose(goals[1], twin, atol=1e-9)
    assert agent.result.pose_twins == 1 and agent.result.planner_failures == 0
    reached = env.raw.eef_pose()
    assert np.linalg.norm(reached[:3, 3] - twin[:3, 3]) < 0.01
    assert P.rotation_angle(reached[:3, :3], twin[:3, :3]) < 0.1  # the gripper did turn by π
    assert np.allclose(P.pose7_to_mat(agent.predict_pose(0)), twin, atol=1e-9)
    agent.begin_stage(1)
    assert np.allclose(agent.predict_pose(0), base)  # a new stage starts from I_θ's own pose


def test_arm_room_is_the_joint_limit_margin_of_the_ik_solution_from_the_current_joints(setup):
    env, *_ = setup
    agent = agent_for(setup, pose="learned")
    agent.begin_episode(seed=3)
    agent.planner.sync(env)
    q = env.raw.sim.data.qpos[:7].copy()
    margin = np.min(np.minimum(q - agent.planner.q_lo, agent.planner.q_hi - q))
    here = P.mat_to_pose7(env.raw.eef_pose())
    assert agent._arm_room(here) == pytest.approx(margin, abs=0.02)  # IK from q converges at q
    # a pose that turns the gripper by 2.5 rad about its approach axis takes joint 7 toward a limit
    turned = P.mat_to_pose7(env.raw.eef_pose() @ P.make_pose(np.zeros(3), P.axisangle_to_mat([0, 0, 2.5])))
    assert agent._arm_room(turned) < margin - 0.3
    assert agent._arm_room(P.mat_to_pose7(P.make_pose([3.0, 0, 1.0], np.eye(3)))) == -np.inf  # out of reach


def _room_by_yaw(start, tight_if_aligned: bool):
    """A stand-in for _arm_room: poses whose x axis points as the start's have `tight` room."""
    return lambda p7: 0.05 if (P.pose7_to_mat(p7)[:3, 0] @ start[:3, 0] > 0) == tight_if_aligned else 1.0


def test_learned_grasp_pose_near_a_joint_limit_takes_the_roomier_twin(setup, monkeypatch):
    """A grasp pose that would leave a joint within arm_room of its limit (ARM_ROOM) is replaced by
    its symmetry twin when the twin leaves more room; the turn is kept for the stage's later
    predictions. A roomy pose is kept as it is, and so is a tight one whose twin too few demos
    start at (TWIN_SHARE_MIN): the skill has not seen that grasp."""
    env, *_ = setup
    agent = agent_for(setup, pose="learned", replan=True)
    agent.begin_episode(seed=7)
    agent.begin_stage(0)
    agent.pose_turn_share[0] = [0.7, 0.3]  # NutAssembly's square-nut grasps
    start = env.raw.eef_pose()
    base = P.mat_to_pose7(start @ P.make_pose([0.0, 0.0, -0.08], np.eye(3)))
    monkeypatch.setattr(agent, "learned_pose", lambda i: base.copy())
    monkeypatch.setattr(agent, "_arm_room", _room_by_yaw(start, tight_if_aligned=True))
    got = agent._roomier_pose(0, agent.predict_pose(0))
    twin = P.symmetry_twin(P.pose7_to_mat(base), np.pi)
    assert np.allclose(P.pose7_to_mat(got), twin, atol=1e-9)
    assert agent.pose_turn == pytest.approx(np.pi) and agent.result.roomier_poses == 1
    assert np.allclose(P.pose7_to_mat(agent.predict_pose(0)), twin, atol=1e-9)
    agent.begin_stage(0)
    monkeypatch.setattr(agent, "_arm_room", _room_by_yaw(start, tight_if_aligned=False))
    assert np.allclose(agent._roomier_pose(0, base), base) and agent.pose_turn == 0.0
    assert agent.result.roomier_poses == 1
    # one grasp yaw in the data (ThreePiece's source demos): the tight pose stays
    agent.begin_stage(0)
    monkeypatch.setattr(agent, "_arm_room", _room_by_yaw(start, tight_if_aligned=True))
    agent.pose_turn_share[0] = [0.98, 0.02]
    assert np.allclose(agent._roomier_pose(0, base), base) and agent.pose_turn == 0.0
    assert agent.result.roomier_poses == 1
    agent.options = replace(agent.options, twin_share_min=0.0)  # 06_evaluate.py --twin-share-min 0
    assert np.allclose(P.pose7_to_mat(agent._roomier_pose(0, base)), twin, atol=1e-9)
    assert agent.result.roomier_poses == 2


def test_privileged_grasp_near_a_joint_limit_takes_the_roomiest_source_for_the_episode(setup, monkeypatch):
    """I^Priv: when the episode's source demo leaves too little room at a grasp, the source whose
    pose leaves the most takes over, for this stage and the later ones (its placement matches
    its grasp)."""
    env, *_, sources = setup
    agent = agent_for(setup, pose="privileged")
    agent.begin_episode(seed=11)
    agent.begin_stage(0)
    n = len(sources.segments[0])
    first = agent.source_index
    roomiest = (first + 1) % n
    poses = [agent.privileged_pose(0, k) for k in range(n)]
    rooms = [0.05 if k == first else (0.9 if k == roomiest else 0.2) for k in range(n)]
    room_of = lambda p7: rooms[int(np.argmin([np.abs(p7 - q).sum() for q in poses]))]  # noqa: E731
    monkeypatch.setattr(agent, "_arm_room", room_of)
    got = agent._roomier_pose(0, agent.predict_pose(0))
    assert agent.source_index == roomiest and agent.result.roomier_poses == 1
    assert np.allclose(got, poses[roomiest])
    assert np.allclose(agent.predict_pose(1), agent.privileged_pose(1, roomiest))
    rooms[:] = [0.01] * n  # no source roomier than the episode's: it stays
    assert np.allclose(agent._roomier_pose(0, poses[roomiest]), poses[roomiest])
    assert agent.source_index == roomiest and agent.result.roomier_poses == 1


def test_pose_symmetry_of_checkpoints_without_it_comes_from_the_folded_stages():
    from common import TASKS
    from common.hsp import stage_pose_symmetry
    three_piece = TASKS["ThreePieceAssembly_D2"]
    config = {"stage_names": ["grasp1", "insert1", "grasp2", "insert2"],
              "train": {"poses_turned": {"grasp1": 10, "insert1": 274, "grasp2": 0}}}
    got = stage_pose_symmetry(config, three_piece, 4)
    assert got == [(np.pi, "grip"), (np.pi / 2, "reference"), (np.pi / 2, "grip"), None]
    assert stage_pose_symmetry({"pose_symmetry": [None, [np.pi, "grip"]]}, three_piece, 2) == [None, (np.pi, "grip")]
    assert stage_pose_symmetry(None, three_piece, 3) == [None] * 3


def test_pose_turn_share_of_checkpoints_without_it_comes_from_the_turned_label_counts():
    from common.hsp import stage_pose_turn_share
    symmetry = [(np.pi, "grip"), (np.pi / 2, "reference"), (np.pi / 2, "grip"), None]
    config = {"stage_names": ["grasp1", "insert1", "grasp2", "insert2"],
              "train": {"n_demos": 1000, "poses_turned": {"grasp1": 300, "insert1": 0, "grasp2": 100}}}
    got = stage_pose_turn_share(config, symmetry)
    assert got[0] == pytest.approx([0.7, 0.3]) and got[1] == pytest.approx([1.0, 0.0, 0.0, 0.0])
    assert got[2] == pytest.approx([0.9, 0.1, 0.1, 0.1]) and got[3] is None  # split unknown: every twin
    stored = {"pose_turn_share": [[0.6, 0.4], None]}
    assert stage_pose_turn_share(stored, symmetry[:1] + [None]) == [[0.6, 0.4], None]
    assert stage_pose_turn_share(None, symmetry) == [None] * 4


@pytest.mark.parametrize("finish", [True, False])
def test_skill_runs_the_datas_post_termination_steps_after_T_fires(setup, finish):
    env, ck, *_ = setup
    tails = ck["config"]["post_termination_steps"]
    assert len(tails) == len(env.stages) and tails[0] > 0  # the demos lift on after the grasp holds
    agent = agent_for(setup, pose="privileged", finish_skill=finish)
    agent.skill_fn = lambda agent_, i: agent_.hold_action()
    agent.begin_episode(seed=5)
    agent.begin_stage(0)
    calls = {"n": 0}

    def fires_after_4_steps(i):
        calls["n"] += 1
        return calls["n"] > 4

    agent.terminated = fires_after_4_steps
    steps_before = agent.result.steps
    assert agent._skill(0)
    expected = 4 + (tails[0] if finish else 0)
    assert agent.result.skill_steps == [expected] and agent.result.steps - steps_before == expected
    assert calls["n"] == 5  # T is not asked again while the skill finishes
    last = len(env.stages) - 1  # the last stage ends the task as soon as T fires
    agent.begin_stage(last)
    calls["n"] = 0
    assert agent._skill(last)
    assert agent.result.skill_steps[-1] == 4


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_runs_an_episode(setup, variant):
    env, ck, models, planner, sources = setup
    agent = HSPAgent(env, models, ck["config"], planner, variant_options(variant), sources)
    r = agent.run_episode(seed=11)
    assert r.stages_attempted >= 1
    assert r.steps > 0 or r.planner_failures == 1  # an untrained predictor may point into the table
    assert len(r.stage_success) == r.stages_attempted
    assert r.success == (r.failure is None)
    assert r.steps <= env.horizon


def test_every_episode_restarts_the_planners_random_streams_from_its_seed(setup):
    """Evaluation workers run many rollouts with one planner; a resumed run or another --workers
    split changes which rollouts come first, so a seeded reset must also restart the planner's
    random streams (IK restarts, and OMPL's, which RRT-Connect and the shortcutting draw from)."""
    from ompl import util as ou
    planner = setup[3]
    draws = []
    for seed in (5, 6, 5):
        agent_for(setup, pose="privileged").begin_episode(seed=seed)
        draws.append((planner.rng.random(3).tolist(), ou.RNG().uniform01()))
        planner.rng.random(100)  # the episode's own planning
        [ou.RNG().uniform01() for _ in range(5)]
    assert draws[2] == draws[0]
    assert draws[1] != draws[0]


def test_a_learned_pose_episode_does_not_depend_on_whether_sources_are_loaded(setup):
    """06_evaluate loads the source demos in a worker only if it has HSP-Priv jobs; an HSP
    rollout must draw the same random numbers (skill components, noise) either way."""
    env, ck, models, planner, sources = setup
    draws = []
    for srcs in (sources, None):
        agent = HSPAgent(env, models, ck["config"], planner, variant_options("HSP"), srcs)
        agent.begin_episode(seed=8)
        assert agent.source_index is None
        draws.append(agent.rng.random(4).tolist())
    assert draws[0] == draws[1]
    teacher = agent_for(setup, pose="privileged")
    teacher.begin_episode(seed=8)
    assert teacher.source_index is not None


def test_learned_termination_and_noise_options_run(setup):
    agent = agent_for(setup, pose="privileged", termination="learned", pose_noise=0.05, action_noise=0.05)
    r = agent.run_episode(seed=3, last_stage=0)
    assert r.stages_attempted == 1 and r.steps > 0


def replay_skill(agent, i):
    """The data generator's skill: the source segment of the agent's I^Priv source demo, replayed
    in the reference object's frame at the skill's start (one agent per episode)."""
    env, seg = agent.env, agent.sources.segments[i][agent.source_index]
    key = (agent.result.seed, i)  # first call of this stage: transform the segment once
    if getattr(agent, "_replay_key", None) != key:
        ref = env.raw.object_pose(env.stages[i].reference_object)
        agent._replay = P.transform_to_new_frame(seg["eef"], seg["ref"], ref)
        agent._replay_key, agent._replay_t = key, 0
    t = min(agent._replay_t + 1, len(agent._replay) - 1)
    agent._replay_t += 1
    return pose_action(env.raw.eef_pose(), agent._replay[t], float(seg["gripper"][t - 1]))


def test_privileged_agent_with_replayed_skill_succeeds(setup):
    """Algorithm 1 with I^Priv, oracle termination and the data generator's skill (the source
    segment replayed in the reference object's frame) must solve the task like generation does."""
    env, *_, sources = setup
    ok = []
    for seed in (1, 2, 3, 4):
        agent = HSPAgent(env, None, None, setup[3], AgentOptions(pose="privileged"), sources, skill_fn=replay_skill)
        r = agent.run_episode(seed)
        ok.append(r.success)
        if r.success:
            assert r.stage_success == [True, True] and r.planner_failures == 0
        assert len(r.teacher_sources) == r.stages_attempted and r.teacher_sources[-1] == agent.source_index
    assert sum(ok) >= 2, ok


def test_a_skill_start_reached_in_the_loop_continues_the_episode(setup):
    """run_to_skill_start stops where stage 1's skill takes over; run_skill from that SkillStart
    (02 --select-starts loop) restores the sim and the gripper controller and finishes the stage
    as the uninterrupted episode did."""
    env, *_, sources = setup
    gripper = env.raw.robots[0].gripper["right"]
    for seed in (1, 2, 3, 4):
        whole = HSPAgent(env, None, None, setup[3], AgentOptions(pose="privileged"), sources, skill_fn=replay_skill)
        full = whole.run_episode(seed)
        if full.success:
            break
    assert full.success
    agent = HSPAgent(env, None, None, setup[3], AgentOptions(pose="privileged"), sources, skill_fn=replay_skill)
    r, start = agent.run_to_skill_start(seed, 1)
    assert start is not None and r.stage_success == [True] and r.stages_attempted == 2
    assert start.steps == r.steps == full.steps - full.skill_steps[1]  # the last stage has no steps after T
    assert len(start.gripper_commands) == start.steps
    at_start = gripper.current_action.copy()
    env.reset(seed=seed + 100)  # elsewhere, and the gripper controller closed ...
    for _ in range(5):
        env.step(np.r_[np.zeros(6), 1.0])
    env.reset_to(start.state, start.gripper_commands)  # ... then back
    np.testing.assert_array_equal(gripper.current_action, at_start)
    assert np.array_equal(env.get_state(), start.state)
    cont = agent.run_skill(1, start.state, seed, start.gripper_commands, start.steps)
    assert cont.success and cont.stage_success == [True]
    assert abs(cont.skill_steps[0] - full.skill_steps[1]) <= 2
    assert cont.steps == start.steps + cont.skill_steps[0]
    # a stage the episode cannot reach gives no start: stage 1 after a stage-0 skill that holds still
    hold = HSPAgent(env, None, None, setup[3], AgentOptions(pose="privileged"), sources,
                    skill_fn=lambda ag, _i: ag.hold_action())
    hold.max_skill_steps = [5, 5]
    r, start = hold.run_to_skill_start(seed, 1)
    assert start is None and r.failure.startswith("stage 0: skill did not terminate")


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-3) and hi == pytest.approx(0.3662, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # exact ends (n = 50 left 7e-18 at 0 successes, a negative error bar in the plot)
    for n in (10, 50, 100, 500):
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0


def test_summary_counts_stages_among_rollouts_that_reached_them():
    res = [dict(seed=0, success=True, stage_success=[True, True], stages_attempted=2, skill_steps=[10, 20],
                steps=50, planner_failures=0, replans=1, connect_timeouts=0, failure=None),
           dict(seed=1, success=False, stage_success=[True, False], stages_attempted=2, skill_steps=[12, 40],
                steps=80, planner_failures=1, replans=0, connect_timeouts=0, failure="stage 1: skill did not terminate in 40 steps"),
           dict(seed=2, success=False, stage_success=[False], stages_attempted=1, skill_steps=[30],
                steps=60, planner_failures=0, replans=0, connect_timeouts=0, failure="stage 0: skill did not terminate in 40 steps")]
    s = summarize(res, 2)
    assert s["success_rate"] == pytest.approx(1 / 3)
    assert [st["rate"] for st in s["stage_success"]] == [pytest.approx(2 / 3), pytest.approx(1 / 2)]
    assert s["mean_skill_steps"] == [pytest.approx(52 / 3), pytest.approx(30)]
    assert s["failures"] == {"stage 1: skill did not terminate": 1, "stage 0: skill did not terminate": 1}
    assert "teacher_source_success" not in s  # learned poses: no teacher
    for x, sources in zip(res, ([3, 3], [3, 3], [5])):
        x["teacher_sources"] = sources
    s = summarize(res, 2)
    assert s["teacher_source_success"] == [{"3": dict(attempted=2, succeeded=2), "5": dict(attempted=1, succeeded=0)},
                                           {"3": dict(attempted=2, succeeded=1)}]


def test_evaluate_writes_tables_and_resumes(trained, dataset, tmp_path):
    out, _ = trained
    common_args = ["--task", TASK, "--ckpt", os.path.join(out, TASK, "hsp.pt"), "--source",
                   os.path.join(os.path.dirname(dataset), "source.hdf5"), "--rollouts", "1", "--out", str(tmp_path)]
    argv = common_args + ["--variants", "HSP-Priv", "HSP", "--plot"]
    ev = evaluate.main(argv)
    assert set(ev["variants"]) == {"HSP-Priv", "HSP"}
    s = ev["variants"]["HSP-Priv"]["summary"]
    assert s["rollouts"] == 1 and 0.0 <= s["wilson95"][0] <= s["wilson95"][1] <= 1.0
    table = open(tmp_path / TASK / "table1.md").read()
    assert "| HSP-Priv |" in table and "54.3" in table  # the paper's Threading HSP-Priv beside ours
    assert "Threading_D2" in open(tmp_path / "table1.md").read()
    log = tmp_path / TASK / "rollouts.jsonl"
    n_lines = len(log.read_text().splitlines())
    assert n_lines == 2
    again = evaluate.main(argv)  # resumed: nothing rerun, same results
    assert len(log.read_text().splitlines()) == n_lines
    assert again["variants"]["HSP"]["summary"] == ev["variants"]["HSP"]["summary"]
    evaluate.main(common_args + ["--variants", "HSP+Replan"])  # adds a row, keeps the others
    assert set(json.load(open(tmp_path / TASK / "eval.json"))["variants"]) == {"HSP-Priv", "HSP", "HSP+Replan"}


def test_pose_noise_experiment(trained, dataset, tmp_path):
    out, _ = trained
    res = evaluate.main(["--task", TASK, "--ckpt", os.path.join(out, TASK, "hsp.pt"), "--source",
                         os.path.join(os.path.dirname(dataset), "source.hdf5"), "--experiment", "pose-noise",
                         "--stage", "0", "--sigmas", "0", "0.1", "--rollouts", "1", "--out", str(tmp_path)])
    pts = res["curves"]["HSP-Priv"]
    assert [p["sigma"] for p in pts] == [0.0, 0.1] and all(p["attempted"] == 1 for p in pts)
    assert os.path.getsize(tmp_path / TASK / "pose_noise.png") > 0
    with pytest.raises(SystemExit, match="out of range"):
        evaluate.main(["--task", TASK, "--ckpt", os.path.join(out, TASK, "hsp.pt"), "--experiment", "pose-noise",
                       "--stage", "5", "--rollouts", "1", "--out", str(tmp_path)])


def test_evaluate_refuses_other_task_or_obs_mode(trained, tmp_path):
    out, _ = trained
    ckpt = os.path.join(out, TASK, "hsp.pt")
    with pytest.raises(CheckpointError, match="trained for task 'Threading_D2'"):
        evaluate.main(["--task", "Coffee_D2", "--ckpt", ckpt, "--rollouts", "1", "--out", str(tmp_path)])
    with pytest.raises(CheckpointError, match="--obs state"):
        evaluate.main(["--task", TASK, "--ckpt", ckpt, "--obs", "image", "--rollouts", "1", "--out", str(tmp_path)])
    with pytest.raises(D.DataError):
        evaluate.main(["--task", TASK, "--ckpt", ckpt, "--source", str(tmp_path / "missing.hdf5"),
                       "--rollouts", "1", "--out", str(tmp_path)])


def test_skill_from_a_stored_state_replays_the_demo_and_fails_standing_still(setup, dataset):
    """HSPAgent.run_skill (02's snapshot selection) restores a generated demo's sim state where a
    stage's skill began: the demo's own recorded actions from there must finish the stage, and a
    skill that holds still must not (the stage is not done at its start)."""
    env = setup[0]
    with D.open_dataset(dataset, TASK) as f:
        g = f["data"][D.demo_keys(f)[0]]
        bounds, states, actions = g["skill_bounds"][()], g["states"][()], g["actions"][()]
    for i in range(len(env.stages)):
        a, b = (int(x) for x in bounds[i])

        def replay(agent, _i, a=a, b=b):
            t = min(a + agent.result.steps, b - 1)
            return actions[t]

        agent = HSPAgent(env, None, None, None, AgentOptions(), skill_fn=replay)
        agent.max_skill_steps = [b - a + 20] * len(env.stages)
        r = agent.run_skill(i, states[a], seed=0, gripper_commands=actions[:a, 6])
        assert r.success and r.stage_success == [True], (i, r.failure)
        n = r.skill_steps[0]
        assert n <= b - a  # terminates no later than the demo's stage ended ...
        # ... in the recorded state (up to the float32 rounding of the stored actions: ~1e-7)
        assert np.abs(env.get_state() - states[a + n]).max() < 1e-5
        hold = HSPAgent(env, None, None, None, AgentOptions(), skill_fn=lambda ag, _i: np.r_[np.zeros(6), -1.0])
        hold.max_skill_steps = [10] * len(env.stages)
        r = hold.run_skill(i, states[a], seed=0, gripper_commands=actions[:a, 6])
        assert not r.success and r.failure.startswith(f"stage {i}: skill did not terminate")


def test_skill_selection_saves_the_snapshot_with_most_successes(dataset, tmp_path):
    """02 --select-trials: every stage's snapshots (the evaluations of the second half of training)
    each run the same trials with each action rule; the checkpoint's skill is the snapshot of the
    (snapshot, rule) with the most successes, and its config the rules the agent then acts by."""
    train = load_script("train_hsp", "02_train_hsp.py")
    out = tmp_path / "sel"
    train.main(["--task", TASK, "--data", dataset, "--out", str(out), "--steps", "40", "--eval-every", "10",
                "--batch-size", "16", "--hidden", "32", "32", "--select-trials", "2", "--select-starts", "demos", "--no-tqdm"])
    d = out / TASK
    sel = json.load(open(d / "hsp_skill_selection.json"))
    snaps = torch.load(d / "hsp_skill_snapshots.pt", weights_only=True)["stages"]
    ck = torch.load(d / "hsp.pt", weights_only=True)
    assert ck["config"]["skill_selection"] == sel and len(sel) == len(ck["stages"]) == 2
    assert ck["config"]["skill_action"] == [s["chosen_action"] for s in sel]
    for i, s in enumerate(sel):
        cands = [(c["step"], c["action"]) for c in s["candidates"]]
        assert cands == [(k, how) for k in (20, 30, 40) for how in ("component", "mode")]
        assert all(c["trials"] == 2 for c in s["candidates"])
        best = max(c["successes"] for c in s["candidates"])
        chosen = next(c for c in s["candidates"] if (c["step"], c["action"]) == (s["chosen_step"], s["chosen_action"]))
        assert chosen["successes"] == best
        stage_rows = open(d / "hsp_skill_selection.md").read().split(f"| {s['stage']} |")[1].split("\n")[:3]
        row = stage_rows[[20, 30, 40].index(s["chosen_step"])]  # the stage's rows, one per snapshot
        cells = [c.strip() for c in row.split("|")[-3:-1]]  # component, mode
        assert cells[["component", "mode"].index(s["chosen_action"])] == f"**{chosen['successes']}/2**"
        saved = ck["stages"][i]["skill"]
        assert all(torch.equal(saved[k], v) for k, v in snaps[i][str(s["chosen_step"])].items())
        other = [k for k in (20, 30, 40) if k != s["chosen_step"]][0]
        assert not all(torch.equal(saved[k], v) for k, v in snaps[i][str(other)].items())


def test_in_loop_skill_selection_scores_snapshots_where_hsp_priv_episodes_reach_them(dataset, tmp_path):
    """02 --select-starts loop: each stage's trials start where seeded HSP-Priv episodes (with the
    skills chosen for the earlier stages) reach its skill; episodes that end before are counted
    with their reasons, and a stage few episodes reach gets at most LOOP_EPISODES_PER_START tries
    per start."""
    train = load_script("train_hsp", "02_train_hsp.py")
    out = tmp_path / "loop"
    train.main(["--task", TASK, "--data", dataset, "--out", str(out), "--steps", "20", "--eval-every", "10",
                "--batch-size", "16", "--hidden", "32", "32", "--select-trials", "2", "--select-starts", "loop",
                "--no-tqdm"])
    sel = json.load(open(out / TASK / "hsp_skill_selection.json"))
    ck = torch.load(out / TASK / "hsp.pt", weights_only=True)
    assert ck["config"]["skill_selection"] == sel
    for s in sel:
        ep = s["episodes"]
        assert s["starts"] == "loop"
        assert ep["run"] == ep["reached"] + sum(ep["ended_before"].values())
        assert ep["run"] <= train.LOOP_EPISODES_PER_START * 2
        # every snapshot runs one trial from each start (at most the 2 asked for)
        assert all(c["trials"] == min(2, ep["reached"]) for c in s["candidates"])
    assert sel[0]["episodes"]["reached"] == 2  # stage 0's skill starts after a planned connect
    # stage 1's episodes end in stage 0 (a 20-step skill does not thread the needle) or reach stage 1
    assert all(why.startswith("stage 0") for why in sel[1]["episodes"]["ended_before"])
    md = open(out / TASK / "hsp_skill_selection.md").read()
    assert "in-loop skill starts" in md and f"{sel[0]['episodes']['reached']}/{sel[0]['episodes']['run']}" in md
    with pytest.raises(D.DataError, match="missing.hdf5 does not exist"):
        train.main(["--task", TASK, "--data", dataset, "--out", str(tmp_path / "x"), "--steps", "2",
                    "--select-trials", "1", "--select-starts", "loop", "--source", str(tmp_path / "missing.hdf5")])


def test_an_interrupted_skill_selection_resumes_with_the_trials_it_has_not_run(dataset, tmp_path, monkeypatch):
    import common.hsp as hsp
    train = load_script("train_hsp", "02_train_hsp.py")
    args = ["--task", TASK, "--data", dataset, "--out", str(tmp_path), "--steps", "20", "--eval-every", "10",
            "--batch-size", "16", "--hidden", "32", "32", "--select-trials", "2", "--select-starts", "demos", "--no-tqdm"]
    real, ran = hsp.SkillTrials.run, []

    def interrupted_after_three(self, jobs, progress=None):
        def counted(res):
            ran.append((res[1], res[2], res[3], res[4]))  # stage, step, action rule, seed
            progress(res)
            if len(ran) == 3:
                raise KeyboardInterrupt
        return real(self, jobs, counted)

    monkeypatch.setattr(hsp.SkillTrials, "run", interrupted_after_three)
    with pytest.raises(KeyboardInterrupt):
        train.main(args)
    first, ran[:] = list(ran), []
    monkeypatch.setattr(hsp.SkillTrials, "run", lambda self, jobs, progress=None: (
        ran.extend((j[1], j[2], j[3], j[6]) for j in jobs), real(self, jobs, progress))[1])
    train.main(args)
    sel = json.load(open(tmp_path / TASK / "hsp_skill_selection.json"))
    n_trials = sum(c["trials"] for s in sel for c in s["candidates"])
    assert n_trials == 2 * 2 * 2 * 2  # 2 stages x 2 snapshots (steps 10, 20) x 2 rules x 2 trials, all counted
    assert len(ran) == n_trials - 3 and not set(first) & set(ran)  # the logged three were not rerun
    assert not (tmp_path / TASK / "hsp_progress").exists()


def test_skill_action_may_differ_per_stage(setup):
    """AgentOptions.skill_action: one value, or one per stage (06_evaluate.py --skill-action)."""
    from common.hsp import skill_action_option
    env, ck, models, planner, sources = setup
    actions = {}
    for how in ("component", "mode", ("mode", "component")):
        agent = agent_for(setup, skill_action=how)
        agent.begin_episode(seed=5)
        # component draws from the episode's generator: same seed, same draws, for both stages
        actions[how] = [agent.skill_action(0), agent.skill_action(1)]
    np.testing.assert_array_equal(actions[("mode", "component")][0], actions["mode"][0])
    mode_again = agent_for(setup, skill_action="mode")
    mode_again.begin_episode(seed=5)
    assert np.array_equal(mode_again.skill_action(1), actions["mode"][1])  # mode is deterministic
    # the per-stage agent drew once (stage 1) where the component agent had drawn twice: compare
    # stage 1's component action with a fresh agent's first draw
    fresh = agent_for(setup, skill_action="component")
    fresh.begin_episode(seed=5)
    np.testing.assert_array_equal(actions[("mode", "component")][1], fresh.skill_action(1))
    assert skill_action_option(["mode"], 2) == "mode"
    assert skill_action_option(["mode", "component"], 2) == ("mode", "component")
    with pytest.raises(ValueError, match="one per stage"):
        skill_action_option(["mode", "component", "mode"], 2)
    with pytest.raises(ValueError, match="skill_action"):
        AgentOptions(skill_action=("mode", "argmax"))
    assert "skill action: mode / component" in AgentOptions(skill_action=("mode", "component")).describe()
    # no rule given: the checkpoint's (02's selection stores one per stage), else component
    chosen = HSPAgent(env, models, dict(ck["config"], skill_action=["mode", "component"]), planner, AgentOptions(),
                      sources)
    assert [chosen.stage_skill_action(i) for i in (0, 1)] == ["mode", "component"]
    chosen.begin_episode(seed=5)
    assert np.array_equal(chosen.skill_action(0), actions["mode"][0])
    assert agent_for(setup).stage_skill_action(0) == "component"  # a checkpoint without a selection
    chosen.options = AgentOptions(skill_action="component")  # an explicit rule overrides the checkpoint's
    assert chosen.stage_skill_action(0) == "component"
    # 06_evaluate.py names the rule in every job (its resume key): --skill-action, else the checkpoint's
    args = evaluate.parse_args(["--task", TASK, "--rollouts", "1", "--variants", "HSP"])
    assert evaluate.make_jobs(args, 2, ["mode", "component"])[0]["options"]["skill_action"] == ("mode", "component")
    assert evaluate.make_jobs(args, 2, ["mode", "mode"])[0]["options"]["skill_action"] == "mode"
    assert evaluate.make_jobs(args, 2, None)[0]["options"]["skill_action"] == "component"
    args = evaluate.parse_args(["--task", TASK, "--rollouts", "1", "--variants", "HSP", "--skill-action", "sample"])
    assert evaluate.make_jobs(args, 2, ["mode", "mode"])[0]["options"]["skill_action"] == "sample"
    # a checkpoint's rules that do not fit the task are refused, naming the fix
    with pytest.raises(ValueError, match="retrain with 02_train_hsp.py"):
        HSPAgent(env, models, dict(ck["config"], skill_action=["mode"]), planner, AgentOptions(), sources)
    with pytest.raises(evaluate.CheckpointError, match="2 stages"):
        evaluate.make_jobs(evaluate.parse_args(["--task", TASK, "--variants", "HSP"]), 2, ["mode"] * 3)


def test_a_worker_that_cannot_set_up_fails_the_call_instead_of_hanging(tmp_path):
    """multiprocessing.Pool replaces a worker whose initializer raised, forever: skill_trials (02's
    selection) and bench/skill_in_loop.py keep the set-up error and raise it with the first job."""
    from common.hsp import SkillTrials, WorkerSetupError
    missing = str(tmp_path / "missing.pt")
    with pytest.raises(WorkerSetupError, match="_skill_trials_init"):
        with SkillTrials(TASK, missing, missing, workers=2) as runner:
            runner.run([("trial", 0, "10", "component", None, None, 0, 0)])
