"""The Hybrid Skill Policy agent: Algorithm 1 of the paper (Sec. III-C, with Sec. IV-A replanning).

For each stage i of the task:

1. predict the skill's initiation pose P_i: the learned predictor I_θi(o), or the privileged
   teacher I^Priv (Sec. IV-A: the source demo's initiation pose carried into the current frame of
   the stage's reference object, T_W^A' = T_W^R' (T_W^R)^-1 T_W^A), optionally with App. E-A noise;
2. plan a collision-free path to it with the motion planner and track it with OSC actions
   (the *connect* phase, Alg. 1 lines 5-8);
3. with replanning on, re-predict the pose at every connect step and plan again from the current
   state when the replanning distance to the current target exceeds ε = 0.05 (lines 9-12);
4. run the skill policy π_θi until the stage terminates: the ground-truth check T_i(s) (oracle) or
   the learned classifier T_θi(o) > 0.5 (lines 13-16), then, before the next stage, as the demos
   did, for their median number of steps after T_i(s) first held (a grasp's lift, a release and
   retreat: the next connect starts from states the data shows). A skill that does not terminate
   within its step budget (SKILL_BUDGET_FACTOR x the longest skill segment in the training data)
   fails the episode, as does running past the task's evaluation horizon.

How an agent is configured is data (`AgentOptions`); the named variants of the paper's tables are
entries of `VARIANTS`, so later phases add theirs without copying the loop.
"""
from __future__ import annotations

import math
import traceback
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from . import pose as P
from .nets import ObsHistory, obs_keys
from .presets import REPLAN_THRESHOLD, SKILL_BUDGET_FACTOR, TERMINATION_THRESHOLD

GRIPPER_OPEN = -1.0
# A grasp skill that starts with a joint within this much (rad) of its limit often fails: in 100
# NutAssembly HSP-Priv rollouts, the 20 square-nut grasps that began with joint 7 within 0.04 rad
# of its limit (2.897) failed 10 times, the other 80 never. The OSC holding the hand's orientation
# against the limit lets the fingertips drift 20-35 mm along the handle as they descend, onto the
# nut's ring or past the handle's end. An empty parallel-jaw grasp has an equivalent pose with the
# wrist half a turn away (and other source demos grasp at other yaws), so the agent takes the one
# that leaves the arm more room (README, "Joint-limit room at the grasps").
ARM_ROOM = 0.3
# A learned grasp pose is turned onto its symmetry twin for joint-limit room only when at least
# this share of the stage's demos start at that twin (the checkpoint's pose_turn_share): the skill
# has then seen the grasp. ThreePiece's source demos grasp each piece at one yaw: there, of the
# learned-pose rollouts that took a twin for room, 134 of 149 failed the knob grasp (without a
# twin: 82 of 772; README, ThreePiece). NutAssembly's demos hold 30 % at the square nut's twin,
# where the turn took HSP from 74 to 86 % on the same 100 rollouts.
TWIN_SHARE_MIN = 0.05


# ------------------------------------------------------------------------------------------ options
# How a GMM skill may act (AgentOptions.skill_action): one rule per stage.
SKILL_ACTIONS = ("component", "mode", "sample")


