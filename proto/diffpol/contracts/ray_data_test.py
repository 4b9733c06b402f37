"""Ray Data settings last as long as the calls that want them, nested or overlapping."""

from __future__ import annotations

import pytest
from ray.data import DataContext

from diffpol.contracts.ray_data import data_context


def test_settings_are_restored_by_the_last_call_out():
    ctx = DataContext.get_current()
    original = ctx.enable_progress_bars
    with data_context({"enable_progress_bars": not original}):
        with data_context({"enable_progress_bars": not original, "use_datasource_v2": False}):
            assert ctx.enable_progress_bars is (not original)
        assert ctx.enable_progress_bars is (not original)
    assert ctx.enable_progress_bars is original


def test_a_nested_call_hands_back_the_outer_calls_value():
    ctx = DataContext.get_current()
    original = ctx.enable_progress_bars
    with data_context({"enable_progress_bars": False}):
        with data_context({"enable_progress_bars": True}):
            assert ctx.enable_progress_bars is True
        assert ctx.enable_progress_bars is False
    assert ctx.enable_progress_bars is original


def test_overlapping_calls_restore_what_was_there_before_either():
    ctx = DataContext.get_current()
    original = ctx.print_on_execution_start
    first = data_context({"print_on_execution_start": not original})
    second = data_context({"print_on_execution_start": not original})
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first one leaves while the second still runs
    assert ctx.print_on_execution_start is (not original)
    second.__exit__(None, None, None)
    assert ctx.print_on_execution_start is original


def test_an_unknown_setting_is_an_error():
    with (
        pytest.raises(AttributeError, match="no_such_setting"),
        data_context({"no_such_setting": 1}),
    ):
        pass
