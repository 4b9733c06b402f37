"""Sampler latency and throughput: PyTorch eager vs the exported ONNX graph, and over gRPC.

    DIFFPOL_BENCH_SCALE=1.0 DIFFPOL_BENCH_OUT=OUT_DIR \\
        ./pants test benchmarks/sampler_bench_test.py -- -q -s

The denoisers are the trainer's ``DiffusionPolicyModel`` (untrained: the latency does not
depend on the weights) in the trainer's default Pendulum shape (2 observations in, 1
action planned and executed). To benchmark a trained model, build its loop in ``_loop``
(e.g. from ``diffpol.trainer.load_policy``). Three architectures:

- REPRESENTATIVE: a reference-size denoiser, 3 x 256 Mish, 64-d time embedding;
- DEFAULT: the trainer's ModelConfig defaults (3 x 64 ReLU), what the pipeline exports;
- FAST: the smallest, fastest graph of the trade-off sweep (``test_graph_size_tradeoff``),
  below the trainer's quality goal.

Goals (checked at DIFFPOL_BENCH_SCALE >= 1 on DEFAULT; the others are reported):

- in process, batch 1: p50 <= 60 us and >= 20x faster than eager PyTorch;
- over gRPC, batch 1: Sample p50 <= 1.3x the same server's health Check p50;
- batch 1024: ONNX throughput >= 2x eager.

Both engines use one thread unless a test says otherwise (on this shared 2-core machine
torch's two-thread OpenMP team ran 5-10x slower than one thread). The machine is shared:
each latency is also reported as the lowest p50 over 5 consecutive blocks of the run
("quiet p50"), which is what the goals are checked against. Writes
``sampler_latency_hist.png`` and ``sampler_tradeoff.md`` to DIFFPOL_BENCH_OUT (default:
a temporary directory).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from diffpol.contracts import EnvShape
from diffpol.sampler import OnnxPolicy, SamplerClient, export_onnx
from diffpol.sampler.export import SamplerModule, count_nodes
from diffpol.sampler.testing import pendulum_like_normalizer
from diffpol.trainer.config import ModelConfig
from diffpol.trainer.modeling import DiffusionPolicyModel

SCALE = float(os.environ.get("DIFFPOL_BENCH_SCALE", "1.0"))
OUT = Path(os.environ.get("DIFFPOL_BENCH_OUT") or tempfile.mkdtemp(prefix="sampler-bench-"))
CHECK_GOALS = SCALE >= 1.0

OBS_DIM, ACT_DIM = 3, 1  # Pendulum-v1
REPRESENTATIVE = {"hidden_width": 256, "depth": 3, "time_embed_dim": 64, "activation": "mish"}
DEFAULT: dict = {}  # ModelConfig's defaults
FAST = {"hidden_width": 64, "depth": 2, "activation": "relu"}

GOAL_P50_US = 60.0
GOAL_SPEEDUP_BATCH1 = 20.0
GOAL_GRPC_RATIO = 1.3
GOAL_THROUGHPUT_RATIO = 2.0
GOAL_SAMPLER = "ddim10-default"  # the goals are asserted on what the pipeline exports

_latencies: dict[str, np.ndarray] = {}  # for the histogram


def _loop(sampler: str, steps: int, config: ModelConfig) -> torch.nn.Module:
    """The denoising loop under test (build a trained model's loop here to benchmark it)."""
    torch.manual_seed(0)
    model = DiffusionPolicyModel(config, OBS_DIM, ACT_DIM).eval()
    return model.sampling_loop(sampler, steps).eval()


class Pair:
    """One sampler as an eager PyTorch module and as an exported ONNX graph."""

    def __init__(
        self,
        name: str,
        sampler: str,
        steps: int,
        arch: dict,
        relu_network: bool = True,
        loop: torch.nn.Module | None = None,
    ) -> None:
        torch.set_num_threads(1)
        self.name = name
        config = ModelConfig(**arch)
        loop = loop if loop is not None else _loop(sampler, steps, config)
        normalizer = pendulum_like_normalizer(OBS_DIM, ACT_DIM)
        low, high = [-2.0], [2.0]
        self.path = export_onnx(
            loop,
            normalizer,
            EnvShape("Pendulum-v1", OBS_DIM, ACT_DIM, tuple(low), tuple(high)),
            config.window,
            OUT / f"{name}.onnx",
            model_version=name,
            relu_network=relu_network,
        )
        self.eager = SamplerModule(
            loop, normalizer, low, high, config.window.n_action_steps, config.window.horizon
        ).eval()
        self.onnx = OnnxPolicy(self.path)
        self.params = sum(p.numel() for p in loop.parameters())
        self.nodes = count_nodes(self.path)
        self.obs_shape = (config.window.n_obs_steps, OBS_DIM)

    def inputs(self, batch: int, seed: int = 0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        obs = rng.standard_normal((batch, *self.obs_shape))
        noise, step_noise = self.onnx.draw_inputs(batch, seed)
        return [a for a in (obs.astype(np.float32), noise, step_noise) if a is not None]

    def runner(self, engine: str, batch: int):
        arrays = self.inputs(batch)
        if engine == "onnx":
            obs, noise, *rest = arrays
            step_noise = rest[0] if rest else None
            return lambda: self.onnx.run_checked(obs, noise, step_noise)
        tensors = [torch.from_numpy(a) for a in arrays]

        def eager():
            with torch.inference_mode():
                return self.eager(*tensors)

        return eager


@pytest.fixture(scope="module")
def pairs() -> dict[str, Pair]:
    OUT.mkdir(parents=True, exist_ok=True)
    return {
        "ddim10": Pair("ddim10", "ddim", 10, REPRESENTATIVE),
        "ddpm100": Pair("ddpm100", "ddpm", 100, REPRESENTATIVE),
        "ddim10-default": Pair("ddim10-default", "ddim", 10, DEFAULT),
        "ddim10-fast": Pair("ddim10-fast", "ddim", 10, FAST),
    }


def _time(fn, rounds: int, warmup: int = 5) -> np.ndarray:
    for _ in range(warmup):
        fn()
    times = np.empty(rounds)
    for i in range(rounds):
        start = time.perf_counter_ns()
        fn()
        times[i] = time.perf_counter_ns() - start
    return times / 1e3  # microseconds


def _quiet_p50(samples: np.ndarray, blocks: int = 5) -> float:
    """Lowest median over consecutive blocks: the p50 of the run's least-disturbed part."""
    return float(min(np.median(b) for b in np.array_split(samples, blocks) if len(b)))


def _rounds(batch: int, sampler: str, engine: str) -> int:
    cost = batch * (10 if sampler == "ddpm100" else 1) * (20 if engine == "eager" else 1)
    return max(3, round(SCALE * min(2000, 400_000 / cost)))


@pytest.mark.parametrize("batch", [1, 32, 1024])
@pytest.mark.parametrize("engine", ["eager", "onnx"])
@pytest.mark.parametrize("sampler", ["ddim10", "ddpm100", "ddim10-default", "ddim10-fast"])
def test_in_process_latency(benchmark, pairs, sampler, engine, batch):
    pair = pairs[sampler]
    fn = pair.runner(engine, batch)
    rounds = _rounds(batch, sampler, engine)
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=3)
    stats = benchmark.stats  # None under --benchmark-disable: time it ourselves
    data = np.asarray(stats.stats.data) * 1e6 if stats else _time(fn, rounds)
    p50, p99 = np.percentile(data, [50, 99])
    benchmark.extra_info.update(
        p50_us=round(p50, 1),
        p99_us=round(p99, 1),
        actions_per_s=round(batch / np.median(data) * 1e6),
    )
    _latencies[f"{sampler}/{engine}/{batch}"] = data
    print(
        f"\n{sampler} {engine} batch {batch}: p50 {p50:.1f} us, p99 {p99:.1f} us, "
        f"{batch / p50 * 1e6:,.0f} actions/s"
    )


def _interleaved_p50(first, second, rounds: int, block: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Time two calls in alternating blocks of ``block`` calls, so machine load drifts
    affect both alike while each runs warm (alternating single calls slowed onnxruntime
    3x: each eager call evicted its code and data from the caches)."""
    a, b = _interleaved([first, second], rounds, block)
    return a, b


def _interleaved(fns, rounds: int, block: int = 50) -> list[np.ndarray]:
    """``_interleaved_p50`` for any number of calls: microseconds per call of each."""
    times: list[list[int]] = [[] for _ in fns]
    for _ in range(3):
        for fn in fns:
            fn()
    while len(times[0]) < rounds:
        n = min(block, rounds - len(times[0]))
        for fn, out in zip(fns, times, strict=True):
            fn()
            for _ in range(n):
                start = time.perf_counter_ns()
                fn()
                out.append(time.perf_counter_ns() - start)
    return [np.asarray(t) / 1e3 for t in times]


@pytest.mark.parametrize("sampler", ["ddim10-fast", "ddim10-default", "ddim10"])
def test_batch1_speedup_over_eager(pairs, sampler):
    pair = pairs[sampler]
    rounds = max(50, round(2000 * SCALE))
    onnx_us, eager_us = _interleaved_p50(pair.runner("onnx", 1), pair.runner("eager", 1), rounds)
    onnx_p50, eager_p50 = _quiet_p50(onnx_us), _quiet_p50(eager_us)
    act_us = _time(lambda: pair.onnx.act(pair.inputs(1)[0]), rounds)
    act_seeded_us = _time(lambda: pair.onnx.act(pair.inputs(1)[0], seed=1), rounds)
    print(
        f"\n{sampler} batch 1 ({pair.params:,} params, {pair.nodes} nodes): onnx graph quiet "
        f"p50 {onnx_p50:.1f} us (all: p50 {np.median(onnx_us):.1f}, p99 "
        f"{np.percentile(onnx_us, 99):.0f}), eager quiet p50 {eager_p50:.0f} us (all: "
        f"{np.median(eager_us):.0f}): {eager_p50 / onnx_p50:.1f}x | OnnxPolicy.act (checks + "
        f"noise) p50 {_quiet_p50(act_us):.1f} us unseeded, {_quiet_p50(act_seeded_us):.1f} us "
        "seeded"
    )
    _latencies[f"{sampler}/onnx/1"] = onnx_us
    _latencies[f"{sampler}/eager/1"] = eager_us
    if CHECK_GOALS and sampler == GOAL_SAMPLER:
        assert onnx_p50 <= GOAL_P50_US, f"p50 {onnx_p50:.1f} us > {GOAL_P50_US} us"
        assert eager_p50 / onnx_p50 >= GOAL_SPEEDUP_BATCH1


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sampler", ["ddim10", "ddim10-default", "ddim10-fast"])
def test_batch1024_throughput(pairs, sampler, threads):
    pair = pairs[sampler]
    rounds = max(3, round(10 * SCALE))
    onnx = OnnxPolicy(pair.path, intra_op_threads=threads)
    obs, noise = pair.inputs(1024)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        onnx_us, eager_us = _interleaved_p50(
            lambda: onnx.run_checked(obs, noise, None),
            pair.runner("eager", 1024),
            rounds,
        )
    finally:
        torch.set_num_threads(previous)
    onnx_rate, eager_rate = 1024e6 / np.median(onnx_us), 1024e6 / np.median(eager_us)
    print(
        f"\n{sampler} batch 1024, {threads} thread(s): onnx {onnx_rate:,.0f} actions/s, "
        f"eager {eager_rate:,.0f} actions/s: {onnx_rate / eager_rate:.2f}x"
    )
    if CHECK_GOALS and sampler == GOAL_SAMPLER and threads == 1:
        assert onnx_rate >= GOAL_THROUGHPUT_RATIO * eager_rate


_SERVER = """
import sys
from diffpol.sampler import serve
server = serve(sys.argv[1], max_batch_wait_ms=float(sys.argv[2]))
print(server.address, flush=True)
sys.stdin.read()  # serve until the benchmark closes our stdin
server.stop(0)
"""


class _ServerProcess:
    """A sampler server in its own process, as in production (the Ray actor's process)."""

    def __init__(self, model: Path, wait_ms: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(model), str(wait_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.address = self.process.stdout.readline().strip()
        assert self.address, "server did not start"

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.mark.parametrize("wait_ms", [0.0, 2.0])
@pytest.mark.parametrize("sampler", ["ddim10-fast", "ddim10-default", "ddim10"])
def test_grpc_round_trip_batch1(pairs, sampler, wait_ms):
    pair = pairs[sampler]
    server = _ServerProcess(pair.path, wait_ms)
    try:
        with SamplerClient(server.address, timeout_s=5) as client:
            obs = pair.inputs(1)[0]
            rounds = max(100, round(2000 * SCALE))
            sample_us, check_us = _interleaved_p50(
                lambda: client.sample(obs), client.health, rounds
            )
            seeded_us = _time(lambda: client.sample(obs, seed=7), rounds // 2)
            stream_us = None
            with client.stream() as stream:
                stream_us = _time(lambda: stream.sample(obs), rounds // 2)
    finally:
        server.close()
    s50, s99 = np.percentile(sample_us, [50, 99])
    c50, c99 = np.percentile(check_us, [50, 99])
    quiet_ratio = _quiet_p50(sample_us) / _quiet_p50(check_us)
    print(
        f"\n{sampler} gRPC batch 1 (max_batch_wait_ms={wait_ms:g}): Sample p50 {s50:.0f} us "
        f"p99 {s99:.0f} us (quiet p50 {_quiet_p50(sample_us):.0f}) | health Check p50 "
        f"{c50:.0f} us p99 {c99:.0f} us (quiet p50 {_quiet_p50(check_us):.0f}) | ratio "
        f"{s50 / c50:.2f} (quiet {quiet_ratio:.2f}) | seeded Sample p50 "
        f"{np.median(seeded_us):.0f} us | SampleStream p50 {np.median(stream_us):.0f} us"
    )
    key = f"{sampler}/grpc/wait{wait_ms:g}"
    _latencies[key + "/Sample"], _latencies[key + "/Check"] = sample_us, check_us
    if CHECK_GOALS and sampler == GOAL_SAMPLER and wait_ms == 0:
        assert quiet_ratio <= GOAL_GRPC_RATIO, f"Sample/Check p50 = {quiet_ratio:.2f}"


def _trained_default_model(steps: int) -> DiffusionPolicyModel:
    """The trainer's default model after ``steps`` Adam steps on a synthetic two-mode task
    (a saturating function of the observation or its negative, often at the action limit
    like a swing-up torque): weights shaped by training (dead units, x0 predictions at and
    beyond the clip range) in a few seconds."""
    torch.manual_seed(0)
    config = ModelConfig()
    model = DiffusionPolicyModel(config, OBS_DIM, ACT_DIM)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        obs = torch.randn(256, config.window.n_obs_steps * OBS_DIM, generator=generator)
        sign = torch.randint(0, 2, (256, 1), generator=generator) * 2.0 - 1.0
        action = sign * torch.clamp(1.5 * torch.tanh(2 * obs[:, :1] + obs[:, 1:2]), -1, 1)
        loss = model.compute_loss(obs, action.repeat(1, config.window.horizon * ACT_DIM), generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def _x0_clipped(pair: Pair, inputs: list[np.ndarray]) -> float:
    """Share of x0 predictions (sample prediction), over all steps, that the loop's
    [-1, 1] clip changes: the loop's forward, unrolled here to look inside."""
    loop = pair.eager.loop
    obs, noise, *rest = (torch.from_numpy(a) for a in inputs)
    obs_norm = (obs - pair.eager.obs_center) / pair.eager.obs_scale
    with torch.inference_mode():
        cond = loop.denoiser.encode_condition(obs_norm.flatten(1))
        time_terms = loop.denoiser.time_terms(loop.time_features)
        x, k, clipped = noise.flatten(1), 0, []
        for i, update in enumerate(loop.updates):
            output = loop.denoiser.denoise(x, cond, time_terms[i])
            x0 = update.x0_from_output * output + update.x0_from_sample * x
            clipped.append(float((x0.abs() > loop.clip_range).float().mean()))
            z = None
            if update.stochastic:
                z, k = rest[0][:, k].flatten(1), k + 1
            x = update.apply(output, x, loop.clip_range, z)
    return float(np.mean(clipped))


@pytest.mark.parametrize(("sampler", "steps"), [("ddim", 10), ("ddpm", 100)])
def test_relu_network_matches_a_trained_default_model(sampler, steps):
    """The exported ReLU network (``diffpol.sampler.relu_network``) of a trained trainer
    model reproduces eager PyTorch to float rounding, not just to export_onnx's 1e-3."""
    torch.set_num_threads(1)
    model = _trained_default_model(max(200, round(2000 * SCALE)))
    name = f"trained-default-{sampler}{steps}"
    pair = Pair(name, sampler, steps, {}, loop=model.sampling_loop(sampler, steps).eval())
    assert onnx.load(str(pair.path)).graph.name == "diffpol_relu_sampler"
    batch = 2048 if sampler == "ddim" else 256
    inputs = pair.inputs(batch, seed=3)
    with torch.inference_mode():
        expected = pair.eager(*[torch.from_numpy(a) for a in inputs]).numpy()
    actual = pair.onnx.run(*inputs)
    error = float(np.max(np.abs(actual - expected)))  # action units; action scale ~1
    clipped = _x0_clipped(pair, inputs)
    print(f"\n{name}: max |relu network - eager| {error:.2g}; x0 clipped: {clipped:.1%}")
    # float32 rounding only (the graph forms its products in float64): measured up to
    # 3e-6 for DDIM-10 and 1.7e-5 for DDPM-100 (the traced graph: 1.6e-6 and 1.6e-5;
    # rounding accumulates over 100 noisy steps); an export bug is of order 1e-2..1.
    assert error < (2e-5 if sampler == "ddim" else 1e-4)
    assert clipped > 0.005  # both sides of the clip are compared


# The ReLU-network graph against the traced, slimmed graph it replaces for ReLU loops
# (export_onnx(..., relu_network=False)): same model, DDIM-10, timed in one run.
SIDE_BY_SIDE = [(64, 3), (64, 2), (128, 3), (256, 3)]


def test_relu_network_vs_traced_graph():
    sizes = SIDE_BY_SIDE if SCALE >= 0.5 else SIDE_BY_SIDE[:1]
    lines = [
        "| width x depth | params | nodes traced / network | ONNX b1 quiet p50 us traced / "
        "network | eager b1 quiet p50 us | speedup b1 traced / network | b1024 act/s traced "
        "/ network / eager | ratio b1024 traced / network |\n|" + "---|" * 8
    ]
    faster = {}
    for width, depth in sizes:
        arch = {"hidden_width": width, "depth": depth, "activation": "relu"}
        new = Pair(f"relu-{width}x{depth}-network", "ddim", 10, arch)
        old = Pair(f"relu-{width}x{depth}-traced", "ddim", 10, arch, relu_network=False)
        assert onnx.load(str(new.path)).graph.name == "diffpol_relu_sampler"
        engines = [old.runner("onnx", 1), new.runner("onnx", 1), new.runner("eager", 1)]
        old_us, new_us, eager_us = map(
            _quiet_p50, _interleaved(engines, max(50, round(2000 * SCALE)))
        )
        engines = [old.runner("onnx", 1024), new.runner("onnx", 1024), new.runner("eager", 1024)]
        old_big, new_big, eager_big = (
            1024e6 / np.median(t) for t in _interleaved(engines, max(2, round(10 * SCALE)), 5)
        )
        faster[width, depth] = old_us / new_us
        lines.append(
            f"| {width}x{depth} | {new.params:,} | {old.nodes} / {new.nodes} | {old_us:.1f} / "
            f"{new_us:.1f} | {eager_us:.0f} | {eager_us / old_us:.1f}x / {eager_us / new_us:.1f}x"
            f" | {old_big:,.0f} / {new_big:,.0f} / {eager_big:,.0f} | {old_big / eager_big:.2f}x"
            f" / {new_big / eager_big:.2f}x |"
        )
    table = "\n".join(lines)
    (OUT / "sampler_relu_network.md").write_text(table + "\n")
    print(f"\n{table}\n(load average {os.getloadavg()[0]:.1f})")
    if CHECK_GOALS:
        assert faster[64, 3] > 1.0, "the ReLU network is not faster for the trainer default"


# Width x depth x activation x DDIM steps, at batch 1 and 1024 (the trainer's defaults follow).
SWEEP = [
    (256, 3, "mish", 10),
    (256, 3, "silu", 10),
    (256, 3, "relu", 10),
    (128, 3, "mish", 10),
    (128, 3, "silu", 10),
    (128, 3, "relu", 10),
    (64, 3, "mish", 10),
    (64, 3, "silu", 10),
    (64, 3, "relu", 10),
    (128, 2, "relu", 10),
    (64, 2, "relu", 10),
    (64, 2, "silu", 10),
    (32, 2, "relu", 10),
    (256, 3, "mish", 5),
    (128, 3, "relu", 5),
    (64, 2, "relu", 5),
]


def test_graph_size_tradeoff():
    rows = []
    torch.set_num_threads(1)
    sweep = SWEEP if SCALE >= 0.5 else SWEEP[::5]
    for width, depth, activation, steps in sweep:
        pair = Pair(
            f"sweep-{width}x{depth}-{activation}-ddim{steps}",
            "ddim",
            steps,
            {"hidden_width": width, "depth": depth, "activation": activation},
        )
        rounds = max(50, round(1000 * SCALE))
        onnx_us, eager_us = _interleaved_p50(
            pair.runner("onnx", 1), pair.runner("eager", 1), rounds
        )
        big_rounds = max(2, round(5 * SCALE))
        big_onnx, big_eager = _interleaved_p50(
            pair.runner("onnx", 1024), pair.runner("eager", 1024), big_rounds
        )
        rows.append(
            (
                width,
                depth,
                activation,
                steps,
                pair.params,
                pair.nodes,
                np.median(onnx_us),
                np.percentile(onnx_us, 99),
                np.median(eager_us),
                1024e6 / np.median(big_onnx),
                1024e6 / np.median(big_eager),
            )
        )
    header = (
        "| width x depth | activation | DDIM steps | params | nodes | ONNX b1 p50 us | "
        "ONNX b1 p99 us | eager b1 quiet p50 us | speedup b1 | ONNX b1024 act/s | "
        "eager b1024 act/s | ratio b1024 |\n|" + "---|" * 12
    )
    lines = [header]
    for w, d, a, s, params, nodes, p50, p99, e50, big_o, big_e in rows:
        lines.append(
            f"| {w}x{d} | {a} | {s} | {params:,} | {nodes} | {p50:.1f} | {p99:.0f} | "
            f"{e50:.0f} | {e50 / p50:.1f}x | {big_o:,.0f} | {big_e:,.0f} | "
            f"{big_o / big_e:.2f}x |"
        )
    table = "\n".join(lines)
    (OUT / "sampler_tradeoff.md").write_text(table + "\n")
    print("\n" + table)


def test_zz_latency_histogram():
    """Runs last (name order within the module): plots what the tests above measured."""
    if not _latencies:
        pytest.skip("no latencies measured")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in _latencies if k.endswith("/1") or "/grpc/wait0/" in k]
    fig, ax = plt.subplots(figsize=(9, 5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # more curves than the default 10 colours
    bins = np.logspace(0.5, 5, 120)
    for key in keys:
        ax.hist(
            np.clip(_latencies[key], bins[0], bins[-1]),
            bins=bins,
            histtype="step",
            label=f"{key} (p50 {np.median(_latencies[key]):.0f} us)",
        )
    ax.set_xscale("log")
    ax.set_xlabel("latency per call, us (batch 1)")
    ax.set_ylabel("calls")
    ax.set_title("diffpol sampler: in-process (eager, ONNX) and gRPC round trips")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = OUT / "sampler_latency_hist.png"
    fig.savefig(path, dpi=120)
    print(f"\nlatency histogram: {path}")
    assert path.stat().st_size > 0