@dataclass(frozen=True)
class AgentOptions:
    pose: str = "learned"  # "learned" (I_θi) | "privileged" (I^Priv, Sec. IV-A)
    replan: bool = False  # re-predict every connect step; replan when replan_distance > ε (Sec. IV-A)
    replan_threshold: float = REPLAN_THRESHOLD  # ε_pose, App. C-C
    termination: str = "oracle"  # "oracle" (ground-truth T_i(s)) | "learned" (T_θi, Eq. 3)
    termination_threshold: float = TERMINATION_THRESHOLD
    pose_noise: float = 0.0  # σ of App. E-A on the initiation pose (m and rad), one draw per stage
    pose_noise_stages: tuple | None = None  # stages whose pose gets the noise (None: every stage)
    action_noise: float = 0.0  # Gaussian σ on the skill's 6 pose-action dimensions
    # I^Priv's source demo: "random", "nearest" (MimicGen's nearest_neighbor_object), or "task":
    # the way 01_generate.py chose sources for this task (its datagen_select), so that the
    # teacher's initiation poses come from the distribution the skills were trained on; chosen once
    # per episode. "wrist": chosen again at every stage, among the 3 sources whose initiation pose
    # (carried to the reference object now) turns the gripper least from where it is: for source
    # demos that reach a stage at different gripper yaws (Coffee's did, π apart, before its
    # demonstrator was fixed), a source at the far yaw makes the connect turn the wrist half round,
    # and such connects stall (see README).
    source_select: str = "task"
    skill_budget_factor: float = SKILL_BUDGET_FACTOR
    # How π_θi's GMM gives an action: "component" = robomimic's low-noise evaluation (sample the
    # mixture component with the episode's seeded generator, take its mean); "mode" = the most
    # probable component's mean (deterministic); "sample" = draw from the full mixture. One value
    # for every stage, or a tuple with one per stage; None = the rules 02_train_hsp.py's selection
    # chose with the snapshots and stored in the checkpoint (config "skill_action"), else component.
    skill_action: str | tuple | None = None
    # Finish the skill as the data did: once T fires, run π_θi for the demos' median number of
    # steps after T_i(s) first held (the checkpoint's post_termination_steps: a grasp's lift, an
    # insertion's release and retreat), so that the next stage's connect starts where the data's
    # did; the stage succeeds if T_i(s) still holds after them. Not after the last stage: as in
    # robomimic's rollouts, the episode is done once the task succeeds.
    finish_skill: bool = True
    # Joint-limit room (rad) a grasp's initiation pose must leave every arm joint (see
    # `_roomier_pose`); 0 turns the check off.
    arm_room: float = ARM_ROOM
    # Least share of a stage's demos at a symmetry twin for I_θi's pose to be turned onto it for
    # room (TWIN_SHARE_MIN); 0 allows every twin.
    twin_share_min: float = TWIN_SHARE_MIN

    def __post_init__(self):
        checks = (("pose", self.pose, ("learned", "privileged")),
                  ("termination", self.termination, ("oracle", "learned")),
                  ("source_select", self.source_select, ("task", "random", "nearest", "wrist")))
        per_stage = (() if self.skill_action is None else self.skill_action
                     if isinstance(self.skill_action, (tuple, list)) else (self.skill_action,))
        checks += tuple(("skill_action", v, SKILL_ACTIONS) for v in per_stage)
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"AgentOptions.{name} = {value!r}; choose one of {allowed}")

    def describe(self) -> str:
        parts = ["privileged pose" if self.pose == "privileged" else "learned pose",
                 f"replan ε={self.replan_threshold}" if self.replan else "no replanning",
                 f"{self.termination} termination"]
        if self.pose_noise:
            parts.append(f"pose noise σ={self.pose_noise}")
        if self.action_noise:
            parts.append(f"action noise σ={self.action_noise}")
        if self.skill_action not in (None, "component"):
            how = self.skill_action if isinstance(self.skill_action, str) else " / ".join(self.skill_action)
            parts.append(f"skill action: {how}")
        if not self.finish_skill:
            parts.append("skill stops when T fires")
        return ", ".join(parts)


# The rows of Table I this kit evaluates. Later phases register theirs here (e.g. ReinforceGen =
# learned pose + replanning + residual skills + learned termination with rejection).
VARIANTS: dict[str, AgentOptions] = {
    "HSP-Priv": AgentOptions(pose="privileged", replan=False, termination="oracle"),
    "HSP": AgentOptions(pose="learned", replan=False, termination="oracle"),
    "HSP+Replan": AgentOptions(pose="learned", replan=True, termination="oracle"),
}


def skill_action_option(values: list, n_stages: int):
    """A --skill-action command-line value as AgentOptions.skill_action: one value for every stage
    (a str, as the default), or a tuple of one per stage."""
    if len(values) == 1:
        return values[0]
    if len(values) != n_stages:
        raise ValueError(f"give one value or one per stage; the task has {n_stages} stages, got {len(values)}")
    return tuple(values)


def variant_options(name: str, **overrides) -> AgentOptions:
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    return replace(VARIANTS[name], **overrides)


def stage_pose_symmetry(config: dict | None, task_cls, n_stages: int) -> list:
    """Per stage, the (period, about) symmetry that 02_train_hsp.py folded the initiation-pose
    labels by, or None. Checkpoints before 2026-12-02 do not store it: they list the folded stages'
    names (train.poses_turned), and only placements were folded about the reference."""
    if not config:
        return [None] * n_stages
    if "pose_symmetry" in config:
        return [tuple(x) if x is not None else None for x in config["pose_symmetry"]]
    folded = config.get("train", {}).get("poses_turned") or {}
    names = config.get("stage_names") or []
    return [task_cls.pose_symmetry(i, arrives_empty=i not in task_cls.place_yaw_period)
            if i < len(names) and names[i] in folded else None for i in range(n_stages)]


def stage_pose_turn_share(config: dict | None, symmetry: list) -> list:
    """Per stage, the share of its demos at each symmetry twin of the folded initiation pose (in
    the order of P.symmetry_turns(period); see 02_train_hsp.turn_shares), or None. Checkpoints
    before 2026-12-03 do not store it: a half-turn symmetry's two shares follow from the number of
    labels the fold turned (train.poses_turned); for finer symmetries the split among the turns is
    unknown, and every twin gets the turned share."""
    n_stages = len(symmetry)
    if config and "pose_turn_share" in config:
        return [list(x) if x is not None else None for x in config["pose_turn_share"]]
    train = (config or {}).get("train") or {}
    turned, n_demos = train.get("poses_turned") or {}, train.get("n_demos")
    names = (config or {}).get("stage_names") or []
    out = [None] * n_stages
    for i, sym in enumerate(symmetry):
        if sym is None or i >= len(names) or names[i] not in turned or not n_demos:
            continue
        f = turned[names[i]] / n_demos
        out[i] = [1.0 - f] + [f] * (len(P.symmetry_turns(sym[0])) - 1)
    return out


