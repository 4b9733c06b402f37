"""Fold the affine arithmetic of a sampling loop into its Gemm nodes.

At batch 1 onnxruntime spends a fixed time per node whatever it computes, so the
scalar multiply-adds of each DDIM/DDPM update and the concatenation in front of the first
layer cost as much as the layers. Three value-preserving rewrites (up to float rounding;
``export_onnx`` checks the result against PyTorch) take them into ``Gemm``, which computes
``alpha * A @ B + beta * C``:

1. ``Gemm(Concat([x, obs, Expand(emb_t)]), W, b)`` becomes ``Gemm(x, W_x, C)`` with
   ``C = obs @ W_obs + (b + W_t @ emb_t)``: the constant part folds into a per-step bias,
   and a part that every step concatenates (the observation) is projected once, shared
   by common-subexpression elimination.
2. ``Mul(Gemm(...), s)`` or ``Div(Gemm(...), s)`` with a scalar constant ``s`` scales the
   Gemm's ``alpha`` and ``beta`` (a Gemm feeding two such products becomes two Gemms).
3. ``Add/Sub(Gemm(A, B, bias), Mul(X, s))`` becomes ``Gemm(A, B, C=s * X + bias)``, with
   ``s * X + bias`` itself one Gemm against an identity matrix when there is a bias (only
   for widths up to 64, where that product is negligible).

On a 2-layer, 64-wide ReLU DDIM-10 loop the rewrites leave 8 nodes per step instead of
12 after onnxruntime's own fusions (the latency is in benchmarks/RESULTS.md); on the
trainer's DenoisingLoop (the same network, x0 clipped, traced), 8 instead of 13. ReLU MLP
loops of the trainer's form do not come here: ``relu_network`` builds them directly as one
ReLU network, ``depth`` (+1 with a clipped x0) fused Gemms per step.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import helper, numpy_helper

_MAX_IDENTITY_WIDTH = 64
# A Gemm read by several expressions is copied into each when its weight is this small
# (e.g. a 256-wide layer's 16-wide output head), so the copies cost less than the nodes
# they save.
_MAX_CLONED_WEIGHTS = 16384
_DEFAULT_DOMAINS = ("", "ai.onnx")


class _Graph:
    """Indexes over a graph that the rewrites keep up to date."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.initializers = {i.name: i for i in self.graph.initializer}
        self.outputs = {o.name for o in self.graph.output}
        self._counter = itertools.count()
        self.refresh()
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        self.shapes: dict[str, tuple] = {}
        for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            tensor_type = value.type.tensor_type
            if tensor_type.HasField("shape"):
                self.shapes[value.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in tensor_type.shape.dim
                )

    def refresh(self) -> None:
        self.producer = {out: n for n in self.graph.node for out in n.output}
        self.consumers: dict[str, int] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers[name] = self.consumers.get(name, 0) + 1
        for name in self.outputs:
            self.consumers[name] = self.consumers.get(name, 0) + 1

    def const(self, name: str) -> np.ndarray | None:
        init = self.initializers.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def scalar(self, name: str) -> float | None:
        value = self.const(name)
        if value is None or value.size != 1 or value.dtype != np.float32:
            return None
        return float(value.reshape(()))

    def add_initializer(self, name: str, value: np.ndarray) -> str:
        if name not in self.initializers:
            init = numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name)
            self.graph.initializer.append(init)
            self.initializers[name] = init
        return name

    def fresh(self, stem: str) -> str:
        return f"{stem}__affine{next(self._counter)}"

    def private(self, name: str) -> bool:
        """Used by exactly one node and not a graph output."""
        return self.consumers.get(name) == 1 and name not in self.outputs

    def replace(self, replacements: dict[int, list[onnx.NodeProto]]) -> None:
        nodes = []
        for node in self.graph.node:
            nodes.extend(replacements.get(id(node), [node]))
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self.refresh()


