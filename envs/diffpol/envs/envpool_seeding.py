"""The exact initial state EnvPool draws for a reset seed, so EnvPool episodes can be replayed.

EnvPool seeds each env's ``std::mt19937`` with its ``env_seed`` and draws the initial state
with ``std::uniform_real_distribution<double>`` (libstdc++: ``generate_canonical`` from two
32-bit outputs, then ``r * (b - a) + a``). Its observations are float32, so the float64
state cannot be recovered from them; this module repeats the draw bit for bit instead
(checked against EnvPool's first observations in ``envs_test.py``). Valid for the first
episode after the pool is created, which is how the rollout uses EnvPool.
"""

from __future__ import annotations

import math
import random

_MT_N = 624
_TWO_32 = 4294967296.0
_TWO_64 = 18446744073709551616.0


def mt19937_outputs(seed: int, count: int) -> list[int]:
    """The first ``count`` outputs of ``std::mt19937(seed)``."""
    state = [seed & 0xFFFFFFFF]
    for i in range(1, _MT_N):
        prev = state[-1]
        state.append((1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF)
    # CPython's Random is MT19937 too; only its seeding differs, so load the state directly.
    generator = random.Random()
    generator.setstate((3, (*state, _MT_N), None))
    return [generator.getrandbits(32) for _ in range(count)]


def _canonical(low_word: int, high_word: int) -> float:
    value = (float(low_word) + float(high_word) * _TWO_32) / _TWO_64
    return value if value < 1.0 else math.nextafter(1.0, 0.0)


def uniform_draws(seed: int, bounds: list[tuple[float, float]]) -> list[float]:
    """Successive ``uniform_real_distribution<double>(a, b)`` draws from ``mt19937(seed)``."""
    words = mt19937_outputs(seed, 2 * len(bounds))
    return [
        _canonical(words[2 * k], words[2 * k + 1]) * (b - a) + a for k, (a, b) in enumerate(bounds)
    ]