# ------------------------------------------------------------------------------------------ results
@dataclass
class EpisodeResult:
    seed: int
    success: bool = False
    stage_success: list = field(default_factory=list)  # T_i(s) held when stage i's skill ended
    stages_attempted: int = 0
    skill_steps: list = field(default_factory=list)  # per attempted stage
    connect_steps: list = field(default_factory=list)
    replans: int = 0
    planner_failures: int = 0
    connect_timeouts: int = 0
    teacher_fallbacks: int = 0  # I^Priv switched to another source demo whose pose was reachable
    teacher_sources: list = field(default_factory=list)  # I^Priv's source demo per attempted stage
    pose_twins: int = 0  # I_θi's pose was unreachable and its symmetry twin was taken (pose_symmetry)
    roomier_poses: int = 0  # a grasp's pose left a joint too near its limit; a roomier one was taken
    steps: int = 0
    failure: str | None = None  # why the episode ended unsuccessfully

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SkillStart:
    """Where a stage's skill began in an episode: enough to run the skill again from there."""
    state: np.ndarray  # flattened sim state (KitEnv.get_state)
    gripper_commands: np.ndarray  # the episode's gripper actions before it (KitEnv.reset_to)
    steps: int  # episode steps spent before it


class _EpisodeOver(Exception):
    """Raised inside an episode when the evaluation horizon is reached."""


