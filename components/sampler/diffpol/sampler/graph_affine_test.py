from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from diffpol.sampler.graph_passes import slim

RNG = np.random.default_rng(0)


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _model(nodes, inputs, outputs, initializers):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _run(model, feeds):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def _assert_same(model, slimmed, feeds_by_batch):
    onnx.checker.check_model(slimmed, full_check=True)
    for feeds in feeds_by_batch:
        for expected, actual in zip(_run(model, feeds), _run(slimmed, feeds), strict=True):
            np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_a_ddim_update_folds_into_gemms():
    # eps = h @ W.T + b; x0 = clip(1.5 x - 0.3 eps); out = 0.9 x0 + eps / 4 ; also x - eps
    nodes = [
        helper.make_node("Gemm", ["h", "W", "b"], ["eps"], transB=1),
        helper.make_node("Mul", ["x", "a"], ["ax"]),
        helper.make_node("Mul", ["c", "eps"], ["ce"]),
        helper.make_node("Add", ["ax", "ce"], ["pre"]),
        helper.make_node("Clip", ["pre", "lo", "hi"], ["x0"]),
        helper.make_node("Mul", ["x0", "d"], ["dx0"]),
        helper.make_node("Div", ["eps", "four"], ["eps4"]),
        helper.make_node("Add", ["dx0", "eps4"], ["out"]),
        helper.make_node("Gemm", ["h", "W"], ["plain"], transB=1),
        helper.make_node("Mul", ["x", "a"], ["ax2"]),
        helper.make_node("Sub", ["ax2", "plain"], ["diff"]),
    ]
    inits = [
        _init("W", RNG.standard_normal((4, 8))),
        _init("b", RNG.standard_normal(4)),
        _init("a", 1.5),
        _init("c", -0.3),
        _init("d", 0.9),
        _init("four", 4.0),
        _init("lo", -1.0),
        _init("hi", 1.0),
    ]
    model = _model(
        nodes,
        [("h", ["batch", 8]), ("x", ["batch", 4])],
        [("out", ["batch", 4]), ("diff", ["batch", 4])],
        inits,
    )
    slimmed = slim(model)
    ops = Counter(n.op_type for n in slimmed.graph.node)
    assert ops["Mul"] == ops["Div"] == ops["Add"] == ops["Sub"] == 0, ops
    assert ops["Clip"] == 1
    feeds = [
        {
            "h": RNG.standard_normal((b, 8)).astype(np.float32),
            "x": RNG.standard_normal((b, 4)).astype(np.float32),
        }
        for b in (1, 5)
    ]
    _assert_same(model, slimmed, feeds)


def test_a_concatenated_conditioning_is_split_and_its_shared_part_projected_once():
    nodes, inits = [], [_init("W", RNG.standard_normal((6, 4 + 3 + 5))), _init("b", np.ones(6))]
    x = "x"
    for step in range(3):
        inits.append(_init(f"emb{step}", RNG.standard_normal(5)))
        nodes += [
            helper.make_node("Shape", [x], [f"shape{step}"]),
            helper.make_node("Slice", [f"shape{step}", "zero", "one"], [f"b{step}"]),
            helper.make_node("Concat", [f"b{step}", "five"], [f"target{step}"], axis=0),
            helper.make_node("Expand", [f"emb{step}", f"target{step}"], [f"e{step}"]),
            helper.make_node("Concat", [x, "obs", f"e{step}"], [f"in{step}"], axis=1),
            helper.make_node("Gemm", [f"in{step}", "W", "b"], [f"h{step}"], transB=1),
            helper.make_node("Relu", [f"h{step}"], [f"r{step}"]),
            helper.make_node("Slice", [f"r{step}", "zero", "four", "one"], [f"x{step + 1}"]),
        ]
        x = f"x{step + 1}"
    inits += [
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([4], np.int64), "four"),
        numpy_helper.from_array(np.array([5], np.int64), "five"),
    ]
    model = _model(nodes, [("x", ["batch", 4]), ("obs", ["batch", 3])], [(x, ["batch", 4])], inits)
    slimmed = slim(model)
    ops = Counter(n.op_type for n in slimmed.graph.node)
    assert ops["Concat"] == ops["Expand"] == ops["Shape"] == 0, ops
    # Per step: the observation term with the step's constant folded in, then x's Gemm.
    assert len(slimmed.graph.node) == 3 * 4, ops  # + Relu, Slice
    feeds = [
        {
            "x": RNG.standard_normal((b, 4)).astype(np.float32),
            "obs": RNG.standard_normal((b, 3)).astype(np.float32),
        }
        for b in (1, 3)
    ]
    _assert_same(model, slimmed, feeds)


def test_gemm_outputs_used_elsewhere_are_kept_intact():
    nodes = [
        helper.make_node("Gemm", ["h", "W", "b"], ["eps"], transB=1),
        helper.make_node("Mul", ["x", "a"], ["ax"]),
        helper.make_node("Add", ["ax", "eps"], ["out"]),
    ]
    inits = [
        _init("W", RNG.standard_normal((4, 8))),
        _init("b", RNG.standard_normal(4)),
        _init("a", 2.0),
    ]
    model = _model(
        nodes,
        [("h", ["batch", 8]), ("x", ["batch", 4])],
        [("out", ["batch", 4]), ("eps", ["batch", 4])],
        inits,
    )
    slimmed = slim(model)
    # eps is a graph output: its Gemm stays as it is (2 x + eps may be recombined).
    producers = [n for n in slimmed.graph.node if "eps" in n.output]
    assert len(producers) == 1 and list(producers[0].input) == ["h", "W", "b"]
    feeds = [
        {
            "h": RNG.standard_normal((2, 8)).astype(np.float32),
            "x": RNG.standard_normal((2, 4)).astype(np.float32),
        }
    ]
    _assert_same(model, slimmed, feeds)
