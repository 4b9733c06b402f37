"""Ray Data ``DataContext`` settings applied for the length of a call, then restored.

``DataContext`` is process-global (and Ray Train ships the driver's to its workers), so a
setting must not outlive the call that wanted it. Calls nest (a training run inside the
pipeline's log settings) and may overlap (training runs started from threads of one
process): per setting, the first call in saves the previous value and the last one out
restores it; in between, the latest call still running has its value.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

_lock = threading.Lock()
# Per setting: the value before any call, and the calls now holding it, latest last.
_base: dict[str, Any] = {}
_holders: dict[str, list[tuple[object, Any]]] = {}


@contextlib.contextmanager
def data_context(settings: Mapping[str, Any]) -> Iterator[Any]:
    """Apply ``settings`` (``DataContext`` attribute -> value); yield the context."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    unknown = [name for name in settings if not hasattr(ctx, name)]
    if unknown:
        raise AttributeError(f"Ray Data's DataContext has no setting(s) {unknown}")
    token = object()
    with _lock:
        for name, value in settings.items():
            holders = _holders.setdefault(name, [])
            if not holders:
                _base[name] = getattr(ctx, name)
            holders.append((token, value))
            setattr(ctx, name, value)
    try:
        yield ctx
    finally:
        with _lock:
            for name in settings:
                holders = [h for h in _holders[name] if h[0] is not token]
                _holders[name] = holders
                setattr(ctx, name, holders[-1][1] if holders else _base.pop(name))


def quiet_data_settings(*, progress: bool) -> dict[str, bool]:
    """Ray Data's progress bars and per-execution log lines, on or off."""
    return {"enable_progress_bars": progress, "print_on_execution_start": progress}