def fuse_affine(model: onnx.ModelProto) -> None:
    """Apply the three rewrites to ``model`` in place (dead nodes are left for cleanup)."""
    _split_concat_gemms(_Graph(model))
    _fold_affine_expressions(_Graph(model))  # fresh shapes, including the new tensors


def _gemm_attrs(node: onnx.NodeProto) -> dict[str, float | int]:
    attrs = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}
    for a in node.attribute:
        attrs[a.name] = a.f if a.type == onnx.AttributeProto.FLOAT else a.i
    return attrs


def _is(node: onnx.NodeProto | None, op: str) -> bool:
    return node is not None and node.op_type == op and node.domain in _DEFAULT_DOMAINS


def _gemm(
    inputs: list[str], output: str, alpha: float = 1.0, beta: float = 1.0, trans_b: int = 0
) -> onnx.NodeProto:
    return helper.make_node(
        "Gemm", inputs, [output], alpha=float(alpha), beta=float(beta), transB=trans_b
    )


# -- 1. Gemm over a concatenation --------------------------------------------------------


def _concat_parts(g: _Graph, node: onnx.NodeProto):
    """(W as [in, out], attrs, [(part, width, constant row or None)]) or None."""
    if not _is(node, "Gemm") or len(node.input) < 2:
        return None
    attrs = _gemm_attrs(node)
    weight = g.const(node.input[1])
    concat = g.producer.get(node.input[0])
    if attrs["transA"] or weight is None or weight.ndim != 2 or not _is(concat, "Concat"):
        return None
    if not g.private(node.input[0]):
        return None
    if len(node.input) > 2 and node.input[2] and g.const(node.input[2]) is None:
        return None
    axis = next(a.i for a in concat.attribute if a.name == "axis")
    if axis not in (1, -1) or len(g.shapes.get(node.input[0], ())) != 2:
        return None
    matrix = weight.T if attrs["transB"] else weight
    parts = []
    for name in concat.input:
        shape = g.shapes.get(name)
        if shape is None or len(shape) != 2 or not isinstance(shape[1], int):
            return None
        expand = g.producer.get(name)
        row = None
        if _is(expand, "Expand"):
            value = g.const(expand.input[0])
            if value is not None and value.size == shape[1] and value.ndim <= 2:
                row = value.reshape(-1).astype(np.float64)
        parts.append((name, shape[1], row))
    if sum(width for _, width, _ in parts) != matrix.shape[0]:
        return None
    return matrix, attrs, parts


def _split_concat_gemms(g: _Graph) -> None:
    candidates = [(n, found) for n in g.graph.node if (found := _concat_parts(g, n))]
    # A part that several Gemms with the same weight concatenate is loop-invariant (the
    # observation): project it once, with no per-step constant, so CSE can share it.
    uses: dict[tuple[str, str], int] = {}
    for node, (_, _, parts) in candidates:
        for name, _, row in parts:
            if row is None:
                uses[node.input[1], name] = uses.get((node.input[1], name), 0) + 1
    replacements = {}
    for node, (matrix, attrs, parts) in candidates:
        weight_name = node.input[1]
        starts = np.cumsum([0] + [width for _, width, _ in parts[:-1]]).tolist()
        # (name, width, start) of each non-constant part, by role
        shared, varying = [], []
        alpha, beta = attrs["alpha"], attrs["beta"]
        bias = np.zeros(matrix.shape[1])
        if len(node.input) > 2 and node.input[2]:
            bias = bias + beta * g.const(node.input[2]).astype(np.float64)
        for (name, width, row), start in zip(parts, starts, strict=True):
            if row is not None:
                bias = bias + alpha * row @ matrix[start : start + width].astype(np.float64)
            elif uses[weight_name, name] > 1:
                shared.append((name, width, start))
            else:
                varying.append((name, width, start))
        if not varying or len(shared) + len(varying) == len(parts):
            continue  # no constant or shared part: splitting would not remove nodes

        def block(
            width: int, start: int, weight_name: str = weight_name, matrix: np.ndarray = matrix
        ) -> str:
            return g.add_initializer(
                f"{weight_name}__rows{start}_{width}", matrix[start : start + width]
            )

        nodes: list[onnx.NodeProto] = []
        carry = None
        for name, width, start in shared:
            out = g.fresh(f"{weight_name}__shared")
            inputs = [name, block(width, start)] + ([carry] if carry else [])
            nodes.append(_gemm(inputs, out, alpha=alpha))
            carry = out
        bias_name = g.add_initializer(g.fresh(f"{weight_name}__bias"), bias)
        if carry is None:
            carry = bias_name
        else:
            summed = g.fresh(f"{weight_name}__cond")
            nodes.append(helper.make_node("Add", [carry, bias_name], [summed]))
            carry = summed
        for i, (name, width, start) in enumerate(varying):
            out = node.output[0] if i == len(varying) - 1 else g.fresh(f"{weight_name}__part")
            nodes.append(_gemm([name, block(width, start), carry], out, alpha=alpha))
            carry = out
        replacements[id(node)] = nodes
    if replacements:
        g.replace(replacements)


