"""Write an evaluation to a directory, each file atomically; ``summary.json`` comes last.

DIR/episodes.parquet              policy, seed, return, length, success (one row per episode)
DIR/returns.png                   return distributions of every policy
DIR/trajectories-<policy>.png     best, median and worst episode of each policy
DIR/comparison.md                 side-by-side table with paired differences
DIR/success.md, DIR/success.png   success per task, side by side (envs with named tasks)
DIR/report.pb                     the summaries as a diffpol.v1.EvaluationReport message
DIR/summary.json                  per-policy statistics and how they were obtained
"""

from __future__ import annotations

import io
import platform
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from diffpol.contracts import CONTRACT_VERSION
from diffpol.contracts.atomic import atomic_write_bytes, atomic_write_json
from diffpol.evaluator.evaluate import EvaluationResult, PolicyResult
from diffpol.evaluator.plots import returns_figure, success_figure, trajectories_figure
from diffpol.evaluator.seeds import SEEDING_RULE
from diffpol.v1 import evaluator_pb2

if TYPE_CHECKING:
    from diffpol.evaluator.compare import Comparison

EPISODES = "episodes.parquet"
SUMMARY = "summary.json"
RETURNS_PLOT = "returns.png"
COMPARISON = "comparison.md"
SUCCESS_TABLE = "success.md"
SUCCESS_PLOT = "success.png"
REPORT = "report.pb"
STATISTICS = (
    "mean of episode returns; std = sample standard deviation (ddof=1, null for n = 1); "
    "stderr = std / sqrt(n); success_rate = fraction of episodes meeting success_definition; "
    "wall_time_s = from building the policy in the workers to its last episode (trajectory "
    "replays excluded)"
)


def episodes_table(result: EvaluationResult) -> pa.Table:
    policies = result.policies
    return pa.table(
        {
            "policy": pa.array(
                np.repeat([p.label for p in policies], [p.seeds.size for p in policies]),
                pa.string(),
            ),
            "seed": pa.array(np.concatenate([p.seeds for p in policies]), pa.int64()),
            "return": pa.array(np.concatenate([p.returns for p in policies]), pa.float64()),
            "length": pa.array(np.concatenate([p.lengths for p in policies]), pa.int32()),
            "success": pa.array(np.concatenate([p.successes for p in policies]), pa.bool_()),
            "task": pa.array(
                [result.env.task_of(s) for p in policies for s in p.seeds.tolist()], pa.string()
            ),
            # Steps to the env's first reported success; -1 where none.
            "success_steps": pa.array(
                np.concatenate([_steps(p) for p in policies]).astype(np.int32), pa.int32()
            ),
        }
    )


def _steps(policy: PolicyResult) -> np.ndarray:
    if policy.success_steps.size == policy.seeds.size:
        return policy.success_steps
    return np.full(policy.seeds.size, -1, np.int32)


