"""Graph clean-up for exported sampling loops: fewer nodes, same values.

An unrolled denoising loop exported by torch's TorchScript-based exporter recomputes the
batch size at every step (``Shape -> Gather -> Unsqueeze -> Concat -> ... -> Expand``, about
eight nodes each time something like ``emb.expand(x.shape[0], -1)`` runs) and carries one
``Constant`` node per literal. At batch 1 onnxruntime spends a fixed cost per node, so this
plumbing is a large share of the latency. The passes here are generic and value-preserving:

- constants are folded (onnxruntime's basic level), constants become initializers,
  identical ones are merged;
- ``Shape`` nodes whose inputs have the same symbolic shape (ONNX shape inference, where
  an equal ``dim_param`` means an equal size) are merged;
- scalar multiply-adds and concatenations around Gemm nodes fold into them
  (``graph_affine``);
- common subexpressions (same op, same inputs, same attributes) are merged;
- nodes and initializers nothing uses are dropped;
- Mish, ``x * tanh(softplus(x))`` (softplus as an op or as relu(x) + log(1 + exp(-|x|))),
  is rewritten as ``x * (1 - 2 / ((1 + e^x)^2 + 1))``, the
  same function from vectorised ops. onnxruntime's Softplus is a scalar loop, many times
  slower on a [1024, 256] tensor than the rewrite (benchmarks/RESULTS.md); values agree
  to 2e-6 over [-100, 100]. For large x, e^x overflows to inf and
  the expression goes to x, as Mish does.

onnxruntime repeats some of this when it loads the model, but it cannot merge the shape
chains (it does not reason about symbolic shapes), and a lean artifact costs less to load.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from diffpol.sampler.graph_affine import fuse_affine

# Ops whose two calls with equal inputs may differ: never merge them.
_NONDETERMINISTIC = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "Dropout",
}


def slim(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` with the passes above applied (graphs without subgraphs)."""
    model_copy = fold_constants(model)
    graph = model_copy.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        return model_copy  # control flow: leave it to onnxruntime
    _constants_to_initializers(graph)
    _rewrite_mish(graph)
    _merge_shapes(model_copy)
    fuse_affine(model_copy)
    _merge_common_subexpressions(graph)
    _drop_unused(graph)
    return model_copy


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's basic, provider-independent optimisation, saved: constant folding
    (e.g. a time-embedding term computed from constants at every step) and removal of
    redundant nodes. The result uses standard ONNX ops only."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="diffpol-fold-") as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def _rename_inputs(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    by_value: dict[tuple, str] = {}
    renames: dict[str, str] = {}
    for init in graph.initializer:
        by_value.setdefault(_tensor_key(init), init.name)
    graph_outputs = {o.name for o in graph.output}
    kept = []
    for node in graph.node:
        value = _constant_value(node)
        if value is None or node.output[0] in graph_outputs:
            kept.append(node)
            continue
        value.name = node.output[0]
        key = _tensor_key(value)
        if key in by_value:
            renames[node.output[0]] = by_value[key]
        else:
            by_value[key] = value.name
            graph.initializer.append(value)
    del graph.node[:]
    graph.node.extend(kept)
    _rename_inputs(graph, renames)


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    attrs = {a.name: a for a in node.attribute}
    if "value" not in attrs:
        return None  # sparse or scalar-list forms: rare, keep as they are
    tensor = onnx.TensorProto()
    tensor.CopyFrom(attrs["value"].t)
    return tensor


def _tensor_key(tensor: onnx.TensorProto) -> tuple:
    array = numpy_helper.to_array(tensor)
    return (tensor.data_type, tuple(tensor.dims), array.tobytes())


