"""Each distribution's version in its BUILD file is the `__version__` its package reports."""

import importlib
import re
from pathlib import Path

import pytest

DISTRIBUTIONS = {
    "proto/BUILD": ("diffpol-contracts", "diffpol.contracts"),
    "core/BUILD": ("diffpol-diffusion", "diffpol.diffusion"),
    **{
        f"components/{c}/BUILD": (f"diffpol-{c}", f"diffpol.{c}")
        for c in ("rollout", "preprocess", "trainer", "sampler", "evaluator", "pipeline")
    },
}


def declared(build_file: str) -> tuple[str, str]:
    text = Path(build_file).read_text()
    name = re.search(r'name="(diffpol-[a-z]+)"', text).group(1)
    version = re.search(r'version="([^"]+)"', text).group(1)
    return name, version


@pytest.mark.parametrize("build_file", sorted(DISTRIBUTIONS))
def test_build_version_matches_package_version(build_file):
    dist_name, module = DISTRIBUTIONS[build_file]
    name, version = declared(build_file)
    assert name == dist_name
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    assert importlib.import_module(module).__version__ == version
