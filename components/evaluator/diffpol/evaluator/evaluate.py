"""Evaluate policies on the same env seeds, in parallel Ray actors, reproducibly.

Each policy runs on every chunk of seeds (see ``seeds`` for the chunking and noise rule);
a chunk is one batch of envs stepped together, with one policy call per re-plan. Actors
build each policy once from its picklable ``PolicySource`` and keep it while they work
through that policy's chunks. ``workers=0`` runs everything in this process without Ray.

After a policy's episodes, the chunks holding its best, median and worst episodes are run
again with recording on, for the trajectory plots; the replayed returns must equal the
first run's (``replay_matches``), a cheap check that the evaluation is deterministic.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffpol.contracts import EnvShape, Policy, PolicySpec
from diffpol.contracts.ray_session import ray_session
from diffpol.envs import AUTO, EnvSpec
from diffpol.evaluator.envs import VectorEnvAdapter, env_spec, resolve_backend
from diffpol.evaluator.episodes import ChunkResult, Trajectory, run_chunk
from diffpol.evaluator.errors import EvaluationConfigError
from diffpol.evaluator.policies import (
    PolicyInput,
    PolicySource,
    check_onnx_file,
    check_policy,
    close_policy,
    policy_sources,
)
from diffpol.evaluator.seeds import (
    DEFAULT_CHUNK_SIZE,
    SeedChunk,
    SeedRange,
    check_noise_seed,
    chunk_seeds,
)
from diffpol.evaluator.stats import ReturnSummary, TaskSuccess, summarize, task_success
from diffpol.evaluator.tasks import TaskView, task_view

log = logging.getLogger(__name__)

EXAMPLE_KINDS = ("best", "median", "worst")
# Seconds an episode actor may take to start (a process importing the env and policy
# libraries: seconds on an idle 2-core machine, tens of seconds on a loaded one).
ACTOR_START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation's settings, validated on construction (``EvaluationConfigError``).

    ``seeds`` may be given as ``"START:STOP"`` or a ``range``; it is stored as a
    ``SeedRange``.
    """

    env_id: str
    seeds: SeedRange
    noise_seed: int = 0
    # None: one actor per CPU of the Ray cluster (at most one per chunk); 0: this process.
    workers: int | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    # The env backend (diffpol.envs): "auto" (the env's default), "numpy", "envpool", "gymnasium".
    backend: str = AUTO
    # Ray address to connect to when Ray is not initialised yet (None: start a local one).
    address: str | None = None
    record_examples: bool = True
    # True: a progress bar per policy; a callable: called with each finished chunk's
    # number of episodes (a caller's own progress display).
    progress: bool | Callable[[int], None] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", _as_seed_range(self.seeds))
        env_spec(self.env_id)
        resolve_backend(self.env_id, self.backend)
        check_noise_seed(self.noise_seed)
        _check_workers(self.workers)
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int):
            raise EvaluationConfigError(f"chunk_size must be an integer, got {self.chunk_size!r}")
        chunk_seeds(self.seeds, self.chunk_size)
        if not (isinstance(self.progress, bool) or callable(self.progress)):
            raise EvaluationConfigError(
                f"progress must be a bool or a callable, got {type(self.progress).__name__}"
            )


@dataclass(frozen=True)
class PolicyResult:
    label: str
    source: dict[str, str]
    spec: PolicySpec
    seeds: np.ndarray  # int64 [n]
    returns: np.ndarray  # float64 [n]
    lengths: np.ndarray  # int32 [n]
    successes: np.ndarray  # bool [n]
    summary: ReturnSummary
    wall_time_s: float
    policy_calls: int
    ran_in: str  # "ray" or "driver"
    examples: dict[str, Trajectory] = field(default_factory=dict)
    example_seeds: dict[str, int] = field(default_factory=dict)
    replay_matches: bool | None = None
    # Steps to the env's first reported success per episode (-1: none), and the per-task
    # success table for envs with named tasks (Meta-World).
    success_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    tasks: list[TaskSuccess] = field(default_factory=list)

    def returns_by_seed(self) -> dict[int, float]:
        return dict(zip(self.seeds.tolist(), self.returns.tolist(), strict=True))

    @property
    def mean_task_success_rate(self) -> float | None:
        """The unweighted mean of the per-task success rates (None: no named tasks)."""
        if not self.tasks:
            return None
        return float(np.mean([t.success_rate for t in self.tasks]))