# ------------------------------------------------------------------------------------------ agent
class HSPAgent:
    """Runs Algorithm 1 in a KitEnv.

    env: a KitEnv in the checkpoint's obs mode. models: per-stage networks from
    `hsp_checkpoint.load_hsp_models` (may be None for a purely privileged agent with oracle
    termination and no learned skills, e.g. in tests). config: the checkpoint's config.
    planner: a `common.planner.Planner` for this env. sources: `data.SourceSegments` of the task's
    source demos (needed by the privileged teacher).
    """

    def __init__(self, env, models, config: dict, planner, options: AgentOptions, sources=None,
                 device="cpu", skill_fn=None):
        self.env, self.raw, self.models, self.config = env, env.raw, models, config
        self.planner, self.options, self.sources = planner, options, sources
        self.device = torch.device(device)
        self.n_stages = len(env.stages)
        if options.pose == "privileged" and sources is None:
            raise ValueError("the privileged pose teacher needs the task's source demos (data/<task>/source.hdf5)")
        if config is not None and config.get("n_stages", self.n_stages) != self.n_stages:
            raise ValueError(f"checkpoint has {config['n_stages']} stages, task {env.task} has {self.n_stages}")
        self.history = ObsHistory(config["obs"]["frame_stack"], obs_keys(config)) if config else None
        self.max_skill_steps = (config or {}).get("max_skill_steps") or [200] * self.n_stages
        values = (config or {}).get("gripper_values")  # absent in checkpoints before 2026-11-21
        self.gripper_values = np.asarray(values, dtype=np.float64) if values else None
        self.connect_gripper = (config or {}).get("connect_gripper") or [None] * self.n_stages
        self.skill_fn = skill_fn  # optional override: fn(agent, stage, obs_batch) -> action (tests, residual RL)
        # absent in checkpoints before 2026-12-02: their skills stop when T fires
        self.post_termination_steps = (config or {}).get("post_termination_steps") or [0] * self.n_stages
        self.pose_symmetry = stage_pose_symmetry(config, type(self.raw), self.n_stages)
        self.pose_turn_share = stage_pose_turn_share(config, self.pose_symmetry)
        self.pose_turn = 0.0  # the symmetry turn applied to this stage's learned poses (see _connect)
        self.obs = None
        stored = (config or {}).get("skill_action")  # 02's selection: one rule per stage
        if stored is not None and (len(stored) != self.n_stages
                                   or any(v not in SKILL_ACTIONS for v in stored)):
            raise ValueError(f"checkpoint config skill_action = {stored!r}: expected one of component / mode / "
                             f"sample per stage ({self.n_stages}); retrain with 02_train_hsp.py")

    # ---------------------------------------------------------------- the three per-stage queries
    def privileged_pose(self, i: int, source: int | None = None) -> np.ndarray:
        """I^Priv (Sec. IV-A): the episode's source demo's initiation pose for stage i, moved with
        the stage's reference object from where it was in the source demo to where it is now."""
        seg = self.sources.segments[i][self.source_index if source is None else source]
        ref_now = self.raw.object_pose(self.env.stages[i].reference_object)
        return P.mat_to_pose7(P.transform_to_new_frame(seg["eef"][0], seg["ref"], ref_now))

    @torch.no_grad()
    def learned_pose(self, i: int) -> np.ndarray:
        return self.models[i]["pose"].pose7(self.history.batch(self.device))[0]

    def predict_pose(self, i: int) -> np.ndarray:
        """The initiation pose of stage i as pose7 (pos + quat xyzw), noise included."""
        p = self.privileged_pose(i) if self.options.pose == "privileged" else self.learned_pose(i)
        if self.pose_turn:  # the stage runs on a symmetry twin of I_θi's pose (see _connect)
            period, about = self.pose_symmetry[i]
            ref = self.raw.object_pose(self.env.stages[i].reference_object) if about == "reference" else None
            p = P.mat_to_pose7(P.symmetry_twin(P.pose7_to_mat(p), self.pose_turn, about, ref))
        if self.pose_offset is not None:  # App. E-A, one draw per stage so replanning is not fooled
            p = P.apply_pose_offset(p, self.pose_offset)
        return p

    @torch.no_grad()
    def terminated(self, i: int) -> bool:
        if self.options.termination == "oracle":
            return bool(self.raw.stage_done()[i])
        prob = self.models[i]["termination"].prob(self.history.batch(self.device))
        return float(prob[0]) > self.options.termination_threshold

    def stage_skill_action(self, i: int) -> str:
        """How π_θi acts: the options' rule, or the checkpoint's (chosen by 02's selection)."""
        how = self.options.skill_action
        if how is None:
            how = (self.config or {}).get("skill_action") or "component"
        return how if isinstance(how, str) else how[i]  # one per stage

    @torch.no_grad()
    def skill_action(self, i: int) -> np.ndarray:
        if self.skill_fn is not None:
            a = np.asarray(self.skill_fn(self, i), dtype=np.float64)
        else:
            pi, obs = self.models[i]["skill"], self.history.batch(self.device)
            how = self.stage_skill_action(i)
            if how == "component":
                a = pi.component_mean(obs, self.rng.random(1))
            else:
                a = pi.mode(obs) if how == "mode" else pi.sample(obs)
            a = a[0].cpu().double().numpy()
        if self.options.action_noise > 0:
            a = a.copy()
            a[:6] += self.rng.normal(0.0, self.options.action_noise, 6)
        a = np.clip(a, -1.0, 1.0)
        if self.gripper_values is not None:
            # robosuite moves the fingers by the command's sign, so a regressed "hold" (0 in the
            # demos, e.g. CoffeePreparation's half-closed fingers at the drawer handle) of +0.05
            # would close them: snap to the nearest command the demos use.
            a[6] = self.gripper_values[np.abs(self.gripper_values - a[6]).argmin()]
        return a

    # ---------------------------------------------------------------- stepping
    def hold_action(self) -> np.ndarray:
        """Zero OSC delta (stay at the current pose), gripper as it is."""
        return np.concatenate([np.zeros(6), [self.gripper]])

    def _step(self, action):
        if self.result.steps >= self.env.horizon:
            raise _EpisodeOver
        self.obs, _, _, _ = self.env.step(action)
        self.gripper_commands.append(float(action[6]))
        if self.history is not None:
            self.history.push(self.obs)
        self.result.steps += 1

    def _choose_source(self, i: int = 0):
        # Only I^Priv reads a source demo. A learned-pose agent must not draw from the episode's
        # generator for one: the draw would shift its skills' component draws, so an HSP rollout
        # would change with whether its worker had loaded the sources (for HSP-Priv jobs).
        if self.sources is None or self.options.pose != "privileged":
            return None
        ref = self.raw.object_pose(self.env.stages[i].reference_object)
        select = self.options.source_select
        if select == "task":
            select = type(self.raw).datagen_select
        return self.sources.choose(i, ref, select, self.rng, eef_now=self.raw.eef_pose())

    # ---------------------------------------------------------------- Algorithm 1
    def run_episode(self, seed: int, last_stage: int | None = None) -> EpisodeResult:
        """One rollout from a seeded reset. last_stage: stop after that stage (skill-level
        experiments such as Fig. 3); `success` then means that stage succeeded."""
        r = self.begin_episode(seed)
        try:
            for i in range(self.n_stages if last_stage is None else last_stage + 1):
                self.begin_stage(i)
                if not self._connect(i):
                    return r
                if not self._skill(i):
                    return r
        except _EpisodeOver:
            r.failure = f"stage {r.stages_attempted - 1}: evaluation horizon ({self.env.horizon} steps) reached"
            r.stage_success += [False] * (r.stages_attempted - len(r.stage_success))
            return r
        r.success = self.env.success() if last_stage is None else bool(r.stage_success[last_stage])
        if not r.success:
            r.failure = "task not successful after the last stage"
        return r

    def run_to_skill_start(self, seed: int, i: int) -> tuple[EpisodeResult, SkillStart | None]:
        """Algorithm 1 from a seeded reset up to where stage i's skill takes over (stages before i
        whole, then stage i's connect). Returns the episode so far and, if it got there, the
        `SkillStart` to continue from with `run_skill`: 02_train_hsp.py --select-starts loop scores
        skill snapshots from the states deployment brings the skill to."""
        r = self.begin_episode(seed)
        try:
            for j in range(i + 1):
                self.begin_stage(j)
                if not self._connect(j) or (j < i and not self._skill(j)):
                    return r, None
        except _EpisodeOver:
            r.failure = f"stage {r.stages_attempted - 1}: evaluation horizon ({self.env.horizon} steps) reached"
            return r, None
        return r, SkillStart(self.env.get_state(), np.asarray(self.gripper_commands), r.steps)

    def run_skill(self, i: int, state, seed: int, gripper_commands=None, steps_before: int = 0) -> EpisodeResult:
        """Stage i's skill alone, from a stored sim state (where a demo's skill began, or a
        `SkillStart`'s; pass the gripper commands before it, see KitEnv.reset_to), with this agent's
        skill action and termination; `success`: T_i(s) held when the skill ended. `steps_before`:
        episode steps already spent (the evaluation horizon counts them). 02_train_hsp.py chooses
        among skill snapshots with it (`SkillTrials`)."""
        self.rng = np.random.default_rng(seed)
        self.result = r = EpisodeResult(seed=int(seed), stages_attempted=i + 1, steps=int(steps_before))
        self.obs = self.env.reset_to(state, gripper_commands)
        self.gripper_commands = list(np.asarray(gripper_commands if gripper_commands is not None else [], float))
        if self.history is not None:
            self.history.reset(self.obs)
        self.pose_offset = None
        try:
            self._skill(i)
        except _EpisodeOver:
            r.failure = f"stage {i}: evaluation horizon ({self.env.horizon} steps) reached"
            r.stage_success.append(False)
        r.success = bool(r.stage_success and r.stage_success[-1])
        return r

    def begin_episode(self, seed: int) -> EpisodeResult:
        """Seeded reset: env, observation history, noise generator, planner, I^Priv's source demo,
        gripper."""
        self.rng = np.random.default_rng(seed)
        if self.planner is not None:  # plans follow this seed, not the worker's earlier rollouts
            self.planner.reseed(seed)
        self.result = EpisodeResult(seed=int(seed))
        self.obs = self.env.reset(seed=seed)
        if self.history is not None:
            self.history.reset(self.obs)
        self.gripper = GRIPPER_OPEN
        self.gripper_commands = []  # every step's gripper action: a SkillStart replays them (KitEnv.reset_to)
        self.pose_offset = None
        # As in generation: let objects come to rest (counted as episode steps) before any
        # reference pose is read, here by I^Priv's source choice and transform.
        self.env.wait_until_still(lambda: self._step(self.hold_action()))
        self.source_index = self._choose_source()
        return self.result

    def begin_stage(self, i: int):
        opt = self.options
        self.result.stages_attempted = i + 1
        noisy = opt.pose_noise > 0 and (opt.pose_noise_stages is None or i in opt.pose_noise_stages)
        self.pose_offset = self.rng.normal(0.0, opt.pose_noise, 6) if noisy else None  # App. E-A
        self.pose_turn = 0.0
        if opt.source_select == "wrist" and i > 0:  # per stage, from where the last skill left the gripper
            self.source_index = self._choose_source(i)

    def _connect(self, i: int) -> bool:
        """Alg. 1 lines 5-12: plan to the predicted initiation pose, track it, replan on the way."""
        r, opt = self.result, self.options
        target = self.predict_pose(i)
        held = self.env.held_object()
        if held is None and opt.arm_room > 0:
            target = self._roomier_pose(i, target)
        plan = self.planner.plan(self.env, P.pose7_to_mat(target), held=held)
        if not plan.success and opt.pose == "privileged":
            # The teacher knows every source demo: when the chosen one's pose is out of reach here
            # (e.g. beyond a wrist limit after a large D2 rotation), it takes another source's.
            for k in self.rng.permutation(len(self.sources.segments[i])):
                if k == self.source_index:
                    continue
                cand = self._teacher_pose(i, int(k))
                plan = self.planner.plan(self.env, P.pose7_to_mat(cand), held=held)
                if plan.success:
                    self.source_index, target = int(k), cand
                    r.teacher_fallbacks += 1
                    break
        if opt.pose == "privileged":
            r.teacher_sources.append(int(self.source_index))
        if not plan.success and opt.pose == "learned" and self.pose_symmetry[i] is not None:
            # I_θi was trained on labels folded onto one grasp (or placement) of each symmetric
            # set, and for some object yaws that one is beyond the wrist's reach while its twin
            # (the gripper turned by π about its approach axis, a square knob's quarter turn) is
            # not. Without a plan the stage fails, so the stage runs on the twin from here on, even
            # one the skill's demos do not hold (unlike the room check in _roomier_pose).
            turns = P.symmetry_turns(self.pose_symmetry[i][0])[1:]
            for angle in sorted(turns, key=lambda a: min(a, 2 * np.pi - a)):  # smallest turns first
                self.pose_turn = float(angle)
                cand = self.predict_pose(i)
                plan = self.planner.plan(self.env, P.pose7_to_mat(cand), held=held)
                if plan.success:
                    target = cand
                    r.pose_twins += 1
                    break
            else:
                self.pose_turn = 0.0
        if not plan.success:
            r.planner_failures += 1
            r.failure = f"stage {i}: plan {plan.reason}"
            r.stage_success.append(False)
            return False
        if self.connect_gripper[i] is not None:  # approach with the gripper as the data's connect segments did
            self.gripper = float(self.connect_gripper[i])
        follower = self.planner.follow(plan, self.gripper)
        n = 0
        while True:
            if opt.replan and n > 0:
                new = self.predict_pose(i)
                if P.replan_distance(new, target) > opt.replan_threshold:
                    again = self.planner.replan(self.env, P.pose7_to_mat(new))
                    if again.success:
                        follower = self.planner.follow(again, self.gripper)
                        r.replans += 1
                    else:
                        r.planner_failures += 1  # keep the old path; retry once the prediction moves again
                    target = new
            a = follower.step(self.env)
            if a is None:
                break
            self._step(a)
            n += 1
        if not follower.result.success:
            r.connect_timeouts += 1  # not within tolerance: the skill starts from where the arm is
        r.connect_steps.append(n)
        return True

    def _teacher_pose(self, i: int, source: int) -> np.ndarray:
        """I^Priv's pose for stage i from another source demo, with this stage's noise draw."""
        cand = self.privileged_pose(i, source)
        if self.pose_offset is not None:
            cand = P.apply_pose_offset(cand, self.pose_offset)
        return cand

    def _arm_room(self, pose7) -> float:
        """Room (rad) the nearest-to-limit arm joint has at the IK solution of `pose7` that starts
        from the current joints (where the connect's OSC tracking ends up); -inf without one."""
        q = self.planner.ik(P.pose7_to_mat(pose7), check_collision=False, max_solutions=1)
        if q is None:
            return -math.inf
        return float(np.min(np.minimum(q - self.planner.q_lo, self.planner.q_hi - q)))

    def _roomier_pose(self, i: int, target: np.ndarray) -> np.ndarray:
        """Stage i starts with an empty gripper. When `target` leaves an arm joint less than
        options.arm_room from its limit (see ARM_ROOM), take the equivalent pose that leaves the
        most room: I^Priv, another source demo's initiation pose (the episode keeps that source for
        the stages that carry the object, so grasp and placement stay one demo's); I_θi, the
        symmetry twin of its pose (an empty gripper turned by π about its approach axis), among the
        twins at which at least options.twin_share_min of the stage's demos start, so that the
        skill has seen the grasp (pose_turn_share; the checkpoint's folded labels' other half)."""
        self.planner.sync(self.env)
        room = self._arm_room(target)
        if room >= self.options.arm_room:
            return target
        best = (room, None, target)
        if self.options.pose == "privileged":
            for k in range(len(self.sources.segments[i])):
                if k == self.source_index:
                    continue
                cand = self._teacher_pose(i, k)
                c_room = self._arm_room(cand)
                if c_room > best[0]:
                    best = (c_room, ("source", k), cand)
        elif self.pose_symmetry[i] is not None:
            share = self.pose_turn_share[i]
            for j, angle in enumerate(P.symmetry_turns(self.pose_symmetry[i][0])):
                if j == 0 or (share is not None and share[j] < self.options.twin_share_min):
                    continue
                self.pose_turn = float(angle)
                cand = self.predict_pose(i)
                c_room = self._arm_room(cand)
                if c_room > best[0]:
                    best = (c_room, ("turn", float(angle)), cand)
            self.pose_turn = 0.0
        if best[1] is None:
            return target
        kind, value = best[1]
        if kind == "source":
            self.source_index = value
        else:
            self.pose_turn = value  # kept for the stage, so that replanning predicts on the twin
        self.result.roomier_poses += 1
        return best[2]

    def _skill(self, i: int) -> bool:
        """Alg. 1 lines 13-16: run π_θi until T (oracle or learned) says the stage is done."""
        budget = int(math.ceil(self.options.skill_budget_factor * self.max_skill_steps[i]))
        pi = self.models[i]["skill"] if self.models is not None and self.skill_fn is None else None
        if pi is not None:
            pi.start_rollout()  # a BC-RNN skill starts from a zero LSTM state, as its training sequences
        try:
            return self._skill_loop(i, budget)
        finally:
            if pi is not None:
                pi.end_rollout()

    def _skill_loop(self, i: int, budget: int) -> bool:
        r = self.result
        n = 0
        while not self.terminated(i):
            if n >= budget:
                r.skill_steps.append(n)
                r.stage_success.append(False)
                r.failure = f"stage {i}: skill did not terminate in {budget} steps"
                return False
            self._skill_step(i)
            n += 1
        if self.options.finish_skill and i < self.n_stages - 1:  # the last stage: the task is done
            for _ in range(self.post_termination_steps[i]):
                self._skill_step(i)
                n += 1
        r.skill_steps.append(n)
        r.stage_success.append(bool(self.raw.stage_done()[i]))
        return True

    def _skill_step(self, i: int):
        a = self.skill_action(i)
        self.gripper = float(a[6])
        self._step(a)


