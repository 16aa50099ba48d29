"""The evaluation protocols: hand-worked toys, brute-force references and
TensorFlow Recommenders' own metric."""

import math

import numpy as np
import pytest

from trainer import evaluation, movielens
from trainer.evaluation import Interactions, UserMovies

# Three users, four movies. User 1 ties movies 1 and 2; user 2 scores
# everything alike, so ties decide its whole ranking.
TOY_SCORES = np.array(
    [
        [0.9, 0.1, 0.5, 0.3],
        [0.2, 0.8, 0.8, 0.1],
        [0.0, 0.0, 0.0, 0.0],
    ]
)


def toy_scorer(users: np.ndarray) -> np.ndarray:
    return TOY_SCORES[users]


def matrix(pairs: list[tuple[int, int]], users=3, movies=4) -> UserMovies:
    u, m = zip(*pairs, strict=True) if pairs else ((), ())
    return UserMovies.build(np.array(u), np.array(m), users, movies)


def test_top_k_accuracy_counts_outranking_movies_per_rating():
    # Ranks (movies ahead): (0, 2) -> 1, (0, 1) -> 3, (1, 2) -> 1 (the tie
    # goes to movie 1, earlier), (1, 1) -> 0, (2, 3) -> 3.
    users = np.array([0, 0, 1, 1, 2])
    movies = np.array([2, 1, 2, 1, 3])

    result = evaluation.top_k_accuracy(
        toy_scorer, users, movies, ks=(1, 2, 3, 4)
    )

    assert result == pytest.approx(
        {"top_1": 0.2, "top_2": 0.6, "top_3": 0.6, "top_4": 1.0}
    )


def test_a_constant_scorer_does_not_hit_everything():
    users = np.zeros(4, dtype=np.int64) + 2
    movies = np.arange(4)

    result = evaluation.top_k_accuracy(toy_scorer, users, movies, ks=(1,))

    assert result["top_1"] == pytest.approx(0.25)


def test_ranking_quality_matches_the_hand_computation():
    # User 0: seen {0}, ranking 2, 3, 1, relevant {1, 2}.
    # User 1: seen {3}, ranking 1, 2, 0 (tie to 1), relevant {2}.
    # User 2: nothing seen, ranking 0, 1, 2, 3, relevant {3}.
    seen = matrix([(0, 0), (1, 3)])
    held_out = matrix([(0, 2), (0, 1), (1, 2), (2, 3)])

    quality = evaluation.ranking_quality(
        toy_scorer, seen, held_out, max_k=3, ndcg_k=2
    )

    # Recall@k: user 0 1, 1/2, 2/2; user 1 0, 1, 1; user 2 0, 0, 0.
    np.testing.assert_allclose(quality.recall, [1 / 3, 0.5, 2 / 3])
    # A cut-off under 10 keeps each user's recall at max_k.
    assert quality.user_recall_k == 3
    np.testing.assert_allclose(quality.user_recall, [1.0, 1.0, 0.0])
    # NDCG@2: user 0 1 / (1 + 1/log2 3); user 1 (1/log2 3) / 1; user 2 0.
    discount = 1 / math.log2(3)
    expected = (1 / (1 + discount) + discount) / 3
    assert quality.ndcg == pytest.approx(expected)
    assert quality.num_users == 3
    assert quality.metrics(ks=(1, 3)) == pytest.approx(
        {"recall_1": 1 / 3, "recall_3": 2 / 3, "ndcg_2": expected}
    )


def test_users_whose_held_out_movies_are_all_seen_are_skipped():
    seen = matrix([(0, 2), (1, 3)])
    held_out = matrix([(0, 2), (1, 2)])

    quality = evaluation.ranking_quality(
        toy_scorer, seen, held_out, max_k=2, ndcg_k=1
    )

    assert quality.num_users == 1
    np.testing.assert_allclose(quality.recall, [0.0, 1.0])


def test_recall_stays_flat_beyond_a_small_catalogue():
    held_out = matrix([(0, 1)])

    quality = evaluation.ranking_quality(
        toy_scorer, matrix([]), held_out, max_k=6, ndcg_k=10
    )

    np.testing.assert_allclose(quality.recall, [0, 0, 0, 1, 1, 1])
    assert quality.ndcg == pytest.approx(1 / math.log2(5))


