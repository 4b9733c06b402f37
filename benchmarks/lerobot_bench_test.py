"""LeRobotDataset v3.0 import against diffpol's own read of the same data, in one run.

    DIFFPOL_BENCH_SCALE=1 ./pants test benchmarks/lerobot_bench_test.py -- -s

Scale 1.0 is 2000 Pendulum-v1 episodes (400k transitions), collected here and exported as
a LeRobotDataset. "diffpol's read" opens the diffpol dataset as a consumer does: the
manifest with its fingerprint check (one sha256 pass) and every part read into one Arrow
table. "import" is ``import_lerobot`` end to end: read and check the LeRobot files, convert,
write the diffpol dataset with its manifest and digests. Rounds alternate; the best of each
is compared (goal: import <= 2x diffpol's read), as are the median of the rounds' own
ratios and each side's CPU time.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from diffpol.contracts.dataset import data_files, read_manifest
from diffpol.rollout import collect_local, make_plan
from diffpol.rollout.lerobot import export_lerobot, import_lerobot

SCALE = float(os.environ.get("DIFFPOL_BENCH_SCALE", "1.0"))
EPISODES = max(10, round(2000 * SCALE))
ROUNDS = 11  # a round is under a second; many, since the shared machine's load varies


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot-bench")
    plan = make_plan("Pendulum-v1", "random", EPISODES, 0)
    collect_local(plan, root / "diffpol", num_envs=500)
    export_lerobot(root / "diffpol", root / "lerobot")
    return root


def _diffpol_read(root):
    read_manifest(root)
    return pq.read_table([str(p) for p in data_files(root)])


def test_import_against_diffpols_own_read(datasets):
    # Wall time is the goal's measure; process CPU time (all threads) is printed beside it
    # because it moves less with the shared machine's load.
    times = {"diffpol read": [], "import": []}
    cpu = {"diffpol read": [], "import": []}
    for _ in range(ROUNDS):
        start, start_cpu = time.perf_counter(), time.process_time()
        table = _diffpol_read(datasets / "diffpol")
        times["diffpol read"].append(time.perf_counter() - start)
        cpu["diffpol read"].append(time.process_time() - start_cpu)
        out = datasets / "imported"
        shutil.rmtree(out, ignore_errors=True)
        start, start_cpu = time.perf_counter(), time.process_time()
        manifest = import_lerobot(datasets / "lerobot", out)
        times["import"].append(time.perf_counter() - start)
        cpu["import"].append(time.process_time() - start_cpu)
    assert manifest.transitions == table.num_rows == EPISODES * 200
    assert read_manifest(out) == manifest  # the files match the manifest's digests
    best = {k: min(v) for k, v in times.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    ratio = best["import"] / best["diffpol read"]
    paired = np.median(np.divide(times["import"], times["diffpol read"]))
    print(
        f"\n{EPISODES} episodes, {table.num_rows} transitions: diffpol read "
        f"{best['diffpol read'] * 1e3:.0f} ms, LeRobot import {best['import'] * 1e3:.0f} ms "
        f"(best of {ROUNDS}); import / read = {ratio:.2f} (goal <= 2), median of the "
        f"rounds' ratios {paired:.2f}; CPU time "
        f"{best_cpu['diffpol read'] * 1e3:.0f} vs {best_cpu['import'] * 1e3:.0f} ms = "
        f"{best_cpu['import'] / best_cpu['diffpol read']:.2f}"
    )
