"""Train/validation/test splits of a ratings table.

Splits are arrays of rating positions (indices into the parallel columns of
`movielens.Ratings`), so one split serves every system that is compared.
"""

import dataclasses

import numpy as np

RANDOM = "random"
TEMPORAL = "temporal"
KINDS = (RANDOM, TEMPORAL)


@dataclasses.dataclass(frozen=True)
class Split:
    """Rating positions for fitting, tuning and reporting.

    Attributes:
      train: int64 [n_train], sorted; what the final model is fitted on.
      test: int64 [n_test], sorted; read only for the final report.
      validation: int64 [n_val], sorted; a subset of `train` held out while
        tuning: a tuned system is fitted on `fit` and scored on
        `validation`, then refitted on all of `train`.
      fit: int64 [n_train - n_val], sorted; `train` without `validation`.
    """

    train: np.ndarray
    test: np.ndarray
    validation: np.ndarray
    fit: np.ndarray


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


def temporal_split(
    user_id: np.ndarray, timestamp: np.ndarray, test_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Holds out each user's most recent ratings.

    A user with n ratings keeps round(n * test_fraction) of them for test,
    but always at least one for training, so a user with a single rating
    is never held out entirely. Ratings with the same timestamp are ordered
    by position, later rows counting as more recent: MovieLens timestamps
    are whole seconds and a user often rates several movies in one.

    Args:
      user_id: int64 [n], the user of each rating.
      timestamp: int64 [n], seconds since the epoch.
      test_fraction: share of each user's ratings to hold out, in (0, 1).

    Returns:
      (train, test): sorted int64 position arrays that partition
      `range(n)`.

    Raises:
      ValueError: the columns differ in length or the fraction is outside
        (0, 1).
    """
    user_id = np.asarray(user_id)
    timestamp = np.asarray(timestamp)
    if user_id.shape != timestamp.shape or user_id.ndim != 1:
        raise ValueError(
            "user_id and timestamp must be 1-D and of equal length, got "
            f"shapes {user_id.shape} and {timestamp.shape}"
        )
    _check_fraction("test_fraction", test_fraction)

    # Sorted by user, then time, then position: each user's ratings form a
    # run with the latest at its end.
    order = np.lexsort((np.arange(len(user_id)), timestamp, user_id))
    users = user_id[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, len(users)])
    num_test = np.minimum(np.round(counts * test_fraction), counts - 1)
    num_test = num_test.astype(np.int64)

    # Position of each sorted rating within its user's run, counted from
    # the end: the last `num_test` of a run are test.
    run_end = np.repeat(starts + counts, counts)
    from_end = run_end - np.arange(len(users))
    is_test = from_end <= np.repeat(num_test, counts)
    return np.sort(order[~is_test]), np.sort(order[is_test])


def make_split(
    kind: str,
    user_id: np.ndarray,
    timestamp: np.ndarray,
    test_fraction: float,
    validation_fraction: float,
    seed: int,
) -> Split:
    """Builds a test split and carves a validation split out of training.

    The validation split is made the same way as the test split, from the
    training part: a random share of it (`random`), or each user's latest
    training ratings (`temporal`), so tuning sees the same kind of task as
    the final report.

    Args:
      kind: "random" or "temporal".
      user_id: int64 [n], the user of each rating.
      timestamp: int64 [n], seconds since the epoch.
      test_fraction: share of ratings held out for test, in (0, 1).
      validation_fraction: share of the training ratings held out for
        validation, in (0, 1).
      seed: seeds the random splits; the temporal split ignores it.

    Returns:
      The split, every array sorted.

    Raises:
      ValueError: an unknown kind or a fraction outside (0, 1).
    """
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("validation_fraction", validation_fraction)
    user_id = np.asarray(user_id)
    if kind == RANDOM:
        train, test = random_split(len(user_id), test_fraction, seed)
        # A different seed, so validation is not the same draw as test.
        inner_fit, inner_val = random_split(
            len(train), validation_fraction, seed + 1
        )
    elif kind == TEMPORAL:
        train, test = temporal_split(user_id, timestamp, test_fraction)
        inner_fit, inner_val = temporal_split(
            user_id[train], np.asarray(timestamp)[train], validation_fraction
        )
    else:
        raise ValueError(
            f"unknown split kind {kind!r}; expected one of {KINDS}"
        )
    return Split(
        train=train,
        test=test,
        validation=train[inner_val],
        fit=train[inner_fit],
    )


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(
            f"{name} must be between 0 and 1 (exclusive), got {value}"
        )
