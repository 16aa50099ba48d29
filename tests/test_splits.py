"""Random and temporal splits: partitions, seeding, who is held out."""

import numpy as np
import pytest

from trainer import splits


def _ratings(seed: int, users: int = 30, n: int = 600):
    rng = np.random.default_rng(seed)
    user_id = rng.integers(1, users + 1, size=n)
    # Few distinct timestamps, so that ties occur.
    timestamp = rng.integers(0, 50, size=n)
    return user_id, timestamp


def _assert_partition(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))
    for part in parts:
        assert np.all(np.diff(part) > 0), "parts are sorted, no repeats"


def test_random_split_partitions_and_is_reproducible():
    train, test = splits.random_split(1000, 0.2, seed=42)
    again = splits.random_split(1000, 0.2, seed=42)
    other = splits.random_split(1000, 0.2, seed=43)

    _assert_partition([train, test], 1000)
    assert len(test) == 200
    np.testing.assert_array_equal(test, again[1])
    assert not np.array_equal(test, other[1])


@pytest.mark.parametrize("seed", [0, 1])
def test_temporal_split_holds_out_each_users_latest(seed):
    user_id, timestamp = _ratings(seed)

    train, test = splits.temporal_split(user_id, timestamp, 0.25)

    _assert_partition([train, test], len(user_id))
    for user in np.unique(user_id):
        mine_train = train[user_id[train] == user]
        mine_test = test[user_id[test] == user]
        n = len(mine_train) + len(mine_test)
        assert len(mine_test) == min(round(n * 0.25), n - 1)
        if len(mine_test):
            # Latest by (timestamp, position): every test rating comes
            # after every training rating of the same user.
            latest_train = max(
                zip(timestamp[mine_train], mine_train, strict=True)
            )
            earliest_test = min(
                zip(timestamp[mine_test], mine_test, strict=True)
            )
            assert latest_train < earliest_test


def test_temporal_split_breaks_timestamp_ties_by_position():
    user_id = np.array([1, 1, 1, 1])
    timestamp = np.array([5, 5, 5, 5])

    train, test = splits.temporal_split(user_id, timestamp, 0.5)

    np.testing.assert_array_equal(train, [0, 1])
    np.testing.assert_array_equal(test, [2, 3])


def test_temporal_split_never_holds_out_a_users_only_rating():
    user_id = np.array([1, 2, 2])
    timestamp = np.array([9, 1, 2])

    train, test = splits.temporal_split(user_id, timestamp, 0.9)

    np.testing.assert_array_equal(train, [0, 1])
    np.testing.assert_array_equal(test, [2])


@pytest.mark.parametrize("kind", splits.KINDS)
def test_make_split_carves_validation_out_of_train(kind):
    user_id, timestamp = _ratings(3)

    split = splits.make_split(kind, user_id, timestamp, 0.2, 0.1, seed=42)

    _assert_partition([split.train, split.test], len(user_id))
    assert not np.intersect1d(split.fit, split.validation).size
    np.testing.assert_array_equal(
        np.sort(np.concatenate([split.fit, split.validation])), split.train
    )
    again = splits.make_split(kind, user_id, timestamp, 0.2, 0.1, seed=42)
    np.testing.assert_array_equal(split.validation, again.validation)


def test_temporal_validation_is_the_latest_of_the_training_part():
    user_id, timestamp = _ratings(4)

    split = splits.make_split(
        splits.TEMPORAL, user_id, timestamp, 0.2, 0.1, seed=0
    )

    inner_fit, inner_val = splits.temporal_split(
        user_id[split.train], timestamp[split.train], 0.1
    )
    np.testing.assert_array_equal(split.validation, split.train[inner_val])
    np.testing.assert_array_equal(split.fit, split.train[inner_fit])


def test_random_validation_is_not_the_test_draw_again():
    split = splits.make_split(
        splits.RANDOM, np.zeros(1000), np.zeros(1000), 0.2, 0.2, seed=42
    )

    assert len(split.validation) == 160
    assert not np.array_equal(split.validation, split.test[:160])


@pytest.mark.parametrize(
    "kind, test_fraction, validation_fraction, message",
    [
        ("sideways", 0.2, 0.1, "unknown split kind"),
        ("random", 0.0, 0.1, "test_fraction"),
        ("temporal", 0.2, 1.0, "validation_fraction"),
    ],
)
def test_make_split_rejects_bad_arguments(
    kind, test_fraction, validation_fraction, message
):
    with pytest.raises(ValueError, match=message):
        splits.make_split(
            kind,
            np.ones(10),
            np.ones(10),
            test_fraction,
            validation_fraction,
            0,
        )


def test_temporal_split_rejects_columns_of_different_lengths():
    with pytest.raises(ValueError, match="equal length"):
        splits.temporal_split(np.ones(3), np.ones(4), 0.2)
