"""Export a denoising loop, with its normalisation and action bounds, as ONE ONNX graph.

Exporter choice: torch's TorchScript-based exporter (``dynamo=False``). The dynamo exporter
(torch 2.13's default) runs ``torch.export`` with symbolic shapes over the unrolled loop:
many times slower for a 10-step DDIM loop, and growing with the number of steps (DDPM-100
unrolls ten times as many nodes; benchmarks/RESULTS.md has the numbers). Its graph was
leaner (it shares the batch-size computation across steps); ``graph_passes.slim`` gives
the TorchScript graph the same leanness. The TorchScript exporter is deprecated upstream:
when it is removed, switch to ``dynamo=True`` (this module's validation applies unchanged).

The artifact is validated against the PyTorch module before it is written, atomically.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from diffpol.contracts import EnvShape, Window
from diffpol.contracts.atomic import atomic_write_bytes
from diffpol.contracts.model_metadata import ModelMetadata
from diffpol.contracts.normalizer import Normalizer
from diffpol.diffusion.sampling_loop import SamplingLoop
from diffpol.sampler.errors import ExportValidationError
from diffpol.sampler.graph_passes import slim as slim_graph
from diffpol.sampler.relu_network import UnsupportedLoop, build_relu_network, describe_relu_loop

log = logging.getLogger(__name__)

OPSET = 18
# Largest allowed |ONNX - PyTorch| per action, in normalised action units (the [-1, 1]
# space the diffusion runs in). Float32 rounding differs between the two runtimes by ~1e-6
# per step, but DDIM's first update at t near T divides by sqrt(alpha_bar_t) (5e-4 at
# t = 99 of a cosine schedule) and amplifies it ~2000x, to about 2e-4 (PyTorch disagrees
# with itself by about as much across batch sizes). 1e-3 is ~5x that worst
# case and 0.05% of the action range, far below any effect on control, while an export
# bug (a wrong constant, step or noise index) shows up as errors of order 0.1-1.
DEFAULT_ATOL = 1e-3
VALIDATION_BATCH_SIZES = (1, 7, 256)


@dataclass(frozen=True)
class ValidationResult:
    """Largest |ONNX - PyTorch| per batch size, normalised action units."""

    max_abs_error: dict[int, float]
    atol: float


class SamplerModule(nn.Module):
    """Raw obs -> normalise -> loop -> first Ta actions -> unnormalise -> clip.

    What ``export_onnx`` exports, and its eager PyTorch equivalent (benchmarks compare the
    two). NaN actions (float overflow on absurd inputs) become the action normaliser's
    centre, so outputs are within bounds for any input.
    """

    def __init__(
        self,
        loop: SamplingLoop,
        normalizer: Normalizer,
        action_low: Sequence[float],
        action_high: Sequence[float],
        n_action_steps: int,
        horizon: int,
    ) -> None:
        super().__init__()
        self.loop = loop
        self.n_action_steps, self.horizon = n_action_steps, horizon
        self.stochastic = int(loop.step_noise_steps) > 0

        def buffer(name: str, values: Sequence[float]) -> None:
            self.register_buffer(name, torch.tensor(list(values), dtype=torch.float32))

        buffer("obs_center", normalizer.obs.center)
        buffer("obs_scale", normalizer.obs.scale)
        buffer("act_center", normalizer.action.center)
        buffer("act_scale", normalizer.action.scale)
        buffer("low", action_low)
        buffer("high", action_high)
        fallback = np.clip(normalizer.action.center, action_low, action_high)
        buffer("fallback", fallback.tolist())

    def forward(
        self, obs: torch.Tensor, noise: torch.Tensor, step_noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        obs_norm = (obs - self.obs_center) / self.obs_scale
        if self.stochastic:
            action = self.loop(obs_norm, noise, step_noise)
        else:
            action = self.loop(obs_norm, noise)
        if self.n_action_steps < self.horizon:
            action = action[:, : self.n_action_steps]
        action = action * self.act_scale + self.act_center
        action = torch.where(torch.isnan(action), self.fallback, action)
        return torch.minimum(torch.maximum(action, self.low), self.high)


def export_onnx(
    loop: SamplingLoop,
    normalizer: Normalizer,
    env: EnvShape,
    window: Window,
    path: str | Path,
    *,
    model_version: str,
    atol: float = DEFAULT_ATOL,
    validate_batch_sizes: Sequence[int] = VALIDATION_BATCH_SIZES,
    validation_seed: int = 0,
    slim: bool = True,
    relu_network: bool = True,
) -> Path:
    """Export ``loop`` as one ONNX graph at ``path`` and return the path.

    ``loop`` is a ``diffpol.diffusion.SamplingLoop`` nn.Module:
    ``forward(obs_norm [B,To,obs_dim], noise [B,T,act_dim], step_noise [B,K,T,act_dim] | None)
    -> [B,T,act_dim]`` with attributes ``sampler``, ``steps`` and ``step_noise_steps`` (K).
    The graph is optimised (a loop whose ``spec`` describes a ReLU MLP denoising loop is
    built directly as one ReLU network, ``relu_network``; any other is traced and slimmed,
    ``graph_passes.slim``; ``slim=False`` skips both, ``relu_network=False`` the first), run
    with onnxruntime on fresh random inputs at ``validate_batch_sizes`` and compared with
    the PyTorch module; if any action differs by more than ``atol`` (normalised units) an
    ``ExportValidationError`` is raised and nothing is written. (An optimised graph that
    fails is logged and the next one tried, down to the plain traced graph, so an
    optimiser bug costs speed, not the export.)
    """
    metadata = _metadata(loop, normalizer, env, window, model_version)
    graph_module = SamplerModule(
        loop,
        normalizer,
        env.action_low,
        env.action_high,
        window.n_action_steps,
        window.horizon,
    )
    was_training = loop.training
    graph_module.eval()
    threads = torch.get_num_threads()
    # Tracing and the reference runs are many tiny ops: one thread is several times
    # faster than an OpenMP team, above all on a loaded machine.
    torch.set_num_threads(1)
    try:
        _check_loop_output(graph_module, metadata)
        for label, model in _candidates(graph_module, metadata, slim, relu_network):
            try:
                _annotate(model, metadata)
                data = model.SerializeToString()
                result = validate_against_torch(
                    data,
                    graph_module,
                    metadata,
                    normalizer,
                    atol=atol,
                    batch_sizes=validate_batch_sizes,
                    seed=validation_seed,
                )
                break
            except Exception as exc:  # an optimised graph that fails costs speed, not the export
                if label == "plain":
                    raise
                log.warning("the %s graph failed validation (%s); trying the next", label, exc)
    finally:
        loop.train(was_training)
        torch.set_num_threads(threads)
    log.info(
        "exported %s (%s graph): max |onnx - torch| by batch size %s (atol %g)",
        path,
        label,
        result.max_abs_error,
        atol,
    )
    return atomic_write_bytes(path, data)


def _candidates(
    graph_module: SamplerModule, metadata: ModelMetadata, slim: bool, relu_network: bool
) -> Iterator[tuple[str, onnx.ModelProto]]:
    """Graphs to try, fastest first, each built only if the previous one failed: the ReLU
    loop as one ReLU network (``relu_network``), the traced graph optimised
    (``graph_passes.slim``), the traced graph as exported. With ``slim=False`` only the
    last; with ``relu_network=False`` not the first. A builder that fails is logged and
    skipped, so an optimiser bug costs speed, not the export."""
    if slim and relu_network:
        try:
            network = _relu_network(graph_module, metadata)
        except UnsupportedLoop as exc:
            log.debug("no ReLU-network graph: %s", exc)
        except Exception as exc:  # an optimiser bug must not block the export
            log.warning("building the ReLU-network graph failed (%s)", exc)
        else:
            yield "relu-network", network
    raw = _to_onnx(graph_module, metadata)
    if slim:
        try:
            optimised = slim_graph(raw)
        except Exception as exc:  # an optimiser bug must not block the export
            log.warning("graph optimisation failed (%s); exporting the plain graph", exc)
        else:
            yield "optimised", optimised
    yield "plain", raw


def _relu_network(graph_module: SamplerModule, metadata: ModelMetadata) -> onnx.ModelProto:
    def values(name: str) -> np.ndarray:
        return getattr(graph_module, name).numpy()

    return build_relu_network(
        describe_relu_loop(graph_module.loop),
        metadata,
        *(values(n) for n in ("obs_center", "obs_scale", "act_center", "act_scale", "fallback")),
    )


def _annotate(model: onnx.ModelProto, metadata: ModelMetadata) -> None:
    del model.metadata_props[:]
    for key, value in metadata.to_props().items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "diffpol.sampler"
    model.doc_string = (
        f"diffpol {metadata.sampler}-{metadata.steps} sampler for {metadata.env.env_id}, "
        f"model_version {metadata.model_version}"
    )
    onnx.checker.check_model(model, full_check=True)


def _metadata(
    loop: SamplingLoop,
    normalizer: Normalizer,
    env: EnvShape,
    window: Window,
    model_version: str,
) -> ModelMetadata:
    missing = [a for a in ("sampler", "steps", "step_noise_steps") if not hasattr(loop, a)]
    if missing or not callable(loop):
        raise TypeError(
            f"loop must be a SamplingLoop nn.Module with attributes sampler, steps and "
            f"step_noise_steps; {type(loop).__name__} lacks {', '.join(missing) or 'forward'}"
        )
    for part, dim, name in (("obs", env.obs_dim, "obs_dim"), ("action", env.act_dim, "act_dim")):
        if getattr(normalizer, part).dim != dim:
            raise ValueError(
                f"normalizer.{part} has {getattr(normalizer, part).dim} dimensions, "
                f"env.{name} is {dim}"
            )
    return ModelMetadata(
        env=env,
        window=window,
        sampler=str(loop.sampler),
        steps=int(loop.steps),
        step_noise_steps=int(loop.step_noise_steps),
        model_version=model_version,
    )


def _example_inputs(
    metadata: ModelMetadata, normalizer: Normalizer, batch: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Observations spread like normalised data (center + scale * N(0, 1)) and unit noise."""
    obs = rng.standard_normal((batch, metadata.window.n_obs_steps, metadata.env.obs_dim))
    obs = obs * np.asarray(normalizer.obs.scale) + np.asarray(normalizer.obs.center)
    inputs = {
        "obs": obs.astype(np.float32),
        "noise": rng.standard_normal(
            (batch, metadata.window.horizon, metadata.env.act_dim), dtype=np.float32
        ),
    }
    if metadata.step_noise_steps:
        inputs["step_noise"] = rng.standard_normal(
            (batch, metadata.step_noise_steps, metadata.window.horizon, metadata.env.act_dim),
            dtype=np.float32,
        )
    return inputs


