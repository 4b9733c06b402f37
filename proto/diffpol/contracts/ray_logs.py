"""Ray's own console output, moved into a log file for the length of a call.

What Ray prints is for whoever debugs Ray, not for the person running a job: every Ray
Data execution, every Ray Train report, every worker's Lightning banner. ``ray_logs_to``
and ``worker_output_to`` send it to a file instead:

- driver-side loggers (``ray`` and its children, which Ray Data and Ray Train configure
  with their own console handlers, and Python warnings): their console handlers are
  swapped for one file handler, their file handlers (Ray's session logs) kept;
- worker stdout/stderr that Ray streams to the driver (``log_to_driver``): Ray prints it
  through one handler of its stream dispatcher, which is swapped for one writing to the
  file (a private Ray API, checked by ray_session_test);
- Ray Data's progress bars are turned off (a bar in a file is noise).

Everything is restored on exit.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from diffpol.contracts.ray_data import data_context

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "py.warnings")
_RAY_PRINT_HANDLER = "ray_print_logs"  # the name ray._private.worker registers it under
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(
        handler, logging.FileHandler
    )


@contextlib.contextmanager
def _loggers_to(handler: logging.Handler) -> Iterator[None]:
    import ray.data  # noqa: F401  (configures Ray Data's loggers now, not mid-call)

    saved = {}
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.propagate)
        logger.handlers = [h for h in logger.handlers if not _is_console(h)] + [handler]
        logger.propagate = False
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate


class _Uncoloured:
    """A text stream without the terminal colour codes Ray puts around worker prefixes."""

    _CODES = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(self._CODES.sub("", text))

    def flush(self) -> None:
        self._stream.flush()


@contextlib.contextmanager
def _worker_streams_to(stream) -> Iterator[None]:
    from ray._private import worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    previous = [pair for pair in dispatcher.handlers if pair[0] == _RAY_PRINT_HANDLER]
    if not previous:  # Ray was started with log_to_driver=False: nothing reaches us
        yield
        return

    plain = _Uncoloured(stream)

    def write(data: dict) -> None:
        worker.print_worker_logs(data, plain)
        stream.flush()

    dispatcher.remove_handler(_RAY_PRINT_HANDLER)
    dispatcher.add_handler(_RAY_PRINT_HANDLER, write)
    try:
        yield
    finally:
        dispatcher.remove_handler(_RAY_PRINT_HANDLER)
        for name, handler in previous:
            dispatcher.add_handler(name, handler)


@contextlib.contextmanager
def ray_logs_to(path: str | Path) -> Iterator[Path]:
    """Send Ray's driver-side logs to ``path`` (appended to) while the block runs.

    Enter it before ``ray.init`` to catch what Ray logs while starting; worker output
    streamed to the driver follows with ``worker_output_to`` once Ray is initialised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1, encoding="utf-8") as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(_FORMAT))
        with _loggers_to(handler), data_context({"enable_progress_bars": False}):
            yield path


@contextlib.contextmanager
def worker_output_to(path: str | Path) -> Iterator[None]:
    """Send the worker output Ray streams to this driver to ``path`` (appended to)."""
    with open(path, "a", buffering=1, encoding="utf-8") as stream, _worker_streams_to(stream):
        yield
