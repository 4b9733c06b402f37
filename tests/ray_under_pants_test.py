"""Ray under Pants: project code reaches Ray workers in tests and in `./pants run` binaries."""

import json
import os
import subprocess
import sys
from pathlib import Path

import ray

import diffpol.contracts


@ray.remote
def schema_columns_in_worker() -> tuple[int, list[str]]:
    from diffpol.contracts import transition_schema

    return os.getpid(), transition_schema(3, 1).names


@ray.remote
class SchemaActor:
    def width(self, obs_dim: int) -> int:
        from diffpol.contracts import transition_schema

        return transition_schema(obs_dim, 1).field("obs").type.list_size


def test_remote_tasks_and_actors_import_project_code(ray_local):
    pid, columns = ray.get(schema_columns_in_worker.remote())
    assert pid != os.getpid()  # really ran in a worker process
    assert columns[:3] == ["episode_id", "seed", "step"]
    actor = SchemaActor.remote()
    assert ray.get(actor.width.remote(5)) == 5


def test_local_ray_is_small(ray_local):
    resources = ray.cluster_resources()
    assert resources["CPU"] <= 2
    assert resources["object_store_memory"] <= 100 * 1024 * 1024


def test_venv_pex_binary_gives_ray_workers_the_project_code(tmp_path):
    # A packed-layout PEX is a directory that Python runs through its __main__.py.
    pex = Path("tests/ray_probe.pex")
    assert (pex / "__main__.py").is_file(), "tests:ray_probe is a runtime_package_dependency"
    env = {**os.environ, "PEX_ROOT": str(tmp_path / "pex_root")}
    out = subprocess.run(
        [sys.executable, str(pex)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["pid"] != report["driver_pid"]
    assert report["columns"][:3] == ["episode_id", "seed", "step"]
    # The worker imported the copy inside the PEX's venv, not this test's sources.
    assert report["contracts"] != diffpol.contracts.__file__
    assert str(tmp_path / "pex_root") in report["contracts"]
