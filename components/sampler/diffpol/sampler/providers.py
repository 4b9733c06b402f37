"""Choosing onnxruntime execution providers: CUDA only where a GPU is really usable.

onnxruntime-gpu lists ``CUDAExecutionProvider`` as available on any machine, GPU or not,
and then fails to load it (or silently falls back to CPU) when a session is created. So
"available" is not enough: the driver must expose a device, and the session must report
that it actually uses CUDA (``InferenceSession.get_providers()``), which ``create_session``
checks.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence

import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ProviderError(ValueError):
    """An execution provider the caller asked for is unknown or cannot run here."""


def cuda_device_present() -> bool:
    """True if the NVIDIA driver exposes a device this process may use (no CUDA calls)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    return os.path.exists("/proc/driver/nvidia/version") and bool(glob.glob("/dev/nvidia[0-9]*"))


def default_providers() -> list[str]:
    if CUDA in ort.get_available_providers() and cuda_device_present():
        return [CUDA, CPU]
    return [CPU]


def check_requested(providers: Sequence[str]) -> list[str]:
    available = ort.get_available_providers()
    providers = list(providers)
    if not providers:
        raise ProviderError("providers is empty: pass None for the default choice")
    unknown = [p for p in providers if p not in available]
    if unknown:
        raise ProviderError(
            f"execution provider(s) {', '.join(unknown)} are not in this onnxruntime build "
            f"(available: {', '.join(available)})"
        )
    return providers


def create_session(
    model: bytes,
    options: ort.SessionOptions,
    providers: Sequence[str] | None = None,
) -> ort.InferenceSession:
    """A session on ``providers`` (None: CUDA when usable, else CPU).

    With the default choice a CUDA provider that fails to load falls back to CPU with a
    warning; a provider the caller asked for explicitly must load, or this raises.
    """
    explicit = providers is not None
    chosen = check_requested(providers) if explicit else default_providers()
    try:
        session = ort.InferenceSession(model, options, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own Fail/RuntimeException types
        if explicit or chosen == [CPU]:
            raise
        log.warning("CUDA provider failed to start (%s); using CPU", exc)
        return ort.InferenceSession(model, options, providers=[CPU])
    missing = [p for p in chosen if p not in session.get_providers()]
    if missing and explicit:
        raise ProviderError(
            f"onnxruntime could not load {', '.join(missing)} (no usable GPU, or its CUDA/"
            f"cuDNN libraries are missing); the session runs on {session.get_providers()}. "
            "Pass providers=None to fall back to CPU automatically."
        )
    if missing:
        log.warning(
            "%s listed but not usable here; running on %s", missing, session.get_providers()
        )
    return session