# -- 2. affine expressions ----------------------------------------------------------------

_AFFINE_OPS = ("Add", "Sub", "Mul", "Div", "Neg")


class _Expr:
    """sum(coef * leaf) + bias, with bias a vector over the last axis (or None)."""

    def __init__(self, terms: dict[str, float] | None = None, bias: np.ndarray | None = None):
        self.terms: dict[str, float] = dict(terms or {})
        self.bias = bias

    def add(self, other: _Expr, scale: float) -> None:
        for leaf, coef in other.terms.items():
            self.terms[leaf] = self.terms.get(leaf, 0.0) + scale * coef
        if other.bias is not None:
            scaled = scale * other.bias
            self.bias = scaled if self.bias is None else self.bias + scaled


def _bias_vector(value: np.ndarray, width: int) -> np.ndarray | None:
    """A constant addend as a [width] vector, if it broadcasts along the last axis only."""
    if value.dtype != np.float32:
        return None
    if value.size == 1:
        return np.full(width, float(value.reshape(())))
    if value.shape in ((width,), (1, width)):
        return value.reshape(width).astype(np.float64)
    return None


def _linear_inputs(g: _Graph, node: onnx.NodeProto, width: int):
    """[(input, coef)] and a constant bias if ``node`` is affine in its inputs, else None."""
    if node.domain not in _DEFAULT_DOMAINS or node.op_type not in _AFFINE_OPS:
        return None
    if node.op_type == "Neg":
        return [(node.input[0], -1.0)], None
    a, b = node.input[0], node.input[1]
    if node.op_type in ("Mul", "Div"):
        s = g.scalar(b)
        if s is not None and g.const(a) is None and (node.op_type == "Mul" or s != 0):
            return [(a, s if node.op_type == "Mul" else 1.0 / s)], None
        s = g.scalar(a)
        if node.op_type == "Mul" and s is not None and g.const(b) is None:
            return [(b, s)], None
        return None
    sign = -1.0 if node.op_type == "Sub" else 1.0
    terms, bias = [], None
    for name, coef in ((a, 1.0), (b, sign)):
        value = g.const(name)
        if value is None:
            terms.append((name, coef))
            continue
        vector = _bias_vector(value, width)
        if vector is None or bias is not None:
            return None
        bias = coef * vector
    return (terms, bias) if terms else None


