"""The Arrow form of ``diffpol.v1.Transition``, derived from the proto descriptor.

The proto message is the schema of record; this module is the only place that maps it to
Arrow, so a field added to the proto appears on the data bus without a second edit.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from google.protobuf.descriptor import FieldDescriptor

from diffpol.contracts.errors import ContractError
from diffpol.v1 import transition_pb2

# Bump on any change to Transition that a reader must know about.
# v1: episode_id .. expert_action. v2 adds task and success (manipulation).
SCHEMA_VERSION = 2
# Fields added after v1, with the version that added them: a batch of an older version
# lacks them, is still valid as that version, and upgrade_batch fills them.
ADDED_IN = {"task": 2, "success": 2}

_SCALAR_TYPES = {
    FieldDescriptor.TYPE_INT64: pa.int64(),
    FieldDescriptor.TYPE_INT32: pa.int32(),
    FieldDescriptor.TYPE_FLOAT: pa.float32(),
    FieldDescriptor.TYPE_BOOL: pa.bool_(),
    FieldDescriptor.TYPE_STRING: pa.string(),
}
# Vector fields and the dimension that sets their width.
_WIDTH_OF = {"obs": "obs_dim", "action": "act_dim", "expert_action": "act_dim"}
# Vector fields a producer may leave null (a label the data policy does not have).
_NULLABLE = {"expert_action", "success"}


def _is_repeated(field: FieldDescriptor) -> bool:
    # `is_repeated` is the newer API; `label` the older one. Support both runtimes.
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return field.label == FieldDescriptor.LABEL_REPEATED


def transition_schema(obs_dim: int, act_dim: int, version: int = SCHEMA_VERSION) -> pa.Schema:
    """Arrow schema of Transition rows for an env with these dimensions, as of schema
    ``version`` (the current one unless reading an older batch)."""
    if obs_dim < 1 or act_dim < 1:
        raise ContractError(f"obs_dim and act_dim must be >= 1, got {obs_dim} and {act_dim}")
    _check_version(version)
    dims = {"obs_dim": obs_dim, "act_dim": act_dim}
    fields = []
    for f in transition_pb2.Transition.DESCRIPTOR.fields:
        if ADDED_IN.get(f.name, 1) > version:
            continue
        if f.type not in _SCALAR_TYPES:
            raise TypeError(f"Transition.{f.name}: proto type {f.type} has no Arrow mapping")
        arrow_type = _SCALAR_TYPES[f.type]
        if _is_repeated(f):
            arrow_type = pa.list_(arrow_type, dims[_WIDTH_OF[f.name]])
        fields.append(pa.field(f.name, arrow_type, nullable=f.name in _NULLABLE))
    metadata = {
        b"diffpol.schema_version": str(version).encode(),
        b"diffpol.obs_dim": str(obs_dim).encode(),
        b"diffpol.act_dim": str(act_dim).encode(),
    }
    return pa.schema(fields, metadata=metadata)


def validate_batch(
    batch: pa.RecordBatch | pa.Table, obs_dim: int, act_dim: int
) -> pa.RecordBatch | pa.Table:
    """Check a batch against the Transition schema of the version its metadata names (the
    current one when it names none); raise ContractError listing every problem.

    Also rejects NaN/Inf in observations, actions and rewards: a non-finite value in
    training data silently poisons the normaliser and the loss.
    """
    version = batch_schema_version(batch.schema)
    expected = transition_schema(obs_dim, act_dim, version)
    problems = []
    names = set(batch.schema.names)
    missing = [f.name for f in expected if f.name not in names]
    extra = sorted(names - set(expected.names))
    if missing:
        problems.append(f"missing column(s): {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected column(s): {', '.join(extra)}")
    for f in expected:
        if f.name not in names:
            continue
        actual = batch.schema.field(f.name)
        if actual.type != f.type:
            problems.append(f"column {f.name!r} has type {actual.type}, expected {f.type}")
        elif not f.nullable and batch.column(f.name).null_count:
            problems.append(f"column {f.name!r} has {batch.column(f.name).null_count} null(s)")
    if problems:
        raise ContractError(
            f"Transition batch does not match schema v{version}: " + "; ".join(problems)
        )
    for name in ("obs", "action", "expert_action", "reward"):
        values = _float_values(batch.column(name))
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise ContractError(f"column {name!r} has {bad} non-finite value(s) (NaN or Inf)")
    return batch


def batch_to_envelope(
    batch: pa.RecordBatch | pa.Table, *, env_id: str, data_policy: str, obs_dim: int, act_dim: int
) -> transition_pb2.TransitionBatch:
    """Validate a batch and wrap it as Arrow IPC bytes in a TransitionBatch message."""
    validate_batch(batch, obs_dim, act_dim)
    version = batch_schema_version(batch.schema)
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    table = table.replace_schema_metadata(transition_schema(obs_dim, act_dim, version).metadata)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return transition_pb2.TransitionBatch(
        schema_version=version,
        env_id=env_id,
        data_policy=data_policy,
        obs_dim=obs_dim,
        act_dim=act_dim,
        arrow_ipc=sink.getvalue(),
    )


def batch_from_envelope(message: transition_pb2.TransitionBatch) -> pa.Table:
    """Read and validate the Arrow rows of a TransitionBatch message."""
    if message.schema_version > SCHEMA_VERSION:
        raise ContractError(
            f"TransitionBatch has schema version {message.schema_version}, newer than the "
            f"{SCHEMA_VERSION} this reader supports: upgrade diffpol-contracts"
        )
    if message.schema_version < 1:
        raise ContractError(f"TransitionBatch has invalid schema version {message.schema_version}")
    if not message.env_id:
        raise ContractError("TransitionBatch has no env_id")
    try:
        table = pa.ipc.open_stream(message.arrow_ipc).read_all()
    except pa.ArrowInvalid as exc:
        raise ContractError(
            f"TransitionBatch.arrow_ipc is not a readable Arrow stream: {exc}"
        ) from exc
    return validate_batch(table, message.obs_dim, message.act_dim)


def _check_version(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise ContractError(
            f"batch follows Transition schema v{version}, newer than v{SCHEMA_VERSION} "
            "supported here: upgrade diffpol-contracts"
        )
    if version < 1:
        raise ContractError(f"invalid Transition schema version {version} (versions start at 1)")


def batch_schema_version(schema: pa.Schema) -> int:
    """The Transition schema version an Arrow schema's metadata names (current if none)."""
    raw = (schema.metadata or {}).get(b"diffpol.schema_version")
    try:
        version = SCHEMA_VERSION if raw is None else int(raw)
    except ValueError:
        raise ContractError(f"batch metadata has an invalid schema version {raw!r}") from None
    _check_version(version)
    return version


