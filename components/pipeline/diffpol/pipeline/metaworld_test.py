"""The ``metaworld-quick`` preset end to end (two Meta-World tasks, minutes): every stage
runs, and the report holds the per-task success table of every policy the preset names."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from diffpol.pipeline.presets import PRESETS, Preset, Variant, resolve_preset
from diffpol.pipeline.run import run_pipeline

TASKS = ("reach-v3", "drawer-close-v3")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("metaworld-quick")
    # With a sampler comparison (--samplers), scored by success on an env with tasks.
    preset = resolve_preset("metaworld-quick", samplers="ddim-10,consistency-1")
    summary = run_pipeline(preset, out, seed=0, address=None)
    return out, summary


def test_every_stage_ran_and_the_report_has_the_success_tables(run):
    out, summary = run
    assert set(summary["stage_seconds"]) >= {"collect", "preprocess", "train", "export", "evaluate"}
    report = (out / "report.md").read_text()
    headline = summary["headline"]
    labels = [
        "expert",
        "diffusion DDIM-10 (ONNX)",
        "BC",
        "diffusion without chunks (T=Ta=1)",
        "diffusion, 10 demos per task (DP3 protocol)",
    ]
    assert list(headline) == labels
    for label in labels:
        assert [t["task"] for t in headline[label]["tasks"]] == list(TASKS)
        assert all(t["n"] == 4 for t in headline[label]["tasks"])  # 8 seeds, 2 tasks
    env = "metaworld/reach-v3+drawer-close-v3"
    assert f"## Headline: {env}: success per task, seeds 100000:100008" in report
    assert f"## Every policy side by side: {env}: success per task" in report
    assert report.count("| mean over tasks |") == 2
    assert "| diffusion DDIM-10 (gRPC) |" in report  # a column of the side-by-side table
    # Returns (episodes end at success) stay in the evaluator's own tables.
    assert "return (mean ± s.e.)" not in report
    assert "return (mean ± s.e.)" in (out / "eval" / "headline" / "comparison.md").read_text()
    assert (out / "plots" / "headline_success.png").stat().st_size > 0
    # The scripted expert solves these two tasks (Meta-World's experts: 98-100%).
    assert headline["expert"]["mean_task_success_rate"] >= 0.75
    assert (
        summary["eval"]["mean_task_success_rate"] == headline[labels[1]]["mean_task_success_rate"]
    )


def test_each_variant_is_its_own_policy_with_its_own_window_and_data(run):
    out, summary = run
    from diffpol.sampler import OnnxPolicy

    unchunked = OnnxPolicy(out / "variants" / "unchunked.onnx").metadata.window
    assert (unchunked.n_obs_steps, unchunked.horizon, unchunked.n_action_steps) == (2, 1, 1)
    main = OnnxPolicy(out / "policy.onnx").metadata.window
    assert (main.n_obs_steps, main.horizon, main.n_action_steps) == (2, 16, 8)
    from diffpol.contracts.dataset import read_manifest

    assert read_manifest(out / "data-10-demos").episodes == 20
    assert read_manifest(out / "data").episodes == 24
    assert set(summary["training"]) == {
        "diffusion",
        "consistency",
        "bc",
        "variant-unchunked",
        "variant-10-demos",
    }


def test_the_grpc_sampler_scores_the_same_episodes_as_the_onnx_policy(run):
    out, _ = run
    episodes = pq.read_table(out / "eval" / "side_by_side" / "episodes.parquet").to_pandas()
    onnx = episodes[episodes.policy == "diffusion DDIM-10 (ONNX)"].sort_values("seed")
    grpc = episodes[episodes.policy == "diffusion DDIM-10 (gRPC)"].sort_values("seed")
    assert len(onnx) == 4
    np.testing.assert_array_equal(onnx["return"].to_numpy(), grpc["return"].to_numpy())
    np.testing.assert_array_equal(onnx["success"].to_numpy(), grpc["success"].to_numpy())
    assert (
        json.loads((out / "summary.json").read_text())["env_id"]
        == PRESETS["metaworld-quick"].env_id
    )


def test_the_sampler_comparison_scores_success_on_an_env_with_tasks(run):
    out, summary = run
    rows = {r["sampler"]: r for r in summary["samplers"]}
    assert set(rows) == {"ddim-10", "consistency-1"}
    episodes = pq.read_table(out / "eval" / "samplers" / "episodes.parquet").to_pandas()
    for name, row in rows.items():
        ran = episodes[episodes.policy == name]
        assert row["score"] == "success" and row["n"] == len(ran) == 8
        assert row["mean"] == pytest.approx(100 * ran.success.mean())
        assert row["latency_median_us"] > 0
    report = (out / "report.md").read_text()
    assert "## Samplers: success and batch-1 latency" in report
    assert "| success (%) ± s.e. |" in report
    assert (out / "plots" / "samplers_pareto.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"headline": ("expert", "variant:nope")}, "has policies other than"),
        ({"headline": ("expert", "seed-tutorial")}, "which baselines does not train"),
        ({"side_by_side": ()}, "one or more policies once each"),
        ({"baselines": ("bc", "ppo")}, "baselines are bc and seed-tutorial"),
    ],
)
def test_a_preset_naming_policies_it_does_not_train_is_refused(change, message):
    fields = {**PRESETS["metaworld-quick"].__dict__, **change}
    with pytest.raises(ValueError, match=message):
        Preset(**fields)


def test_a_variant_must_change_something():
    with pytest.raises(ValueError, match="changes nothing"):
        Variant("same", "the same policy")
