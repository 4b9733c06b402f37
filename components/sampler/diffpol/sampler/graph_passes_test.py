from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from diffpol.sampler.graph_passes import slim


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _const(name, value):
    return helper.make_node(
        "Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, np.float32), name)
    )


def _batch_plumbing_model(steps: int):
    """x -> (x + expand(emb, [batch, 4])) * 0.5, repeated: the shape chain an unrolled
    torch loop exports at every step, with one literal Constant per step."""
    nodes, x = [], "x"
    for i in range(steps):
        nodes += [
            helper.make_node("Shape", [x], [f"shape{i}"]),
            _const(f"half{i}", 0.5),
            helper.make_node("Expand", ["emb", f"shape{i}"], [f"e{i}"]),
            helper.make_node("Add", [x, f"e{i}"], [f"s{i}"]),
            helper.make_node("Mul", [f"s{i}", f"half{i}"], [f"y{i}"]),
        ]
        x = f"y{i}"
    nodes.append(helper.make_node("Identity", [x], ["out"]))
    emb = numpy_helper.from_array(np.arange(4, dtype=np.float32), "emb")
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])],
        [emb],
    )


def test_merges_shape_chains_and_duplicate_constants_keeping_values():
    model = _batch_plumbing_model(steps=5)
    slimmed = slim(model)
    onnx.checker.check_model(slimmed, full_check=True)
    ops = Counter(n.op_type for n in slimmed.graph.node)
    assert ops["Shape"] == 1 and ops["Constant"] == 0
    assert len(slimmed.graph.initializer) == 2  # emb and one 0.5
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
        np.testing.assert_array_equal(_run(slimmed, {"x": x})[0], _run(model, {"x": x})[0])


def test_merges_common_subexpressions_but_not_random_ops():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Relu", ["x"], ["b"]),
        helper.make_node("RandomNormalLike", ["x"], ["r1"]),
        helper.make_node("RandomNormalLike", ["x"], ["r2"]),
        helper.make_node("Sub", ["a", "b"], ["zero"]),
        helper.make_node("Sub", ["r1", "r2"], ["diff"]),
        helper.make_node("Add", ["zero", "diff"], ["out"]),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])],
    )
    slimmed = slim(model)
    ops = Counter(n.op_type for n in slimmed.graph.node)
    assert ops["Relu"] == 1
    assert ops["RandomNormalLike"] == 2  # two draws stay two draws
    out = _run(slimmed, {"x": np.ones(2, np.float32)})[0]
    assert np.all(out != 0)


def test_drops_dead_nodes_and_keeps_graph_outputs():
    nodes = [
        helper.make_node("Relu", ["x"], ["unused"]),
        helper.make_node("Neg", ["x"], ["out1"]),
        helper.make_node("Neg", ["x"], ["out2"]),  # duplicate, but a graph output: kept
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [
            helper.make_tensor_value_info("out1", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("out2", TensorProto.FLOAT, [2]),
        ],
    )
    slimmed = slim(model)
    assert [n.op_type for n in slimmed.graph.node] == ["Neg", "Neg"]
    out1, out2 = _run(slimmed, {"x": np.array([1, -2], np.float32)})
    np.testing.assert_array_equal(out1, [-1, 2])
    np.testing.assert_array_equal(out2, [-1, 2])


def _mish_reference(x):
    x = x.astype(np.float64)
    return x * np.tanh(np.logaddexp(0.0, x))


def test_mish_becomes_vectorised_ops_with_the_same_values():
    nodes = [
        helper.make_node("Softplus", ["x"], ["sp"]),
        helper.make_node("Tanh", ["sp"], ["th"]),
        helper.make_node("Mul", ["th", "x"], ["pattern"]),  # either operand order
        helper.make_node("Mish", ["x"], ["op"]),
        helper.make_node("Softplus", ["x"], ["sp2"]),
        helper.make_node("Tanh", ["sp2"], ["kept"]),  # also a graph output: not rewritten
        helper.make_node("Mul", ["x", "kept"], ["shared"]),
    ]
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n"])
        for n in ("pattern", "op", "kept", "shared")
    ]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])], outputs)
    slimmed = slim(model)
    ops = Counter(n.op_type for n in slimmed.graph.node)
    # Both rewrites compute the same chain from x, which CSE then shares.
    assert ops["Mish"] == 0 and ops["Softplus"] == 1 and ops["Exp"] == 1
    x = np.concatenate([np.linspace(-100, 100, 2001), [-1e30, 1e30, 88.0, 89.0, 0.0]])
    x = x.astype(np.float32)
    pattern, op, _, shared = _run(slimmed, {"x": x})
    expected = _mish_reference(x)
    for actual in (pattern, op, shared):
        assert np.all(np.isfinite(actual))
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=3e-6)


def test_the_overflow_safe_softplus_form_of_mish_is_recognised_too():
    # x * tanh(relu(x) + log(1 + exp(-|x|))), as torch exports the trainer's FastMish
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Abs", ["x"], ["a"]),
        helper.make_node("Neg", ["a"], ["n"]),
        helper.make_node("Exp", ["n"], ["e"]),
        _const("one", 1.0),
        helper.make_node("Add", ["one", "e"], ["p"]),
        helper.make_node("Log", ["p"], ["l"]),
        helper.make_node("Add", ["r", "l"], ["sp"]),
        helper.make_node("Tanh", ["sp"], ["t"]),
        helper.make_node("Mul", ["x", "t"], ["y"]),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    slimmed = slim(model)
    ops = Counter(n.op_type for n in slimmed.graph.node)
    assert ops["Log"] == ops["Tanh"] == ops["Abs"] == 0, ops
    assert len(slimmed.graph.node) == 7
    x = np.linspace(-60, 60, 1201).astype(np.float32)
    np.testing.assert_allclose(_run(slimmed, {"x": x})[0], _mish_reference(x), rtol=1e-5, atol=3e-6)
