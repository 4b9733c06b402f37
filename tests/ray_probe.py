"""Starts Ray and reports where its workers import project code from.

Built as a venv-mode pex_binary (tests/BUILD) and run by ray_under_pants_test.py: Ray workers
are fresh Python processes, so this proves a PEX run hands its code to them.
"""

import json
import os
import sys
import tempfile

import ray


@ray.remote
def where_is_project_code() -> dict:
    import diffpol.contracts
    from diffpol.contracts import transition_schema

    return {
        "pid": os.getpid(),
        "contracts": diffpol.contracts.__file__,
        "columns": transition_schema(3, 1).names,
    }


def main() -> int:
    ray.init(
        num_cpus=1,
        object_store_memory=80 * 1024 * 1024,
        include_dashboard=False,
        # Ray puts AF_UNIX sockets under its temp dir: keep the path short (<108 bytes).
        _temp_dir=tempfile.mkdtemp(prefix="ray-probe-", dir="/tmp"),
        log_to_driver=False,
    )
    try:
        report = ray.get(where_is_project_code.remote())
        report["driver_pid"] = os.getpid()
        report["executable"] = sys.executable
        print(json.dumps(report))
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