@dataclass(frozen=True)
class EvaluationResult:
    config: EvalConfig
    env: EnvSpec
    view: TaskView
    backend: str
    policies: list[PolicyResult]

    def __getitem__(self, label: str) -> PolicyResult:
        for result in self.policies:
            if result.label == label:
                return result
        raise KeyError(f"no policy labelled {label!r}; have {[p.label for p in self.policies]}")

    @property
    def labels(self) -> list[str]:
        return [p.label for p in self.policies]


@dataclass(frozen=True)
class PreparedEvaluation:
    """An evaluation whose arguments and policies have been checked; run it with ``run_prepared``."""

    config: EvalConfig
    env: EnvSpec
    view: TaskView
    backend: str  # resolved: never "auto"
    chunks: list[SeedChunk]
    sources: list[PolicySource]
    specs: dict[str, PolicySpec]
    driver_only: frozenset[str]  # labels of policies that cannot be sent to Ray workers

    @property
    def needs_ray(self) -> bool:
        """Whether any policy runs on Ray actors."""
        return self.config.workers != 0 and len(self.driver_only) < len(self.sources)


def evaluate(
    policies: Sequence[PolicyInput | PolicySource] | Mapping[str, PolicyInput],
    env_id: str,
    seeds: SeedRange | str | range,
    *,
    pool: EpisodeWorkers | None = None,
    **options: Any,
) -> EvaluationResult:
    """Evaluate each policy on the env seeds ``seeds`` (``"0:1000"``, ``range(0, 1000)`` or a
    ``SeedRange``). Policies: spec strings (``random``, ``zero``, ``expert``, a path to an
    ONNX file, ``grpc://HOST:PORT``), ``Policy`` objects, or a mapping of labels to either.
    ``options`` are ``EvalConfig``'s other fields (``noise_seed``, ``workers``, ...).
    ``pool``: started ``EpisodeWorkers`` to run on (instead of actors of this call's own;
    ``workers`` and ``address`` are then the pool's).

    Every argument is checked, and every policy built once and checked against the env,
    before any episode runs; bad input raises ``EvaluationConfigError``.
    """
    prepared = prepare(EvalConfig(env_id, seeds, **options), policies)
    return run_prepared(prepared, pool)


def prepare(
    config: EvalConfig,
    policies: Sequence[PolicyInput | PolicySource] | Mapping[str, PolicyInput],
) -> PreparedEvaluation:
    """Build and check each policy against the env (the config checked itself)."""
    env = env_spec(config.env_id)
    backend = resolve_backend(env.env_id, config.backend)
    view = task_view(env.env_id)
    chunks = chunk_seeds(config.seeds, config.chunk_size)
    sources = policy_sources(policies)
    specs, driver_only = {}, set()
    for source in sources:
        if source.kind == "onnx":
            check_onnx_file(source, env.shape)  # before loading: a clear message, no session
        policy = _build_for_check(source, env.env_id)
        try:
            _check_built(source, policy, env.shape)
            specs[source.label] = policy.spec
        finally:
            if source.kind != "object":
                close_policy(policy)
        if source.kind == "object" and config.workers != 0 and not _picklable(source):
            log.warning(
                "policy %r cannot be pickled for Ray workers; it runs in this process",
                source.label,
            )
            driver_only.add(source.label)
    return PreparedEvaluation(
        config, env, view, backend, chunks, sources, specs, frozenset(driver_only)
    )


def _build_for_check(source: PolicySource, env_id: str) -> Policy:
    if source.kind == "object":
        return source.obj
    try:
        return source.build(env_id)
    except ImportError as exc:
        raise EvaluationConfigError(
            f"policy {source.label!r} needs a component that is not installed: {exc}"
        ) from exc
    except Exception as exc:  # a file that is no model, a server that does not answer
        raise EvaluationConfigError(
            f"policy {source.label!r} could not be loaded: {type(exc).__name__}: {exc}"
        ) from exc


def _check_built(source: PolicySource, policy: Policy, env: EnvShape) -> None:
    try:
        check_policy(source, policy, env)  # reads spec: a gRPC client asks its server here
    except EvaluationConfigError:
        raise
    except Exception as exc:
        raise EvaluationConfigError(
            f"policy {source.label!r} could not be queried: {type(exc).__name__}: {exc}"
        ) from exc