def _brute_force(scores, seen, held_out, k):
    """(mean Recall@k, mean NDCG@k, {user row: Recall@k})."""
    recalls, ndcgs, by_user = [], [], {}
    for user in range(scores.shape[0]):
        skip = set(
            seen.movie_rows[seen.row_splits[user] : seen.row_splits[user + 1]]
        )
        relevant = (
            set(
                held_out.movie_rows[
                    held_out.row_splits[user] : held_out.row_splits[user + 1]
                ]
            )
            - skip
        )
        if not relevant:
            continue
        ranked = sorted(
            (m for m in range(scores.shape[1]) if m not in skip),
            key=lambda m: (-scores[user, m], m),
        )[:k]
        hits = [m in relevant for m in ranked]
        recalls.append(sum(hits) / min(k, len(relevant)))
        by_user[user] = recalls[-1]
        dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
        ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(relevant))))
        ndcgs.append(dcg / ideal)
    return np.mean(recalls), np.mean(ndcgs), by_user


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_quality_equals_a_brute_force_loop(seed):
    rng = np.random.default_rng(seed)
    users, movies = 30, 50
    # Rounded scores, so that ties occur and their order is checked too.
    scores = np.round(rng.random((users, movies)), 1)
    pairs = rng.integers(0, [users, movies], size=(400, 2))
    seen = UserMovies.build(pairs[:250, 0], pairs[:250, 1], users, movies)
    held_out = UserMovies.build(pairs[250:, 0], pairs[250:, 1], users, movies)

    quality = evaluation.ranking_quality(
        lambda u: scores[u], seen, held_out, max_k=10, ndcg_k=10
    )

    recall, ndcg, by_user = _brute_force(scores, seen, held_out, 10)
    assert quality.recall[-1] == pytest.approx(recall, abs=1e-12)
    assert quality.ndcg == pytest.approx(ndcg, abs=1e-12)
    assert quality.user_recall_k == 10
    assert quality.users.tolist() == sorted(by_user)
    np.testing.assert_allclose(
        quality.user_recall, [by_user[u] for u in sorted(by_user)], atol=1e-12
    )


def test_recall_by_history_averages_within_quantile_bands():
    # Users 0..7 have seen 1..8 movies; user u's Recall@10 is u / 10.
    users = np.arange(8)
    seen = UserMovies.build(
        np.repeat(users, users + 1),
        np.concatenate([np.arange(u + 1) for u in users]),
        8,
        10,
    )
    quality = evaluation.RankingQuality(
        recall=np.zeros(10),
        ndcg=0.0,
        ndcg_k=10,
        num_users=8,
        users=users,
        user_recall=users / 10,
        user_recall_k=10,
    )

    bands = evaluation.recall_by_history(quality, seen, bands=4)

    # Quartile edges of the lengths 1..8: 1, 2.75, 4.5, 6.25, 8.
    assert [
        (b["min_history"], b["max_history"], b["users"]) for b in bands
    ] == [
        (1, 2, 2),
        (3, 4, 2),
        (5, 6, 2),
        (7, 8, 2),
    ]
    assert [b["recall"] for b in bands] == pytest.approx(
        [0.05, 0.25, 0.45, 0.65]
    )


def test_recall_by_history_puts_tied_lengths_in_one_band():
    # Every user has seen one movie: every quantile edge is 1.
    seen = UserMovies.build(np.arange(4), np.zeros(4), 4, 3)
    quality = evaluation.RankingQuality(
        recall=np.zeros(10),
        ndcg=0.0,
        ndcg_k=10,
        num_users=4,
        users=np.arange(4),
        user_recall=np.array([0.0, 1.0, 1.0, 0.0]),
        user_recall_k=10,
    )

    bands = evaluation.recall_by_history(quality, seen, bands=3)

    assert bands == [
        {"min_history": 1, "max_history": 1, "users": 4, "recall": 0.5}
    ]
    with pytest.raises(ValueError, match="bands must be at least 1"):
        evaluation.recall_by_history(quality, seen, bands=0)