def _fold_affine_expressions(g: _Graph) -> None:
    """Recompute each affine result from its non-affine leaves with the fewest nodes.

    A result is "materialised" when a non-affine node or the graph output reads it; the
    affine nodes in between are inlined. One Gemm leaf whose readers are all affine
    absorbs the rest as its C input (cloned when several results read it); what remains
    is combined with Gemms against an identity matrix (narrow tensors) or elementwise ops.
    """
    forms = {}
    for node in g.graph.node:
        shape = g.shapes.get(node.output[0]) if node.output else None
        if shape and len(shape) == 2 and isinstance(shape[1], int) and None not in shape:
            form = _linear_inputs(g, node, shape[1])
            if form is not None:
                forms[node.output[0]] = (node, form)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def materialised(name: str) -> bool:
        return name in g.outputs or any(
            r.output[0] not in forms or forms[r.output[0]][0] is not r
            for r in readers.get(name, [])
        )

    def expand(name: str, inlined: list[onnx.NodeProto]) -> _Expr:
        if name not in forms or (inlined and materialised(name)):
            return _Expr({name: 1.0})
        node, (terms, bias) = forms[name]
        inlined.append(node)
        expr = _Expr(bias=None if bias is None else bias.copy())
        for leaf, coef in terms:
            expr.add(expand(leaf, inlined), coef)
        return expr

    replacements: dict[int, list[onnx.NodeProto]] = {}
    for name, (node, _) in forms.items():
        if not materialised(name):
            continue
        inlined: list[onnx.NodeProto] = []
        expr = expand(name, inlined)
        gemm = next((leaf for leaf in expr.terms if _absorbable(g, leaf, readers, forms)), None)
        nodes = _emit(g, name, expr, gemm)
        if nodes is not None and len(nodes) < len(inlined) + (gemm is not None):
            replacements[id(node)] = nodes
    if replacements:
        g.replace(replacements)


def _absorbable(g: _Graph, leaf: str, readers, forms) -> bool:
    """A Gemm result read only by affine nodes: each expression can take its own copy
    (when it has several readers, only if a copy is cheap)."""
    gemm = g.producer.get(leaf)
    if not _is(gemm, "Gemm") or leaf in g.outputs:
        return False
    if not all(r.output[0] in forms and forms[r.output[0]][0] is r for r in readers[leaf]):
        return False
    if len(readers[leaf]) > 1:
        weight = g.const(gemm.input[1])
        if weight is None or weight.size > _MAX_CLONED_WEIGHTS:
            return False
    return _gemm_c_ok(g, gemm, g.shapes.get(leaf))


def _emit(g: _Graph, out: str, expr: _Expr, gemm_leaf: str | None) -> list[onnx.NodeProto] | None:
    shape = g.shapes[out]
    width = shape[1]
    terms = [(leaf, c) for leaf, c in expr.terms.items() if c != 0.0]
    if any(g.shapes.get(leaf) != shape for leaf, _ in terms):
        return None  # broadcasting between terms: leave as it is
    bias = expr.bias if expr.bias is not None and np.any(expr.bias != 0) else None
    if gemm_leaf is not None and gemm_leaf not in dict(terms):
        gemm_leaf = None  # its coefficient cancelled out
    if gemm_leaf is None:
        if not terms:
            return None
        return _combine(g, terms, bias, width, out)
    gemm = g.producer[gemm_leaf]
    coef = dict(terms)[gemm_leaf]
    attrs = _gemm_attrs(gemm)
    rest = [(leaf, c) for leaf, c in terms if leaf != gemm_leaf]
    if len(gemm.input) > 2 and gemm.input[2]:
        c_value = g.const(gemm.input[2])
        if c_value is None:
            rest.append((gemm.input[2], coef * attrs["beta"]))
        else:
            vector = _bias_vector(c_value, width)
            scaled = coef * attrs["beta"] * vector
            bias = scaled if bias is None else bias + scaled
    nodes: list[onnx.NodeProto] = []
    if not rest and bias is None:
        c_inputs, beta = [], 1.0
    elif len(rest) == 1 and bias is None:
        c_inputs, beta = [rest[0][0]], rest[0][1]
    elif not rest:
        c_inputs = [g.add_initializer(g.fresh(f"{out}__bias"), bias)]
        beta = 1.0
    else:
        combined = g.fresh(f"{out}__addend")
        emitted = _combine(g, rest, bias, width, combined)
        if emitted is None:
            return None
        nodes += emitted
        c_inputs, beta = [combined], 1.0
    nodes.append(
        helper.make_node(
            "Gemm",
            [gemm.input[0], gemm.input[1], *c_inputs],
            [out],
            alpha=coef * attrs["alpha"],
            beta=beta,
            transA=attrs["transA"],
            transB=attrs["transB"],
        )
    )
    return nodes


