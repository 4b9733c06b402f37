"""The sampler comparison (``--samplers``): few-step samplers side by side with DDIM.

A sampler is named ``FAMILY-K``: ``ddim-K`` and ``ddpm-K`` sample the diffusion policy,
``flow-K`` (K Euler steps) and ``flow-midpoint-K`` (K network calls) a flow-matching policy
trained on the same samples, ``consistency-K`` (K <= 10) a consistency policy distilled from
the diffusion policy. Each is exported to ONNX, evaluated on the headline seeds, and timed
at batch 1 in process (onnxruntime, the served artifact); the report gets one table and a
plot of return against latency with the Pareto front.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# family -> the pipeline's policy that it samples
FAMILIES: dict[str, str] = {
    "ddim": "diffusion",
    "ddpm": "diffusion",
    "flow": "flow",
    "flow-midpoint": "flow",
    "consistency": "consistency",
}
_NAME = re.compile(r"^(?P<family>[a-z-]+?)-(?P<steps>[0-9]+)$")


@dataclass(frozen=True)
class SamplerChoice:
    family: str
    steps: int

    @property
    def name(self) -> str:
        return f"{self.family}-{self.steps}"

    @property
    def policy(self) -> str:
        return FAMILIES[self.family]


def parse_samplers(text: str) -> tuple[SamplerChoice, ...]:
    """``"ddim-10,flow-2,consistency-1"`` -> choices; ValueError naming what is wrong."""
    choices = []
    for part in (p.strip() for p in text.split(",")):
        match = _NAME.match(part)
        if not match or match["family"] not in FAMILIES:
            raise ValueError(
                f"sampler {part!r} is not FAMILY-STEPS with FAMILY one of "
                f"{', '.join(FAMILIES)} (e.g. ddim-10,flow-2,consistency-1)"
            )
        choice = SamplerChoice(match["family"], int(match["steps"]))
        if choice.steps < 1:
            raise ValueError(f"sampler {part!r}: steps must be >= 1")
        if choice.family == "consistency" and choice.steps > 10:
            raise ValueError(f"sampler {part!r}: consistency takes 1 to 10 steps")
        if choice.family == "flow-midpoint" and choice.steps % 2:
            raise ValueError(f"sampler {part!r}: flow-midpoint takes an even number of steps")
        if choice in choices:
            raise ValueError(f"sampler {part!r} is listed twice")
        choices.append(choice)
    return tuple(choices)


def export_samplers(
    choices: Sequence[SamplerChoice], checkpoints: Mapping[str, Path], out_dir: Path
) -> dict[str, Path]:
    """Each sampler's ONNX file (``out_dir/<name>.onnx``), validated against PyTorch."""
    from diffpol.pipeline.export import export_torch_policy
    from diffpol.trainer.policy import load_policy

    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        c.name: export_torch_policy(
            load_policy(checkpoints[c.policy], c.family, c.steps), out_dir / f"{c.name}.onnx"
        )
        for c in choices
    }