def run_prepared(
    prepared: PreparedEvaluation, pool: EpisodeWorkers | None = None
) -> EvaluationResult:
    """Run a prepared evaluation: on ``pool`` (started ``EpisodeWorkers``) when given, else
    on actors started for this call (none with ``workers=0``, or when no policy can be
    sent to them)."""
    config = prepared.config
    if pool is not None:
        pool.check_matches(prepared)
    driver = _DriverRunner(prepared)
    with contextlib.ExitStack() as stack:
        stack.callback(driver.close)
        if pool is None and prepared.needs_ray:
            pool = stack.enter_context(EpisodeWorkers.for_evaluation(prepared))
        results = []
        for source in prepared.sources:
            use_pool = pool is not None and source.label not in prepared.driver_only
            results.append(_evaluate_one(prepared, source, pool if use_pool else driver))
    return EvaluationResult(config, prepared.env, prepared.view, prepared.backend, results)


def _evaluate_one(
    prepared: PreparedEvaluation, source: PolicySource, runner: _Runner
) -> PolicyResult:
    config = prepared.config
    start = time.perf_counter()
    runner.load(source)
    try:
        chunk_results = list(
            _progress(
                runner.run_all(source.label, prepared.chunks, ()),
                total=len(prepared.chunks),
                desc=source.label,
                enabled=config.progress,
            )
        )
        wall_time = time.perf_counter() - start
        chunk_results.sort(key=lambda r: r.seeds[0])
        seeds = np.concatenate([np.asarray(r.seeds, np.int64) for r in chunk_results])
        returns = np.concatenate([r.returns for r in chunk_results])
        lengths = np.concatenate([r.lengths for r in chunk_results])
        successes = np.concatenate([r.successes for r in chunk_results])
        success_steps = np.concatenate([r.success_steps for r in chunk_results])
        calls = sum(r.policy_calls for r in chunk_results)
        example_seeds = _example_seeds(seeds, returns) if config.record_examples else {}
        examples, replay_matches = {}, None
        if example_seeds:
            examples, replay_matches = _record_examples(
                prepared, runner, source.label, example_seeds, seeds, returns
            )
    finally:
        runner.unload(source.label)
    return PolicyResult(
        label=source.label,
        source=source.describe(),
        spec=prepared.specs[source.label],
        seeds=seeds,
        returns=returns,
        lengths=lengths,
        successes=successes,
        summary=summarize(returns, successes),
        wall_time_s=wall_time,
        policy_calls=calls,
        ran_in=runner.name,
        examples=examples,
        example_seeds=example_seeds,
        replay_matches=replay_matches,
        success_steps=success_steps,
        tasks=task_success(
            [prepared.env.task_of(s) for s in seeds.tolist()], successes, success_steps
        )
        if prepared.env.tasks
        else [],
    )


