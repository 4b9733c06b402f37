"""Which env seeds run together, and which noise seed each policy call gets.

The seeding rule (also written into ``summary.json``):

1. Env seeds are grouped into *chunks* aligned to multiples of ``chunk_size``: chunk ``k``
   holds the requested seeds in ``[k * chunk_size, (k + 1) * chunk_size)``. Each chunk is one
   batched env and one batched policy call per re-plan. Chunks never depend on the number of
   workers, so neither do the results.
2. Re-plan ``j`` of a chunk whose first env seed is ``s0`` calls ``policy.act(obs, seed)`` with
   ``seed = call_seed(noise_seed, s0, j)``: 63 bits of ``SeedSequence(noise_seed,
   spawn_key=(s0, j))``. Every policy gets the same call seeds (common random numbers), so a
   paired comparison compares policies, not noise draws, and an ONNX policy in process and
   the same ONNX behind the gRPC sampler see identical noise.

A consequence: a stochastic policy's episode on seed ``s`` depends on the other seeds of its
chunk (the noise of row ``i`` comes from one draw for the whole batch). Ranges that start and
stop on multiples of ``chunk_size`` give the same chunks, so ``0:500`` and ``500:1000``
reproduce the episodes of ``0:1000``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from diffpol.evaluator.errors import EvaluationConfigError

DEFAULT_CHUNK_SIZE = 50
# rollout's limit for reset seeds on every backend (EnvPool takes int32 seeds).
MAX_SEED = 2**31 - 2
_SEED_MASK = (1 << 63) - 1  # call seeds fit int64 and the proto's uint64
_RANGE = re.compile(r"^\s*(-?\d+)\s*:\s*(-?\d+)\s*$")

SEEDING_RULE = (
    "env seeds are split into chunks aligned to multiples of chunk_size (chunk k = requested "
    "seeds in [k*chunk_size, (k+1)*chunk_size)); each chunk is one batched env and one "
    "policy.act call per re-plan for the whole batch; re-plan j of a chunk whose first seed "
    "is s0 passes seed = SeedSequence(noise_seed, spawn_key=(s0, j)).generate_state(1, "
    "uint64)[0] & (2**63 - 1); all policies get the same call seeds"
)


@dataclass(frozen=True)
class SeedRange:
    """Env seeds ``start, start + 1, ..., stop - 1`` (half-open, like Python's ``range``)."""

    start: int
    stop: int

    def __post_init__(self) -> None:
        if self.start < 0:
            raise EvaluationConfigError(f"seed range {self}: seeds must be >= 0")
        if self.stop <= self.start:
            raise EvaluationConfigError(
                f"seed range {self} is empty: STOP must be greater than START"
            )
        if self.stop - 1 > MAX_SEED:
            raise EvaluationConfigError(f"seed range {self}: seeds must be <= {MAX_SEED}")

    @classmethod
    def parse(cls, text: str) -> SeedRange:
        """Parse ``"START:STOP"``, e.g. ``"0:1000"`` for seeds 0..999."""
        match = _RANGE.match(text)
        if not match:
            raise EvaluationConfigError(
                f"seed range {text!r} is not START:STOP with integers, e.g. 0:1000 for seeds 0..999"
            )
        return cls(int(match.group(1)), int(match.group(2)))

    def __len__(self) -> int:
        return self.stop - self.start

    def __str__(self) -> str:
        return f"{self.start}:{self.stop}"

    def seeds(self) -> list[int]:
        return list(range(self.start, self.stop))


@dataclass(frozen=True)
class SeedChunk:
    """Env seeds that run as one batch. ``seeds[0]`` keys the chunk's noise."""

    seeds: tuple[int, ...]

    @property
    def first(self) -> int:
        return self.seeds[0]


def chunk_seeds(seeds: SeedRange, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[SeedChunk]:
    """Split seeds into chunks aligned to multiples of ``chunk_size`` (see the module doc)."""
    if chunk_size < 1:
        raise EvaluationConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    chunks = []
    lo = seeds.start
    while lo < seeds.stop:
        hi = min(seeds.stop, (lo // chunk_size + 1) * chunk_size)
        chunks.append(SeedChunk(tuple(range(lo, hi))))
        lo = hi
    return chunks


def call_seed(noise_seed: int, first_env_seed: int, replan_index: int) -> int:
    """The ``seed`` of re-plan ``replan_index`` for the chunk starting at ``first_env_seed``."""
    sequence = np.random.SeedSequence(noise_seed, spawn_key=(first_env_seed, replan_index))
    return int(sequence.generate_state(1, np.uint64)[0]) & _SEED_MASK


def check_noise_seed(noise_seed: int) -> int:
    if not isinstance(noise_seed, (int, np.integer)) or isinstance(noise_seed, bool):
        raise EvaluationConfigError(f"noise seed must be an integer, got {noise_seed!r}")
    if not 0 <= noise_seed < 2**63:
        raise EvaluationConfigError(f"noise seed must be in [0, 2**63), got {noise_seed}")
    return int(noise_seed)