def batch1_latency_us(
    paths: Mapping[str, Path], obs_shape: tuple[int, int], calls: int = 400, rounds: int = 5
) -> dict[str, dict[str, float]]:
    """Batch-1 latency in microseconds of each sampler: ``act`` (a whole ``OnnxPolicy.act``
    call, seeded noise drawn, median and p90) and ``graph`` (the onnxruntime run alone on
    inputs drawn once, median). The samplers take turns in ``rounds`` rounds, so a change
    in machine load hits them alike."""
    from diffpol.sampler import OnnxPolicy

    policies = {name: OnnxPolicy(path) for name, path in paths.items()}
    obs = np.random.default_rng(0).normal(0, 1, (1, *obs_shape)).astype(np.float32)
    inputs = {name: (obs, *policy.draw_inputs(1, 0)) for name, policy in policies.items()}
    act: dict[str, list[float]] = {name: [] for name in policies}
    graph: dict[str, list[float]] = {name: [] for name in policies}
    for policy in policies.values():
        for seed in range(50):  # warm-up
            policy.act(obs, seed=seed)
    per_round = max(1, calls // rounds)
    for r in range(rounds):
        for name, policy in policies.items():
            for i in range(per_round):
                start = time.perf_counter()
                policy.act(obs, seed=r * per_round + i)
                act[name].append(time.perf_counter() - start)
            for _ in range(per_round):
                start = time.perf_counter()
                policy.run_checked(*inputs[name])
                graph[name].append(time.perf_counter() - start)
    return {
        name: {
            "median_us": float(np.median(act[name]) * 1e6),
            "p90_us": float(np.percentile(act[name], 90) * 1e6),
            "graph_median_us": float(np.median(graph[name]) * 1e6),
            "calls": len(act[name]),
        }
        for name in policies
    }


# What a sampler is scored by: the mean episode return, or for envs with tasks (whose
# episodes end at the first success) the success rate in percent.
SCORES = {"return": "mean return", "success": "success (%)"}


def sampler_rows(
    choices: Sequence[SamplerChoice],
    summaries: Mapping[str, dict],
    latency: Mapping[str, dict[str, float]],
    reference: str = "ddim-10",
    score: str = "return",
) -> list[dict]:
    """One row per sampler: its score (``summaries``' mean and stderr, in ``SCORES``'s
    unit), gap to ``reference`` (if compared), batch-1 latency and speed-up over
    ``reference``."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    ref = summaries.get(reference)
    ref_latency = latency.get(reference, {}).get("median_us")
    ref_graph = latency.get(reference, {}).get("graph_median_us")
    rows = []
    for c in choices:
        s, lat = summaries[c.name], latency[c.name]
        rows.append(
            {
                "sampler": c.name,
                "family": c.family,
                "steps": c.steps,
                "policy": c.policy,
                "score": score,
                "mean": s["mean"],
                "stderr": s["stderr"],
                "n": s["n"],
                "gap_to_reference": None if ref is None else s["mean"] - ref["mean"],
                "latency_median_us": lat["median_us"],
                "latency_p90_us": lat["p90_us"],
                "speedup": None if not ref_latency else ref_latency / lat["median_us"],
                "graph_latency_median_us": lat["graph_median_us"],
                "graph_speedup": None if not ref_graph else ref_graph / lat["graph_median_us"],
            }
        )
    return rows


def pareto_front(rows: Sequence[dict]) -> list[str]:
    """Samplers no other beats on both score (higher) and latency (lower)."""
    front = []
    for r in rows:
        dominated = any(
            o["mean"] >= r["mean"]
            and o["latency_median_us"] <= r["latency_median_us"]
            and (o["mean"] > r["mean"] or o["latency_median_us"] < r["latency_median_us"])
            for o in rows
        )
        if not dominated:
            front.append(r["sampler"])
    return front


def markdown_table(rows: Sequence[dict], reference: str = "ddim-10") -> list[str]:
    front = set(pareto_front(rows))
    lines = [
        f"| sampler | network calls | {SCORES[rows[0]['score']]} ± s.e. | vs {reference} | "
        "batch-1 act "
        f"median (p90) | speed-up | graph alone | speed-up | Pareto |",
        "|---|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for r in rows:
        gap = "" if r["gap_to_reference"] is None else f"{r['gap_to_reference']:+.2f}"
        speed = "" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        graph = "" if r["graph_speedup"] is None else f"{r['graph_speedup']:.2f}x"
        lines.append(
            f"| {r['sampler']} | {r['steps']} | {r['mean']:.2f} ± {r['stderr']:.2f} | {gap} | "
            f"{r['latency_median_us']:.0f} µs ({r['latency_p90_us']:.0f}) | {speed} | "
            f"{r['graph_latency_median_us']:.1f} µs | {graph} | "
            f"{'•' if r['sampler'] in front else ''} |"
        )
    return lines


def pareto_figure(rows: Sequence[dict], title: str) -> bytes:
    """Score (± s.e.) against batch-1 latency, log-scale x, the front joined."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ddim": "tab:blue", "ddpm": "tab:gray", "flow": "tab:orange"}
    colors |= {"flow-midpoint": "tab:brown", "consistency": "tab:green"}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for r in rows:
        ax.errorbar(
            r["latency_median_us"],
            r["mean"],
            yerr=r["stderr"],
            fmt="o",
            color=colors[r["family"]],
            capsize=3,
        )
        ax.annotate(
            r["sampler"],
            (r["latency_median_us"], r["mean"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    front = sorted(
        (r for r in rows if r["sampler"] in pareto_front(rows)),
        key=lambda r: r["latency_median_us"],
    )
    ax.plot(
        [r["latency_median_us"] for r in front],
        [r["mean"] for r in front],
        "--",
        color="black",
        lw=1,
        label="Pareto front",
    )
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 act() latency per action chunk, µs (onnxruntime, in process)")
    ax.set_ylabel(SCORES[rows[0]["score"]])
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