def _run_torch(graph_module: nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        args = [
            torch.from_numpy(inputs[name])
            for name in ("obs", "noise", "step_noise")
            if name in inputs
        ]
        return graph_module(*args).numpy()


def _check_loop_output(graph_module: SamplerModule, metadata: ModelMetadata) -> None:
    batch = 2
    inputs = {
        "obs": np.zeros((batch, metadata.window.n_obs_steps, metadata.env.obs_dim), np.float32),
        "noise": np.zeros((batch, metadata.window.horizon, metadata.env.act_dim), np.float32),
    }
    if metadata.step_noise_steps:
        inputs["step_noise"] = np.zeros(
            (batch, metadata.step_noise_steps, metadata.window.horizon, metadata.env.act_dim),
            np.float32,
        )
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in inputs.items())
    try:
        with torch.inference_mode():
            raw = graph_module.loop(*[torch.from_numpy(v) for v in inputs.values()])
    except Exception as exc:
        raise ValueError(
            f"the loop fails on inputs shaped from the env and window ({shapes}): {exc}; "
            "check that the window, the env shape and the loop's own sizes agree"
        ) from exc
    expected = (batch, metadata.window.horizon, metadata.env.act_dim)
    if tuple(raw.shape) != expected:
        raise ValueError(
            f"loop returned shape {list(raw.shape)} for batch {batch}; expected "
            f"[B, horizon, act_dim] = {list(expected)}: check window.horizon and env.act_dim"
        )


