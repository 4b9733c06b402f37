"""Several policies on the same seeds and noise, side by side, with paired differences.

Every policy is compared with the best one (highest mean return) by a paired t-test on the
per-seed return differences: the seeds and the noise of each policy call are shared, so
the pairing removes the seed-to-seed variation that dominates the returns' spread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffpol.evaluator.evaluate import EvaluationResult, evaluate
from diffpol.evaluator.policies import PolicyInput, PolicySource
from diffpol.evaluator.stats import PAIRED_TEST, PairedDifference, ReturnSummary, paired_t_test


@dataclass(frozen=True)
class ComparisonRow:
    label: str
    summary: ReturnSummary
    # Policy minus best, per seed; None for the best policy itself.
    difference: PairedDifference | None


@dataclass(frozen=True)
class Comparison:
    env_id: str
    seeds: str
    noise_seed: int
    success_definition: str
    best: str
    rows: list[ComparisonRow]
    method: str = PAIRED_TEST

    def row(self, label: str) -> ComparisonRow:
        for row in self.rows:
            if row.label == label:
                return row
        raise KeyError(f"no policy labelled {label!r} in the comparison")

    def to_json(self) -> dict:
        return {
            "best": self.best,
            "method": self.method,
            "difference": "per-seed return of the policy minus the best policy's",
            "differences_to_best": {
                row.label: row.difference.to_json() for row in self.rows if row.difference
            },
        }

    def to_markdown(self) -> str:
        n = self.rows[0].summary.n
        lines = [
            f"## {self.env_id}: seeds {self.seeds} (n = {n}), noise seed {self.noise_seed}",
            "",
            "| policy | return (mean ± s.e.) | n | success | Δ to best (mean ± s.e.) "
            "| 95% CI of Δ | p (paired t) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in self.rows:
            s = row.summary
            cells = [
                _escape(row.label),
                _pm(s.mean, s.stderr),
                str(s.n),
                f"{100 * s.success_rate:.1f}%",
            ]
            d = row.difference
            if d is None:
                cells += ["best", "", ""]
            else:
                ci = f"[{d.ci95_low:.2f}, {d.ci95_high:.2f}]" if d.ci95_low is not None else "n/a"
                p = f"{d.p_value:.3g}" if d.p_value is not None else "n/a"
                cells += [_pm(d.mean, d.stderr), ci, p]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            f"Δ: the policy's return minus the best policy's ({_escape(self.best)}) on the same "
            f"seed, averaged over seeds; p: {self.method}. s.e.: sample standard deviation / "
            f"sqrt(n). Success: {self.success_definition}.",
            "",
        ]
        return "\n".join(lines)


def comparison_of(result: EvaluationResult) -> Comparison:
    """Paired differences of every evaluated policy to the best one."""
    policies = result.policies
    best = max(policies, key=lambda p: p.summary.mean)  # first of equals wins
    rows = []
    for p in policies:
        if not np.array_equal(p.seeds, best.seeds):
            raise ValueError(f"policies {p.label!r} and {best.label!r} ran on different seeds")
        diff = None if p is best else paired_t_test(p.returns, best.returns)
        rows.append(ComparisonRow(p.label, p.summary, diff))
    return Comparison(
        env_id=result.env.env_id,
        seeds=str(result.config.seeds),
        noise_seed=result.config.noise_seed,
        success_definition=result.view.success_definition,
        best=best.label,
        rows=rows,
    )


def compare(
    policies: Sequence[PolicyInput | PolicySource] | Mapping[str, PolicyInput],
    env_id: str,
    seeds,
    *,
    out: str | Path | None = None,
    **evaluate_kwargs,
) -> tuple[EvaluationResult, Comparison]:
    """Evaluate ``policies`` on the same seeds (see ``evaluate`` for the arguments), compare
    them, and with ``out`` write episodes, summary, plots and ``comparison.md`` there."""
    result = evaluate(policies, env_id, seeds, **evaluate_kwargs)
    comparison = comparison_of(result)
    if out is not None:
        from diffpol.evaluator.outputs import write_outputs

        write_outputs(result, out, comparison)
    return result, comparison


def _pm(mean: float, stderr: float | None) -> str:
    return f"{mean:.2f} ± {stderr:.2f}" if stderr is not None else f"{mean:.2f}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")
