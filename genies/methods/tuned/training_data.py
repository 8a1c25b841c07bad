"""Which pairs a reward model trains and validates on, and in which order; all seeded.

Every random choice is seeded by `derive_seed(seed, dataset, purpose, ...)`, a hash of the
config seed, the dataset name and the purpose, so each dataset gets its own stream and adding
a dataset changes nothing for the others: "validation" (the held-out examples), "pairs" (the
dispreferred response of each training pair), "order", epoch (the pair order of each epoch),
"init" (fresh weights) and "step", step (dropout masks of each step).
"""

from __future__ import annotations

import numpy as np

from genies.methods.tuned.reward_model import RewardModelError
from genies.seeds import derive_seed


def split_rows(n: int, val_fraction: float, seed: int, dataset: str):
    """(train rows, validation rows) of `n` examples, both ascending."""
    n_val = max(1, round(val_fraction * n))
    if n - n_val < 1:
        raise RewardModelError(f"{dataset}: {n} examples are too few to hold out validation")
    perm = np.random.default_rng(derive_seed(seed, dataset, "validation")).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def choose_pairs(examples, rows, seed: int, dataset: str) -> list[tuple[int, int, int]]:
    """One (row, preferred, dispreferred) training pair per example row, seeded."""
    rng = np.random.default_rng(derive_seed(seed, dataset, "pairs"))
    preferred = examples.column("preferred").to_pylist()
    others = examples.column("dispreferred").to_pylist()
    return [(int(r), preferred[r], others[r][int(rng.integers(len(others[r])))]) for r in rows]


class PairOrder:
    """Which pairs step s (1-based) uses: a fresh seeded permutation per epoch."""

    def __init__(self, n: int, batch_size: int, seed: int, dataset: str):
        self.n, self.batch_size, self.seed, self.dataset = n, batch_size, seed, dataset
        self._epochs: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._epochs:
            rng = np.random.default_rng(derive_seed(self.seed, self.dataset, "order", epoch))
            self._epochs[epoch] = rng.permutation(self.n)
        return self._epochs[epoch]

    def batch(self, step: int) -> list[int]:
        start = (step - 1) * self.batch_size
        return [
            int(self._perm(pos // self.n)[pos % self.n])
            for pos in range(start, start + self.batch_size)
        ]