def upgrade_batch(table: pa.Table, obs_dim: int, act_dim: int) -> pa.Table:
    """A valid batch of any supported version as the current version: fields added since
    read as their documented defaults (v1 -> v2: task "" and success null)."""
    validate_batch(table, obs_dim, act_dim)
    current = transition_schema(obs_dim, act_dim)
    n = table.num_rows
    defaults = {"task": pa.array([""] * n, pa.string()), "success": pa.nulls(n, pa.bool_())}
    columns = [
        table.column(f.name) if f.name in table.schema.names else defaults[f.name] for f in current
    ]
    return pa.Table.from_arrays(columns, schema=current)


def _float_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        column = column.flatten()  # null lists contribute no values
    return column.to_numpy(zero_copy_only=False)


def fixed_list_values(
    column: pa.ChunkedArray | pa.Array, width: int, *, keep_null_slots: bool = False
) -> np.ndarray:
    """A fixed_size_list<float32>[width] column as a ``[n, width]`` float32 array."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        if keep_null_slots:
            # .values ignores the list-level validity (and the slice offset handled below).
            values = chunk.values.slice(chunk.offset * width, len(chunk) * width)
        else:
            values = chunk.flatten()
        parts.append(values.to_numpy(zero_copy_only=False).reshape(-1, width))
    if not parts:
        return np.zeros((0, width), np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def fixed_list_array(values: np.ndarray) -> pa.FixedSizeListArray:
    """``[n, ...]`` values as a fixed_size_list<float32> column, each row flattened."""
    flat = np.ascontiguousarray(values, np.float32)
    flat = flat.reshape(len(values), int(np.prod(values.shape[1:])))
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])
