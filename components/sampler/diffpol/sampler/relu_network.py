"""Build a ReLU denoising loop directly as one deep ReLU network: a few fused Gemms per step.

At batch 1 onnxruntime's cost is mostly per node, whatever the node computes. After
``graph_affine``'s folding, the traced DDIM loop of a 3 x 128 ReLU denoiser
still has ~9 nodes per step: the layers, the clip of the x0 estimate and the scheduler's
affine update. For a ReLU MLP the whole unrolled loop is itself a ReLU network:

- the sample rides along as two non-negative channels, x = relu(x) - relu(-x), which a
  layer copies exactly (relu of a non-negative value is itself): through every layer
  when x0 is not clipped, else only through the clip layer (see ``build_relu_network``);
- the clip of the x0 estimate is four ReLUs, clip(z, -r, r) = relu(z) - relu(-z) -
  relu(z - r) + relu(-z - r): the first two carry z itself exactly and the last two are
  zero unless the clip is active, so an unclipped z is rounded no more than by a direct
  computation (``relu(z + r) - relu(z - r) - r`` needs two ReLUs fewer, but rounds z to the
  precision of r: it doubled the deviation from PyTorch of a trained model's DDIM-10);
- the observation term of the first layer is projected once (``U``), and the per-step
  constants (bias, timestep term) enter through a constant-one channel;
- what stays linear between two ReLUs (the output layer, the x0 estimate, the
  scheduler's update ``x' = a * x0 + b * x + std * z`` and the next first layer) is
  multiplied into one matrix, in float64.

Each step is then ``depth`` Gemm+Relu pairs (+1, and one small Gemm, when x0 is
clipped), which onnxruntime fuses into one ``FusedGemm`` each at its extended
optimisation level. On a 3 x 128 model (clipped x0 prediction, DDIM-10)
that is 5 nodes per step instead of ~9, with lower batch-1 latency than the traced graph
and batch-1024 throughput no lower (benchmarks/sampler_bench_test.py, RESULTS.md).
The values are the loop's up to float rounding (the products are formed in float64 and
rounded once); ``export_onnx`` validates the graph against PyTorch like any other and
falls back to the traced graph if this builder does not apply or the graph disagrees.

The loop is read from its ``spec`` (``diffpol.diffusion.SamplingLoopSpec``): the denoiser
(an ``MlpDenoiser`` with ``nn.Linear`` layers and ``nn.ReLU``), each step's timestep
embedding and the scheduler's own coefficients of each step's update (``StepUpdate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from diffpol.contracts.model_metadata import ModelMetadata
from diffpol.diffusion.sampling_loop import SamplingLoopSpec, StepUpdate

OPSET = 18
# Layers at least this wide do not carry the sample when x0 is clipped (see
# ``build_relu_network``).
_SIDE_GEMM_MIN_WIDTH = 128
IR_VERSION = 8  # what torch's exporter writes for opset 18; onnxruntime >= 1.14 loads it


class UnsupportedLoop(Exception):
    """The loop is not a ReLU MLP denoising loop of the form this builder understands."""


@dataclass(frozen=True)
class ReluLoop:
    """The numbers of a ReLU MLP denoising loop, float64 (weights as [out, in])."""

    first_x: np.ndarray  # [H, S]: the first layer on the sample
    first_cond: np.ndarray  # [H, C]: the first layer on the normalised, flattened obs
    first_bias: np.ndarray  # [steps, H]: bias + timestep term, per step
    hidden: tuple[tuple[np.ndarray, np.ndarray], ...]  # ([H, H], [H]) each
    out_weight: np.ndarray  # [S, H]
    out_bias: np.ndarray  # [S]
    updates: tuple[StepUpdate, ...]
    clip_range: float | None  # x0 clipped to [-r, r], or not clipped

    @property
    def sample_dim(self) -> int:
        return self.first_x.shape[1]


def describe_relu_loop(loop: nn.Module) -> ReluLoop:
    """Read a denoising loop's ``spec``; raise ``UnsupportedLoop`` saying why it has none or
    why its denoiser is not a ReLU MLP."""
    spec = getattr(loop, "spec", None)
    if not isinstance(spec, SamplingLoopSpec):
        raise UnsupportedLoop(f"{type(loop).__name__} describes no SamplingLoopSpec (spec)")
    denoiser = spec.denoiser
    try:
        act = denoiser.act
        in_sample, in_cond, in_time = denoiser.in_sample, denoiser.in_cond, denoiser.in_time
        hidden, out = list(denoiser.hidden), denoiser.out
    except AttributeError as exc:
        raise UnsupportedLoop(f"the denoiser is not a split-input MLP ({exc})") from None
    if type(act) is not nn.ReLU:
        raise UnsupportedLoop(f"the activation is {type(act).__name__}, not ReLU")
    layers = [in_sample, in_cond, in_time, *hidden, out]
    if any(type(layer) is not nn.Linear for layer in layers):
        raise UnsupportedLoop("the denoiser's layers are not all nn.Linear")
    if len(spec.updates) != int(loop.steps):
        raise UnsupportedLoop("the loop's steps and its spec's updates disagree")
    if spec.step_noise_steps != int(loop.step_noise_steps):
        raise UnsupportedLoop("step_noise_steps does not match the spec's noisy steps")
    time_terms = _linear(in_time, _f64(spec.time_features))  # [steps, H]
    first_bias = time_terms + _bias(in_sample) + _bias(in_cond)
    return ReluLoop(
        first_x=_f64(in_sample.weight),
        first_cond=_f64(in_cond.weight),
        first_bias=first_bias,
        hidden=tuple((_f64(layer.weight), _bias(layer)) for layer in hidden),
        out_weight=_f64(out.weight),
        out_bias=_bias(out),
        updates=spec.updates,
        clip_range=spec.clip_range,
    )


def _f64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()


def _bias(layer: nn.Linear) -> np.ndarray:
    return np.zeros(layer.out_features) if layer.bias is None else _f64(layer.bias)


def _linear(layer: nn.Linear, x: np.ndarray) -> np.ndarray:
    return x @ _f64(layer.weight).T + _bias(layer)


# -- the graph ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Affine:
    """``weight @ v + bias`` on a layer's input channels v (float64, weight [out, in])."""

    weight: np.ndarray
    bias: np.ndarray

    def __neg__(self) -> _Affine:
        return _Affine(-self.weight, -self.bias)

    def shifted(self, delta: float) -> _Affine:
        return _Affine(self.weight, self.bias + delta)


