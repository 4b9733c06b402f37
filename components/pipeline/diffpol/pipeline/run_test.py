"""The pipeline's own logic: the fault-injection hook, report sections."""

from __future__ import annotations

import pytest

from diffpol.evaluator import compare
from diffpol.pipeline.faults import FAULT_MARKER_ENV, KILL_WORKER_AT_EPOCH_ENV, kill_worker_from_env
from diffpol.pipeline.run import _section
from diffpol.trainer.faults import KillWorkerOnce


def test_no_fault_is_injected_unless_asked():
    assert kill_worker_from_env({}, epochs=3) is None
    assert kill_worker_from_env({FAULT_MARKER_ENV: "/tmp/x"}, epochs=3) is None


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
