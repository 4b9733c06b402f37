"""diffpol's preprocess component: rollout datasets -> normalised, windowed training samples.

``preprocess`` runs the Ray Data pipeline. Its output follows the samples contract,
``diffpol.contracts.samples`` (``load_samples``, ``sample_datasets``, ``sample_arrays``),
which is how the trainer reads it.
"""

__version__ = "0.1.0"

from diffpol.preprocess.config import NORM_MODES, PreprocessConfig
from diffpol.preprocess.pipeline import PreprocessResult, preprocess
from diffpol.preprocess.windows import build_windows

__all__ = [
    "NORM_MODES",
    "PreprocessConfig",
    "PreprocessResult",
    "__version__",
    "build_windows",
    "preprocess",
]
