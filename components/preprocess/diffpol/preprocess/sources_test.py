"""Input checks that run on the driver before any Ray work."""

from __future__ import annotations

import json

import pytest

from diffpol.contracts.dataset import MANIFEST, data_files
from diffpol.contracts.errors import ContractError
from diffpol.preprocess.sources import open_sources
from diffpol.preprocess.synthetic import synthetic_episodes, write_dataset, write_synthetic_dataset


@pytest.fixture
def dataset(tmp_path):
    write_synthetic_dataset(tmp_path / "a", [5, 6, 7], episodes_per_file=2)
    return tmp_path / "a"


def test_a_valid_dataset_opens_with_its_files_and_rows(dataset):
    sources = open_sources([dataset])
    (source,) = sources.items
    assert (sources.env.env_id, sources.env.obs_dim, sources.env.act_dim) == ("Pendulum-v1", 3, 1)
    assert source.rows == sources.rows == 18
    assert len(source.files) == 2


def test_missing_manifest_is_a_clear_error(dataset):
    (dataset / MANIFEST).unlink()
    with pytest.raises(ContractError, match=r"manifest\.json is missing"):
        open_sources([dataset])


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ContractError, match="does not exist"):
        open_sources([tmp_path / "nope"])
    with pytest.raises(ContractError, match="no input dataset"):
        open_sources([])


def test_truncated_file_fails_the_fingerprint_check(dataset):
    part = data_files(dataset)[0]
    part.write_bytes(part.read_bytes()[:-100])
    with pytest.raises(ContractError, match="do not match the manifest fingerprint"):
        open_sources([dataset])


def test_truncated_file_is_named_even_without_fingerprint_check(dataset):
    part = data_files(dataset)[0]
    part.write_bytes(part.read_bytes()[:-100])
    with pytest.raises(ContractError, match=rf"{part.name} is not a readable Parquet file"):
        open_sources([dataset], verify_fingerprints=False)


def test_manifest_counts_must_match_the_files(dataset):
    raw = json.loads((dataset / MANIFEST).read_text())
    raw["transitions"] = 99
    (dataset / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(
        ContractError, match="manifest says 99 transitions but the data files hold 18"
    ):
        open_sources([dataset])


def test_file_with_the_wrong_schema_is_rejected(tmp_path):
    # The manifest matches the (bad) file, so only the schema check can object.
    write_dataset(tmp_path / "d", [synthetic_episodes([3]).drop_columns(["reward"])])
    with pytest.raises(ContractError, match=r"part-00000.parquet: .*missing column\(s\): reward"):
        open_sources([tmp_path / "d"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"env_id": "MountainCarContinuous-v0"},
            "env_id 'Pendulum-v1' != 'MountainCarContinuous-v0'",
        ),
        ({"obs_dim": 4}, "obs_dim 3 != 4"),
        ({"act_dim": 2}, "act_dim 1 != 2"),
    ],
)
def test_datasets_that_differ_in_env_or_dims_are_rejected(tmp_path, changes, message):
    write_synthetic_dataset(tmp_path / "a", [4, 4])
    kwargs = {"obs_dim": 3, "act_dim": 1, "env_id": "Pendulum-v1", **changes}
    write_synthetic_dataset(tmp_path / "b", [4, 4], first_episode_id=100, **kwargs)
    with pytest.raises(ContractError, match=f"cannot be combined: {message}"):
        open_sources([tmp_path / "a", tmp_path / "b"])


def test_the_same_data_twice_is_rejected(tmp_path, dataset):
    with pytest.raises(ContractError, match="given twice"):
        open_sources([dataset, dataset])
    copy = tmp_path / "copy"
    write_synthetic_dataset(copy, [5, 6, 7], episodes_per_file=2)
    with pytest.raises(ContractError, match="identical data"):
        open_sources([dataset, copy])


def _as_v1(root):
    """Rewrite a dataset as Transition schema v1 wrote it: no task/success, v1 metadata."""
    import pyarrow.parquet as pq

    from diffpol.contracts import transition_schema
    from diffpol.contracts.dataset import digest_files

    for path in data_files(root):
        table = pq.read_table(path).drop_columns(["task", "success"])
        pq.write_table(table.replace_schema_metadata(transition_schema(3, 1, 1).metadata), path)
    raw = json.loads((root / MANIFEST).read_text())
    raw["schema_version"] = 1
    raw["fingerprint"], raw["file_digests"] = digest_files(data_files(root))
    (root / MANIFEST).write_text(json.dumps(raw))


def test_a_schema_v1_dataset_still_opens_and_reads_the_columns_preprocess_uses(dataset):
    import pyarrow.parquet as pq

    from diffpol.contracts import upgrade_batch
    from diffpol.preprocess.sources import INPUT_COLUMNS

    _as_v1(dataset)
    sources = open_sources([dataset])
    assert sources.rows == 18 and sources.items[0].manifest.schema_version == 1
    table = pq.read_table(data_files(dataset)[0])
    assert "task" not in table.schema.names
    assert pq.read_table(data_files(dataset)[0], columns=INPUT_COLUMNS).num_rows > 0
    upgraded = upgrade_batch(table, 3, 1)
    assert set(upgraded.column("task").to_pylist()) == {""}


def test_a_dataset_of_a_newer_schema_is_refused_naming_both_versions(dataset):
    raw = json.loads((dataset / MANIFEST).read_text())
    raw["schema_version"] = 3
    (dataset / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(ContractError, match="schema v3, newer than v2 supported here"):
        open_sources([dataset])