def _rewrite_mish(graph: onnx.GraphProto) -> None:
    producer = {out: node for node in graph.node for out in node.output}
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    for output in graph.output:
        consumers[output.name] = consumers.get(output.name, 0) + 1

    def made_by(name: str, op: str) -> onnx.NodeProto | None:
        node = producer.get(name)
        if node is None or node.op_type != op or node.domain not in ("", "ai.onnx"):
            return None
        return node if consumers.get(name) == 1 else None

    def is_one(name: str) -> bool:
        value = initializers.get(name)
        if value is None:
            return False
        array = numpy_helper.to_array(value)
        return array.size == 1 and float(array.reshape(())) == 1.0

    def softplus(name: str, x: str) -> list[onnx.NodeProto] | None:
        """The nodes computing softplus(x) into ``name``: Softplus, or the overflow-safe
        relu(x) + log(1 + exp(-|x|)) that avoids onnxruntime's slow Softplus kernel."""
        node = made_by(name, "Softplus")
        if node is not None:
            return [node] if node.input[0] == x else None
        add = made_by(name, "Add")
        if add is None:
            return None
        for relu_out, log_out in (add.input, list(reversed(add.input))):
            relu, log = made_by(relu_out, "Relu"), made_by(log_out, "Log")
            if relu is None or log is None or relu.input[0] != x:
                continue
            inner = made_by(log.input[0], "Add")
            if inner is None:
                continue
            for one, exp_out in (inner.input, list(reversed(inner.input))):
                exp = made_by(exp_out, "Exp")
                neg = exp and made_by(exp.input[0], "Neg")
                absolute = neg and made_by(neg.input[0], "Abs")
                if absolute is not None and absolute.input[0] == x and is_one(one):
                    return [add, relu, log, inner, exp, neg, absolute]
        return None

    def mish_parts(node: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
        """(x, nodes to drop) if ``node`` is Mul(x, Tanh(softplus(x)))."""
        if node.op_type != "Mul" or node.domain not in ("", "ai.onnx"):
            return None
        for x, other in (node.input, list(reversed(node.input))):
            tanh = made_by(other, "Tanh")
            parts = tanh and softplus(tanh.input[0], x)
            if parts:
                return x, [tanh, *parts]
        return None

    one, two = "diffpol_mish_one", "diffpol_mish_two"
    removed: set[int] = set()
    replacement: dict[int, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "Mish" and node.domain in ("", "ai.onnx"):
            x = node.input[0]
        else:
            found = mish_parts(node)
            if found is None:
                continue
            x, parts = found
            removed.update(id(n) for n in parts)
        y, p = node.output[0], f"{node.output[0]}__mish"
        replacement[id(node)] = [
            helper.make_node("Exp", [x], [f"{p}_exp"]),
            helper.make_node("Add", [f"{p}_exp", one], [f"{p}_u"]),
            helper.make_node("Mul", [f"{p}_u", f"{p}_u"], [f"{p}_u2"]),
            helper.make_node("Add", [f"{p}_u2", one], [f"{p}_d"]),
            helper.make_node("Div", [two, f"{p}_d"], [f"{p}_r"]),
            helper.make_node("Sub", [one, f"{p}_r"], [f"{p}_t"]),
            helper.make_node("Mul", [x, f"{p}_t"], [y]),
        ]
    if not replacement:
        return
    nodes = []
    for node in graph.node:
        if id(node) in removed:
            continue
        nodes.extend(replacement.get(id(node), [node]))
    del graph.node[:]
    graph.node.extend(nodes)
    for name, value in ((one, 1.0), (two, 2.0)):
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))


def _merge_shapes(model: onnx.ModelProto) -> None:
    graph_outputs = {o.name for o in model.graph.output}
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, tuple] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = []
        for d in tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(("value", d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(("param", d.dim_param))
            else:
                break  # an unnamed unknown size: cannot prove equal to anything
        else:
            shapes[value.name] = tuple(dims)
    canonical: dict[tuple, str] = {}
    renames: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "Shape" or node.domain not in ("", "ai.onnx"):
            continue
        symbolic = shapes.get(node.input[0])
        if symbolic is None or node.output[0] in graph_outputs:
            continue
        attrs = tuple(sorted((a.name, a.i) for a in node.attribute))
        key = (symbolic, attrs)
        if key in canonical:
            renames[node.output[0]] = canonical[key]
        else:
            canonical[key] = node.output[0]
    _rename_inputs(model.graph, renames)


def _merge_common_subexpressions(graph: onnx.GraphProto) -> None:
    graph_outputs = {o.name for o in graph.output}
    seen: dict[tuple, list[str]] = {}
    renames: dict[str, str] = {}
    for node in graph.node:  # topological order, so inputs are renamed before they are keyed
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        if node.op_type in _NONDETERMINISTIC or set(node.output) & graph_outputs:
            continue
        key = (
            node.domain,
            node.op_type,
            tuple(node.input),
            tuple(sorted(a.SerializeToString(deterministic=True) for a in node.attribute)),
        )
        if key in seen:
            for mine, theirs in zip(node.output, seen[key], strict=True):
                renames[mine] = theirs
        else:
            seen[key] = list(node.output)


def _drop_unused(graph: onnx.GraphProto) -> None:
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    used = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)
    value_info = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
