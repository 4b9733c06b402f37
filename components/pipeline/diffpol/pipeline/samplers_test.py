"""The sampler comparison's names, table rows and Pareto front, and its plot file."""

from __future__ import annotations

import numpy as np
import pytest

from diffpol.pipeline.samplers import (
    SamplerChoice,
    markdown_table,
    pareto_figure,
    pareto_front,
    parse_samplers,
    sampler_rows,
)


def test_sampler_names_parse_into_families_and_their_policies():
    choices = parse_samplers("ddim-10, flow-2,flow-midpoint-4,consistency-1")
    assert [c.name for c in choices] == ["ddim-10", "flow-2", "flow-midpoint-4", "consistency-1"]
    assert [c.policy for c in choices] == ["diffusion", "flow", "flow", "consistency"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("ddim", "FAMILY-STEPS"),
        ("euler-2", "FAMILY-STEPS"),
        ("ddim-0", "steps must be >= 1"),
        ("consistency-11", "1 to 10 steps"),
        ("flow-midpoint-3", "even number"),
        ("flow-2,flow-2", "listed twice"),
    ],
)
def test_bad_sampler_names_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_samplers(text)


def _latency(median: float) -> dict[str, float]:
    return {"median_us": median, "p90_us": median * 1.2, "graph_median_us": median / 3}


def test_rows_compare_against_ddim_10_and_the_front_keeps_the_undominated():
    choices = parse_samplers("ddim-10,flow-2,consistency-1,ddim-1")
    summaries = {
        "ddim-10": {"mean": -140.0, "stderr": 1.0, "n": 1000},
        "flow-2": {"mean": -141.0, "stderr": 1.0, "n": 1000},
        "consistency-1": {"mean": -140.5, "stderr": 1.0, "n": 1000},
        "ddim-1": {"mean": -150.0, "stderr": 1.0, "n": 1000},
    }
    latency = {
        "ddim-10": _latency(50.0),
        "flow-2": _latency(20.0),
        "consistency-1": _latency(10.0),
        "ddim-1": _latency(10.0),
    }
    rows = sampler_rows(choices, summaries, latency)
    by_name = {r["sampler"]: r for r in rows}
    assert by_name["consistency-1"]["gap_to_reference"] == pytest.approx(-0.5)
    assert by_name["consistency-1"]["speedup"] == pytest.approx(5.0)
    assert by_name["flow-2"]["graph_speedup"] == pytest.approx(2.5)
    # flow-2 is slower and worse than consistency-1; ddim-1 as fast but worse.
    assert pareto_front(rows) == ["ddim-10", "consistency-1"]
    table = markdown_table(rows)
    assert len(table) == 2 + len(rows)
    assert "| consistency-1 | 1 | -140.50 ± 1.00 | -0.50 |" in table[4]
    assert pareto_figure(rows, "test")[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_env_with_tasks_scores_samplers_by_success():
    choices = parse_samplers("ddim-10,consistency-2")
    summaries = {
        "ddim-10": {"mean": 97.0, "stderr": 0.8, "n": 500},
        "consistency-2": {"mean": 95.0, "stderr": 1.0, "n": 500},
    }
    latency = {"ddim-10": _latency(2000.0), "consistency-2": _latency(500.0)}
    rows = sampler_rows(choices, summaries, latency, score="success")
    assert rows[1]["gap_to_reference"] == pytest.approx(-2.0)
    table = markdown_table(rows)
    assert "| success (%) ± s.e. |" in table[0]
    assert "| consistency-2 | 2 | 95.00 ± 1.00 | -2.00 |" in table[3]
    with pytest.raises(ValueError, match="score must be one of return, success"):
        sampler_rows(choices, summaries, latency, score="reward")


def test_a_sampler_scores_its_success_rate_with_a_binomial_standard_error():
    from diffpol.evaluator.stats import summarize
    from diffpol.pipeline.run import _score

    summary = summarize(np.zeros(4), np.array([True, True, True, False]))
    assert _score(summary, "success") == pytest.approx(
        {"mean": 75.0, "stderr": 100 * (0.75 * 0.25 / 4) ** 0.5, "n": 4}
    )
    assert _score(summary, "return")["mean"] == 0.0


def test_a_choice_names_itself():
    assert SamplerChoice("flow-midpoint", 4).name == "flow-midpoint-4"


def test_the_command_line_takes_a_list_or_the_default_one(capsys):
    from diffpol.pipeline.main import parse_args
    from diffpol.pipeline.presets import DEFAULT_SAMPLERS

    assert parse_args([]).samplers is None
    assert parse_args(["--samplers"]).samplers == DEFAULT_SAMPLERS
    assert parse_args(["--samplers", "flow-2,ddim-10"]).samplers == "flow-2,ddim-10"
    with pytest.raises(SystemExit):
        parse_args(["--samplers", "euler-2"])
    assert "--samplers: sampler 'euler-2' is not FAMILY-STEPS" in capsys.readouterr().err


def test_the_comparison_adds_only_the_policies_its_samplers_need():
    from diffpol.pipeline.presets import resolve_preset
    from diffpol.pipeline.run import few_step_config, few_step_policies

    assert resolve_preset("default").samplers == ""
    assert few_step_policies(resolve_preset("default")) == ()
    assert few_step_policies(resolve_preset("quick", "ddim-10,flow-2")) == ("flow",)
    preset = resolve_preset("default", "consistency-1,flow-1")
    assert few_step_policies(preset) == ("consistency", "flow")
    consistency = few_step_config(preset, "consistency", seed=3)
    assert (consistency.model.objective, consistency.model.teacher) == ("consistency", "diffusion")
    assert consistency.train.epochs == preset.consistency_epochs
    flow = few_step_config(preset, "flow", seed=3)
    assert (flow.model.objective, flow.train.epochs) == ("flow", preset.config.train.epochs)
    # Everything else is the diffusion policy's: the same network on the same samples.
    assert flow.model.hidden_width == preset.config.model.hidden_width
    assert flow.train.seed == 3