def _example_seeds(seeds: np.ndarray, returns: np.ndarray) -> dict[str, int]:
    """Seeds of the best, median (lower middle) and worst episodes; ties go to the lower seed."""
    order = np.lexsort((seeds, returns))  # ascending return, then seed
    best = np.lexsort((seeds, -returns))[0]
    return {
        "best": int(seeds[best]),
        "median": int(seeds[order[(len(order) - 1) // 2]]),
        "worst": int(seeds[order[0]]),
    }


def _record_examples(
    prepared: PreparedEvaluation,
    runner: _Runner,
    label: str,
    example_seeds: dict[str, int],
    seeds: np.ndarray,
    returns: np.ndarray,
) -> tuple[dict[str, Trajectory], bool]:
    wanted = set(example_seeds.values())
    chunks = [c for c in prepared.chunks if wanted & set(c.seeds)]
    trajectories: dict[int, Trajectory] = {}
    for result in runner.run_all(label, chunks, tuple(sorted(wanted))):
        trajectories.update(result.trajectories)
    first_run = dict(zip(seeds.tolist(), returns.tolist(), strict=True))
    matches = all(trajectories[s].episode_return == first_run[s] for s in wanted)
    if not matches:
        diffs = {s: trajectories[s].episode_return - first_run[s] for s in wanted}
        log.warning("policy %r: replayed returns differ from the first run: %s", label, diffs)
    return {kind: trajectories[seed] for kind, seed in example_seeds.items()}, matches


# --- where chunks run ---------------------------------------------------------------


class _Runner:
    name: str

    def load(self, source: PolicySource) -> None: ...

    def unload(self, label: str) -> None: ...

    def run_all(
        self, label: str, chunks: Sequence[SeedChunk], record_seeds: tuple[int, ...]
    ) -> Iterable[ChunkResult]: ...


class _ChunkWorker:
    """Holds built policies and runs chunks; used in the driver and as a Ray actor."""

    def __init__(self, env: EnvSpec, view: TaskView, backend: str, noise_seed: int) -> None:
        self._env, self._view = env, view
        self._backend, self._noise_seed = backend, noise_seed
        self._policies: dict[str, Policy] = {}
        self._owned: set[str] = set()
        # One batch of envs per chunk size, re-seeded for each chunk.
        self._envs: dict[int, VectorEnvAdapter] = {}

    def load(self, source: PolicySource) -> None:
        self._policies[source.label] = source.build(self._env.env_id)
        if source.kind != "object":
            self._owned.add(source.label)

    def unload(self, label: str) -> None:
        policy = self._policies.pop(label, None)
        if policy is not None and label in self._owned:
            close_policy(policy)
        self._owned.discard(label)

    def run(self, label: str, chunk: SeedChunk, record_seeds: tuple[int, ...]) -> ChunkResult:
        size = len(chunk.seeds)
        if size not in self._envs:
            self._envs[size] = VectorEnvAdapter(self._env.env_id, chunk.seeds, self._backend)
        env = self._envs[size]
        env.use_seeds(chunk.seeds)
        try:
            return run_chunk(
                self._policies[label],
                env,
                chunk,
                noise_seed=self._noise_seed,
                view=self._view,
                max_steps=self._env.max_episode_steps,
                record_seeds=record_seeds,
            )
        except BaseException:
            # An env left mid-episode by an error is not reused.
            self._envs.pop(size).close()
            raise

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


class _DriverRunner(_Runner):
    name = "driver"

    def __init__(self, prepared: PreparedEvaluation) -> None:
        config = prepared.config
        self._worker = _ChunkWorker(
            prepared.env, prepared.view, prepared.backend, config.noise_seed
        )

    def load(self, source: PolicySource) -> None:
        self._worker.load(source)

    def unload(self, label: str) -> None:
        self._worker.unload(label)

    def run_all(self, label, chunks, record_seeds):
        for chunk in chunks:
            yield self._worker.run(label, chunk, record_seeds)

    def close(self) -> None:
        self._worker.close()


class EpisodeWorkers(_Runner):
    """Ray actors that run episode chunks of one env, each with at most one chunk in flight.

    ``evaluate`` starts its own for each call; start them yourself (``with
    EpisodeWorkers(env_id, ...) as pool``) and pass ``pool=`` to share them between several
    ``evaluate`` / ``compare`` calls of the same env, backend and noise seed: each actor is
    a process that takes seconds to start and to import its policies' libraries (torch),
    paid once instead of once per call.
    """

    name = "ray"

    def __init__(
        self,
        env_id: str,
        *,
        noise_seed: int = 0,
        workers: int | None = None,
        backend: str = AUTO,
        address: str | None = None,
        max_actors: int | None = None,
        start_timeout_s: float = ACTOR_START_TIMEOUT_S,
    ) -> None:
        """``workers``: actors (None: one per CPU of the cluster, at most ``max_actors``).
        Each reserves one CPU, or none when fewer CPUs are free (``cpus_per_actor``);
        actors not started within ``start_timeout_s`` are dropped."""
        check_noise_seed(noise_seed)
        if _check_workers(workers) == 0:
            raise EvaluationConfigError("EpisodeWorkers needs at least one worker, got 0")
        self.env = env_spec(env_id)
        self.backend = resolve_backend(self.env.env_id, backend)
        self.view = task_view(self.env.env_id)
        self.noise_seed = noise_seed
        self._workers, self._address, self._max_actors = workers, address, max_actors
        self.start_timeout_s = start_timeout_s
        self._actors: list = []
        self._ray: contextlib.ExitStack | None = None

    @classmethod
    def for_evaluation(cls, prepared: PreparedEvaluation) -> EpisodeWorkers:
        """One evaluation's own actors: at most one per chunk."""
        config = prepared.config
        return cls(
            config.env_id,
            noise_seed=config.noise_seed,
            workers=config.workers,
            backend=prepared.backend,
            address=config.address,
            max_actors=len(prepared.chunks),
        )

    def check_matches(self, prepared: PreparedEvaluation) -> None:
        config = prepared.config
        mine = (self.env.env_id, self.backend, self.noise_seed)
        wanted = (prepared.env.env_id, prepared.backend, config.noise_seed)
        if mine != wanted:
            raise EvaluationConfigError(
                f"the EpisodeWorkers run (env, backend, noise seed) {mine}, this evaluation "
                f"asks for {wanted}: start workers for it, or evaluate without pool="
            )
        if not self._actors:
            raise EvaluationConfigError("the EpisodeWorkers are not started: use them in a with")

    def __enter__(self) -> EpisodeWorkers:
        with contextlib.ExitStack() as stack:
            # Stopped (if this call started it) when the workers are.
            stack.enter_context(ray_session(self._address, log_to_driver=False))
            self._actors = self._start_actors()
            self._ray = stack.pop_all()
        return self

    def _start_actors(self) -> list:
        import ray

        count = self._workers
        if count is None:
            count = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if self._max_actors is not None:
            count = max(1, min(count, self._max_actors))
        cpus = cpus_per_actor(float(ray.available_resources().get("CPU", 0.0)), count)
        actor_class = ray.remote(num_cpus=cpus)(_RayChunkWorker)
        actors = [
            actor_class.remote(self.env, self.view, self.backend, self.noise_seed)
            for _ in range(count)
        ]
        return self._started(actors)

    def _started(self, actors: list) -> list:
        """The actors that started within ``start_timeout_s``; the others are killed (an
        actor the cluster cannot place would otherwise hold its chunks forever)."""
        import ray

        pending = {actor.__ray_ready__.remote(): actor for actor in actors}
        ready, late = ray.wait(
            list(pending), num_returns=len(pending), timeout=self.start_timeout_s
        )
        for ref in late:
            ray.kill(pending[ref])
        if not ready:
            raise EvaluationConfigError(
                f"none of {len(actors)} episode actors started within {self.start_timeout_s:g} s: "
                "the Ray cluster has no room for them (free CPUs, or nodes)"
            )
        if late:
            log.warning(
                "%d of %d episode actors did not start within %g s; running on %d",
                len(late),
                len(actors),
                self.start_timeout_s,
                len(ready),
            )
        return [pending[ref] for ref in ready]

    def __exit__(self, *exc) -> None:
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        if self._ray is not None:
            self._ray.close()
            self._ray = None

    def load(self, source: PolicySource) -> None:
        import ray

        source_ref = ray.put(source)
        ray.get([actor.load.remote(source_ref) for actor in self._actors])

    def unload(self, label: str) -> None:
        import ray

        ray.get([actor.unload.remote(label) for actor in self._actors])

    def run_all(self, label, chunks, record_seeds):
        import ray

        pending = list(chunks)
        in_flight = {}
        idle = list(self._actors)
        while pending or in_flight:
            while pending and idle:
                actor = idle.pop()
                in_flight[actor.run.remote(label, pending.pop(0), record_seeds)] = actor
            done, _ = ray.wait(list(in_flight), num_returns=1)
            actor = in_flight.pop(done[0])
            idle.append(actor)
            yield ray.get(done[0])


def cpus_per_actor(free: float, count: int) -> float:
    """One CPU each when ``count`` actors fit in the ``free`` CPUs, else none reserved.

    Not a fractional share: the free CPUs may be spread over nodes in pieces no share fits
    (3 actors of 0.6666 CPU on two nodes with one free CPU each: the third never started
    and the pipeline's evaluation hung on a 3-node test cluster). An actor that reserves
    nothing always starts; it then shares CPUs with whatever holds them."""
    return 1.0 if free >= count else 0.0


class _RayChunkWorker(_ChunkWorker):
    """The actor: one policy call at a time on one CPU, so limit library thread pools."""

    def load(self, source: PolicySource) -> None:
        super().load(source)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)


# --- argument checks ----------------------------------------------------------------


def _as_seed_range(seeds: SeedRange | str | range) -> SeedRange:
    if isinstance(seeds, SeedRange):
        return seeds
    if isinstance(seeds, str):
        return SeedRange.parse(seeds)
    if isinstance(seeds, range):
        if seeds.step != 1:
            raise EvaluationConfigError(f"seed range {seeds} must have step 1")
        return SeedRange(seeds.start, seeds.stop)
    raise EvaluationConfigError(
        f"seeds must be 'START:STOP', a range or a SeedRange, got {type(seeds).__name__}"
    )


def _check_workers(workers: int | None) -> int | None:
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise EvaluationConfigError(
            f"workers must be a non-negative integer (0 runs in this process), got {workers!r}"
        )
    return workers


def _picklable(source: PolicySource) -> bool:
    import ray.cloudpickle

    try:
        ray.cloudpickle.dumps(source)
    except Exception:  # any failure to serialise means: keep it in this process
        return False
    return True


def _progress(
    items: Iterable[ChunkResult],
    *,
    total: int,
    desc: str,
    enabled: bool | Callable[[int], None],
) -> Iterable[ChunkResult]:
    if not enabled:
        return items
    if callable(enabled):
        return _reporting(items, enabled)
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="chunk", file=sys.stderr)


def _reporting(
    items: Iterable[ChunkResult], report: Callable[[int], None]
) -> Iterator[ChunkResult]:
    for item in items:
        report(len(item.seeds))
        yield item
