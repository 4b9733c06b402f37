"""CLI argument checks (no Ray: every case here fails before collection starts).

The CLI's successful run is in ``collect_test.py``, which has a Ray."""

from __future__ import annotations

import pytest

from diffpol.rollout.main import main


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_every_bad_argument_is_reported_at_once(tmp_path, capsys):
    (tmp_path / "exists").mkdir()
    err = _fails(
        ["--env", "Acrobot-v1", "--episodes", "0", "--out", str(tmp_path / "exists"),
         "--actors", "0", "--envs-per-actor", "0", "--param", "grid"],
        capsys,
    )  # fmt: skip
    for expected in (
        "unknown env id 'Acrobot-v1'",
        "--episodes must be >= 1",
        "--actors must be >= 1",
        "--envs-per-actor must be >= 1",
        "--param 'grid' is not KEY=VALUE",
        "exists; pass --overwrite",
    ):
        assert expected in err, expected


def test_noise_max_needs_the_noisy_expert(tmp_path, capsys):
    err = _fails(["--policy", "expert", "--noise-max", "0.5", "--episodes", "2",
                  "--out", str(tmp_path / "ds")], capsys)  # fmt: skip
    assert "--noise-max applies to --policy noisy-expert only" in err


def test_policy_problems_are_found_before_ray_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIFFPOL_CACHE_DIR", str(tmp_path / "cache"))
    out = str(tmp_path / "ds")
    assert "does not exist" in _fails(
        ["--policy", "onnx:/nope.onnx", "--episodes", "2", "--out", out], capsys
    )
    assert "unknown policy 'best'" in _fails(
        ["--policy", "best", "--episodes", "2", "--out", out], capsys
    )
    err = _fails(["--param", "grid=abc", "--episodes", "2", "--out", out], capsys)
    assert "policy parameter grid must be int, got 'abc'" in err
    err = _fails(["--env", "MountainCarContinuous-v0", "--backend", "numpy", "--episodes", "2",
                  "--out", out], capsys)  # fmt: skip
    assert "backend 'numpy' is not available for MountainCarContinuous-v0" in err
    err = _fails(["--episodes", "10", "--seed", str(2**31 - 5), "--out", out], capsys)
    assert "seed + episodes - 1" in err
    assert not (tmp_path / "ds").exists()
