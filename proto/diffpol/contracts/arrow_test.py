import numpy as np
import pyarrow as pa
import pytest

from diffpol.contracts import (
    SCHEMA_VERSION,
    ContractError,
    batch_from_envelope,
    batch_schema_version,
    batch_to_envelope,
    transition_schema,
    upgrade_batch,
    validate_batch,
)
from diffpol.v1 import transition_pb2

OBS_DIM, ACT_DIM = 3, 1


def make_batch(
    n: int = 5, *, with_label: bool = True, version: int = SCHEMA_VERSION
) -> pa.RecordBatch:
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
        "task": pa.array(["reach-v3"] * n),
        "success": pa.array([False] * (n - 1) + [True]),
    }
    schema = transition_schema(OBS_DIM, ACT_DIM, version)
    return pa.RecordBatch.from_pydict({k: columns[k] for k in schema.names}, schema=schema)


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
    with pytest.raises(ContractError, match=rf"newer than the {SCHEMA_VERSION} this reader"):
        batch_from_envelope(message)


def test_newer_schema_version_in_arrow_metadata_is_rejected():
    batch = make_batch()
    newer = batch.schema.with_metadata({b"diffpol.schema_version": b"3"})
    with pytest.raises(ContractError, match=r"schema v3, newer than v2 supported"):
        validate_batch(batch.cast(newer), OBS_DIM, ACT_DIM)


def test_garbage_bytes_are_rejected_clearly():
    message = transition_pb2.TransitionBatch(
        schema_version=1, env_id="Pendulum-v1", obs_dim=3, act_dim=1, arrow_ipc=b"not arrow"
    )
    with pytest.raises(ContractError, match="not a readable Arrow stream"):
        batch_from_envelope(message)


def test_v2_adds_task_and_nullable_success():
    assert SCHEMA_VERSION == 2
    schema = transition_schema(OBS_DIM, ACT_DIM)
    assert schema.field("task").type == pa.string() and not schema.field("task").nullable
    assert schema.field("success").nullable
    v1 = transition_schema(OBS_DIM, ACT_DIM, version=1)
    assert v1.names == schema.names[:-2]
    assert v1.metadata[b"diffpol.schema_version"] == b"1"


def test_a_v1_batch_still_reads_and_upgrades_with_documented_defaults(tmp_path):
    import pyarrow.parquet as pq

    # A v1 dataset file on disk, as diffpol wrote it before v2.
    path = tmp_path / "part-v1.parquet"
    pq.write_table(pa.Table.from_batches([make_batch(version=1)]), path)
    table = pq.read_table(path)
    assert batch_schema_version(table.schema) == 1
    validate_batch(table, OBS_DIM, ACT_DIM)
    upgraded = upgrade_batch(table, OBS_DIM, ACT_DIM)
    assert upgraded.schema.equals(transition_schema(OBS_DIM, ACT_DIM), check_metadata=True)
    assert upgraded.column("task").to_pylist() == [""] * 5
    assert upgraded.column("success").null_count == 5
    assert upgraded.column("obs").equals(table.column("obs"))
    # Through the envelope the version survives.
    message = batch_to_envelope(
        table, env_id="Pendulum-v1", data_policy="expert", obs_dim=OBS_DIM, act_dim=ACT_DIM
    )
    assert message.schema_version == 1
    assert batch_from_envelope(message).num_rows == 5


def test_a_v1_labelled_batch_missing_a_v1_column_names_its_version():
    batch = make_batch(version=1).drop_columns(["seed"])
    with pytest.raises(ContractError, match=r"does not match schema v1: missing column\(s\): seed"):
        validate_batch(batch, OBS_DIM, ACT_DIM)
    # A batch that says v2 but lacks the v2 fields is refused, naming v2 and the fields.
    v2_without = make_batch().drop_columns(["task", "success"])
    with pytest.raises(ContractError, match=r"schema v2: missing column\(s\): task, success"):
        validate_batch(v2_without, OBS_DIM, ACT_DIM)
    bad = make_batch().schema.with_metadata({b"diffpol.schema_version": b"0"})
    with pytest.raises(ContractError, match="invalid Transition schema version 0"):
        validate_batch(make_batch().cast(bad), OBS_DIM, ACT_DIM)