# ------------------------------------------------------------------------------------------ skill trials
# Choosing a skill snapshot by rollouts (02_train_hsp.py --select-trials): each trial restores a
# sim state at the start of stage i's skill (a held-out demo's, or one an HSP-Priv episode reached:
# --select-starts), loads one snapshot's weights into π_θi and runs the skill to termination.
# Workers are spawned processes (a fork of a process that has trained with several OpenMP threads
# can hang), each building its env, networks (and for episodes: planner and source demos) once.
_TRIALS: dict = {}


class WorkerSetupError(RuntimeError):
    """A worker process of a multiprocessing.Pool could not set itself up (see guarded_init)."""


_SETUP_ERRORS: dict = {}  # per worker process: set-up function name -> its traceback


def guarded_init(init, *args):
    """Pool initializer that runs init(*args) and keeps its error instead of raising it: a Pool
    whose initializer raises replaces the dead worker with another that dies too, forever, and the
    caller waits without a word. A job calls raise_setup_error(init) first, so the error reaches
    the caller with the first result."""
    try:
        init(*args)
    except Exception:  # noqa: BLE001 (re-raised by raise_setup_error in the same process)
        _SETUP_ERRORS[init.__name__] = traceback.format_exc()


def raise_setup_error(init):
    if init.__name__ in _SETUP_ERRORS:
        raise WorkerSetupError(f"a worker process failed in {init.__name__}:\n{_SETUP_ERRORS[init.__name__]}")


