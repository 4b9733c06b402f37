"""Few-step samplers: batch-1 latency against DDIM-10 and the training step's cost.

The default Pendulum model (3 x 64 ReLU MLP, To = 2, T = 1) with random weights (latency
does not depend on them), each sampler exported to ONNX by the sampler component. Ratios
are measured in one run, the samplers taking turns (``diffpol.pipeline.samplers``).

    DIFFPOL_BENCH_SCALE=1 ./pants test benchmarks/fewstep_bench_test.py -- -s

The returns these samplers reach are the pipeline's (``--samplers``), not this file's.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from diffpol.contracts import EnvShape, Window
from diffpol.pipeline.samplers import batch1_latency_us
from diffpol.sampler import export_onnx
from diffpol.sampler.testing import pendulum_like_normalizer
from diffpol.trainer.config import ModelConfig
from diffpol.trainer.modeling import build_policy_model

SCALE = float(os.environ.get("DIFFPOL_BENCH_SCALE", "1"))
ENV = EnvShape("Pendulum-v1", 3, 1, (-2.0,), (2.0,))
WINDOW = Window(2, 1, 1)
SAMPLERS = [
    ("ddpm", "ddim", 10),
    ("ddpm", "ddim", 1),
    ("flow", "flow", 10),
    ("flow", "flow", 2),
    ("flow", "flow", 1),
    ("consistency", "consistency", 2),
    ("consistency", "consistency", 1),
]


def _model(objective: str):
    teacher = "diffusion" if objective == "consistency" else None
    config = ModelConfig(objective=objective, teacher=teacher)
    torch.manual_seed(0)
    return build_policy_model(config, ENV.obs_dim, ENV.act_dim, pendulum_like_normalizer(3, 1))


def test_batch1_latency_of_few_step_samplers(tmp_path):
    torch.set_num_threads(1)
    paths, loops = {}, {}
    for objective, sampler, steps in SAMPLERS:
        loop = _model(objective).eval().sampling_loop(sampler, steps)
        name = f"{sampler}-{steps}"
        loops[name] = loop
        paths[name] = export_onnx(
            loop,
            pendulum_like_normalizer(3, 1),
            ENV,
            WINDOW,
            tmp_path / f"{name}.onnx",
            model_version=name,
        )
    calls = max(50, int(4000 * SCALE))
    latency = batch1_latency_us(paths, (2, 3), calls=calls)
    eager = _eager_latency_us(loops, calls)
    ref, ref_graph = latency["ddim-10"]["median_us"], latency["ddim-10"]["graph_median_us"]
    print()
    print(
        "| sampler | act median µs | speed-up | graph alone µs | speed-up | eager µs | speed-up |"
    )
    for name, lat in latency.items():
        print(
            f"| {name} | {lat['median_us']:.1f} | {ref / lat['median_us']:.2f}x | "
            f"{lat['graph_median_us']:.1f} | {ref_graph / lat['graph_median_us']:.2f}x | "
            f"{eager[name]:.0f} | {eager['ddim-10'] / eager[name]:.2f}x |"
        )
    # Fewer network calls never cost more (a loose check: the machine is shared).
    assert latency["consistency-1"]["graph_median_us"] < ref_graph


def _eager_latency_us(loops, calls: int) -> dict[str, float]:
    """The PyTorch loop itself at batch 1 (no_grad), the loops taking turns."""
    obs, noise = torch.randn(1, 2, 3), torch.randn(1, 1, 1)
    times: dict[str, list[float]] = {name: [] for name in loops}
    with torch.no_grad():
        for _ in range(5):
            for name, loop in loops.items():
                step_noise = torch.randn(1, loop.step_noise_steps, 1, 1)
                for _ in range(calls // 5):
                    start = time.perf_counter()
                    loop(obs, noise, step_noise)
                    times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) * 1e6 for name, t in times.items()}


@pytest.mark.parametrize("batch", [256])
def test_training_step_cost_per_objective(batch):
    torch.set_num_threads(1)
    obs = torch.randn(batch, 6)
    action = torch.rand(batch, 1) * 2 - 1
    models = {name: _model(name) for name in ("ddpm", "flow", "consistency")}
    models["consistency"].set_teacher(_model("ddpm"))
    optimizers = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in models.items()}
    steps = max(20, int(2000 * SCALE))
    times: dict[str, list[float]] = {name: [] for name in models}
    for _block in range(5):  # the objectives take turns
        for name, model in models.items():
            for _ in range(steps // 5):
                start = time.perf_counter()
                loss = model.compute_loss(obs, action)
                optimizers[name].zero_grad()
                loss.backward()
                optimizers[name].step()
                times[name].append(time.perf_counter() - start)
    median = {name: float(np.median(t)) * 1e6 for name, t in times.items()}
    print()
    for name, us in median.items():
        print(f"| {name} | {us:.0f} µs per step | {us / median['ddpm']:.2f}x DDPM |")
    assert all(us > 0 for us in median.values())
