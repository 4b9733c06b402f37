import numpy as np
import pyarrow as pa
import pytest

from diffpol.contracts import (
    SCHEMA_VERSION,
    ContractError,
    batch_from_envelope,
    batch_to_envelope,
    transition_schema,
    validate_batch,
)
from diffpol.v1 import transition_pb2

OBS_DIM, ACT_DIM = 3, 1


def make_batch(n: int = 5, *, with_label: bool = True) -> pa.RecordBatch:
    rng = np.random.default_rng(0)

    def vectors(width: int) -> pa.FixedSizeListArray:
        values = pa.array(rng.standard_normal(n * width).astype(np.float32))
        return pa.FixedSizeListArray.from_arrays(values, width)

    label = vectors(ACT_DIM) if with_label else pa.nulls(n, pa.list_(pa.float32(), ACT_DIM))
    columns = {
        "episode_id": pa.array(np.full(n, 7), pa.int64()),
        "seed": pa.array(np.full(n, 1234), pa.int64()),
        "step": pa.array(np.arange(n, dtype=np.int32)),
        "obs": vectors(OBS_DIM),
        "action": vectors(ACT_DIM),
        "reward": pa.array(rng.standard_normal(n).astype(np.float32)),
        "terminated": pa.array([False] * n),
        "truncated": pa.array([False] * (n - 1) + [True]),
        "expert_action": label,
    }
    return pa.RecordBatch.from_pydict(columns, schema=transition_schema(OBS_DIM, ACT_DIM))


def test_schema_follows_the_proto_message():
    schema = transition_schema(OBS_DIM, ACT_DIM)
    proto_fields = [f.name for f in transition_pb2.Transition.DESCRIPTOR.fields]
    assert schema.names == proto_fields
    assert schema.field("obs").type == pa.list_(pa.float32(), OBS_DIM)
    assert schema.field("action").type == pa.list_(pa.float32(), ACT_DIM)
    assert schema.field("expert_action").nullable
    assert not schema.field("obs").nullable
    assert schema.metadata[b"diffpol.schema_version"] == str(SCHEMA_VERSION).encode()


@pytest.mark.parametrize("with_label", [True, False])
def test_batch_round_trips_through_the_envelope_byte_exact(with_label):
    batch = make_batch(with_label=with_label)
    message = batch_to_envelope(
        batch, env_id="Pendulum-v1", data_policy="expert", obs_dim=OBS_DIM, act_dim=ACT_DIM
    )
    wire = message.SerializeToString()
    decoded = batch_from_envelope(transition_pb2.TransitionBatch.FromString(wire))
    assert decoded.equals(pa.Table.from_batches([batch]))
    again = batch_to_envelope(
        decoded, env_id="Pendulum-v1", data_policy="expert", obs_dim=OBS_DIM, act_dim=ACT_DIM
    )
    assert again.SerializeToString() == wire


def test_missing_column_is_named():
    batch = make_batch().drop_columns(["reward"])
    with pytest.raises(ContractError, match=r"missing column\(s\): reward"):
        validate_batch(batch, OBS_DIM, ACT_DIM)


def test_wrong_dtype_is_named():
    batch = make_batch()
    index = batch.schema.get_field_index("step")
    batch = batch.set_column(index, "step", pa.array(np.arange(batch.num_rows), pa.int64()))
    with pytest.raises(ContractError, match=r"column 'step' has type int64, expected int32"):
        validate_batch(batch, OBS_DIM, ACT_DIM)


def test_wrong_width_is_named():
    with pytest.raises(
        ContractError, match=r"column 'obs' has type fixed_size_list<item: float>\[3\]"
    ):
        validate_batch(make_batch(), obs_dim=4, act_dim=ACT_DIM)


def test_extra_column_is_named():
    batch = make_batch()
    batch = batch.append_column("note", pa.array(["x"] * batch.num_rows))
    with pytest.raises(ContractError, match=r"unexpected column\(s\): note"):
        validate_batch(batch, OBS_DIM, ACT_DIM)


def test_non_finite_values_are_rejected():
    batch = make_batch()
    rewards = batch.column("reward").to_numpy().copy()
    rewards[2] = np.nan
    batch = batch.set_column(batch.schema.get_field_index("reward"), "reward", pa.array(rewards))
    with pytest.raises(ContractError, match=r"'reward' has 1 non-finite"):
        validate_batch(batch, OBS_DIM, ACT_DIM)


def test_newer_schema_version_is_rejected():
    message = batch_to_envelope(
        make_batch(), env_id="Pendulum-v1", data_policy="expert", obs_dim=OBS_DIM, act_dim=ACT_DIM
    )
    message.schema_version = SCHEMA_VERSION + 1
    with pytest.raises(ContractError, match=r"newer than the 1 this reader supports"):
        batch_from_envelope(message)


def test_newer_schema_version_in_arrow_metadata_is_rejected():
    batch = make_batch()
    newer = batch.schema.with_metadata({b"diffpol.schema_version": b"2"})
    with pytest.raises(ContractError, match=r"schema v2, newer than v1"):
        validate_batch(batch.cast(newer), OBS_DIM, ACT_DIM)


def test_garbage_bytes_are_rejected_clearly():
    message = transition_pb2.TransitionBatch(
        schema_version=1, env_id="Pendulum-v1", obs_dim=3, act_dim=1, arrow_ipc=b"not arrow"
    )
    with pytest.raises(ContractError, match="not a readable Arrow stream"):
        batch_from_envelope(message)