def _skill_trials_init(task: str, ckpt_path: str, candidates_path: str, device: str, source: str | None):
    from . import data as D
    from .env import make_env
    from .hsp_checkpoint import load_hsp_models
    from .planner import Planner
    torch.set_num_threads(1)  # one core per worker: the workers are the parallelism
    ck, models = load_hsp_models(ckpt_path, task, device=device)
    env = make_env(task, obs_mode=ck["obs_mode"])
    env.reset(seed=0)  # robosuite steps only after a reset; every trial then restores its state
    trial = HSPAgent(env, models, ck["config"], None, AgentOptions(termination="oracle", skill_action="component"),
                     device=device)
    episode = None
    if source is not None:  # HSP-Priv episodes to the skill starts (Table I's privileged row)
        demos, _ = D.load_all(source, task=task)
        planner = Planner(env, mode="ompl", seed=0, posture=ck["config"].get("connect_posture", "reset"))
        episode = HSPAgent(env, models, ck["config"], planner, variant_options("HSP-Priv"),
                           D.SourceSegments(demos, env.stages), device=device)
    _TRIALS.update(trial=trial, episode=episode, models=models, loaded={},
                   candidates=torch.load(candidates_path, weights_only=True)["stages"])


def _load_snapshot(i: int, step) -> None:
    if _TRIALS["loaded"].get(i) != str(step):
        _TRIALS["models"][i]["skill"].load_state_dict(_TRIALS["candidates"][i][str(step)])
        _TRIALS["loaded"][i] = str(step)


