"""Run an exported sampler graph in process with onnxruntime (no torch needed)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from diffpol.contracts import PolicySpec, draw_sampler_noise
from diffpol.contracts.model_metadata import ModelMetadata
from diffpol.sampler.errors import ArtifactError, SamplerInputError
from diffpol.sampler.providers import create_session

DEFAULT_MAX_BATCH_SIZE = 4096
_thread_local = threading.local()  # generators for unseeded draws
# A forked child must not replay its parent's "fresh" noise.
os.register_at_fork(after_in_child=lambda: _thread_local.__dict__.clear())
_ORT_LOAD_ERRORS = (
    ort_errors.Fail,
    ort_errors.InvalidProtobuf,
    ort_errors.InvalidGraph,
    ort_errors.InvalidArgument,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
)


def session_options(intra_op_threads: int = 1) -> ort.SessionOptions:
    """Options measured best for this graph shape (see benchmarks/sampler_bench_test.py).

    The graph is a chain of small dependent ops, so there is nothing for a parallel
    executor or inter-op threads to overlap. One intra-op thread gives the lowest batch-1
    latency (no thread-pool hand-offs); more threads help only large batches.
    """
    if intra_op_threads < 1:
        raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # onnxruntime's own warnings: errors only
    if intra_op_threads > 1:
        # Spinning workers burn the cores a shared machine's other processes need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxPolicy:
    """A ``diffpol.contracts.Policy`` backed by an exported sampler graph.

    ``act(obs, seed)`` draws the graph's noise with ``draw_sampler_noise(seed, ...)``, so
    the same seed gives the same actions here and through the gRPC server.
    """

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        intra_op_threads: int = 1,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.path = Path(path)
        self.max_batch_size = max_batch_size
        try:
            model = self.path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"model file {self.path} does not exist") from None
        except IsADirectoryError:
            raise ArtifactError(
                f"model path {self.path} is a directory, not an .onnx file"
            ) from None
        try:
            self._session = create_session(model, session_options(intra_op_threads), providers)
        except _ORT_LOAD_ERRORS as exc:
            raise ArtifactError(f"{self.path} is not a loadable ONNX model: {exc}") from exc
        meta = self._session.get_modelmeta().custom_metadata_map
        self.metadata = ModelMetadata.from_props(meta, str(self.path))
        self.spec: PolicySpec = self.metadata.spec
        self._check_signature()
        self._output_names = ["action"]
        m = self.metadata
        self._obs_shape = (m.window.n_obs_steps, m.env.obs_dim)
        self._noise_shape = (m.window.horizon, m.env.act_dim)
        self._step_noise_shape = (m.step_noise_steps, m.window.horizon, m.env.act_dim)

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    @property
    def model_version(self) -> str:
        return self.metadata.model_version

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"OnnxPolicy({str(self.path)!r}, env_id={m.env.env_id!r}, {m.sampler}-{m.steps}, "
            f"model_version={m.model_version!r}, providers={self.providers})"
        )

    def _check_signature(self) -> None:
        m = self.metadata
        expected_inputs = {
            "obs": [m.window.n_obs_steps, m.env.obs_dim],
            "noise": [m.window.horizon, m.env.act_dim],
        }
        if m.step_noise_steps:
            expected_inputs["step_noise"] = [m.step_noise_steps, m.window.horizon, m.env.act_dim]
        actual_inputs = {i.name: i for i in self._session.get_inputs()}
        problems = []
        if set(actual_inputs) != set(expected_inputs):
            problems.append(
                f"inputs are {sorted(actual_inputs)}, expected {sorted(expected_inputs)} "
                f"(step_noise_steps = {m.step_noise_steps})"
            )
        outputs = {o.name: o for o in self._session.get_outputs()}
        if set(outputs) != {"action"}:
            problems.append(f"outputs are {sorted(outputs)}, expected ['action']")
        expected = {**expected_inputs, "action": [m.window.n_action_steps, m.env.act_dim]}
        for name, arg in {**actual_inputs, **outputs}.items():
            if name not in expected:
                continue
            if arg.type != "tensor(float)":
                problems.append(f"{name} is {arg.type}, expected tensor(float)")
            if list(arg.shape[1:]) != expected[name] or isinstance(arg.shape[0], int):
                problems.append(
                    f"{name} has shape {arg.shape}, expected [batch, "
                    f"{', '.join(map(str, expected[name]))}] with a dynamic batch"
                )
        if problems:
            raise ArtifactError(
                f"{self.path} does not match its own metadata: " + "; ".join(problems)
            )

    # -- input checks -------------------------------------------------------------------

    def check_obs(self, obs: np.ndarray) -> np.ndarray:
        """Return ``obs`` as contiguous float32 [B, n_obs_steps, obs_dim], or raise."""
        return self._check("obs", obs, self._obs_shape)

    def _check(self, name: str, array: np.ndarray, row_shape: tuple[int, ...]) -> np.ndarray:
        array = np.asarray(array)
        if array.dtype.kind != "f":
            raise SamplerInputError(
                f"{name} must be a floating-point array, got dtype {array.dtype} "
                f"(convert with .astype(np.float32))"
            )
        if array.ndim != len(row_shape) + 1 or array.shape[1:] != row_shape:
            raise SamplerInputError(
                f"{name} must have shape [B, {', '.join(map(str, row_shape))}] for this model "
                f"({self.metadata.env.env_id}), got {list(array.shape)}"
            )
        batch = array.shape[0]
        if batch == 0:
            raise SamplerInputError(f"{name} is an empty batch (B = 0): send at least one row")
        if batch > self.max_batch_size:
            raise SamplerInputError(
                f"batch of {batch} rows exceeds max_batch_size {self.max_batch_size}: "
                "split it into smaller requests",
                code="RESOURCE_EXHAUSTED",
            )
        if array.dtype == np.float32:
            array = np.ascontiguousarray(array)
        else:
            with np.errstate(over="ignore"):  # beyond float32 becomes Inf: reported below
                array = array.astype(np.float32, order="C")
        finite = np.isfinite(array)
        if not finite.all():
            bad = np.argwhere(~finite)
            raise SamplerInputError(
                f"{name} has {len(bad)} non-finite value(s) (NaN or Inf, or beyond float32), "
                f"first at index {bad[0].tolist()}"
            )
        return array

    # -- running -------------------------------------------------------------------------

    def draw_inputs(self, batch: int, seed: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The graph's noise inputs for one call.

        With a seed: ``draw_sampler_noise(seed, ...)``, the stream every diffpol sampler
        shares. Without one: fresh noise in the same layout from a per-thread generator
        seeded by the OS (creating a generator per call, as ``draw_sampler_noise(None)``
        does, costs more than the draw itself: benchmarks/RESULTS.md).
        """
        m = self.metadata
        if seed is not None:
            if not isinstance(seed, (int, np.integer)) or seed < 0:
                raise SamplerInputError(
                    f"seed must be a non-negative integer or None, got {seed!r}"
                )
            return draw_sampler_noise(
                seed, batch, m.window.horizon, m.env.act_dim, m.step_noise_steps
            )
        rng = getattr(_thread_local, "rng", None)
        if rng is None:
            rng = _thread_local.rng = np.random.default_rng()
        noise = rng.standard_normal((batch, m.window.horizon, m.env.act_dim), dtype=np.float32)
        step_noise = None
        if m.step_noise_steps:
            step_noise = rng.standard_normal((batch, *self._step_noise_shape), dtype=np.float32)
        return noise, step_noise

    def act(self, obs: np.ndarray, seed: int | None = None) -> np.ndarray:
        """Actions [B, n_action_steps, act_dim] (env units, within bounds) for raw obs."""
        obs = self.check_obs(obs)
        noise, step_noise = self.draw_inputs(obs.shape[0], seed)
        return self.run_checked(obs, noise, step_noise)

    def run(
        self, obs: np.ndarray, noise: np.ndarray, step_noise: np.ndarray | None = None
    ) -> np.ndarray:
        """Run the graph on explicit inputs, checking each of them."""
        obs = self.check_obs(obs)
        noise = self._check("noise", noise, self._noise_shape)
        if noise.shape[0] != obs.shape[0]:
            raise SamplerInputError(f"noise has {noise.shape[0]} rows but obs has {obs.shape[0]}")
        if self.metadata.step_noise_steps:
            if step_noise is None:
                raise SamplerInputError(
                    f"this {self.metadata.sampler} model needs step_noise "
                    f"[B, {', '.join(map(str, self._step_noise_shape))}]"
                )
            step_noise = self._check("step_noise", step_noise, self._step_noise_shape)
            if step_noise.shape[0] != obs.shape[0]:
                raise SamplerInputError(
                    f"step_noise has {step_noise.shape[0]} rows but obs has {obs.shape[0]}"
                )
        elif step_noise is not None:
            raise SamplerInputError(
                "step_noise was given but this model is deterministic (step_noise_steps = 0)"
            )
        return self.run_checked(obs, noise, step_noise)

    def run_checked(
        self, obs: np.ndarray, noise: np.ndarray, step_noise: np.ndarray | None
    ) -> np.ndarray:
        """Run on inputs already checked (contiguous float32 of the right shapes)."""
        feeds = {"obs": obs, "noise": noise}
        if step_noise is not None:
            feeds["step_noise"] = step_noise
        return self._session.run(self._output_names, feeds)[0]
