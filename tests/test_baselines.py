"""The benchmark's baselines: closed forms worked by hand and checked
against their definitions."""

import numpy as np
import pytest

from bench import baselines
from trainer.evaluation import UserMovies

# Each user rated two of three movies, each pair once.
TINY = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=np.float64)


def _matrix(x: np.ndarray) -> UserMovies:
    users, movies = np.nonzero(x)
    return UserMovies.build(users, movies, *x.shape)


def test_ease_weights_match_the_hand_computation():
    # X^T X + I = 2I + J, whose inverse is I/2 - J/10: diagonal 0.4, off
    # the diagonal -0.1. So B = -P / diag(P) is 0.25 off the diagonal.
    weights = baselines.ease_weights(TINY, l2=1.0)

    np.testing.assert_allclose(weights, 0.25 * (np.ones((3, 3)) - np.eye(3)))


def test_ease_scores_are_the_users_row_times_the_weights():
    scorer = baselines.ease(_matrix(TINY), l2=1.0)

    np.testing.assert_allclose(
        scorer(np.array([0, 2])), [[0.25, 0.25, 0.5], [0.25, 0.5, 0.25]]
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_ease_columns_are_ridge_regressions_on_the_other_movies(seed):
    # EASE's defining property: column j regresses movie j on all other
    # movies with an L2 penalty, and ignores movie j itself.
    rng = np.random.default_rng(seed)
    x = (rng.random((40, 6)) < 0.4).astype(np.float64)
    l2 = 3.0

    weights = baselines.ease_weights(x, l2)

    for j in range(x.shape[1]):
        others = np.delete(x, j, axis=1)
        expected = np.linalg.solve(
            others.T @ others + l2 * np.eye(others.shape[1]), others.T @ x[:, j]
        )
        np.testing.assert_allclose(np.delete(weights[:, j], j), expected)
        assert weights[j, j] == 0.0


def test_ease_needs_a_positive_penalty():
    with pytest.raises(ValueError, match="positive l2"):
        baselines.ease_weights(TINY, l2=0.0)


def test_ease_at_full_rank_is_ease_and_lower_ranks_have_that_rank():
    rng = np.random.default_rng(0)
    x = (rng.random((50, 8)) < 0.4).astype(np.float64)
    users = np.arange(50)

    scorers = baselines.ease_at_ranks(_matrix(x), l2=2.0, ranks=(8, 3))

    full = baselines.ease(_matrix(x), l2=2.0)(users)
    np.testing.assert_allclose(scorers[8](users), full, atol=1e-5)
    # Scores are X @ (weights cut to rank 3): rank 3 at most, and the best
    # rank-3 approximation of the weights, so not the full scores.
    cut = scorers[3](users)
    assert np.linalg.matrix_rank(cut, tol=1e-4) == 3
    assert not np.allclose(cut, full, atol=1e-3)


def test_ease_at_ranks_refuses_a_rank_beyond_the_catalogue():
    with pytest.raises(ValueError, match="between 1 and 3"):
        baselines.ease_at_ranks(_matrix(TINY), l2=1.0, ranks=(2, 4))


def test_popular_scores_every_user_by_rating_counts():
    seen = UserMovies.build(
        np.array([0, 1, 1, 2]), np.array([2, 2, 0, 2]), 3, 4
    )

    scores = baselines.popular(seen)(np.array([0, 2]))

    np.testing.assert_array_equal(scores, [[1, 0, 3, 0], [1, 0, 3, 0]])


def test_als_is_seeded_and_finds_planted_blocks():
    # Two groups of users, each rating (most of) its own half of the
    # catalogue: a user's unrated movie of their own half must outscore
    # every movie of the other half.
    rng = np.random.default_rng(0)
    x = np.zeros((40, 20))
    x[:20, :10] = rng.random((20, 10)) < 0.7
    x[20:, 10:] = rng.random((20, 10)) < 0.7
    x[0, 3] = 0
    seen = _matrix(x)

    def fit():
        return baselines.als(
            seen, factors=4, regularization=0.1, alpha=1.0, seed=7
        )(np.arange(40))

    scores = fit()

    np.testing.assert_array_equal(scores, fit())
    assert scores[0, 3] > scores[0, 10:].max()