def _skill_trial(job: tuple) -> tuple:
    """job = ("trial", stage, snapshot step, action rule, sim state, gripper commands before it, seed,
    steps before it) -> ("trial", stage, step, rule, seed, success, skill steps);
    job = ("start", stage, seed, {earlier stage: (its chosen step, its rule)}) -> ("start", stage,
    seed, SkillStart or None, failure): an HSP-Priv episode with the chosen skills, to stage's skill
    start."""
    raise_setup_error(_skill_trials_init)
    if job[0] == "start":
        _, i, seed, chosen = job
        episode = _TRIALS["episode"]
        if episode is None:
            raise RuntimeError("skill starts need the task's source demos: pass source= to SkillTrials")
        rules = ["component"] * episode.n_stages  # stage i's skill is not run: its rule is moot
        for j, (step, how) in chosen.items():
            _load_snapshot(j, step)
            rules[j] = how
        episode.options = replace(episode.options, skill_action=tuple(rules))
        r, start = episode.run_to_skill_start(seed, i)
        return "start", i, seed, start, r.failure
    _, i, step, how, state, grip, seed, steps_before = job
    _load_snapshot(i, step)
    trial = _TRIALS["trial"]
    trial.options = replace(trial.options, skill_action=how)
    r = trial.run_skill(i, state, seed, grip, steps_before)
    return "trial", i, step, how, seed, r.success, (r.skill_steps or [0])[-1]