def _to_onnx(graph_module: SamplerModule, metadata: ModelMetadata) -> onnx.ModelProto:
    rng = np.random.default_rng(12345)
    example = {
        "obs": rng.standard_normal(
            (2, metadata.window.n_obs_steps, metadata.env.obs_dim), dtype=np.float32
        ),
        "noise": rng.standard_normal(
            (2, metadata.window.horizon, metadata.env.act_dim), dtype=np.float32
        ),
    }
    if metadata.step_noise_steps:
        example["step_noise"] = rng.standard_normal(
            (2, metadata.step_noise_steps, metadata.window.horizon, metadata.env.act_dim),
            dtype=np.float32,
        )
    names = list(example)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice and tracer warnings about Python
        # floats: the floats are the intended constants (see the module docstring).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph_module,
            tuple(torch.from_numpy(v) for v in example.values()),
            buffer,
            input_names=names,
            output_names=["action"],
            dynamic_axes={name: {0: "batch"} for name in [*names, "action"]},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    inputs = [i.name for i in model.graph.input]
    if inputs != names:
        unused = [n for n in names if n not in inputs]
        raise ExportValidationError(
            f"the exported graph has no input(s) {unused}: the loop's output does not depend "
            "on them (a loop that ignores its observations or noise is a bug)"
        )
    return model