def test_top_k_accuracy_agrees_with_tfrs_factorized_top_k():
    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    # Integer embeddings keep every dot product exact in float32 (below
    # 2**24), so TFRS' two ways of computing a score (a row sum for the
    # true movie, a matrix product for the catalogue) agree to the bit.
    rng = np.random.default_rng(5)
    users = rng.integers(-1000, 1000, (40, 8)).astype(np.float32)
    movies = rng.integers(-1000, 1000, (120, 8)).astype(np.float32)
    user_rows = rng.integers(0, 40, size=300)
    movie_rows = rng.integers(0, 120, size=300)
    scores = users @ movies.T
    # Ties are broken differently by design; this draw has none.
    assert all(len(set(row)) == len(row) for row in scores[user_rows])
    ks = (1, 5, 10, 50)
    metric = tfrs.metrics.FactorizedTopK(
        candidates=tf.data.Dataset.from_tensor_slices(movies).batch(32), ks=ks
    )
    metric.update_state(users[user_rows], movies[movie_rows])
    reference = [float(v) for v in metric.result()]

    result = evaluation.top_k_accuracy(
        evaluation.embedding_scorer(users, movies), user_rows, movie_rows, ks
    )

    # The reference averages in float32.
    assert [result[f"top_{k}"] for k in ks] == pytest.approx(
        reference, abs=1e-6
    )


@pytest.mark.parametrize(
    "users, movies, message",
    [
        ([], [], "non-empty"),
        ([0, 1], [0], "equal"),
    ],
)
def test_top_k_accuracy_rejects_bad_ratings(users, movies, message):
    with pytest.raises(ValueError, match=message):
        evaluation.top_k_accuracy(toy_scorer, users, movies)


def test_a_scorer_of_the_wrong_shape_is_reported():
    with pytest.raises(ValueError, match=r"\[1, num_movies\]"):
        evaluation.top_k_accuracy(
            lambda u: np.zeros(4), np.array([0]), np.array([1])
        )


def test_ranking_quality_rejects_mismatched_matrices_and_no_users():
    with pytest.raises(ValueError, match="same users and movies"):
        evaluation.ranking_quality(
            toy_scorer, matrix([]), matrix([(0, 1)], movies=5)
        )
    with pytest.raises(ValueError, match="no user"):
        evaluation.ranking_quality(
            toy_scorer, matrix([(0, 1)]), matrix([(0, 1)])
        )
    with pytest.raises(ValueError, match="positive"):
        evaluation.ranking_quality(
            toy_scorer, matrix([]), matrix([(0, 1)]), max_k=0
        )


def test_metrics_beyond_the_computed_depth_are_refused():
    quality = evaluation.ranking_quality(
        toy_scorer, matrix([]), matrix([(0, 1)]), max_k=5
    )

    with pytest.raises(ValueError, match="up to k=5"):
        quality.metrics(ks=(10,))


def test_user_movies_groups_by_user_and_drops_repeats():
    m = UserMovies.build(np.array([2, 0, 2, 2]), np.array([3, 1, 0, 3]), 3, 4)

    np.testing.assert_array_equal(m.row_splits, [0, 1, 1, 3])
    np.testing.assert_array_equal(m.movie_rows, [1, 0, 3])
    np.testing.assert_array_equal(m.counts(), [1, 0, 2])
    np.testing.assert_array_equal(
        m.dense(np.array([2, 0])),
        [[True, False, False, True], [False, True, False, False]],
    )


def _dataset(movie_ids, ratings) -> movielens.Dataset:
    movies = {m: movielens.Movie(m, f"Movie {m} (1990)", ()) for m in movie_ids}
    u, m, t = zip(*ratings, strict=True)
    return movielens.Dataset(
        "toy",
        movies,
        movielens.Ratings(
            np.array(u), np.array(m), np.ones(len(u)), np.array(t)
        ),
        "0" * 64,
    )


def test_interactions_number_users_and_the_whole_catalogue():
    dataset = _dataset([30, 10, 20], [(7, 20, 5), (3, 30, 6), (7, 10, 7)])

    it = Interactions.from_dataset(dataset)

    np.testing.assert_array_equal(it.user_ids, [3, 7])
    np.testing.assert_array_equal(it.movie_ids, [10, 20, 30])
    np.testing.assert_array_equal(it.user_rows, [1, 0, 1])
    np.testing.assert_array_equal(it.movie_rows, [1, 2, 0])
    np.testing.assert_array_equal(it.timestamp, [5, 6, 7])


def test_interactions_refuse_ratings_of_unknown_movies():
    dataset = _dataset([10, 20], [(1, 10, 0), (1, 99, 0)])

    with pytest.raises(ValueError, match=r"missing from the catalogue.*99"):
        Interactions.from_dataset(dataset)
