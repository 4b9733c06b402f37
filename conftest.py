"""Fixtures shared by every test in the repo (Pants adds this file to each test's sandbox)."""

from __future__ import annotations

import os
import tempfile

import pytest


@pytest.fixture(scope="module")
def ray_local():
    """A small local Ray for one test module.

    Sized so that several test files running at once on a 2-core machine do not starve
    each other: one CPU slot each, a 100 MB object store, no dashboard. Remote tasks import
    project code through the sandbox's PYTHONPATH, which Ray workers inherit.
    """
    import ray

    # Ray puts AF_UNIX sockets under its temp dir, whose path must stay under 108 bytes.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(
        num_cpus=int(os.environ.get("DIFFPOL_TEST_RAY_CPUS", "2")),
        object_store_memory=100 * 1024 * 1024,
        include_dashboard=False,
        _temp_dir=temp_dir,
        runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}},
        log_to_driver=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def dp_cache_dir(tmp_path_factory):
    """A private cache for the rollout DP expert's solved tables, for one test module.

    Request it before ``ray_local`` (or as an autouse fixture) so that it is set before Ray
    starts: Ray workers inherit the environment, and the actors then share this cache.
    """
    cache = tmp_path_factory.mktemp("dp-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DIFFPOL_CACHE_DIR", str(cache))
        yield cache
