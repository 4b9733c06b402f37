import json

import matplotlib.image
import numpy as np
import pyarrow.parquet as pq

from diffpol.evaluator import compare
from diffpol.evaluator.testing import MountainCarPump, PendulumPD
from diffpol.v1 import evaluator_pb2


def test_outputs_are_written_and_agree_with_the_result(tmp_path):
    policies = {"pd": PendulumPD(n_action_steps=2), "soft pd/1": PendulumPD(kp=4.0, kd=1.0)}
    result, comparison = compare(
        policies, "Pendulum-v1", "0:6", out=tmp_path, workers=0, backend="gymnasium", chunk_size=4
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "comparison.md",
        "episodes.parquet",
        "report.pb",
        "returns.png",
        "summary.json",
        "trajectories-pd.png",
        "trajectories-soft_pd_1.png",
    ]  # and no temporary files left behind

    table = pq.read_table(tmp_path / "episodes.parquet")
    assert table.column_names == [
        "policy",
        "seed",
        "return",
        "length",
        "success",
        "task",
        "success_steps",
    ]
    assert [str(t) for t in table.schema.types] == [
        "string",
        "int64",
        "double",
        "int32",
        "bool",
        "string",
        "int32",
    ]
    rows = table.to_pandas()
    assert len(rows) == 12
    for label in policies:
        mine = rows[rows.policy == label].sort_values("seed")
        assert mine.seed.tolist() == list(range(6))
        np.testing.assert_array_equal(mine["return"].to_numpy(), result[label].returns)
        assert (mine.length == 200).all()
        # Pendulum has no named tasks and reports no success flag.
        assert (mine.task == "").all() and (mine.success_steps == -1).all()

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["env_id"] == "Pendulum-v1"
    assert summary["seeds"] == {"start": 0, "stop": 6, "n": 6}
    assert summary["chunk_size"] == 4 and summary["noise_seed"] == 0
    assert "last 50 steps" in summary["success_definition"]
    assert "chunk" in summary["seeding_rule"]
    assert summary["env_backend"] == "gymnasium"
    pd = summary["policies"]["pd"]
    assert pd["mean"] == result["pd"].summary.mean
    assert pd["n"] == 6 and pd["policy_calls"] == 2 * 100
    assert pd["stderr"] == np.std(result["pd"].returns, ddof=1) / np.sqrt(6)
    assert set(pd) >= {"std", "min", "max", "success_rate", "wall_time_s", "examples"}
    assert pd["examples"]["best"]["return"] == result["pd"].returns.max()
    assert pd["replay_matches"] is True
    assert summary["comparison"]["best"] == comparison.best

    for png in ("returns.png", "trajectories-pd.png", "trajectories-soft_pd_1.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(tmp_path / png)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
        assert image.std() > 0.01  # something was drawn

    report = evaluator_pb2.EvaluationReport.FromString((tmp_path / "report.pb").read_bytes())
    assert report.request.env_id == "Pendulum-v1"
    assert (report.request.seed_start, report.request.seed_stop) == (0, 6)
    assert [s.policy for s in report.summaries] == ["pd", "soft pd/1"]
    assert report.summaries[0].mean == result["pd"].summary.mean
    assert report.summaries[1].stderr == result["soft pd/1"].summary.stderr

    markdown = (tmp_path / "comparison.md").read_text()
    assert "| pd |" in markdown and "soft pd/1" in markdown


def test_mountain_car_outputs(tmp_path):
    compare(
        [MountainCarPump()],
        "MountainCarContinuous-v0",
        "0:3",
        out=tmp_path,
        workers=0,
        backend="gymnasium",
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    policy = next(iter(summary["policies"].values()))
    assert policy["success_rate"] == 1.0
    assert "goal" in summary["success_definition"]
    assert policy["mean_length"] < 999
    assert (tmp_path / "trajectories-MountainCarPump-0.png").is_file()
