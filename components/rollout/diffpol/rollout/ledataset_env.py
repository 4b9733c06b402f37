"""LeRobot's own dataset library (``ledataset``) for tests and benchmarks, in an environment
of its own.

LeRobot needs torch and torchvision builds that cannot share the default resolve, so the
environment is built once from the pinned ``components/rollout/lerobot_compat/requirements.txt``
and cached under ``$DIFFPOL_CACHE_DIR`` (default ``~/.cache/diffpol``) by that file's hash.
The build is atomic (staging directory, then a rename; a killed build is never reused) and
serialised by a file lock. Where it cannot be built (no package index), the caller fails
saying so. ``run_ledataset`` runs ``lerobot_compat/ledataset_side.py`` (LeRobot's side:
``write`` with LeRobot's writer, ``read`` with its loader) there.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

COMPAT = Path(__file__).resolve().parents[2] / "lerobot_compat"
REQUIREMENTS = COMPAT / "requirements.txt"
SCRIPT = COMPAT / "ledataset_side.py"
READY = "diffpol-ready"


def _cache_dir() -> Path:
    return Path(os.environ.get("DIFFPOL_CACHE_DIR") or Path.home() / ".cache" / "diffpol")


def _base_python() -> str:
    # A venv's (e.g. the test runner's) python makes venvs from its base interpreter.
    return getattr(sys, "_base_executable", None) or sys.executable


def _ca_bundle() -> list[str]:
    """``--cert`` as the ./pants launcher chooses it: pip's own bundle does not hold the CA
    of a TLS-inspecting proxy, the system's does."""
    for bundle in (os.environ.get("SSL_CERT_FILE"), ssl.get_default_verify_paths().cafile):
        if bundle and Path(bundle).is_file():
            return ["--cert", bundle]
    return []


def ledataset_python() -> Path:
    """The cached environment's python, building the environment on first use."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = hashlib.sha256(REQUIREMENTS.read_bytes() + version.encode()).hexdigest()[:16]
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / f"ledataset-venv-{key}"
    if (venv / READY).is_file():
        return venv / "bin" / "python"
    with open(cache / f"ledataset-venv-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / READY).is_file():
            return venv / "bin" / "python"
        staging = Path(tempfile.mkdtemp(dir=cache, prefix=f".{venv.name}.", suffix=".partial"))
        try:
            start = time.perf_counter()
            for command in (
                [_base_python(), "-m", "venv", "--clear", str(staging)],
                [str(staging / "bin" / "python"), "-m", "pip", "install", "--no-input",
                 "--disable-pip-version-check", *_ca_bundle(), "-r", str(REQUIREMENTS)],
            ):  # fmt: skip
                # The pins decide the versions; the machine's pip configuration decides where
                # they come from (a wheel mirror for the large torch wheels, or the index).
                env = dict(os.environ)
                result = subprocess.run(command, capture_output=True, text=True, env=env)
                if result.returncode:
                    pytest.fail(
                        f"could not build LeRobot's environment from {REQUIREMENTS.name} "
                        f"(needs the package index): {' '.join(command[-4:])} failed:\n"
                        + (result.stdout + result.stderr)[-3000:]
                    )
            (staging / READY).write_text(f"built in {time.perf_counter() - start:.0f} s\n")
            if venv.exists():  # an older, unmarked copy
                shutil.rmtree(venv)
            os.replace(staging, venv)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return venv / "bin" / "python"


def run_ledataset(*args: str | Path, tmp: Path) -> None:
    """``python ledataset_side.py ARGS...`` in LeRobot's environment, offline, with its
    Hugging Face cache under ``tmp``; fails the test with LeRobot's output if it fails."""
    env = {**os.environ, "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [str(ledataset_python()), str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