def validate_against_torch(
    model_bytes: bytes,
    graph_module: nn.Module,
    metadata: ModelMetadata,
    normalizer: Normalizer,
    *,
    atol: float = DEFAULT_ATOL,
    batch_sizes: Sequence[int] = VALIDATION_BATCH_SIZES,
    seed: int = 0,
) -> ValidationResult:
    """Run the graph and the module on the same random inputs; raise if they disagree."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    scale = np.asarray(normalizer.action.scale, np.float32)
    low = np.asarray(metadata.env.action_low, np.float32)
    high = np.asarray(metadata.env.action_high, np.float32)
    errors: dict[int, float] = {}
    for batch in batch_sizes:
        inputs = _example_inputs(metadata, normalizer, batch, rng)
        expected = _run_torch(graph_module, inputs)
        (actual,) = session.run(["action"], inputs)
        shape = (batch, metadata.window.n_action_steps, metadata.env.act_dim)
        if actual.shape != shape or actual.dtype != np.float32:
            raise ExportValidationError(
                f"graph output is {actual.dtype}{list(actual.shape)} at batch {batch}, "
                f"expected float32{list(shape)}"
            )
        if not (np.all(actual >= low) and np.all(actual <= high)):
            raise ExportValidationError(f"graph output leaves the action bounds at batch {batch}")
        error = float(np.max(np.abs(actual - expected) / scale))
        errors[batch] = error
        if not error <= atol:  # also catches NaN
            raise ExportValidationError(
                f"exported graph differs from the PyTorch loop by {error:.3g} (normalised "
                f"action units) at batch {batch}, above the tolerance {atol:g}: the graph "
                "does not reproduce the module (an op exported wrongly, or the loop's "
                "output depends on something other than its inputs); nothing was written"
            )
        if batch > 1:
            # Rows must not interact: the first row alone gives the same actions.
            (alone,) = session.run(["action"], {k: v[:1] for k, v in inputs.items()})
            row_error = float(np.max(np.abs(alone - actual[:1]) / scale))
            if not row_error <= atol:
                raise ExportValidationError(
                    f"row 0 of a batch of {batch} differs from the same row run alone by "
                    f"{row_error:.3g}: the loop mixes the rows of a batch (batch statistics?)"
                )
    return ValidationResult(errors, atol)


def count_nodes(path: str | Path) -> int:
    """Number of nodes in a saved graph (for reports)."""
    return len(onnx.load(str(path), load_external_data=False).graph.node)
