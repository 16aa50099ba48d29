"""Train/test splits of a ratings table."""

import numpy as np


def random_split(
    num_ratings: int, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Splits rating positions uniformly at random.

    Args:
      num_ratings: how many ratings there are.
      test_fraction: share of them to hold out, in (0, 1).
      seed: seeds the permutation, so a split is reproducible.

    Returns:
      (train, test): sorted int64 position arrays that partition
      `range(num_ratings)`.
    """
    order = np.random.default_rng(seed).permutation(num_ratings)
    num_test = int(round(num_ratings * test_fraction))
    return np.sort(order[num_test:]), np.sort(order[:num_test])
