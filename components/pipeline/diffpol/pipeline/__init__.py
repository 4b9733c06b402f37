"""diffpol's end-to-end job: collect -> preprocess -> train -> export -> evaluate -> report.

The only component that imports all the others; ``./pants run components/trainer:main``
(the product's main command) and ``components/pipeline:main`` run it.
``run_pipeline(preset, out_dir)`` runs it as a library call.
"""

__version__ = "0.1.0"

from diffpol.pipeline.presets import PRESETS, Preset, resolve_preset
from diffpol.pipeline.run import run_pipeline

__all__ = ["PRESETS", "Preset", "__version__", "resolve_preset", "run_pipeline"]