class SkillTrials:
    """02_train_hsp.py's selection rollouts (`_skill_trial` jobs) over `workers` processes that
    live as long as the `with` block; `source` (the task's source.hdf5) lets them run HSP-Priv
    episodes to in-loop skill starts."""

    def __init__(self, task: str, ckpt_path: str, candidates_path: str, workers: int = 1, device: str = "cpu",
                 source: str | None = None):
        self.setup = (task, ckpt_path, candidates_path, device, source)
        self.workers, self.pool = workers, None

    def __enter__(self):
        if self.workers <= 1:
            _skill_trials_init(*self.setup)
        else:
            import multiprocessing as mp
            self.pool = mp.get_context("spawn").Pool(self.workers, initializer=guarded_init,
                                                     initargs=(_skill_trials_init, *self.setup))
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
        elif "trial" in _TRIALS:
            if _TRIALS["episode"] is not None:
                _TRIALS["episode"].planner.close()
            _TRIALS["trial"].env.close()
            _TRIALS.clear()
        return False

    def run(self, jobs: list, progress=None) -> list:
        """Results of `jobs` in completion order; progress(result) is called as each finishes."""
        out = []
        results = (map(_skill_trial, jobs) if self.pool is None
                   else self.pool.imap_unordered(_skill_trial, jobs, chunksize=2))
        for res in results:
            out.append(res)
            if progress is not None:
                progress(res)
        return out


# ------------------------------------------------------------------------------------------ statistics
def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default); (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact ends at 0 and n successes (rounding leaves ~1e-17 there, which plots as a negative error bar)
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return lo, hi


def summarize(results: list[dict], n_stages: int) -> dict:
    """Per-variant figures of eval.json from EpisodeResult dicts."""
    n = len(results)
    k = sum(bool(x["success"]) for x in results)
    lo, hi = wilson_interval(k, n)
    per_stage, skill_steps = [], []
    for i in range(n_stages):
        attempted = [x for x in results if x["stages_attempted"] > i]
        ok = [x for x in attempted if len(x["stage_success"]) > i and x["stage_success"][i]]
        per_stage.append(dict(attempted=len(attempted), succeeded=len(ok),
                              rate=len(ok) / len(attempted) if attempted else None,
                              reached_rate=len(ok) / n if n else None))
        steps = [x["skill_steps"][i] for x in attempted if len(x["skill_steps"]) > i]
        skill_steps.append(float(np.mean(steps)) if steps else None)
    # Per stage, how often each of I^Priv's source demos led to the stage's success: a source
    # the generated data holds few of shows here (privileged variants only).
    by_source = []
    for i in range(n_stages):
        counts: dict[int, list] = {}
        for x in results:
            sources = x.get("teacher_sources") or []
            if len(sources) > i:
                c = counts.setdefault(int(sources[i]), [0, 0])
                c[0] += 1
                c[1] += int(len(x["stage_success"]) > i and bool(x["stage_success"][i]))
        by_source.append({str(k): dict(attempted=a, succeeded=ok) for k, (a, ok) in sorted(counts.items())})
    failures: dict[str, int] = {}
    for x in results:
        if x["failure"]:
            key = x["failure"].split(" in ")[0]
            failures[key] = failures.get(key, 0) + 1
    return dict(
        rollouts=n, successes=k, success_rate=k / n if n else None, wilson95=[lo, hi],
        stage_success=per_stage, mean_skill_steps=skill_steps,
        mean_episode_steps=float(np.mean([x["steps"] for x in results])) if n else None,
        planner_failures=int(sum(x["planner_failures"] for x in results)),
        replans=int(sum(x["replans"] for x in results)),
        connect_timeouts=int(sum(x["connect_timeouts"] for x in results)),
        teacher_fallbacks=int(sum(x.get("teacher_fallbacks", 0) for x in results)),
        pose_twins=int(sum(x.get("pose_twins", 0) for x in results)),
        roomier_poses=int(sum(x.get("roomier_poses", 0) for x in results)),
        **(dict(teacher_source_success=by_source) if any(by_source) else {}),
        failures=dict(sorted(failures.items(), key=lambda kv: -kv[1])),
        seeds=[int(x["seed"]) for x in results],
    )
