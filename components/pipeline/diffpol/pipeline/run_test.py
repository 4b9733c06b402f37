"""The pipeline's own logic: the fault-injection hook, report sections."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from diffpol.contracts import ContractError
from diffpol.evaluator import compare
from diffpol.pipeline.faults import FAULT_MARKER_ENV, KILL_WORKER_AT_EPOCH_ENV, kill_worker_from_env
from diffpol.pipeline.run import _section, requested_faults
from diffpol.trainer.faults import KillWorkerOnce


def test_no_fault_is_injected_unless_asked():
    assert kill_worker_from_env({}, epochs=3) is None
    assert kill_worker_from_env({FAULT_MARKER_ENV: "/tmp/x"}, epochs=3) is None


def test_the_pipeline_loads_the_fault_hook_by_name_only_when_asked(tmp_path, monkeypatch):
    assert requested_faults({"PATH": "/bin"}, epochs=2) == []
    env = {KILL_WORKER_AT_EPOCH_ENV: "1", FAULT_MARKER_ENV: str(tmp_path / "killed.txt")}
    (kill,) = requested_faults(env, epochs=2)
    assert isinstance(kill, KillWorkerOnce) and kill.epoch == 1
    # A build without the hook (the wheel) refuses the variable instead of ignoring it.
    monkeypatch.setitem(sys.modules, "diffpol.pipeline.faults", None)
    with pytest.raises(ValueError, match="no fault hook"):
        requested_faults(env, epochs=2)


def test_the_fault_hook_kills_at_the_epoch_asked_and_records_in_an_absolute_marker(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    env = {KILL_WORKER_AT_EPOCH_ENV: "1", FAULT_MARKER_ENV: "killed.txt"}
    kill = kill_worker_from_env(env, epochs=2)
    assert isinstance(kill, KillWorkerOnce)
    assert kill.epoch == 1 and kill.marker == str(tmp_path / "killed.txt")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({KILL_WORKER_AT_EPOCH_ENV: "one"}, "not an epoch number"),
        ({KILL_WORKER_AT_EPOCH_ENV: "-1"}, "outside the run's epochs 0..1"),
        ({KILL_WORKER_AT_EPOCH_ENV: "2"}, "outside the run's epochs 0..1"),
        ({KILL_WORKER_AT_EPOCH_ENV: "1"}, f"{FAULT_MARKER_ENV} is not"),
        (
            {KILL_WORKER_AT_EPOCH_ENV: "1", FAULT_MARKER_ENV: "/no/such/dir/marker"},
            "does not exist",
        ),
    ],
)
def test_a_fault_hook_that_could_never_fire_is_a_clear_error(env, message):
    with pytest.raises(ValueError, match=message):
        kill_worker_from_env(env, epochs=2)


def test_a_report_section_has_one_heading_with_the_tables_details():
    _, table = compare({"zero": "zero"}, "Pendulum-v1", "7:9", noise_seed=0)
    lines = _section("Headline", table)
    headings = [line for line in lines if line.startswith("#")]
    assert headings == [f"## Headline: Pendulum-v1: seeds {table.seeds} (n = 2), noise seed 0"]
    assert "| zero |" in "\n".join(lines)


def _tiny_dataset(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from diffpol.rollout import import_parquet, parse_mapping

    n = 6
    pq.write_table(
        pa.table(
            {
                "episode_id": [1, 1, 1, 2, 2, 2],
                "step": [0, 1, 2, 0, 1, 2],
                "obs": pa.array(list(np.ones((n, 3), np.float32)), pa.list_(pa.float32())),
                "action": pa.array(np.zeros(n, np.float32)),
                "reward": pa.array(-np.ones(n, np.float32)),
            }
        ),
        tmp_path / "log.parquet",
    )
    import_parquet([tmp_path / "log.parquet"], tmp_path / "ds", "Pendulum-v1", parse_mapping(None))
    return tmp_path / "ds"


def test_data_from_a_lerobot_dataset_is_imported_and_sets_the_env(tmp_path):
    from diffpol.contracts.dataset import read_manifest
    from diffpol.pipeline.presets import PRESETS
    from diffpol.pipeline.run import use_dataset
    from diffpol.rollout.lerobot import export_lerobot

    export_lerobot(_tiny_dataset(tmp_path), tmp_path / "lr")
    preset = dataclasses.replace(PRESETS["quick"], env_id="MountainCarContinuous-v0")
    dataset, used = use_dataset(preset, tmp_path / "lr", tmp_path / "out" / "data", None)
    assert dataset == tmp_path / "out" / "data" and used.env_id == "Pendulum-v1"
    assert read_manifest(dataset).provenance["source"] == "lerobot"
    # A diffpol dataset is used where it is; an env that is not the data's is refused.
    dataset, used = use_dataset(preset, tmp_path / "ds", tmp_path / "unused", None)
    assert dataset == tmp_path / "ds" and not (tmp_path / "unused").exists()
    with pytest.raises(ContractError, match="holds Pendulum-v1 data, not MountainCarContinuous-v0"):
        use_dataset(preset, tmp_path / "ds", tmp_path / "unused", "MountainCarContinuous-v0")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "/no/such/dir"], "--data /no/such/dir is not a directory"),
        (["--env", "Pendulum-v1"], "--env applies with --data only"),
    ],
)
def test_bad_data_arguments_are_refused(argv, message, capsys):
    from diffpol.pipeline.main import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err