def _stack(*parts: _Affine) -> _Affine:
    return _Affine(np.vstack([p.weight for p in parts]), np.concatenate([p.bias for p in parts]))


def _identity(n: int) -> _Affine:
    return _Affine(np.eye(n), np.zeros(n))


def _one(inputs: int) -> _Affine:
    """The constant-one channel: relu(0 * v + 1)."""
    return _Affine(np.zeros((1, inputs)), np.ones(1))


class _Layout:
    """A layer's output channels: ``head`` (hidden units, or the clip's four ReLUs), then,
    when the layer carries them, the sample's positive and negative parts and the one."""

    def __init__(self, head: int, sample_dim: int, carries: bool = True) -> None:
        self.head, self.s = head, sample_dim
        self.width = head + (2 * sample_dim + 1 if carries else 0)

    def select(self, start: int, count: int) -> np.ndarray:
        """[count, width] matrix picking channels start..start+count."""
        m = np.zeros((count, self.width))
        m[np.arange(count), start + np.arange(count)] = 1.0
        return m

    def sample(self) -> _Affine:
        """x = x+ - x- on these channels."""
        x = self.select(self.head, self.s) - self.select(self.head + self.s, self.s)
        return _Affine(x, np.zeros(self.s))

    def carried(self) -> _Affine:
        """The carried channels (x+, x-, one), copied."""
        return _Affine(self.select(self.head, 2 * self.s + 1), np.zeros(2 * self.s + 1))


class _GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._count = 0
        self._by_value: dict[tuple, str] = {}

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, stem: str, value: np.ndarray, dtype=np.float32) -> str:
        """An initializer; equal values share one (the steps' identical hidden layers then
        read the same weights, which stay in the CPU caches)."""
        array = np.array(value, dtype, order="C")  # keeps 0-d scalars 0-d
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._by_value:
            self._by_value[key] = self.name(stem)
            self.initializers.append(numpy_helper.from_array(array, self._by_value[key]))
        return self._by_value[key]

    def node(self, op: str, inputs: Sequence[str], output: str | None = None, **attrs) -> str:
        output = output or self.name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [output], **attrs))
        return output

    def gemm(self, x: str, affine: _Affine, c: str | None = None, relu: bool = False) -> str:
        """``x @ weight.T + (c if given else bias)``, then Relu if asked (fused by
        onnxruntime). A given ``c`` must already contain the bias."""
        weight = self.const("w", affine.weight.T)  # [in, out]: measured faster than transB
        c = c if c is not None else self.const("b", affine.bias)
        y = self.node("Gemm", [x, weight, c])
        return self.node("Relu", [y]) if relu else y