def write_outputs(
    result: EvaluationResult, out: str | Path, comparison: Comparison | None = None
) -> dict[str, Path]:
    """Write every output file; returns their paths by name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    pq.write_table(episodes_table(result), buffer)
    files = {EPISODES: atomic_write_bytes(out / EPISODES, buffer.getvalue())}
    files[RETURNS_PLOT] = atomic_write_bytes(out / RETURNS_PLOT, returns_figure(result))
    plot_names = _trajectory_plot_names(result.labels)
    for policy in result.policies:
        if policy.examples:
            name = plot_names[policy.label]
            files[name] = atomic_write_bytes(out / name, trajectories_figure(result, policy))
    if comparison is not None:
        files[COMPARISON] = atomic_write_bytes(out / COMPARISON, comparison.to_markdown().encode())
    if any(p.tasks for p in result.policies):
        files[SUCCESS_TABLE] = atomic_write_bytes(
            out / SUCCESS_TABLE, success_table(result).encode()
        )
        files[SUCCESS_PLOT] = atomic_write_bytes(out / SUCCESS_PLOT, success_figure(result))
    files[REPORT] = atomic_write_bytes(out / REPORT, evaluation_report(result).SerializeToString())
    summary = summary_json(result, comparison, {k: p.name for k, p in files.items()})
    files[SUMMARY] = atomic_write_json(out / SUMMARY, summary)
    return files


def success_table(result: EvaluationResult) -> str:
    """Markdown: one row per task and the mean over tasks, one column per policy; a cell is
    the success rate, its 95% Wilson interval and the mean steps to success."""
    policies = [p for p in result.policies if p.tasks]
    if not policies:
        raise ValueError(f"{result.env.env_id} has no named tasks to tabulate success per task of")
    tasks = [t.task for t in policies[0].tasks]
    for p in policies:
        if [t.task for t in p.tasks] != tasks:
            raise ValueError(f"policy {p.label!r} ran other tasks than {policies[0].label!r}")
    n = len(result.config.seeds)
    lines = [
        f"## {result.env.env_id}: success per task, seeds {result.config.seeds} (n = {n}, "
        f"{n // len(tasks)} per task)",
        "",
        "| task | " + " | ".join(p.label.replace("|", "\\|") for p in policies) + " |",
        "|---|" + "---:|" * len(policies),
    ]
    for i, task in enumerate(tasks):
        cells = []
        for p in policies:
            t = p.tasks[i]
            steps = f"{t.mean_steps_to_success:.0f}" if t.mean_steps_to_success else "-"
            cells.append(
                f"{100 * t.success_rate:.0f}% [{100 * t.ci95_low:.0f}, {100 * t.ci95_high:.0f}]"
                f" · {steps}"
            )
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    means = [f"**{100 * p.mean_task_success_rate:.1f}%**" for p in policies]
    lines += [
        "| mean over tasks | " + " | ".join(means) + " |",
        "",
        "Cell: success rate [95% Wilson interval] · mean steps to the first success (over the "
        f"successful episodes). Success: {result.view.success_definition}.",
        "",
    ]
    return "\n".join(lines)


def evaluation_report(result: EvaluationResult) -> evaluator_pb2.EvaluationReport:
    """The evaluation as the contract's ``EvaluationReport`` (request and per-policy summaries).

    The proto has no null: ``std`` and ``stderr`` of a single episode are written as 0.
    """
    config = result.config
    request = evaluator_pb2.EvaluationRequest(
        env_id=result.env.env_id,
        policies=[_spec_string(p) for p in result.policies],
        seed_start=config.seeds.start,
        seed_stop=config.seeds.stop,
        noise_seed=config.noise_seed,
    )
    summaries = [
        evaluator_pb2.PolicySummary(
            policy=p.label,
            n=p.summary.n,
            mean=p.summary.mean,
            std=p.summary.std or 0.0,
            stderr=p.summary.stderr or 0.0,
            min=p.summary.min,
            max=p.summary.max,
            success_rate=p.summary.success_rate,
            wall_time_s=p.wall_time_s,
        )
        for p in result.policies
    ]
    return evaluator_pb2.EvaluationReport(request=request, summaries=summaries)


def _spec_string(policy: PolicyResult) -> str:
    source = policy.source
    if source.get("kind") == "grpc":
        return f"grpc://{source['target']}"
    return source.get("target") or source.get("type", policy.label)


def summary_json(
    result: EvaluationResult, comparison: Comparison | None = None, files: dict | None = None
) -> dict:
    config = result.config
    plot_names = _trajectory_plot_names(result.labels)
    summary = {
        "contract_version": CONTRACT_VERSION,
        "env_id": result.env.env_id,
        "env_backend": result.backend,
        "max_episode_steps": result.env.max_episode_steps,
        "seeds": {"start": config.seeds.start, "stop": config.seeds.stop, "n": len(config.seeds)},
        "noise_seed": config.noise_seed,
        "chunk_size": config.chunk_size,
        "seeding_rule": SEEDING_RULE,
        "success_definition": result.view.success_definition,
        "statistics": STATISTICS,
        "policy_order": result.labels,
        "policies": {
            p.label: _policy_json(p, plot_names[p.label] if p.examples else None)
            for p in result.policies
        },
        "platform": {"python": platform.python_version(), "machine": platform.machine()},
    }
    if comparison is not None:
        summary["comparison"] = comparison.to_json()
    if files is not None:
        summary["files"] = sorted(files)
    return summary


def _policy_json(policy: PolicyResult, plot: str | None) -> dict:
    return {
        **policy.summary.to_json(),
        "wall_time_s": round(policy.wall_time_s, 3),
        "policy_calls": policy.policy_calls,
        "mean_length": float(np.mean(policy.lengths)),
        "ran_in": policy.ran_in,
        "source": policy.source,
        "spec": {
            "obs_dim": policy.spec.obs_dim,
            "act_dim": policy.spec.act_dim,
            "n_obs_steps": policy.spec.n_obs_steps,
            "n_action_steps": policy.spec.n_action_steps,
        },
        "examples": {
            kind: {"seed": t.seed, "return": t.episode_return, "length": len(t.actions)}
            for kind, t in policy.examples.items()
        },
        "replay_matches": policy.replay_matches,
        "trajectory_plot": plot,
        **task_json(policy),
    }


def task_json(policy: PolicyResult) -> dict:
    """Per-task success (envs with named tasks): the table and its unweighted mean; empty
    for an env without tasks."""
    if not policy.tasks:
        return {}
    return {
        "tasks": [t.to_json() for t in policy.tasks],
        "mean_task_success_rate": policy.mean_task_success_rate,
    }


def _trajectory_plot_names(labels: list[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    taken: set[str] = set()
    for label in labels:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("._") or "policy"
        name, index = f"trajectories-{stem}.png", 2
        while name in taken:
            name, index = f"trajectories-{stem}-{index}.png", index + 1
        taken.add(name)
        names[label] = name
    return names
