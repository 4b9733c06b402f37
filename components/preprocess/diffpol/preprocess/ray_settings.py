"""Ray Data settings for this pipeline, applied only while it runs.

Ray Data's defaults target large clusters. On a small machine and inputs of ~100k
transitions, three of them cost more than the work itself (the measurements are in
benchmarks/RESULTS.md, "Preprocess"):

- ``use_datasource_v2`` (Parquet reads through ListFiles/ReadFiles): every read starts
  FooterReader actors, many times slower per ``read_parquet`` than the V1 reader.
- the default hash shuffle (``shuffle_v2``) starts aggregator actors, many times slower
  for a group-by over 100k rows than the task-based sort shuffle.
- ``read_op_min_num_blocks=200`` splits small inputs into hundreds of tiny blocks (most
  of the seed tutorial's slow ``random_shuffle`` over 10k rows is that); two blocks per
  CPU keep every core busy without the per-block overhead.

``DataContext`` is process-global, so the previous values are restored on exit
(``diffpol.contracts.ray_data``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import ray
from ray.data import DataContext
from ray.data.context import ShuffleStrategy

from diffpol.contracts.ray_data import data_context, quiet_data_settings


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1))) if ray.is_initialized() else 1


@contextlib.contextmanager
def pipeline_data_context(*, progress: bool) -> Iterator[DataContext]:
    """Apply this component's Ray Data settings while the block runs."""
    settings = {
        "use_datasource_v2": False,
        "shuffle_strategy": ShuffleStrategy.SORT_SHUFFLE_PULL_BASED,
        "read_op_min_num_blocks": 2 * cluster_cpus(),
        **quiet_data_settings(progress=progress),
        # Errors raised in our map functions (e.g. a ContractError naming a broken
        # episode) reach the caller as themselves rather than as UserCodeException.
        "raise_original_map_exception": True,
    }
    with data_context(settings) as ctx:
        yield ctx
