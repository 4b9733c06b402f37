"""CLI argument and input checks: all fail before Ray starts (no Ray needed here).

The CLI's successful run needs Ray and lives in pipeline_test.py, which already has one.
"""

from __future__ import annotations

import pytest

from diffpol.contracts.dataset import data_files
from diffpol.preprocess.main import main
from diffpol.preprocess.synthetic import write_synthetic_dataset


@pytest.fixture
def dataset(tmp_path):
    write_synthetic_dataset(tmp_path / "data", [5, 5, 5])
    return tmp_path / "data"


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_missing_required_arguments_exit_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert "--data" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--val-fraction", "1.5"], "val_fraction must be in [0, 1)"),
        (["--horizon", "0"], "horizon must be an integer >= 1"),
        (["--n-obs-steps", "-1"], "n_obs_steps must be an integer >= 1"),
        (["--horizon", "4", "--n-action-steps", "5"], "exceeds horizon"),
        (["--seed", "-3"], "seed must be an integer >= 0"),
        (["--num-cpus", "0"], "--num-cpus must be >= 1"),
    ],
)
def test_bad_option_values_exit_2_with_the_reason(capsys, dataset, tmp_path, flags, message):
    code, err = run(capsys, "--data", str(dataset), "--out", str(tmp_path / "out"), *flags)
    assert code == 2
    assert message in err
    assert not (tmp_path / "out").exists()


def test_bad_norm_mode_is_rejected_by_argparse(capsys, dataset, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(dataset), "--out", str(tmp_path / "o"), "--obs-norm", "zscore"])
    assert exc.value.code == 2
    assert "invalid choice: 'zscore'" in capsys.readouterr().err


def test_missing_dataset_exits_2(capsys, tmp_path):
    code, err = run(capsys, "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert code == 2
    assert "does not exist" in err


def test_corrupted_dataset_exits_2_naming_the_problem(capsys, dataset, tmp_path):
    part = data_files(dataset)[0]
    part.write_bytes(part.read_bytes()[:-50])
    code, err = run(capsys, "--data", str(dataset), "--out", str(tmp_path / "out"))
    assert code == 2
    assert "do not match the manifest fingerprint" in err
    code, err = run(capsys, "--data", str(dataset), "--out", str(tmp_path / "out"), "--no-verify")
    assert code == 2
    assert "is not a readable Parquet file" in err


def test_existing_output_exits_2_unless_overwrite(capsys, dataset, tmp_path):
    (tmp_path / "out").mkdir()
    code, err = run(capsys, "--data", str(dataset), "--out", str(tmp_path / "out"))
    assert code == 2
    assert "already exists (pass --overwrite" in err


def test_output_inside_the_inputs_is_rejected(capsys, dataset):
    code, err = run(capsys, "--data", str(dataset), "--out", str(dataset), "--overwrite")
    assert code == 2
    assert "--out must not be one of the --data directories" in err
