import json
import os
import stat

import numpy as np
import pytest

from diffpol.contracts import SCHEMA_VERSION, ContractError, EnvShape
from diffpol.contracts.atomic import atomic_directory, atomic_write_json
from diffpol.contracts.dataset import (
    DatasetManifest,
    FingerprintStream,
    ReturnStats,
    data_files,
    digest_files,
    read_manifest,
)
from diffpol.contracts.normalizer import AffineNormalizer, Normalizer


def write_dataset(root, payload=b"rows", *, with_file_digests=True):
    (root / "data").mkdir(parents=True)
    (root / "data" / "part-00000.parquet").write_bytes(payload)
    (root / "data" / "part-00001.parquet").write_bytes(payload + b"more")
    fingerprint, digests = digest_files(data_files(root))
    manifest = DatasetManifest(
        schema_version=1,
        env=EnvShape("Pendulum-v1", 3, 1, (-2.0,), (2.0,)),
        policy="expert",
        policy_params={},
        seed=0,
        episodes=1,
        transitions=200,
        returns=ReturnStats(mean=-100.0, std=0.0, min=-100.0, max=-100.0),
        fingerprint=fingerprint,
        file_digests=digests if with_file_digests else {},
    )
    atomic_write_json(root / "manifest.json", manifest.to_json())
    return manifest


def test_manifest_round_trip(tmp_path):
    manifest = write_dataset(tmp_path)
    assert read_manifest(tmp_path) == manifest


def test_changed_data_file_is_detected(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "data" / "part-00000.parquet").write_bytes(b"row")  # truncated
    with pytest.raises(ContractError, match="do not match the manifest fingerprint"):
        read_manifest(tmp_path)


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            lambda d: (d / "part-00001.parquet").write_bytes(b"rows"),
            "changed or truncated: part-00001",
        ),
        (lambda d: (d / "part-00000.parquet").unlink(), "missing: part-00000.parquet"),
        (lambda d: (d / "part-00002.parquet").write_bytes(b"x"), "not in the manifest: part-00002"),
    ],
)
def test_a_failed_check_names_the_damaged_file(tmp_path, damage, expected):
    write_dataset(tmp_path)
    damage(tmp_path / "data")
    with pytest.raises(ContractError, match=expected) as error:
        read_manifest(tmp_path)
    assert str(error.value).count("part-") == 1


def test_a_manifest_without_file_digests_still_detects_damage(tmp_path):
    manifest = write_dataset(tmp_path, with_file_digests=False)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    del raw["file_digests"]  # as written before the field existed
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    assert read_manifest(tmp_path) == manifest
    (tmp_path / "data" / "part-00000.parquet").write_bytes(b"row")
    with pytest.raises(ContractError, match="a file was changed, truncated or removed"):
        read_manifest(tmp_path)


def test_missing_manifest_means_incomplete(tmp_path):
    with pytest.raises(ContractError, match=r"manifest\.json is missing"):
        read_manifest(tmp_path)


def test_newer_manifest_is_rejected(tmp_path):
    write_dataset(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw["schema_version"] = 9
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ContractError, match=f"schema v9, newer than v{SCHEMA_VERSION} supported"):
        read_manifest(tmp_path)


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "half.parquet").write_bytes(b"x")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_on_success(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "a").write_text("1")
    with atomic_directory(target, overwrite=True) as staging:
        (staging / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]


def test_normalizer_round_trip_and_affine_maps(tmp_path):
    data = np.array([[0.0, -8.0], [2.0, 8.0], [1.0, 0.0]])
    obs = AffineNormalizer.from_stats("minmax", min=data.min(0), max=data.max(0))
    act = AffineNormalizer.from_stats("standard", mean=data.mean(0), std=data.std(0))
    normalizer = Normalizer(obs=obs, action=act)
    loaded = Normalizer.load(normalizer.save(tmp_path / "normalizer.json"))
    assert loaded == normalizer
    np.testing.assert_allclose(loaded.obs.normalize(data).min(0), [-1, -1])
    np.testing.assert_allclose(loaded.obs.normalize(data).max(0), [1, 1])
    np.testing.assert_allclose(
        loaded.action.unnormalize(loaded.action.normalize(data)), data, atol=1e-5
    )


def test_normalizer_rejects_bad_files(tmp_path):
    path = tmp_path / "normalizer.json"
    path.write_text(json.dumps({"version": 2}))
    with pytest.raises(ContractError, match="version 2 is not supported"):
        Normalizer.load(path)
    path.write_text(
        json.dumps(
            {"version": 1, "obs": {"mode": "minmax", "center": [0], "scale": [0]}, "action": {}}
        )
    )
    with pytest.raises(ContractError, match="scale > 0"):
        Normalizer.load(path)


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "a.json", {"x": 1})
        with atomic_directory(tmp_path / "d") as staging:
            (staging / "f").write_text("1")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_a_fingerprint_stream_of_the_bytes_equals_the_files_digests(tmp_path):
    write_dataset(tmp_path)
    files = data_files(tmp_path)
    stream = FingerprintStream()
    for path in files:
        data = path.read_bytes()
        # In chunks, with and without the file's own digest given.
        known = None if path.name.endswith("0.parquet") else digest_files([path])[1][path.name]
        stream.add(path.name, [data[:3], memoryview(data)[3:]], known)
    assert (stream.hexdigest(), stream.digests) == digest_files(files)
    with pytest.raises(ValueError, match="name order"):
        stream.add(files[0].name, [b"again"])