def _gemm_c_ok(g: _Graph, gemm: onnx.NodeProto, shape: tuple | None) -> bool:
    """The Gemm's C is absent, a constant bias, or a tensor of the full output shape."""
    if shape is None or len(shape) != 2 or not isinstance(shape[1], int):
        return False
    if len(gemm.input) < 3 or not gemm.input[2]:
        return True
    if g.const(gemm.input[2]) is not None:
        return _bias_vector(g.const(gemm.input[2]), shape[1]) is not None
    return g.shapes.get(gemm.input[2]) == shape


def _combine(
    g: _Graph, terms: list[tuple[str, float]], bias: np.ndarray | None, width: int, out: str
) -> list[onnx.NodeProto] | None:
    """Nodes computing sum(c * t) + bias into ``out`` (terms all of the output's shape)."""
    nodes: list[onnx.NodeProto] = []
    names = [g.fresh(f"{out}__sum") for _ in range(2 * len(terms) + 2)]
    current: str | None = None
    bias_name = None if bias is None else g.add_initializer(g.fresh(f"{out}__bias"), bias)
    pending = list(terms)
    if width <= _MAX_IDENTITY_WIDTH:
        eye = g.add_initializer(f"diffpol_identity{width}", np.eye(width, dtype=np.float32))
        if bias_name is None and len(pending) >= 2:
            (t1, c1), (t2, c2) = pending[:2]
            pending = pending[2:]
            current = names.pop(0)
            nodes.append(_gemm([t1, eye, t2], current, alpha=c1, beta=c2))
        elif bias_name is not None:
            t1, c1 = pending.pop(0)
            current = names.pop(0)
            nodes.append(
                helper.make_node("Add", [t1, bias_name], [current])
                if c1 == 1.0
                else _gemm([t1, eye, bias_name], current, alpha=c1)
            )
        else:
            t1, c1 = pending.pop(0)
            current = names.pop(0)
            nodes.append(_scale(g, t1, c1, current))
        for t, c in pending:
            nxt = names.pop(0)
            nodes.append(_gemm([t, eye, current], nxt, alpha=c))
            current = nxt
    else:
        for t, c in pending:
            if current is None and c == 1.0:
                current = t
                continue
            if current is None:
                current = names.pop(0)
                nodes.append(_scale(g, t, c, current))
                continue
            nxt = names.pop(0)
            if c in (1.0, -1.0):
                nodes.append(helper.make_node("Add" if c == 1.0 else "Sub", [current, t], [nxt]))
            else:
                scaled = names.pop(0)
                nodes.append(_scale(g, t, c, scaled))
                nodes.append(helper.make_node("Add", [current, scaled], [nxt]))
            current = nxt
        if bias_name is not None:
            nxt = names.pop(0)
            nodes.append(helper.make_node("Add", [current, bias_name], [nxt]))
            current = nxt
        if not nodes:
            nodes.append(helper.make_node("Identity", [current], [out]))
    # rename the last result to `out`
    nodes[-1].output[0] = out
    return nodes


def _scale(g: _Graph, tensor: str, coef: float, out: str) -> onnx.NodeProto:
    if coef == 1.0:
        return helper.make_node("Identity", [tensor], [out])
    factor = g.add_initializer(g.fresh("diffpol_scale"), np.array(coef, np.float32))
    return helper.make_node("Mul", [tensor, factor], [out])
