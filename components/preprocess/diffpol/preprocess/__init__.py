"""diffpol's preprocess component: rollout datasets -> normalised, windowed training samples.

``preprocess`` runs the Ray Data pipeline; ``load_samples`` / ``sample_datasets`` /
``sample_arrays`` read its output for the trainer.
"""

__version__ = "0.1.0"

from diffpol.preprocess.config import NORM_MODES, PreprocessConfig
from diffpol.preprocess.pipeline import PreprocessResult, preprocess
from diffpol.preprocess.samples import (
    NORMALIZER_FILE,
    SAMPLES_FILE,
    SAMPLES_VERSION,
    Samples,
    SamplesInfo,
    SplitInfo,
    load_samples,
    sample_arrays,
    sample_datasets,
    unflatten,
)
from diffpol.preprocess.windows import build_windows, sample_schema

__all__ = [
    "NORMALIZER_FILE",
    "NORM_MODES",
    "SAMPLES_FILE",
    "SAMPLES_VERSION",
    "PreprocessConfig",
    "PreprocessResult",
    "Samples",
    "SamplesInfo",
    "SplitInfo",
    "__version__",
    "build_windows",
    "load_samples",
    "preprocess",
    "sample_arrays",
    "sample_datasets",
    "sample_schema",
    "unflatten",
]
