"""A real SamplerServer in its own process on 127.0.0.1, so a test can watch that process
(its RSS, whether it is still alive) apart from the clients hammering it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from cluster import cpu_seconds, importable_path, pid_alive, rss_bytes

from diffpol.sampler.server import ServerConfig

# Run with ``python -c``: nothing to locate on disk, and the child imports only the real
# server. It serves until stdin closes (the parent went away) or SIGTERM.
_CHILD = r"""
import json, os, signal, sys, threading
from diffpol.sampler.server import SamplerServer, ServerConfig

model, config = sys.argv[1], ServerConfig(**json.loads(sys.argv[2]))
server = SamplerServer(model, config)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGUSR1, lambda *_: print("STATS " + json.dumps(server.stats()), flush=True))
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
server.start()
print(f"SERVING {server.address} PID {os.getpid()}", flush=True)
while not stop.wait(0.2):  # wakes the main thread, which runs the signal handlers
    pass
server.stop(1.0)
print("STOPPED", flush=True)
"""


class SamplerProcess:
    def __init__(self, model: str | Path, start_timeout_s: float = 60, **config: Any) -> None:
        self.model = str(model)
        self.config = {"host": "127.0.0.1", "port": 0, **config}
        ServerConfig(**self.config)  # bad settings fail here, with the server's own message
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None
        self.address = ""
        self.pid = 0
        self.output: deque[str] = deque(maxlen=200)  # the child's last lines, for failures
        self._drain: threading.Thread | None = None
        self._stats: list[dict[str, int]] = []

    def start(self) -> SamplerProcess:
        env = {**os.environ, "PYTHONPATH": importable_path()}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, self.model, json.dumps(self.config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        lines = []
        # readline blocks until the child prints SERVING or exits; a child that hangs is
        # killed after start_timeout_s, which ends the loop too.
        watchdog = threading.Timer(self.start_timeout_s, self.process.kill)
        watchdog.start()
        for line in self.process.stdout:
            lines.append(line)
            found = re.match(r"SERVING (\S+) PID (\d+)", line)
            if found:
                watchdog.cancel()
                self.address, self.pid = found.group(1), int(found.group(2))
                # Keep reading: a child blocked on a full pipe would stop answering.
                self._drain = threading.Thread(
                    target=self._read_output, args=(self.process.stdout,), daemon=True
                )
                self._drain.start()
                return self
        watchdog.cancel()
        self.stop()
        raise RuntimeError(
            f"sampler server process did not start within {self.start_timeout_s:g} s:\n"
            + "".join(lines)
        )

    def _read_output(self, stream) -> None:
        for line in stream:
            if line.startswith("STATS "):
                self._stats.append(json.loads(line[len("STATS ") :]))
            else:
                self.output.append(line)

    def stats(self, timeout_s: float = 10) -> dict[str, int]:
        """The server's counters (requests, errors, batch_calls, batch_rows, ...), asked for
        with SIGUSR1."""
        seen = len(self._stats)
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self._stats) > seen:
                return self._stats[-1]
            time.sleep(0.01)
        raise TimeoutError(f"the sampler process sent no stats within {timeout_s:g} s")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None and pid_alive(self.pid)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._drain is not None:
            self._drain.join(timeout=5)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> SamplerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
