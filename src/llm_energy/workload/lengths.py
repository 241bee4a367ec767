"""Request lengths as numbers or seeded distributions (`study.workload_spec.LengthPolicy`).

Draws are continuous, rounded to the nearest integer, and redrawn while outside [min, max]
(a truncated distribution, not one clipped onto its bounds). The same seed and stream give
the same lengths on every machine (numpy's PCG64)."""

from __future__ import annotations

from typing import Any

import numpy as np

from llm_energy.study.workload_spec import (
    LognormalLengths,
    NormalLengths,
    UniformLengths,
)

#: Independent random streams of one workload seed.
STREAM_INPUT, STREAM_OUTPUT, STREAM_SAMPLE = 1, 2, 3
_MAX_ROUNDS = 10_000


def rng(seed: int, stream: int) -> np.random.Generator:
    """The generator of one stream (input lengths, output lengths, record sampling) of a seed."""
    return np.random.default_rng([stream, seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF])


def sample_lengths(policy: Any, count: int, generator: np.random.Generator) -> np.ndarray:
    """`count` lengths in tokens (int64) for a number or a distribution. 'dataset' has no
    lengths of its own: the caller takes each record's.

    Raises ValueError when the bounds hold too little of the distribution to draw from."""
    if isinstance(policy, int):
        return np.full(count, policy, dtype=np.int64)
    if isinstance(policy, UniformLengths):
        return generator.integers(policy.min, policy.max, size=count, endpoint=True)
    if isinstance(policy, (NormalLengths, LognormalLengths)):
        out = np.empty(0, dtype=np.int64)
        for _ in range(_MAX_ROUNDS):
            need = count - len(out)
            if need <= 0:
                break
            batch = max(need * 2, 64)
            if isinstance(policy, NormalLengths):
                draws = generator.normal(policy.mean, policy.std, size=batch)
            else:
                mu, sigma = policy.mu_sigma
                draws = generator.lognormal(mu, sigma, size=batch)
            values = np.rint(draws)
            values = values[(values >= policy.min) & (values <= policy.max)].astype(np.int64)
            out = np.concatenate([out, values])
        else:
            raise ValueError(f"could not draw {count} lengths within [{policy.min}, {policy.max}]")
        return out[:count]
    raise TypeError(f"not a length policy with lengths of its own: {policy!r}")
