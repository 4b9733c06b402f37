"""A trained policy as the sampler's ONNX artifact: where the trainer's output meets the
sampler's export, the one join of the two that the boundary rule leaves to the pipeline."""

from __future__ import annotations

from pathlib import Path


def export_torch_policy(policy, path: Path) -> Path:
    """``policy`` (a ``diffpol.trainer.TorchPolicy``) as one validated ONNX graph at ``path``."""
    from diffpol.sampler import export_onnx

    return export_onnx(
        policy.loop,
        policy.normalizer,
        policy.env,
        policy.window,
        path,
        model_version=policy.model_version,
    )
