"""Benchmarks run small by default (CI's bounded form); set DIFFPOL_BENCH_SCALE=1 for the full form.

The full form's numbers go in benchmarks/RESULTS.md with the command that produced them.
"""

import os

os.environ.setdefault("DIFFPOL_BENCH_SCALE", "0.05")
