"""Meta-World v3 manipulation tasks as a ``metaworld`` backend: a batch of gymnasium envs
stepped in one process (Meta-World has no EnvPool).

Env ids (``known_env_ids()`` lists them):

- ``metaworld/<task>`` for each MT10 task, e.g. ``metaworld/pick-place-v3``: one task,
  39-D observation (hand xyz, gripper, object poses, the previous frame's 18, goal xyz),
  4-D action in [-1, 1] (end-effector delta xyz, gripper).
- ``metaworld/MT10``: the ten MT10 tasks as one env with 49-D observations, the 39 above
  plus the task one-hot in MT10's own order (``MT10_TASKS``). The episode with reset seed
  ``s`` runs task ``MT10_TASKS[s % 10]``, so any 10 consecutive seeds cover every task once.
- ``metaworld/<task>+<task>...``: a set of MT10 tasks the same way, the one-hot over those
  tasks in the order given (e.g. ``metaworld/reach-v3+drawer-close-v3``, 41-D).

Seeding: the episode with reset seed ``s`` starts from the object and goal positions that
``gymnasium.make("Meta-World/goal_observable", env_name=TASK, seed=s)`` draws (Meta-World's
own rule: its ``_random_reset_space`` sampled from ``np.random.seed(s)``), and the env's
``np_random`` is seeded with ``s``. So an episode is a function of its task and seed, and
disjoint seed ranges give disjoint goal configurations: rollout uses seeds
``run_seed + episode index``, the evaluator its ``--seeds START:STOP`` range, and a data set
and its evaluation must use ranges that do not overlap. Envs are built once per task (as
many as a batch runs episodes of that task at once) and re-seeded per episode, far cheaper
than a new env.

Episode end: Meta-World's 500-step limit (truncated), or the first step whose
``info["success"]`` is 1 (terminated), which is Meta-World's own ``terminate_on_success``
evaluation rule; success counts at any step, so nothing after it changes the score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diffpol.envs.registry import StepResult, VectorEnv, check_seeds

# MT10's tasks in the benchmark's order (metaworld.MT10().train_classes); the one-hot index.
MT10_TASKS = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)
PREFIX = "metaworld/"
MT10_ID = PREFIX + "MT10"
TASK_OBS_DIM = 39
ACT_DIM = 4
MAX_EPISODE_STEPS = 500


def task_for_seed(tasks: Sequence[str], seed: int) -> str:
    """The task the episode with reset seed ``seed`` runs (``tasks[seed % len(tasks)]``)."""
    return tasks[int(seed) % len(tasks)]


def reseed(env, seed: int) -> None:
    """Put a Meta-World goal-observable env into the state a fresh
    ``gymnasium.make("Meta-World/goal_observable", env_name=..., seed=seed)`` starts in:
    object/goal positions drawn from ``np.random.seed(seed)`` and frozen, ``np_random``
    seeded. The process-wide NumPy state is restored afterwards."""
    unwrapped = env.unwrapped
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        unwrapped._freeze_rand_vec = False
        unwrapped.reset()
        unwrapped._freeze_rand_vec = True
        unwrapped.seed(seed)
    finally:
        np.random.set_state(saved)


def make_task_env(task: str, seed: int = 0):
    """One Meta-World v3 env with the goal in its observation (gymnasium's registration)."""
    import warnings

    import gymnasium as gym
    import metaworld  # noqa: F401  (registers Meta-World/* with gymnasium)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium's space notes on Meta-World's boxes
        return gym.make("Meta-World/goal_observable", env_name=task, seed=seed)


class MetaWorldVectorEnv(VectorEnv):
    """A batch of Meta-World envs stepped in turn, in this process.

    ``step`` returns each env's ``info["success"]`` as ``StepResult.success``. An env whose
    episode ended is not stepped again until the next ``reset`` (Meta-World raises past its
    limit); its row repeats the last observation with zero reward.
    """

    backend = "metaworld"

    def __init__(self, spec, num_envs: int, seeds: Sequence[int]):
        super().__init__(spec, num_envs, seeds)
        self._tasks = spec.tasks
        self._one_hot = len(self._tasks) > 1
        # Built envs by task, shared by the batch's slots: a reset takes the first k envs of
        # a task for its k episodes of that task, so a batch never holds more envs per task
        # than it ever ran episodes of that task at once.
        self._pool: dict[str, list[object]] = {}
        self._current: list[object] = []
        self._done = np.zeros(num_envs, bool)
        self._obs: np.ndarray | None = None

    def tasks_of(self, seeds: Sequence[int]) -> list[str]:
        return [task_for_seed(self._tasks, s) for s in seeds]

    def _observe(self, raw: np.ndarray, task: str) -> np.ndarray:
        obs = np.asarray(raw, np.float32)
        if self._one_hot:
            hot = np.zeros(len(self._tasks), np.float32)
            hot[self._tasks.index(task)] = 1.0
            obs = np.concatenate([obs, hot])
        return obs

    def reset(self, seeds: Sequence[int] | None = None) -> np.ndarray:
        if seeds is not None:
            self.seeds = check_seeds(seeds, self.num_envs)
        self._current = []
        rows = []
        taken: dict[str, int] = {}
        for seed, task in zip(self.seeds, self.tasks_of(self.seeds), strict=True):
            envs = self._pool.setdefault(task, [])
            k = taken[task] = taken.get(task, 0) + 1
            if len(envs) < k:
                envs.append(make_task_env(task, seed))
            env = envs[k - 1]
            reseed(env, seed)
            raw, _ = env.reset()
            self._current.append(env)
            rows.append(self._observe(raw, task))
        self._done[:] = False
        self._obs = np.stack(rows)
        self._task_names = self.tasks_of(self.seeds)
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> StepResult:
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        actions = self._actions(actions)
        n = self.num_envs
        reward = np.zeros(n, np.float32)
        terminated = np.zeros(n, bool)
        truncated = np.zeros(n, bool)
        success = np.zeros(n, bool)
        for i, env in enumerate(self._current):
            if self._done[i]:
                continue
            raw, r, _, trunc, info = env.step(actions[i])
            self._obs[i] = self._observe(raw, self._task_names[i])
            reward[i] = r
            success[i] = bool(info["success"])
            terminated[i] = success[i]
            truncated[i] = bool(trunc) and not success[i]
            self._done[i] = terminated[i] or truncated[i]
        return StepResult(self._obs.copy(), reward, terminated, truncated, success)

    def initial_states(self) -> np.ndarray:
        raise NotImplementedError(
            "Meta-World episodes are replayed from their task and reset seed; there is no "
            "separate initial state"
        )

    def close(self) -> None:
        for envs in self._pool.values():
            for env in envs:
                env.close()
        self._pool.clear()