def build_relu_network(
    loop: ReluLoop,
    metadata: ModelMetadata,
    obs_center: np.ndarray,
    obs_scale: np.ndarray,
    act_center: np.ndarray,
    act_scale: np.ndarray,
    fallback: np.ndarray,
) -> onnx.ModelProto:
    """The sampler graph (same inputs, output and semantics as ``export.SamplerModule``).

    Step i reads ``v``, the previous step's last layer (the noise for step 0), on which the
    sample x_i is an affine map. The sample is carried through every layer, except for a
    clipped x0 and layers of ``_SIDE_GEMM_MIN_WIDTH`` or more: there it rides in the clip
    layer's small output only, put in through the Gemm's C input by a small side Gemm on
    ``v``. Carrying it made a 128-wide layer 131 wide, which onnxruntime's kernels run
    like a 144-wide one (13% of the batch-1024 throughput; at batch 1 the side Gemm costs
    what the narrower layers save); at width 64 the side Gemm costs more than it saves
    (benchmarks/RESULTS.md).
    """
    m = metadata
    s, width = loop.sample_dim, loop.first_x.shape[0]
    if (
        s != m.window.horizon * m.env.act_dim
        or loop.first_cond.shape[1] != m.window.n_obs_steps * m.env.obs_dim
    ):
        raise UnsupportedLoop("the denoiser's sizes do not match horizon, act_dim and obs")
    clip = loop.clip_range is not None
    side_gemm = clip and width >= _SIDE_GEMM_MIN_WIDTH
    hidden = _Layout(width, s, carries=not side_gemm)
    last = _Layout(4 * s, s) if clip else hidden  # each step's last layer
    g = _GraphBuilder()
    obs = g.node("Flatten", ["obs"], axis=1)  # [B, To * obs_dim]
    noise = g.node("Flatten", ["noise"], axis=1)  # [B, S]
    step_noise = None
    if m.step_noise_steps:
        shape = g.const("shape", [0, m.step_noise_steps, s], np.int64)
        step_noise = g.node("Reshape", ["step_noise", shape])  # [B, K, S]

    # The observation, normalised, through the first layer.
    cond_weight = loop.first_cond / np.tile(obs_scale, m.window.n_obs_steps)
    cond_bias = -cond_weight @ np.tile(obs_center, m.window.n_obs_steps)

    def first_layer(i: int, x: _Affine) -> _Affine:
        """Step i's first layer, given the sample x_i on its input channels."""
        h = _Affine(loop.first_x @ x.weight, loop.first_x @ x.bias + loop.first_bias[i] + cond_bias)
        return _stack(h, x, -x, _one(x.weight.shape[1])) if hidden.width > width else h

    def clip_terms(estimate: _Affine, x: _Affine, one: _Affine) -> _Affine:
        """The clip layer's outputs before the ReLU: the x0 estimate for its four ReLUs,
        and the sample and the one for the next step."""
        r = loop.clip_range
        return _stack(
            estimate, -estimate, estimate.shifted(-r), (-estimate).shifted(-r), x, -x, one
        )

    def side(i: int, x: _Affine) -> _Affine:
        """What step i's side Gemm adds to its clip layer, given the sample x_i: the x0
        estimate's terms outside the output layer (q * x_i + p * bias), x_i and the one."""
        up = loop.updates[i]
        p, q = up.x0_from_output, up.x0_from_sample
        estimate = _Affine(q * x.weight, q * x.bias + p * loop.out_bias)
        return clip_terms(estimate, x, _one(x.weight.shape[1]))

    def clip_layer(i: int) -> _Affine:
        """Step i's clip layer on the last hidden layer (without the side Gemm's terms)."""
        up = loop.updates[i]
        p, q = up.x0_from_output, up.x0_from_sample
        out = _Affine(p * loop.out_weight @ hidden.select(0, width), np.zeros(s))
        if side_gemm:  # the rest, -r included, comes from the side Gemm
            rest = _Affine(np.zeros((2 * s + 1, hidden.width)), np.zeros(2 * s + 1))
            return _stack(out, -out, out, -out, rest)
        x = hidden.sample()
        estimate = _Affine(out.weight + q * x.weight, p * loop.out_bias)
        one = _Affine(hidden.select(hidden.width - 1, 1), np.zeros(1))
        return clip_terms(estimate, x, one)

    def sample_after(i: int) -> _Affine:
        """x_{i+1} (noise apart) on step i's last layer's channels."""
        up = loop.updates[i]
        a, b = up.x0_weight, up.sample_weight
        if clip:
            # clip(x0) = relu(x0) - relu(-x0) - relu(x0 - r) + relu(-x0 - r)
            clipped = last.select(0, s) - last.select(s, s) - last.select(2 * s, s)
            clipped += last.select(3 * s, s)
            return _Affine(a * clipped + b * last.sample().weight, np.zeros(s))
        p, q = up.x0_from_output, up.x0_from_sample
        h = last.select(0, width)
        weight = a * p * loop.out_weight @ h + (a * q + b) * last.sample().weight
        return _Affine(weight, a * p * loop.out_bias)

    gathered: dict[int, str] = {}

    def with_noise(i: int, k: int, base: str, weight: np.ndarray) -> str:
        """``base + std_i * weight @ z_k``: step i's noise through a linear map."""
        if k not in gathered:
            index = g.const("k", np.array(k, np.int64), np.int64)
            gathered[k] = g.node("Gather", [step_noise, index], axis=1)  # [B, S]
        std = loop.updates[i].noise_std
        return g.gemm(gathered[k], _Affine(std * weight, np.zeros(weight.shape[0])), c=base)

    step0 = first_layer(0, _identity(s))
    obs_rows = np.vstack([cond_weight, np.zeros((len(step0.bias) - width, cond_weight.shape[1]))])
    u = g.gemm(obs, _Affine(obs_rows, step0.bias))  # obs term + step 0's constants, once
    v, k = noise, 0
    for i in range(len(loop.updates)):
        x = _identity(s) if i == 0 else sample_after(i - 1)
        noisy = i > 0 and loop.updates[i - 1].stochastic  # x_i has noise in it
        layer = first_layer(i, x)
        if i > 0:  # constants beyond step 0's (in u) enter through the one channel
            layer = _Affine(layer.weight.copy(), layer.bias)
            layer.weight[:, -1] += layer.bias - step0.bias
        c = with_noise(i - 1, k, u, first_layer(i, _identity(s)).weight) if noisy else u
        h = g.gemm(v, layer, c=c, relu=True)
        for weight_h, bias_h in loop.hidden:
            layer = _Affine(weight_h @ hidden.select(0, width), bias_h)
            if not side_gemm:
                layer = _stack(layer, hidden.carried())
            h = g.gemm(h, layer, relu=True)
        if side_gemm:
            extra = side(i, x)
            c = None
            if noisy:
                c = with_noise(i - 1, k, g.const("b", extra.bias), side(i, _identity(s)).weight)
            h = g.gemm(h, clip_layer(i), c=g.gemm(v, extra, c=c), relu=True)
        elif clip:
            h = g.gemm(h, clip_layer(i), relu=True)
        k += int(noisy)
        v = h

    # The last update, the first Ta actions, unnormalised: one Gemm.
    n = len(loop.updates) - 1
    ta = m.window.n_action_steps * m.env.act_dim
    out_scale = np.tile(act_scale, m.window.n_action_steps)
    x_final = sample_after(n)
    final = _Affine(
        out_scale[:, None] * x_final.weight[:ta],
        out_scale * x_final.bias[:ta] + np.tile(act_center, m.window.n_action_steps),
    )
    c = None
    if loop.updates[n].stochastic:
        c = with_noise(n, k, g.const("b", final.bias), np.eye(s)[:ta] * out_scale[:, None])
    y = g.gemm(v, final, c=c)
    # NaN (float overflow on absurd inputs) -> the fallback action; then the bounds.
    fallback_name = g.const("fallback", np.tile(fallback, m.window.n_action_steps))
    y = g.node("Where", [g.node("IsNaN", [y]), fallback_name, y])
    if len(set(m.env.action_low)) == 1 and len(set(m.env.action_high)) == 1:  # one node
        y = g.node(
            "Clip", [y, g.const("low", m.env.action_low[0]), g.const("high", m.env.action_high[0])]
        )
    else:
        y = g.node("Max", [y, g.const("low", np.tile(m.env.action_low, m.window.n_action_steps))])
        y = g.node("Min", [y, g.const("high", np.tile(m.env.action_high, m.window.n_action_steps))])
    shape = g.const("shape", [0, m.window.n_action_steps, m.env.act_dim], np.int64)
    g.node("Reshape", [y, shape], output="action")

    def tensor(name: str, dims: Sequence[int]) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *dims])

    inputs = [
        tensor("obs", [m.window.n_obs_steps, m.env.obs_dim]),
        tensor("noise", [m.window.horizon, m.env.act_dim]),
    ]
    if m.step_noise_steps:
        inputs.append(tensor("step_noise", [m.step_noise_steps, m.window.horizon, m.env.act_dim]))
    graph = helper.make_graph(
        g.nodes,
        "diffpol_relu_sampler",
        inputs,
        [tensor("action", [m.window.n_action_steps, m.env.act_dim])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model
